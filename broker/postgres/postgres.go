// Package postgres is tre's broker store for PostgreSQL (pgx), for several
// broker replicas sharing one database. Budget checks lock the project row
// (SELECT … FOR UPDATE), state changes lock the query row, leases pick jobs
// with FOR UPDATE SKIP LOCKED, and audit appends take a transaction-scoped
// advisory lock so the hash chain stays linear across processes.
//
// It only opens connections and supplies the PostgreSQL dialect; the SQL
// lives in broker/sqlstore and every rule in broker.Service. Driver errors
// are translated here and never reach callers as text.
package postgres

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"net"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/nhs-tre/tre/broker"
	"github.com/nhs-tre/tre/broker/sqlstore"
)

//go:embed migrations/*.sql
var migrations embed.FS

// Store is the PostgreSQL broker store.
type Store struct {
	*sqlstore.DB
}

// maxConns is the connection pool's size.
const maxConns = 16

// Open connects to the database at url (a postgres:// URL or key=value
// string; search_path may be set in it) and applies pending migrations.
func Open(ctx context.Context, url string) (*Store, error) {
	return open(ctx, url, nil)
}

// open is Open with a tracer of every statement the connections send (the
// tests count them; nil in production).
func open(ctx context.Context, url string, tracer pgx.QueryTracer) (*Store, error) {
	cc, err := pgx.ParseConfig(url)
	if err != nil {
		// pgx's message can echo the password; keep it out.
		return nil, broker.Errorf(broker.EINVALID, "postgres: the database URL is not valid")
	}
	cc.Tracer = tracer
	db := stdlib.OpenDB(*cc)
	db.SetMaxOpenConns(maxConns)
	db.SetMaxIdleConns(maxConns)
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("postgres: connect to %s:%d/%s: %w", cc.Host, cc.Port, cc.Database, translateOrPlain(err))
	}
	sub, err := fs.Sub(migrations, "migrations")
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("postgres: migrations: %w", err)
	}
	s, err := sqlstore.New(ctx, db, db, dialect(sub))
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("postgres: open: %w", err)
	}
	return &Store{DB: s}, nil
}

func dialect(migrations fs.FS) sqlstore.Dialect {
	return sqlstore.Dialect{
		Name:       "postgres",
		Numbered:   true,
		ForUpdate:  " FOR UPDATE",
		SkipLocked: " FOR UPDATE SKIP LOCKED",
		// Migration 9's function: the advisory lock, then the head read
		// with a snapshot taken after it was granted, in one round trip.
		LockAuditHead: `SELECT COALESCE(seq, 0), COALESCE(hash, '') FROM tre_lock_audit_head()`,
		// A session lock, not a transaction's: it covers creating
		// schema_migrations and every migration's own transaction, so
		// replicas started together on a fresh database migrate once.
		MigrateLock:   `SELECT pg_advisory_lock(hashtextextended('tre.migrate.' || current_schema(), 0))`,
		MigrateUnlock: `SELECT pg_advisory_unlock(hashtextextended('tre.migrate.' || current_schema(), 0))`,
		Migrations:    migrations,
		WritableCTE:   true,
		EventsJSON: `(SELECT COALESCE(json_agg(json_build_array(e.from_status, e.to_status, e.actor, e.comment, e.at) ORDER BY e.id), '[]')::text
			FROM query_events e WHERE e.query_id = q.id)`,
		Translate: translate,
		Retryable: func(err error) bool {
			var pe *pgconn.PgError
			return errors.As(err, &pe) && (pe.Code == "40001" || pe.Code == "40P01")
		},
	}
}

func translateOrPlain(err error) error {
	if e := translate(err); e != nil {
		return e
	}
	return err
}

// translate maps PostgreSQL errors to broker errors without their text.
func translate(err error) *broker.Error {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch pe.Code {
		case "23505":
			return broker.Errorf(broker.ECONFLICT, "the record already exists")
		case "23503":
			return broker.Errorf(broker.ECONFLICT, "the record refers to something that does not exist")
		case "23502":
			return broker.Errorf(broker.EINVALID, "a required field is missing")
		case "40001", "40P01", "55P03":
			return broker.Errorf(broker.EUNAVAILABLE, "the database is busy; try again")
		case "57P01", "57P02", "57P03", "53300", "53100", "25006":
			// Shutting down, too many connections, disk full, or a
			// read-only server (a standby, default_transaction_read_only).
			return broker.Errorf(broker.EUNAVAILABLE, "the database is unavailable")
		}
		return nil
	}
	var ne net.Error
	var ce *pgconn.ConnectError
	if errors.As(err, &ce) || errors.As(err, &ne) || errors.Is(err, sql.ErrConnDone) || pgconn.SafeToRetry(err) {
		return broker.Errorf(broker.EUNAVAILABLE, "the database is unavailable")
	}
	return nil
}
