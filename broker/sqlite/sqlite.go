// Package sqlite is tre's embedded broker store: one SQLite file in the data
// directory (modernc.org/sqlite, pure Go), in WAL mode with foreign keys on
// and synchronous=FULL, so a committed decision survives a power cut. One
// writer connection takes BEGIN IMMEDIATE transactions, so writers
// serialise and budget checks cannot race; a small pool of read-only
// connections serves reads concurrently. Concurrent submissions share a
// transaction and its commit (sqlstore's group commit), each in its own
// savepoint, so the WAL sync is paid once per group rather than once per
// submission.
//
// It only opens connections and supplies the SQLite dialect; the SQL lives in
// broker/sqlstore and every rule in broker.Service. Driver errors are
// translated here and never reach callers as text.
package sqlite

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"runtime"
	"strings"
	"time"

	"github.com/nhs-tre/tre/broker"
	"github.com/nhs-tre/tre/broker/sqlstore"
	sqlite "modernc.org/sqlite"
)

// DefaultFilename is the database file's name inside the data directory.
const DefaultFilename = "broker.db"

//go:embed migrations/*.sql
var migrations embed.FS

// Store is the SQLite broker store.
type Store struct {
	*sqlstore.DB
	path string
}

// busyTimeout is how long (ms) a connection waits for another process's
// lock on the file before it reports the database busy.
const busyTimeout = 10000

// Open opens (creating if needed) the database at path and applies pending
// migrations.
func Open(ctx context.Context, path string) (*Store, error) {
	readers := max(2, runtime.NumCPU()) // the read-only pool's size
	if path == "" {
		return nil, broker.Errorf(broker.EINVALID, "sqlite: database path is required")
	}
	if strings.ContainsAny(path, "?#") {
		return nil, broker.Errorf(broker.EINVALID, "sqlite: database path %q may not contain '?' or '#'", path)
	}
	params := url.Values{}
	params.Add("_pragma", fmt.Sprintf("busy_timeout(%d)", busyTimeout))
	params.Add("_pragma", "journal_mode(WAL)")
	params.Add("_pragma", "foreign_keys(1)")
	// FULL: every commit is on disk before it returns (the WAL is synced
	// each time). NORMAL would sync only at checkpoints, so a power cut
	// could undo the last decisions; the broker must never lose one, and
	// the sync costs I/O wait inside the writer, not CPU (BENCHMARKS.md).
	params.Add("_pragma", "synchronous(FULL)")
	writeDSN := "file:" + path + "?" + params.Encode() + "&_txlock=immediate"
	params.Add("_pragma", "query_only(1)")
	readDSN := "file:" + path + "?" + params.Encode()

	write, err := sql.Open("sqlite", writeDSN)
	if err != nil {
		return nil, fmt.Errorf("sqlite: open %s: %w", path, err)
	}
	// One writer: SQLite allows one anyway, and queueing in database/sql is
	// cheaper than busy-waiting on the file lock.
	write.SetMaxOpenConns(1)
	write.SetMaxIdleConns(1)
	write.SetConnMaxLifetime(0)
	write.SetConnMaxIdleTime(0)
	// Readers connect lazily, so only after migrations created the schema.
	read, err := sql.Open("sqlite", readDSN)
	if err != nil {
		write.Close()
		return nil, fmt.Errorf("sqlite: open %s: %w", path, err)
	}
	read.SetMaxOpenConns(readers)
	read.SetMaxIdleConns(readers)
	read.SetConnMaxLifetime(0)
	read.SetConnMaxIdleTime(0)
	sub, err := fs.Sub(migrations, "migrations")
	if err != nil {
		write.Close()
		read.Close()
		return nil, fmt.Errorf("sqlite: migrations: %w", err)
	}
	db, err := openStore(ctx, write, read, dialect(sub))
	if err != nil {
		write.Close()
		read.Close()
		return nil, fmt.Errorf("sqlite: open %s: %w", path, err)
	}
	return &Store{DB: db, path: path}, nil
}

// openStore migrates and opens the store, trying again while the file is
// busy, for up to busyTimeout. SQLite answers some lock conflicts at once
// without calling the busy handler — two processes opening a new file
// together both switch it to WAL (journal_mode needs an exclusive lock),
// or one reads the WAL while another recovers it — so busy_timeout alone
// lets a broker fail to start beside another (TestOpenTogether). Each
// migration runs in its own transaction and is skipped once recorded, so
// trying again is safe.
func openStore(ctx context.Context, write, read *sql.DB, d sqlstore.Dialect) (*sqlstore.DB, error) {
	deadline := time.Now().Add(busyTimeout * time.Millisecond)
	for wait := 2 * time.Millisecond; ; wait = min(2*wait, 100*time.Millisecond) {
		db, err := sqlstore.New(ctx, write, read, d)
		if err == nil || broker.ErrorCode(err) != broker.EUNAVAILABLE || time.Now().After(deadline) {
			return db, err
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(wait):
		}
	}
}

// Path returns the database file's path.
func (s *Store) Path() string { return s.path }

func dialect(migrations fs.FS) sqlstore.Dialect {
	return sqlstore.Dialect{
		Name:       "sqlite",
		Migrations: migrations,
		Translate:  translate,
		Retryable:  func(err error) bool { return code(err)&0xff == sqliteBusy },
		Prepare:    true,
		EventsJSON: `(SELECT json_group_array(json_array(e.from_status, e.to_status, e.actor, e.comment, e.at) ORDER BY e.id)
			FROM query_events e WHERE e.query_id = q.id)`,
		// One writer that holds the file lock through each commit's WAL
		// sync: concurrent submissions share one commit and one sync.
		GroupCommit: true,
	}
}

// SQLite result codes the store translates.
const (
	sqliteBusy                 = 5
	sqliteLocked               = 6
	sqliteReadOnly             = 8
	sqliteIOErr                = 10
	sqliteFull                 = 13
	sqliteCantOpen             = 14
	sqliteConstraintUnique     = 2067
	sqliteConstraintPrimaryKey = 1555
	sqliteConstraintForeignKey = 787
	sqliteConstraintNotNull    = 1299
)

func code(err error) int {
	var e *sqlite.Error
	if errors.As(err, &e) {
		return e.Code()
	}
	return 0
}

// translate maps SQLite errors to broker errors without their text.
func translate(err error) *broker.Error {
	switch c := code(err); {
	case c == 0:
		return nil
	case c == sqliteConstraintUnique || c == sqliteConstraintPrimaryKey:
		return broker.Errorf(broker.ECONFLICT, "the record already exists")
	case c == sqliteConstraintForeignKey:
		return broker.Errorf(broker.ECONFLICT, "the record refers to something that does not exist")
	case c == sqliteConstraintNotNull:
		return broker.Errorf(broker.EINVALID, "a required field is missing")
	case c&0xff == sqliteBusy || c&0xff == sqliteLocked:
		return broker.Errorf(broker.EUNAVAILABLE, "the database is busy; try again")
	case c&0xff == sqliteFull || c&0xff == sqliteCantOpen || c&0xff == sqliteReadOnly || c&0xff == sqliteIOErr:
		// Disk full, read-only or failing storage: the operator's problem,
		// not the caller's, and the transaction was rolled back whole.
		return broker.Errorf(broker.EUNAVAILABLE, "the database is unavailable")
	}
	return nil
}
