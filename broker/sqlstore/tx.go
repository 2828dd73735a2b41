package sqlstore

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nhs-tre/tre/broker"
)

// tx implements broker.Tx over one database/sql transaction.
type tx struct {
	db   *DB
	tx   *sql.Tx
	read bool
	// detach runs statements without their context's cancellation (group
	// commit: an interrupted statement may abort the shared transaction).
	detach bool
	// unprepared lists statements run without a cached prepared statement;
	// they are prepared once the transaction has released its connection.
	unprepared []string
}

// sctx is the context statements run with.
func (t *tx) sctx(ctx context.Context) context.Context {
	if t.detach {
		return context.WithoutCancel(ctx)
	}
	return ctx
}

// prepared returns q as a statement bound to the transaction when the
// dialect caches statements.
func (t *tx) prepared(ctx context.Context, q string) (*sql.Stmt, error) {
	if !t.db.d.Prepare {
		return nil, nil
	}
	s := t.db.cachedStmt(t.read, q)
	if s == nil {
		t.unprepared = append(t.unprepared, q)
		return nil, nil
	}
	return t.tx.StmtContext(ctx, s), nil
}

func (t *tx) exec(ctx context.Context, q string, args ...any) (sql.Result, error) {
	ctx = t.sctx(ctx)
	s, err := t.prepared(ctx, q)
	if err != nil {
		return nil, err
	}
	if s != nil {
		return s.ExecContext(ctx, args...)
	}
	return t.tx.ExecContext(ctx, t.db.rebind(q), args...)
}

func (t *tx) query(ctx context.Context, q string, args ...any) (*sql.Rows, error) {
	ctx = t.sctx(ctx)
	s, err := t.prepared(ctx, q)
	if err != nil {
		return nil, err
	}
	if s != nil {
		return s.QueryContext(ctx, args...)
	}
	return t.tx.QueryContext(ctx, t.db.rebind(q), args...)
}

// queryRow runs q and scans its single row into dest; it reports
// sql.ErrNoRows when there is none.
func (t *tx) queryRow(ctx context.Context, q string, args []any, dest ...any) error {
	ctx = t.sctx(ctx)
	s, err := t.prepared(ctx, q)
	if err != nil {
		return err
	}
	if s != nil {
		return s.QueryRowContext(ctx, args...).Scan(dest...)
	}
	return t.tx.QueryRowContext(ctx, t.db.rebind(q), args...).Scan(dest...)
}

// dynamic runs ad-hoc SQL (filters) without caching a statement.
func (t *tx) dynamic(ctx context.Context, q string, args ...any) (*sql.Rows, error) {
	ctx = t.sctx(ctx)
	return t.tx.QueryContext(ctx, t.db.rebind(q), args...)
}

// Times are stored as Unix microseconds (UTC); 0 is the zero time.
func micros(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMicro()
}

func fromMicros(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.UnixMicro(n).UTC()
}

func toJSON(v any) (string, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return "", fmt.Errorf("encode column: %w", err)
	}
	return string(b), nil
}

func fromJSON(s string, v any) error {
	if s == "" {
		return nil
	}
	if err := json.Unmarshal([]byte(s), v); err != nil {
		return fmt.Errorf("decode column: %w", err)
	}
	return nil
}

func notFound(err error, format string, args ...any) error {
	if errors.Is(err, sql.ErrNoRows) {
		return broker.Errorf(broker.ENOTFOUND, format, args...)
	}
	return err
}

// where builds a dynamic WHERE clause.
type where struct {
	conds []string
	args  []any
}

func (w *where) add(cond string, args ...any) {
	w.conds = append(w.conds, cond)
	w.args = append(w.args, args...)
}

func (w *where) String() string {
	if len(w.conds) == 0 {
		return ""
	}
	return " WHERE " + strings.Join(w.conds, " AND ")
}

// scanner is a *sql.Row or *sql.Rows.
type scanner interface{ Scan(...any) error }

// scannerFunc adapts a function to scanner, e.g. to scan extra columns
// after a shared prefix.
type scannerFunc func(...any) error

func (f scannerFunc) Scan(dest ...any) error { return f(dest...) }

// collect scans every row with scan and closes rows. The slice is never
// nil, so an empty list encodes as [] rather than null.
func collect[T any](rows *sql.Rows, scan func(scanner) (T, error)) ([]T, error) {
	defer rows.Close()
	out := []T{}
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

// page counts the rows w selects from countFrom, then runs selectSQL (which
// may join other tables) with the same conditions for one page in order.
func (t *tx) page(ctx context.Context, countFrom, selectSQL string, w where, order string, limit, offset int) (int, *sql.Rows, error) {
	var n int
	rows, err := t.dynamic(ctx, `SELECT COUNT(*) FROM `+countFrom+w.String(), w.args...)
	if err != nil {
		return 0, nil, err
	}
	if err := scanCount(rows, &n); err != nil {
		return 0, nil, err
	}
	args := append(append([]any{}, w.args...), limit, offset)
	rows, err = t.dynamic(ctx, selectSQL+w.String()+` ORDER BY `+order+` LIMIT ? OFFSET ?`, args...)
	if err != nil {
		return 0, nil, err
	}
	return n, rows, nil
}

func scanCount(rows *sql.Rows, n *int) error {
	defer rows.Close()
	if !rows.Next() {
		if err := rows.Err(); err != nil {
			return err
		}
		return sql.ErrNoRows
	}
	if err := rows.Scan(n); err != nil {
		return err
	}
	return rows.Close()
}
