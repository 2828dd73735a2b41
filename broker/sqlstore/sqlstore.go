// Package sqlstore is the SQL shared by tre's broker stores: one
// implementation of broker.Store over database/sql, parameterised by a
// Dialect (placeholders, row locking, the audit-chain lock, migrations and
// driver error translation). broker/sqlite and broker/postgres only open
// connections and supply their dialect.
//
// It holds no rules: every decision is broker.Service's. It must never
// return driver error text to callers: errors leave as *broker.Error or as
// internal errors the API hides.
package sqlstore

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nhs-tre/tre/broker"
	"github.com/nhs-tre/tre/dp"
)

// Dialect is what differs between SQL databases.
type Dialect struct {
	Name string
	// Numbered placeholders ($1, $2…) instead of ?.
	Numbered bool
	// ForUpdate is appended to a SELECT that locks one row (" FOR UPDATE");
	// empty where a transaction already excludes other writers (SQLite).
	ForUpdate string
	// SkipLocked is appended to the lease pick (" FOR UPDATE SKIP LOCKED").
	SkipLocked string
	// LockAuditHead takes the audit chain's lock, so appenders in several
	// processes serialise, and then returns the head's seq and hash (0, ''
	// when the log is empty), in one statement; empty where writers are
	// serial anyway (SQLite), which read the head with AuditHead.
	LockAuditHead string
	// MigrateLock takes a session-level lock that serialises migrations
	// across processes (held on one connection from before the
	// schema_migrations table is created until every migration committed),
	// and MigrateUnlock releases it; empty where one file lock serialises
	// writers anyway (SQLite).
	MigrateLock, MigrateUnlock string
	// Migrations holds files named NNNN_description.sql, applied in order.
	Migrations fs.FS
	// Translate maps a driver error to a *broker.Error, or returns nil when
	// it does not recognise it.
	Translate func(error) *broker.Error
	// Retryable reports driver errors after which the whole transaction may
	// be retried (serialisation failure, deadlock).
	Retryable func(error) bool
	// Prepare caches prepared statements per connection; drivers that cache
	// statements themselves (pgx) do not need it.
	Prepare bool
	// WritableCTE: statements in WITH may insert and update (PostgreSQL),
	// so a submission's rows go in one statement (CreateQuery).
	WritableCTE bool
	// EventsJSON is an expression, in a statement over queries q, of q's
	// events as a JSON array of [from_status, to_status, actor, comment,
	// at] arrays in id order ('[]' when none), as text (ReadQuery).
	EventsJSON string
	// GroupCommit lets concurrent UpdateGrouped calls share one
	// transaction and one commit (group.go); without it UpdateGrouped is
	// Update.
	GroupCommit bool
}

// DB implements broker.Store.
type DB struct {
	write, read *sql.DB
	d           Dialect

	mu    sync.Mutex
	stmts map[stmtKey]*sql.Stmt
	sqls  sync.Map // query with ? → dialect SQL

	// ReadQuery's statements, with the dialect's EventsJSON.
	readQuery, readQueryText string
	// Decoded JSON columns of queries (scanQuery).
	accuracy  jsonCache[dp.Accuracy]
	flags     jsonCache[broker.RiskFlag]
	codelists jsonCache[broker.CodelistRef]

	// Group commit (GroupCommit only): units wait in queue for the writer
	// goroutine, which Close stops by closing quit and waits for on
	// writerDone.
	queue           chan *unit
	quit            chan struct{}
	closeOnce       sync.Once
	writerDone      chan struct{}
	groups, grouped atomic.Int64
}

type stmtKey struct {
	read  bool
	query string
}

var _ broker.Store = (*DB)(nil)

// New wraps write (used for read-write transactions) and read (read-only
// transactions; may be the same pool) and applies pending migrations.
func New(ctx context.Context, write, read *sql.DB, d Dialect) (*DB, error) {
	if read == nil {
		read = write
	}
	db := &DB{write: write, read: read, d: d, stmts: map[stmtKey]*sql.Stmt{},
		readQuery: fmt.Sprintf(readQuerySQL, d.EventsJSON), readQueryText: fmt.Sprintf(readQueryTextSQL, d.EventsJSON)}
	if err := db.migrate(ctx); err != nil {
		return nil, err
	}
	if d.GroupCommit {
		db.startGroupWriter()
	}
	return db, nil
}

