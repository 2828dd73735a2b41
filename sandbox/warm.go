package sandbox

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/nhs-tre/tre/internal/ctxtime"
	"github.com/nhs-tre/tre/queries"
)

// Warming (issue 24): a job's child starts with DuckDB's buffer pool empty,
// so its first pass over the snapshot copies every block it reads from the
// page cache, where a long-lived connection's second query finds them in
// memory. A pooled child waits idle for its job anyway, so it spends the
// wait reading the snapshot's tables once (warm), smallest first, within
// a memory budget the host gives it (childConfig.WarmBytes, a share of the
// pool's idle-memory cap). Nothing is returned or written but the marker
// file that tells the host the child is ready; the reads are the child's
// own fixed statements, run before the job's lock-down, and a job that
// arrives mid-warm interrupts them (server.open) rather than wait.
//
// Blocks are half of what a first query pays; the other half is memory for
// its hash tables, which a fresh process obtains from the kernel a page
// (a fault and a zeroed page) at a time and a long-lived one reuses from
// its allocator. So warming ends with a join (warmJoin) whose aggregate
// fills the rest of the budget, and the pooled child keeps the pages it
// frees: DuckDB's allocator, jemalloc, would return them to the kernel
// within about a second (its decay, duckdbDecayMS), so the host starts a
// pooled child with decay off (jeConfEnv, read before DuckDB's first
// allocation), and the child sets DuckDB's own decay back when its job
// comes (server.open), before any of the job's SQL: the job frees and
// returns memory exactly as in a fresh child, having started with the
// warm pages in hand.

// warmMarker is the file, in the job directory, a pooled child creates when
// it has finished warming (or stopped within its budget).
const warmMarker = "warm"

