// Package bench is the harness of `tre bench`: it measures the typical
// research queries raw (the researcher's SQL as-is on the site's file with
// DuckDB, the physical limit every protected run is compared with), through
// the protected pipeline in-process (warm) and in a fresh sandbox process
// (cold), and in PostgreSQL; sandbox start; broker API throughput under an
// in-process load generator; and synth. Run writes one Markdown report.
// cmd/tre parses the flags into a Config and starts the broker the API
// phases drive.
//
// bench opens data files with DuckDB itself (only sandbox, synth, bench and
// the queries parser may link the driver), and it must never be used to
// answer a researcher: its raw mode runs unprotected SQL. It therefore
// returns only row counts and timings, never a value read from the data,
// and its warm pipeline returns only the number of released rows, not the
// protected table.
package bench

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"time"

	_ "github.com/duckdb/duckdb-go/v2" // registers the "duckdb" driver

	"github.com/nhs-tre/tre/dp"
	"github.com/nhs-tre/tre/queries"
	"github.com/nhs-tre/tre/sandbox"
)

// Options are the DuckDB settings of a benchmark connection. They should be
// the sandbox's (sandbox.Config Threads and MemoryLimit) so raw and protected
// runs get the same resources.
type Options struct {
	Threads     int
	MemoryLimit int64 // bytes; 0: DuckDB's default
}

// DB is one read-only DuckDB connection to a data file, kept open across
// repetitions so its buffer pool is warm, as a long-lived analyst session
// would be.
type DB struct {
	db   *sql.DB
	conn *sql.Conn
}

// Open opens path read-only with opts' threads and memory limit.
func Open(ctx context.Context, path string, opts Options) (*DB, error) {
	if strings.ContainsAny(path, "?#") {
		return nil, errors.New("bench: data path must not contain ? or #")
	}
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("bench: data file: %w", err)
	}
	if opts.Threads < 1 {
		return nil, fmt.Errorf("bench: threads must be at least 1, got %d", opts.Threads)
	}
	dsn := fmt.Sprintf("%s?access_mode=READ_ONLY&threads=%d", path, opts.Threads)
	if opts.MemoryLimit > 0 {
		dsn += fmt.Sprintf("&memory_limit=%dB", opts.MemoryLimit)
	}
	db, err := sql.Open("duckdb", dsn)
	if err != nil {
		return nil, fmt.Errorf("bench: open %s: %w", path, err)
	}
	db.SetMaxOpenConns(1)
	conn, err := db.Conn(ctx)
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("bench: open %s: %w", path, err)
	}
	return &DB{db: db, conn: conn}, nil
}

// Close closes the connection and the database.
func (d *DB) Close() error { return errors.Join(d.conn.Close(), d.db.Close()) }

// Raw runs query as written and reads every row, returning how many there
// were. The values are scanned into throwaway buffers and never returned.
func (d *DB) Raw(ctx context.Context, query string) (int, error) {
	rows, err := d.conn.QueryContext(ctx, query)
	if err != nil {
		return 0, err
	}
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		return 0, err
	}
	dest := make([]any, len(cols))
	for i := range dest {
		dest[i] = new(any)
	}
	n := 0
	for rows.Next() {
		if err := rows.Scan(dest...); err != nil {
			return 0, err
		}
		n++
	}
	return n, rows.Err()
}

// ExplainAnalyze runs EXPLAIN ANALYZE on query and returns DuckDB's profile
// text (operator timings and cardinalities), for finding where time goes.
func (d *DB) ExplainAnalyze(ctx context.Context, query string) (string, error) {
	rows, err := d.conn.QueryContext(ctx, "EXPLAIN ANALYZE "+query)
	if err != nil {
		return "", err
	}
	defer rows.Close()
	var b strings.Builder
	for rows.Next() {
		var kind, plan sql.NullString
		if err := rows.Scan(&kind, &plan); err != nil {
			return "", err
		}
		b.WriteString(plan.String)
		b.WriteByte('\n')
	}
	return b.String(), rows.Err()
}

// Pipeline is the protected pipeline without the sandbox process: the same
// steps the sandbox child takes for a job (compile with a fresh parser, run
// the rewritten SQL over the views of the release snapshot, scan the
// statistics, dp.Protect) on a connection to the release snapshot that is
// already open with the views created. Process start, OS hardening, the
// plugin handshake and opening the file are what a cold run adds.
type Pipeline struct {
	db  *DB
	cat *queries.Catalog
	// snapshot is the release snapshot's file, removed on Close.
	snapshot string
}

// OpenPipeline writes the release snapshot of the data file at path into
// dir, as the sandbox's builder child does (sandbox.WriteSnapshot), opens
// it read-only and creates the catalog's views on the connection.
func OpenPipeline(ctx context.Context, path string, cat *queries.Catalog, opts Options, dir string) (*Pipeline, error) {
	src, err := Open(ctx, path, opts)
	if err != nil {
		return nil, err
	}
	snap := filepath.Join(dir, "release-bench.duckdb")
	_, err = sandbox.WriteSnapshot(ctx, src.conn, cat, snap)
	src.Close()
	if err != nil {
		os.Remove(snap)
		return nil, fmt.Errorf("bench: release snapshot: %w", err)
	}
	db, err := Open(ctx, snap, opts)
	if err != nil {
		os.Remove(snap)
		return nil, err
	}
	for _, s := range queries.ViewStatements(cat) {
		if _, err := db.conn.ExecContext(ctx, s); err != nil {
			db.Close()
			os.Remove(snap)
			return nil, fmt.Errorf("bench: create views: %w", err)
		}
	}
	return &Pipeline{db: db, cat: cat, snapshot: snap}, nil
}