// Close stops the group writer (units still waiting get an error), then
// closes prepared statements and both pools.
func (db *DB) Close() error {
	if db.queue != nil {
		db.closeOnce.Do(func() { close(db.quit) })
		<-db.writerDone
	}
	db.mu.Lock()
	for k, s := range db.stmts {
		s.Close()
		delete(db.stmts, k)
	}
	db.mu.Unlock()
	err := db.write.Close()
	if db.read != db.write {
		err = errors.Join(err, db.read.Close())
	}
	return err
}

// Ping checks both pools answer.
func (db *DB) Ping(ctx context.Context) error {
	if err := db.write.PingContext(ctx); err != nil {
		return db.translate(err)
	}
	if err := db.read.PingContext(ctx); err != nil {
		return db.translate(err)
	}
	return nil
}

// Exec runs one statement outside the service, with ? placeholders. Tests
// use it to tamper with rows; tre never does.
func (db *DB) Exec(ctx context.Context, query string, args ...any) error {
	_, err := db.write.ExecContext(ctx, db.rebind(query), args...)
	return err
}

// maxRetries bounds retries of transactions the database aborted to break a
// deadlock or serialisation conflict.
const maxRetries = 5

// Update runs fn in a read-write transaction.
func (db *DB) Update(ctx context.Context, fn func(broker.Tx) error) error {
	var err error
	for attempt := 0; attempt < maxRetries; attempt++ {
		err = db.run(ctx, false, fn)
		var r retryable
		if err == nil || db.d.Retryable == nil || !errors.As(err, &r) || !db.d.Retryable(r.err) {
			break
		}
	}
	return db.translate(err)
}

// View runs fn in a read-only transaction.
func (db *DB) View(ctx context.Context, fn func(broker.Tx) error) error {
	return db.translate(db.run(ctx, true, fn))
}

// retryable wraps a driver error for Update's retry loop.
type retryable struct{ err error }

func (r retryable) Error() string { return r.err.Error() }
func (r retryable) Unwrap() error { return r.err }

func (db *DB) run(ctx context.Context, read bool, fn func(broker.Tx) error) error {
	pool := db.write
	var opts *sql.TxOptions
	if read {
		pool, opts = db.read, &sql.TxOptions{ReadOnly: true}
	}
	stx, err := pool.BeginTx(ctx, opts)
	if err != nil {
		return retryable{err}
	}
	t := &tx{db: db, tx: stx, read: read}
	defer func() {
		if len(t.unprepared) > 0 {
			db.prepareLater(read, t.unprepared)
		}
	}()
	if err := fn(t); err != nil {
		stx.Rollback()
		var be *broker.Error
		if errors.As(err, &be) {
			return err
		}
		return retryable{err}
	}
	if err := stx.Commit(); err != nil {
		return retryable{err}
	}
	return nil
}