// warm reads every base table of the opened data once, smallest first,
// skipping a table whose estimated size would take DuckDB's memory past
// budget, then runs warmJoin within what is left of it. It stops without
// error when ctx is cancelled.
func (l *lockedDB) warm(ctx context.Context, budget int64) error {
	tables, err := warmTables(ctx, l.conn)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	var readRows, used int64
	for _, t := range tables {
		if used, err = duckdbMemory(ctx, l.conn); err != nil {
			break
		}
		// Bytes per row so far estimate the next table; the first is
		// read unless memory is already at the budget.
		if used >= budget || (readRows > 0 && used+t.rows*used/readRows > budget) {
			continue
		}
		// COLUMNS(*) expands to one aggregate per column, so DuckDB
		// reads every column's blocks; nothing it computes leaves here.
		q := "SELECT bit_xor(hash(COLUMNS(*))) FROM " + t.ref()
		if _, err = l.conn.ExecContext(ctx, q); err != nil {
			break
		}
		readRows += t.rows
	}
	if err == nil {
		// The join's hash table gets what the tables left of the budget.
		if used, err = duckdbMemory(ctx, l.conn); err == nil {
			_, err = l.warmJoin(ctx, (budget-used)/warmJoinRowBytes)
		}
	}
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// warmJoin runs once the shape most jobs have, on the data's largest
// table: joined to the table keyed by one of its columns (the patients
// table, keyed by the privacy unit: lockedDB.keys) and aggregated, at most
// rows of it, by key and pair of rows (about one group per two rows where
// a patient's rows are stored together: 8.8M groups from the 16.5M rows of
// tre synth's medications at 1M patients; at most one per row), so that
// its hash table takes at most about rows × warmJoinRowBytes. It returns
// the number of groups.
func (l *lockedDB) warmJoin(ctx context.Context, rows int64) (int64, error) {
	if rows <= 0 {
		return 0, nil
	}
	for _, k := range l.keys {
		var big warmTable
		err := l.conn.QueryRowContext(ctx, `SELECT t.schema_name, t.table_name FROM duckdb_columns() c JOIN duckdb_tables() t
			ON t.database_name = c.database_name AND t.schema_name = c.schema_name AND t.table_name = c.table_name
			WHERE t.database_name = current_database() AND t.schema_name = current_schema() AND NOT t.temporary
			AND lower(c.column_name) = ? AND t.table_name <> ?
			ORDER BY t.estimated_size DESC, t.table_name LIMIT 1`, k.Column, k.Table).Scan(&big.schema, &big.name)
		if errors.Is(err, sql.ErrNoRows) {
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("warm: join: %w", err)
		}
		key := queries.QuoteIdent(k.Column)
		q := fmt.Sprintf("SELECT count(*) FROM (SELECT e.%s, e.rowid // 2, count(*) FROM %s e JOIN %s.%s p ON p.%s = e.%s WHERE e.rowid < %d GROUP BY e.%s, e.rowid // 2)",
			key, big.ref(), queries.QuoteIdent(big.schema), queries.QuoteIdent(k.Table), key, key, rows, key)
		var groups int64
		if err := l.conn.QueryRowContext(ctx, q).Scan(&groups); err != nil {
			return 0, fmt.Errorf("warm: join: %w", err)
		}
		return groups, nil
	}
	return 0, nil
}

// warmJoinRowBytes bounds what one input row of the warm join takes in its
// aggregate's hash table, on the high side: at 1M patients all 16.5M rows
// of the largest table took the largest pooled child's peak from 467 to
// 626 MiB, ~10 bytes a row, over a join grouped by patient alone.
const warmJoinRowBytes = 48

type warmTable struct {
	schema, name string
	rows         int64
}

func (t warmTable) ref() string {
	return queries.QuoteIdent(t.schema) + "." + queries.QuoteIdent(t.name)
}

func warmTables(ctx context.Context, conn *sql.Conn) ([]warmTable, error) {
	rows, err := conn.QueryContext(ctx, "SELECT schema_name, table_name, estimated_size FROM duckdb_tables() WHERE NOT temporary AND database_name = current_database() ORDER BY estimated_size, schema_name, table_name")
	if err != nil {
		return nil, fmt.Errorf("warm: list tables: %w", err)
	}
	defer rows.Close()
	var ts []warmTable
	for rows.Next() {
		var t warmTable
		if err := rows.Scan(&t.schema, &t.name, &t.rows); err != nil {
			return nil, fmt.Errorf("warm: list tables: %w", err)
		}
		ts = append(ts, t)
	}
	return ts, rows.Err()
}

// duckdbMemory is the memory DuckDB's buffer manager holds, in bytes.
func duckdbMemory(ctx context.Context, conn *sql.Conn) (int64, error) {
	var n int64
	err := conn.QueryRowContext(ctx, "SELECT coalesce(sum(memory_usage_bytes), 0)::BIGINT FROM duckdb_memory()").Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("warm: memory: %w", err)
	}
	return n, nil
}

// warmBudget is the DuckDB memory a pooled child may fill while it waits:
// an equal share of the pool's idle-memory cap, less what a child holds
// before it reads anything, and at most half the job's own memory limit
// (the job may evict the blocks, but need not start by doing so).
func warmBudget(cfg Config) int64 {
	if cfg.PoolSize <= 0 {
		return 0
	}
	const baseline = 128 << 20
	return max(0, min(cfg.PoolMaxIdleBytes/int64(cfg.PoolSize)-baseline, cfg.MemoryLimit/2))
}

// warmed reports whether a pooled child has finished warming, or never
// will (it was given no budget, or it exited).
func (c *child) warmed() bool {
	if c.warmBytes == 0 || c.pc.Exited() {
		return true
	}
	_, err := os.Stat(filepath.Join(c.jobDir, warmMarker))
	return err == nil
}

// waitWarm waits until every idle pooled child has finished warming.
func (r *Runner) waitWarm(ctx context.Context) error {
	for {
		r.poolMu.Lock()
		all := true
		for _, c := range r.pool.idle {
			all = all && c.warmed()
		}
		r.poolMu.Unlock()
		if all {
			return nil
		}
		if err := ctxtime.Sleep(ctx, 10*time.Millisecond); err != nil {
			return err
		}
	}
}
