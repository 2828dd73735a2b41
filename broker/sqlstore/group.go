package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"

	"github.com/nhs-tre/tre/broker"
)

// Group commit. On SQLite every write transaction holds the only writer
// until its commit has synced the WAL (synchronous=FULL), and that sync is
// most of the time the lock is held (BENCHMARKS.md). UpdateGrouped lets
// concurrent callers share one transaction and so one sync: a writer
// goroutine takes the next waiting unit, begins a transaction, then takes
// every unit already waiting behind it (up to maxGroup) and runs each alone,
// in arrival order, inside its own savepoint. A unit that fails is rolled
// back to its savepoint and leaves the others alone. Every caller gets its
// answer only after the commit returned: success once its writes are
// durable, or, if the commit (or anything that leaves the transaction in
// doubt) fails, an error, and then nothing of the group was written.
//
// Units run one after another on one connection, so each sees the writes of
// those before it, exactly as if each had been its own transaction committed
// in that order: rules that read state (the audit chain's head, the budget
// ledger) judge it as they would serially.

// maxGroup bounds the units in one transaction, so one group's time in the
// writer (and its callers' wait) stays short.
const maxGroup = 64

// Unit states: the writer claims a queued unit before running it; a caller
// whose context ends first withdraws it, and it is never run.
const (
	unitQueued int32 = iota
	unitStarted
	unitWithdrawn
)

// unit is one UpdateGrouped call waiting for the writer.
type unit struct {
	ctx   context.Context
	fn    func(broker.Tx) error
	state atomic.Int32
	err   error
	// panicked holds what fn panicked with; the caller panics with it.
	panicked any
	done     chan struct{}
}

// errClosed answers units the writer did not run before the store closed.
var errClosed = broker.Errorf(broker.EUNAVAILABLE, "the database is closing; try again")

// errInDoubt marks a group whose transaction could not be brought back to
// a known state after a unit failed.
var errInDoubt = errors.New("group transaction aborted")

// errAborted answers a group in doubt when the failing unit's own error
// says nothing more precise.
var errAborted = broker.Errorf(broker.EUNAVAILABLE, "the database aborted the transaction; try again")

// GroupStats counts the transactions UpdateGrouped committed and the units
// they held.
type GroupStats struct {
	Groups, Units int64
}

// GroupStats returns the group commit counters since the store opened.
func (db *DB) GroupStats() GroupStats {
	return GroupStats{Groups: db.groups.Load(), Units: db.grouped.Load()}
}

// startGroupWriter starts the goroutine that runs grouped units; Close stops
// it.
func (db *DB) startGroupWriter() {
	db.queue = make(chan *unit, maxGroup)
	db.quit = make(chan struct{})
	db.writerDone = make(chan struct{})
	go db.groupWriter()
}