// translate turns driver errors into *broker.Error where they mean
// something to callers, keeping driver text out of messages.
func (db *DB) translate(err error) error {
	if err == nil {
		return nil
	}
	var be *broker.Error
	if errors.As(err, &be) {
		return err
	}
	var r retryable
	if errors.As(err, &r) {
		err = r.err
	}
	if db.d.Translate != nil {
		if e := db.d.Translate(err); e != nil {
			return e
		}
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return fmt.Errorf("%s store: %w", db.d.Name, err)
}

// rebind rewrites ? placeholders for the dialect. The SQL in this package
// never has ? inside string literals.
func (db *DB) rebind(q string) string {
	if !db.d.Numbered {
		return q
	}
	if s, ok := db.sqls.Load(q); ok {
		return s.(string)
	}
	var b strings.Builder
	n := 0
	for i := 0; i < len(q); i++ {
		if q[i] == '?' {
			n++
			b.WriteByte('$')
			b.WriteString(strconv.Itoa(n))
			continue
		}
		b.WriteByte(q[i])
	}
	s := b.String()
	db.sqls.Store(q, s)
	return s
}

// cachedStmt returns the prepared statement for q on the given pool, or nil
// if it has not been prepared yet.
func (db *DB) cachedStmt(read bool, q string) *sql.Stmt {
	db.mu.Lock()
	defer db.mu.Unlock()
	return db.stmts[stmtKey{read, q}]
}

// statement is one statement run outside any transaction (outside).
type statement interface {
	ExecContext(ctx context.Context, args ...any) (sql.Result, error)
	QueryRowContext(ctx context.Context, args ...any) *sql.Row
}

// textStatement is a statement not prepared yet: its text on a pool.
type textStatement struct {
	pool *sql.DB
	q    string
}

func (t textStatement) ExecContext(ctx context.Context, args ...any) (sql.Result, error) {
	return t.pool.ExecContext(ctx, t.q, args...)
}

func (t textStatement) QueryRowContext(ctx context.Context, args ...any) *sql.Row {
	return t.pool.QueryRowContext(ctx, t.q, args...)
}

// outside returns q to run as one statement outside any transaction on the
// read or the write pool: its prepared statement when the dialect caches
// statements and q has been prepared, else its text. Call done once the
// statement's rows are read: it prepares q for next time (prepareLater).
func (db *DB) outside(read bool, q string) (s statement, done func()) {
	if st := db.cachedStmt(read, q); st != nil {
		return st, func() {}
	}
	pool := db.write
	if read {
		pool = db.read
	}
	text := textStatement{pool, db.rebind(q)}
	if !db.d.Prepare {
		return text, func() {}
	}
	return text, func() { db.prepareLater(read, []string{q}) }
}

// prepareLater prepares statements a transaction ran unprepared. It runs
// after the transaction has ended: preparing on a pool needs a free
// connection, and a transaction holding the only writer connection (or every
// reader) would otherwise wait for itself.
func (db *DB) prepareLater(read bool, qs []string) {
	pool := db.write
	if read {
		pool = db.read
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, q := range qs {
		if db.cachedStmt(read, q) != nil {
			continue
		}
		s, err := pool.PrepareContext(ctx, db.rebind(q))
		if err != nil {
			return // run unprepared next time too; the query itself reports errors
		}
		db.mu.Lock()
		if _, ok := db.stmts[stmtKey{read, q}]; ok {
			s.Close()
		} else {
			db.stmts[stmtKey{read, q}] = s
		}
		db.mu.Unlock()
	}
}

// migrate applies embedded migrations not yet recorded in
// schema_migrations, each in its own transaction with its record. It runs
// on one connection that holds the dialect's MigrateLock from before the
// schema_migrations table is created until the last migration committed, so
// brokers started together on a fresh or an older database migrate once:
// the first to take the lock migrates, the others wait for it and then find
// nothing left to do. A database migrated past this binary's newest
// migration is refused (SchemaTooNewError).
func (db *DB) migrate(ctx context.Context) (err error) {
	names, err := fs.Glob(db.d.Migrations, "*.sql")
	if err != nil {
		return fmt.Errorf("list migrations: %w", err)
	}
	sort.Strings(names)
	versions := make([]int, len(names))
	for i, name := range names {
		if versions[i], err = strconv.Atoi(strings.SplitN(name, "_", 2)[0]); err != nil {
			return fmt.Errorf("migration %s: name must start with a version number", name)
		}
	}
	conn, err := db.write.Conn(ctx)
	if err != nil {
		return db.translate(fmt.Errorf("connect for migrations: %w", err))
	}
	defer conn.Close()
	if db.d.MigrateLock != "" {
		if _, err := conn.ExecContext(ctx, db.d.MigrateLock); err != nil {
			return db.translate(fmt.Errorf("lock migrations: %w", err))
		}
		defer db.migrateUnlock(ctx, conn)
	}
	if _, err := conn.ExecContext(ctx,
		`CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)`); err != nil {
		return db.translate(fmt.Errorf("create schema_migrations: %w", err))
	}
	var newest int
	if err := conn.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&newest); err != nil {
		return db.translate(fmt.Errorf("read schema_migrations: %w", err))
	}
	if binary := slices.Max(append([]int{0}, versions...)); newest > binary {
		return &SchemaTooNewError{Database: newest, Binary: binary}
	}
	for i, name := range names {
		body, err := fs.ReadFile(db.d.Migrations, name)
		if err != nil {
			return fmt.Errorf("read migration %s: %w", name, err)
		}
		if err := db.applyMigration(ctx, conn, versions[i], name, string(body)); err != nil {
			return err
		}
	}
	return nil
}

// migrateUnlock releases the migration lock. A connection that may still
// hold it must not go back to the pool: it is discarded instead.
func (db *DB) migrateUnlock(ctx context.Context, conn *sql.Conn) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if _, err := conn.ExecContext(ctx, db.d.MigrateUnlock); err != nil {
		conn.Raw(func(any) error { return driver.ErrBadConn })
	}
}

