package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	_ "modernc.org/sqlite"

	"github.com/nhs-tre/tre/broker"
)

// These tests run group commit on a real SQLite database with the broker's
// own schema (broker/sqlite's migrations; that package cannot be imported
// here without a cycle). The suite in broker/brokertest covers the same
// path through broker.Service.

// openSQLite opens a fresh database as broker/sqlite does: one writer
// taking BEGIN IMMEDIATE, WAL, foreign keys, group commit.
func openSQLite(t *testing.T) *DB {
	t.Helper()
	path := filepath.Join(t.TempDir(), "broker.db")
	dsn := "file:" + path + "?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_pragma=foreign_keys(1)&_pragma=synchronous(FULL)"
	write, err := sql.Open("sqlite", dsn+"&_txlock=immediate")
	if err != nil {
		t.Fatal(err)
	}
	write.SetMaxOpenConns(1)
	read, err := sql.Open("sqlite", dsn+"&_pragma=query_only(1)")
	if err != nil {
		t.Fatal(err)
	}
	db, err := New(context.Background(), write, read, Dialect{
		Name:        "sqlite",
		Migrations:  os.DirFS(filepath.Join("..", "sqlite", "migrations")),
		Prepare:     true,
		GroupCommit: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// appendAudit appends one entry to the chain, as broker's own appendAudit
// does.
func appendAudit(ctx context.Context, tx broker.Tx, actor string) error {
	seq, prev, err := tx.LockAuditHead(ctx)
	if err != nil {
		return err
	}
	if seq == 0 {
		prev = broker.GenesisHash
	}
	e := &broker.AuditEntry{Seq: seq + 1, At: time.Unix(1_800_000_000, 0).UTC(), Actor: actor, Action: "test.write", Object: "test", PrevHash: prev}
	e.Hash = broker.HashAuditEntry(e)
	return tx.InsertAudit(ctx, e)
}

// auditActors returns the actors of the chain in order, after checking the
// chain verifies.
func auditActors(t *testing.T, db *DB) []string {
	t.Helper()
	ctx := context.Background()
	v, err := broker.VerifyChain(ctx, db, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !v.OK {
		t.Fatalf("audit chain broken: %+v", v)
	}
	var actors []string
	err = db.View(ctx, func(tx broker.Tx) error {
		es, err := tx.ScanAudit(ctx, 0, 1000)
		for _, e := range es {
			actors = append(actors, e.Actor)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return actors
}

// inOneGroup runs fns as concurrent UpdateGrouped calls that the writer is
// bound to take as one group, in fns' order: they queue while the writer is
// busy with a group of one unit that waits for them all. It returns each
// call's error.
func inOneGroup(t *testing.T, db *DB, fns []func(broker.Tx) error) []error {
	t.Helper()
	ctx := context.Background()
	release, wg := holdWriter(t, db)
	errs := make([]error, len(fns))
	for i, fn := range fns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = db.UpdateGrouped(ctx, fn)
		}()
		waitFor(t, func() bool { return len(db.queue) == i+1 })
	}
	release()
	wg.Wait()
	return errs
}

// holdWriter keeps the group writer busy in a unit of its own (which
// writes nothing) until release is called; wg ends with it.
func holdWriter(t *testing.T, db *DB) (release func(), wg *sync.WaitGroup) {
	t.Helper()
	hold, held := make(chan struct{}), make(chan struct{})
	wg = new(sync.WaitGroup)
	wg.Add(1)
	go func() {
		defer wg.Done()
		err := db.UpdateGrouped(context.Background(), func(broker.Tx) error { close(held); <-hold; return nil })
		if err != nil {
			t.Errorf("holding unit: %v", err)
		}
	}()
	<-held
	return func() { close(hold) }, wg
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached in 10s")
		}
		time.Sleep(time.Millisecond)
	}
}

// auditUnits returns n units, unit i appending the audit entry of actor
// "unit-i" and then returning then(i, its transaction).
func auditUnits(ctx context.Context, n int, then func(i int, t *tx) error) []func(broker.Tx) error {
	fns := make([]func(broker.Tx) error, n)
	for i := range fns {
		fns[i] = func(btx broker.Tx) error {
			if err := appendAudit(ctx, btx, fmt.Sprintf("unit-%d", i)); err != nil {
				return err
			}
			return then(i, btx.(*tx))
		}
	}
	return fns
}

// writesAgain fails t unless the store, whose audit log is empty after a
// failed group, takes a grouped write again.
func writesAgain(t *testing.T, db *DB) {
	t.Helper()
	ctx := context.Background()
	if err := db.UpdateGrouped(ctx, func(tx broker.Tx) error { return appendAudit(ctx, tx, "after") }); err != nil {
		t.Fatalf("write after the failed group: %v", err)
	}
	if got := auditActors(t, db); fmt.Sprint(got) != "[after]" {
		t.Errorf("audit actors = %v, want [after]", got)
	}
}

// TestGroupUnitFailsAlone: units of one group that fail after writing leave
// nothing behind, and the others commit in order with an intact chain.
func TestGroupUnitFailsAlone(t *testing.T) {
	db := openSQLite(t)
	ctx := context.Background()
	refused := broker.Errorf(broker.ECONFLICT, "refused by the test")
	fns := auditUnits(ctx, 6, func(i int, _ *tx) error {
		if i == 1 || i == 4 {
			return refused // after writing: the write must be undone
		}
		return nil
	})
	before := db.GroupStats()
	errs := inOneGroup(t, db, fns)
	for i, err := range errs {
		if want := (i == 1 || i == 4); want != (err != nil) {
			t.Errorf("unit %d: err = %v", i, err)
		}
		if err != nil && broker.ErrorCode(err) != broker.ECONFLICT {
			t.Errorf("unit %d: err = %v, want its own ECONFLICT", i, err)
		}
	}
	// The holding unit's group, then one group of the four that succeeded.
	if got := db.GroupStats(); got.Groups-before.Groups != 2 || got.Units-before.Units != 1+4 {
		t.Errorf("group stats went from %+v to %+v, want one group of 4 after the holding unit's", before, got)
	}
	got := auditActors(t, db)
	want := []string{"unit-0", "unit-2", "unit-3", "unit-5"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("audit actors = %v, want %v", got, want)
	}
}

// TestGroupCommitFailureFailsAll: when the shared commit fails, every unit
// of the group gets an error, even those that succeeded, and nothing of
// the group is written; the store then works again.
func TestGroupCommitFailureFailsAll(t *testing.T) {
	db := openSQLite(t)
	ctx := context.Background()
	fns := auditUnits(ctx, 5, func(i int, t *tx) error {
		if i != 2 {
			return nil
		}
		// A foreign key checked only at COMMIT: a real commit failure.
		if _, err := t.tx.ExecContext(ctx, `PRAGMA defer_foreign_keys = ON`); err != nil {
			return err
		}
		_, err := t.tx.ExecContext(ctx, `INSERT INTO query_events (query_id, from_status, to_status, actor, comment, at)
			VALUES (999999, '', 'submitted', 'x', '', 0)`)
		return err
	})
	before := db.GroupStats()
	for i, err := range inOneGroup(t, db, fns) {
		if err == nil {
			t.Errorf("unit %d succeeded although its group's commit failed", i)
		}
	}
	if got := db.GroupStats(); got.Groups != before.Groups+1 || got.Units != before.Units+1 {
		t.Errorf("group stats went from %+v to %+v: want only the holding unit's group counted", before, got)
	}
	if got := auditActors(t, db); len(got) != 0 {
		t.Errorf("audit log after a failed group commit = %v, want empty", got)
	}
	writesAgain(t, db)
}

// TestGroupWithdrawn: a caller whose context ends while its unit waits gets
// the context's error and its unit never runs.
func TestGroupWithdrawn(t *testing.T) {
	db := openSQLite(t)
	ctx := context.Background()
	cctx, cancel := context.WithCancel(ctx)
	var ran sync.Map
	fns := []func(broker.Tx) error{
		func(tx broker.Tx) error { ran.Store(0, true); return appendAudit(ctx, tx, "unit-0") },
		func(tx broker.Tx) error { ran.Store(1, true); return appendAudit(ctx, tx, "unit-1") },
	}
	release, wg := holdWriter(t, db)
	var err0, err1 error
	wg.Add(2)
	go func() { defer wg.Done(); err0 = db.UpdateGrouped(ctx, fns[0]) }()
	waitFor(t, func() bool { return len(db.queue) == 1 })
	go func() { defer wg.Done(); err1 = db.UpdateGrouped(cctx, fns[1]) }()
	waitFor(t, func() bool { return len(db.queue) == 2 })
	cancel()
	release()
	wg.Wait()
	if err0 != nil {
		t.Errorf("unit 0: %v", err0)
	}
	if !errors.Is(err1, context.Canceled) {
		t.Errorf("unit 1: err = %v, want context.Canceled", err1)
	}
	if _, ok := ran.Load(1); ok {
		t.Errorf("the withdrawn unit ran")
	}
	if got := auditActors(t, db); fmt.Sprint(got) != "[unit-0]" {
		t.Errorf("audit actors = %v, want [unit-0]", got)
	}
}

// TestGroupClose: Close answers units still waiting and later calls with an
// error instead of leaving them blocked.
func TestGroupClose(t *testing.T) {
	db := openSQLite(t)
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	err := db.UpdateGrouped(context.Background(), func(broker.Tx) error { return nil })
	if broker.ErrorCode(err) != broker.EUNAVAILABLE {
		t.Errorf("UpdateGrouped after Close = %v, want EUNAVAILABLE", err)
	}
}

// TestGroupAbortedByDatabase: when the database ends the transaction under
// a unit (as SQLite does on an I/O error or a full disk), the group cannot
// go on: every unit gets EUNAVAILABLE and nothing of the group is written,
// whether the unit then reports an error or not.
func TestGroupAbortedByDatabase(t *testing.T) {
	for _, tt := range []struct {
		name    string
		unitErr error
	}{
		{"unit fails", errors.New("statement failed")},
		{"unit succeeds", nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			db := openSQLite(t)
			ctx := context.Background()
			fns := auditUnits(ctx, 4, func(i int, t *tx) error {
				if i != 2 {
					return nil
				}
				if _, err := t.tx.ExecContext(ctx, `ROLLBACK`); err != nil {
					return err
				}
				return tt.unitErr
			})
			for i, err := range inOneGroup(t, db, fns) {
				if broker.ErrorCode(err) != broker.EUNAVAILABLE {
					t.Errorf("unit %d: err = %v, want EUNAVAILABLE", i, err)
				}
			}
			if got := auditActors(t, db); len(got) != 0 {
				t.Errorf("audit log after an aborted group = %v, want empty", got)
			}
			writesAgain(t, db)
		})
	}
}