// UpdateGrouped runs fn in a read-write transaction that may be shared with
// other concurrent UpdateGrouped calls (see the comment at the top of this
// file). fn must write only through tx and lock what it changes, as for
// Update. Dialects without GroupCommit run it as Update.
func (db *DB) UpdateGrouped(ctx context.Context, fn func(broker.Tx) error) error {
	if db.queue == nil {
		return db.Update(ctx, fn)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	select {
	case <-db.quit:
		return errClosed
	default:
	}
	u := &unit{ctx: ctx, fn: fn, done: make(chan struct{})}
	select {
	case db.queue <- u:
	case <-db.quit:
		return errClosed
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-u.done:
	case <-ctx.Done():
		if u.state.CompareAndSwap(unitQueued, unitWithdrawn) {
			return ctx.Err() // never run: nothing written
		}
		<-u.done // running or run: its outcome is the answer
	case <-db.writerDone:
		// Queued as the store closed, after the writer's last look.
		if u.state.CompareAndSwap(unitQueued, unitWithdrawn) {
			return errClosed
		}
		<-u.done
	}
	if u.panicked != nil {
		panic(u.panicked)
	}
	return u.err
}

// groupWriter runs groups until Close, then answers what is still queued.
func (db *DB) groupWriter() {
	defer close(db.writerDone)
	for {
		select {
		case u := <-db.queue:
			db.runGroup(u)
		case <-db.quit:
			for {
				select {
				case u := <-db.queue:
					u.err = errClosed
					close(u.done)
				default:
					return
				}
			}
		}
	}
}

// runGroup runs first and the units queued behind it in one transaction
// and answers each of them.
func (db *DB) runGroup(first *unit) {
	stx, err := db.beginGroup()
	group := []*unit{first}
	for len(group) < maxGroup {
		select {
		case u := <-db.queue:
			group = append(group, u)
			continue
		default:
		}
		break
	}
	// answer answers every unit: with err when the group failed (its
	// outcome overrides what each unit found, which may have rested on an
	// earlier unit's writes that are now gone), or each with its own
	// result when err is nil.
	answer := func(err error) {
		for _, u := range group {
			if err != nil {
				u.err = err
			}
			close(u.done)
		}
	}
	if err != nil {
		answer(db.translate(err))
		return
	}
	// Statements run with their caller's context values but never its
	// cancellation: an interrupted write can abort SQLite's whole
	// transaction, so a claimed unit always runs to its end.
	var unprepared []string
	ran := 0
	for i, u := range group {
		if !u.state.CompareAndSwap(unitQueued, unitStarted) {
			u.err = u.ctx.Err() // withdrawn by its caller: skipped
			continue
		}
		if err := u.ctx.Err(); err != nil {
			u.err = err
			continue
		}
		t := &tx{db: db, tx: stx, detach: true}
		err := db.runUnit(stx, "tre_unit_"+strconv.Itoa(i), t, u)
		unprepared = append(unprepared, t.unprepared...)
		if errors.Is(err, errInDoubt) {
			// The database ended the transaction itself (an I/O error,
			// a full disk): everything of the group is gone.
			stx.Rollback()
			if be := (*broker.Error)(nil); errors.As(u.err, &be) && be.Code == broker.EUNAVAILABLE {
				answer(be)
			} else {
				answer(errAborted)
			}
			return
		}
		if err == nil {
			ran++
		}
	}
	if ran == 0 {
		// Nothing to keep: end without a sync.
		stx.Rollback()
		answer(nil)
		return
	}
	if err := stx.Commit(); err != nil {
		answer(db.translate(fmt.Errorf("commit group of %d: %w", len(group), err)))
		return
	}
	db.groups.Add(1)
	db.grouped.Add(int64(ran))
	answer(nil)
	if len(unprepared) > 0 {
		db.prepareLater(false, unprepared)
	}
}

// beginGroup begins the group's transaction, retrying as Update does.
func (db *DB) beginGroup() (*sql.Tx, error) {
	var err error
	for attempt := 0; attempt < maxRetries; attempt++ {
		var stx *sql.Tx
		stx, err = db.write.BeginTx(context.Background(), nil)
		if err == nil {
			return stx, nil
		}
		if db.d.Retryable == nil || !db.d.Retryable(err) {
			break
		}
	}
	return nil, err
}

// runUnit runs u.fn inside a savepoint named sp, keeping its writes when it
// succeeds and rolling back to the savepoint when it fails; u.err is set
// to what its caller should see should the group commit. It returns
// errInDoubt when the transaction is no longer in a state where the group
// can go on (the savepoint cannot be released or rolled back to: the
// database aborted the whole transaction).
func (db *DB) runUnit(stx *sql.Tx, sp string, t *tx, u *unit) (err error) {
	bg := context.Background()
	if _, err := stx.ExecContext(bg, "SAVEPOINT "+sp); err != nil {
		return fmt.Errorf("%w: savepoint: %w", errInDoubt, err)
	}
	var ferr error
	func() {
		defer func() {
			if p := recover(); p != nil {
				u.panicked = p
				ferr = fmt.Errorf("unit panicked: %v", p)
			}
		}()
		ferr = u.fn(t)
	}()
	if ferr == nil {
		if _, err := stx.ExecContext(bg, "RELEASE SAVEPOINT "+sp); err != nil {
			return fmt.Errorf("%w: release: %w", errInDoubt, err)
		}
		return nil
	}
	if u.panicked == nil {
		u.err = db.translate(ferr)
	}
	if _, err := stx.ExecContext(bg, "ROLLBACK TO SAVEPOINT "+sp); err != nil {
		return fmt.Errorf("%w: rollback to savepoint: %w", errInDoubt, err)
	}
	if _, err := stx.ExecContext(bg, "RELEASE SAVEPOINT "+sp); err != nil {
		return fmt.Errorf("%w: release after rollback: %w", errInDoubt, err)
	}
	return ferr
}