func (db *DB) applyMigration(ctx context.Context, conn *sql.Conn, version int, name, body string) error {
	stx, err := conn.BeginTx(ctx, nil)
	if err != nil {
		return db.translate(err)
	}
	defer stx.Rollback()
	var n int
	if err := stx.QueryRowContext(ctx, db.rebind(`SELECT COUNT(*) FROM schema_migrations WHERE version = ?`), version).Scan(&n); err != nil {
		return db.translate(fmt.Errorf("read schema_migrations: %w", err))
	}
	if n > 0 {
		return nil
	}
	if _, err := stx.ExecContext(ctx, body); err != nil {
		return db.translate(fmt.Errorf("apply migration %s: %w", name, err))
	}
	if err := db.backfill(ctx, stx, name); err != nil {
		return db.translate(fmt.Errorf("backfill migration %s: %w", name, err))
	}
	if _, err := stx.ExecContext(ctx, db.rebind(`INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)`),
		version, name, time.Now().UTC().UnixMicro()); err != nil {
		return db.translate(fmt.Errorf("record migration %s: %w", name, err))
	}
	return db.translate(stx.Commit())
}

// backfill fills what a migration added from the existing rows, in the
// migration's transaction, where SQL alone cannot compute it. Both dialects
// name their migrations alike.
func (db *DB) backfill(ctx context.Context, stx *sql.Tx, name string) error {
	switch name {
	case "0002_predicate_sets.sql":
		return db.backfillPredicateSets(ctx, stx)
	}
	return nil
}

// backfillPredicateSets records the predicate set and match keys of every
// query stored before migration 2, oldest first so each set's latest query
// ends up the most recent one. Rows are read in batches: pgx cannot run a
// statement while another's rows are open on the connection.
func (db *DB) backfillPredicateSets(ctx context.Context, stx *sql.Tx) error {
	t := &tx{db: db, tx: stx}
	type row struct {
		id, project int64
		shape       string
		preds       []string
	}
	var after int64
	for {
		rows, err := stx.QueryContext(ctx, db.rebind(`SELECT id, project_id, shape_hash, predicates FROM queries
			WHERE id > ? ORDER BY id LIMIT 500`), after)
		if err != nil {
			return err
		}
		var batch []row
		for rows.Next() {
			var r row
			var preds string
			if err := rows.Scan(&r.id, &r.project, &r.shape, &preds); err != nil {
				rows.Close()
				return err
			}
			if err := fromJSON(preds, &r.preds); err != nil {
				rows.Close()
				return err
			}
			batch = append(batch, r)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		if len(batch) == 0 {
			return nil
		}
		for _, r := range batch {
			set, keys := broker.PredicateKeys(r.shape, r.preds)
			if err := t.putPredicateSet(ctx, r.project, r.id, set, keys); err != nil {
				return err
			}
		}
		after = batch[len(batch)-1].id
	}
}

// SchemaTooNewError refuses a database that a newer tre has migrated past
// this binary's newest migration: running against a schema it does not know
// could lose or misread decisions.
type SchemaTooNewError struct {
	Database, Binary int // schema versions
}

func (e *SchemaTooNewError) Error() string {
	return fmt.Sprintf("database schema version %d is newer than this binary's %d: upgrade tre", e.Database, e.Binary)
}