// Close closes the pipeline's connection and removes its snapshot.
func (p *Pipeline) Close() error {
	err := p.db.Close()
	os.Remove(p.snapshot)
	return err
}

// DB is the pipeline's connection (views created), e.g. to EXPLAIN ANALYZE a
// rewritten query.
func (p *Pipeline) DB() *DB { return p.db }

// Plan compiles sqlText against the pipeline's catalog as the sandbox child
// does, for inspecting the rewritten SQL (e.g. with ExplainAnalyze on DB()).
func (p *Pipeline) Plan(ctx context.Context, sqlText string) (*queries.Plan, error) {
	return p.compile(ctx, sqlText, queries.Options{})
}

// compile is the child's compile step: a parser on the pipeline's own
// connection and the tables the data enforces unique per patient.
func (p *Pipeline) compile(ctx context.Context, sqlText string, opts queries.Options) (*queries.Plan, error) {
	unique, err := sandbox.UniqueTables(ctx, p.db.conn, p.cat)
	if err != nil {
		return nil, err
	}
	opts.UniqueTables = unique
	parser, err := queries.NewParserConn(ctx, p.db.conn)
	if err != nil {
		return nil, err
	}
	defer parser.Close()
	return parser.Compile(ctx, p.cat, sqlText, opts)
}

// Timing is where one warm run spent its time.
type Timing struct {
	Compile time.Duration // constraints, parser, validate, rewrite
	Execute time.Duration // rewritten SQL, rows scanned into statistics
	Protect time.Duration // dp.Protect
	Groups  int           // groups the rewritten SQL returned that may be released (dp.Selector)
	Rows    int           // rows of the protected table
}

// Total is the whole warm run.
func (t Timing) Total() time.Duration { return t.Compile + t.Execute + t.Protect }

// Run compiles and runs sql through the protected pipeline.
func (p *Pipeline) Run(ctx context.Context, sqlText string, epsilon float64) (Timing, error) {
	var t Timing
	var seed [8]byte
	if _, err := rand.Read(seed[:]); err != nil {
		return t, err
	}
	start := time.Now()
	plan, err := p.compile(ctx, sqlText, queries.Options{Epsilon: epsilon, Seed: binary.LittleEndian.Uint64(seed[:])})
	if err != nil {
		return t, err
	}
	t.Compile = time.Since(start)

	start = time.Now()
	groups, dropped, sel, err := p.scan(ctx, plan)
	if err != nil {
		return t, err
	}
	t.Execute = time.Since(start)
	t.Groups = len(groups)

	start = time.Now()
	res, err := dp.Protect(plan.Spec, groups, dp.Options{DroppedRows: dropped, Selected: sel})
	if err != nil {
		return t, fmt.Errorf("protect: %w", err)
	}
	t.Protect = time.Since(start)
	t.Rows = len(res.Rows)

	return t, nil
}

// scan runs plan.Rewritten and reads its rows (layout on queries.Plan) into
// group statistics, as the sandbox child does.
func (p *Pipeline) scan(ctx context.Context, plan *queries.Plan) ([]dp.GroupStats, int64, *dp.Selector, error) {
	rows, err := p.db.conn.QueryContext(ctx, plan.Rewritten)
	if err != nil {
		return nil, 0, nil, err
	}
	defer rows.Close()
	return sandbox.ScanGroups(rows, plan, math.MaxInt)
}

// Column is one column of a data table, with DuckDB's type name.
type Column struct {
	Name string
	Type string
}

// Table is one base table of a data file.
type Table struct {
	Name    string
	Columns []Column
	Rows    int64
}

// Tables lists the base tables of the open file with their columns and row
// counts (schema only; no value leaves).
func (d *DB) Tables(ctx context.Context) ([]Table, error) {
	rows, err := d.conn.QueryContext(ctx, `SELECT table_name, column_name, data_type FROM information_schema.columns
WHERE table_schema = 'main' AND table_catalog = current_database() ORDER BY table_name, ordinal_position`)
	if err != nil {
		return nil, err
	}
	var tables []Table
	for rows.Next() {
		var tn, cn, ty string
		if err := rows.Scan(&tn, &cn, &ty); err != nil {
			rows.Close()
			return nil, err
		}
		if len(tables) == 0 || tables[len(tables)-1].Name != tn {
			tables = append(tables, Table{Name: tn})
		}
		t := &tables[len(tables)-1]
		t.Columns = append(t.Columns, Column{Name: cn, Type: ty})
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	for i := range tables {
		if err := d.conn.QueryRowContext(ctx, "SELECT count(*) FROM "+queries.QuoteIdent(tables[i].Name)).Scan(&tables[i].Rows); err != nil {
			return nil, err
		}
	}
	return tables, nil
}

// ExportCSV writes every row of each table to dir/<table>.csv (with a
// header, NULL as an empty field) and returns the file paths by table. It
// opens its own connection because the benchmark's read-only one is kept
// free of file access.
func ExportCSV(ctx context.Context, path string, tables []string, dir string, opts Options) (map[string]string, error) {
	d, err := Open(ctx, path, opts)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	out := map[string]string{}
	for _, t := range tables {
		f := filepath.Join(dir, t+".csv")
		q := fmt.Sprintf("COPY %s TO %s (FORMAT csv, HEADER true, DATEFORMAT '%%Y-%%m-%%d')", queries.QuoteIdent(t), quoteLiteral(f))
		if _, err := d.conn.ExecContext(ctx, q); err != nil {
			return nil, fmt.Errorf("bench: export %s: %w", t, err)
		}
		out[t] = f
	}
	return out, nil
}

func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }
