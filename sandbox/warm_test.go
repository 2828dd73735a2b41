package sandbox

import (
	"context"
	"database/sql"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/nhs-tre/tre/dp"
)

// TestWarmFillsBufferPool warms an opened data file in process: within a
// budget it reads tables into DuckDB's memory, with no budget it reads
// none, and after either (or an interrupted warm) the job's lock-down and
// a query still work on the same connection.
func TestWarmFillsBufferPool(t *testing.T) {
	cfg := testConfig(t, MustFixture(t, 2000))
	views, err := viewStatements(cfg.Catalog)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	for _, tc := range []struct {
		name   string
		ctx    context.Context
		budget int64
		grows  bool
	}{
		{"budget", ctx, 1 << 30, true},
		{"no budget", ctx, 1, false},
		{"interrupted", cancelled, 1 << 30, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cc := &childConfig{DataPath: cfg.DataPath, JobDir: t.TempDir(), MemoryLimit: cfg.MemoryLimit, Threads: cfg.Threads, MaxExpressionDepth: 250, TempDirMaxSize: 1 << 30}
			ldb, err := openData(ctx, cc)
			if err != nil {
				t.Fatal(err)
			}
			defer ldb.Close()
			before, err := duckdbMemory(ctx, ldb.conn)
			if err != nil {
				t.Fatal(err)
			}
			if err := ldb.warm(tc.ctx, tc.budget); err != nil {
				t.Fatalf("warm: %v", err)
			}
			after, err := duckdbMemory(ctx, ldb.conn)
			if err != nil {
				t.Fatal(err)
			}
			if grew := after > before; grew != tc.grows {
				t.Errorf("DuckDB memory %d → %d bytes; want growth %v", before, after, tc.grows)
			}
			if err := ldb.lockDown(ctx, cc, views); err != nil {
				t.Fatalf("lock down after warm: %v", err)
			}
			var n int
			if err := ldb.conn.QueryRowContext(ctx, "SELECT count(*) FROM patients").Scan(&n); err != nil || n == 0 {
				t.Fatalf("query after warm: %d, %v", n, err)
			}
		})
	}
}

// TestPooledChildWarms: a pooled child reads the snapshot before its job
// (PoolReady waits for its marker), and its answer is the answer of a
// child started for the job, under the same fixed noise.
func TestPooledChildWarms(t *testing.T) {
	data := MustFixture(t, 500)
	cold := MustRunner(t, testConfig(t, data))
	cfg := testConfig(t, data)
	cfg.PoolSize = 1
	cfg.PoolMaxIdleBytes = 1 << 30
	pooled := MustRunner(t, cfg)
	ctx := context.Background()
	for _, r := range []*Runner{cold, pooled} {
		if err := r.Prepare(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if warmBudget(pooled.cfg) <= 0 {
		t.Fatalf("no warm budget for a pool of one under a 1 GiB cap")
	}
	if warmBudget(cold.cfg) != 0 {
		t.Fatalf("a runner without a pool warms")
	}
	const q = "SELECT p.sex, count(*) AS n, avg(e.numeric_value) AS value FROM patients p JOIN clinical_events e ON e.patient_id = p.patient_id GROUP BY p.sex"
	var results []*dp.Result
	for _, r := range []*Runner{cold, pooled} {
		if r == pooled {
			if n := r.waitPoolSettled(t); n != 1 {
				t.Fatalf("%d idle children, want 1", n)
			}
			r.poolMu.Lock()
			c := r.pool.idle[0]
			r.poolMu.Unlock()
			if marker, err := os.ReadFile(filepath.Join(c.jobDir, warmMarker)); err != nil || string(marker) != "ok\n" {
				t.Fatalf("the idle pooled child's warm marker: %q, %v; want ok", marker, err)
			}
		}
		res, err := r.run(ctx, noiseJob(newJob(q), 0.25))
		if err != nil {
			t.Fatal(err)
		}
		results = append(results, res)
	}
	if len(pooled.takenFromPool()) != 1 {
		t.Fatal("the job did not run on the pooled child")
	}
	ignore := cmpopts.IgnoreFields(dp.Report{}, "Sandbox")
	if d := cmp.Diff(results[0], results[1], ignore); d != "" {
		t.Errorf("pooled (warmed) answer differs from a fresh child's (-fresh +pooled):\n%s", d)
	}
}

// TestWarmJoinBounded: the warm join aggregates at most the rows it is
// given (at most a group each), all of the largest table's when they fit,
// and runs nothing when nothing is left of the budget.
func TestWarmJoinBounded(t *testing.T) {
	data := MustFixture(t, 2000)
	// With the key declared, the release snapshot names it (lockedDB.keys).
	db, err := sql.Open("duckdb", data)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec("ALTER TABLE patients ADD PRIMARY KEY (patient_id)"); err != nil {
		t.Fatal(err)
	}
	db.Close()
	cfg := testConfig(t, data)
	ctx := context.Background()
	cc := &childConfig{DataPath: mustSnapshotFile(t, cfg.DataPath, cfg.Catalog), JobDir: t.TempDir(), MemoryLimit: cfg.MemoryLimit, Threads: cfg.Threads, MaxExpressionDepth: 250, TempDirMaxSize: 1 << 30}
	ldb, err := openData(ctx, cc)
	if err != nil {
		t.Fatal(err)
	}
	defer ldb.Close()
	all, err := ldb.warmJoin(ctx, 1<<40)
	if err != nil {
		t.Fatal(err)
	}
	if all < 100 {
		t.Fatalf("unbounded warm join made %d groups; the fixture should give hundreds", all)
	}
	for _, rows := range []int64{0, -5, 1, 10, 101} {
		got, err := ldb.warmJoin(ctx, rows)
		if err != nil {
			t.Fatal(err)
		}
		if want := max(0, rows); got > want || (rows > 0 && got == 0) {
			t.Errorf("warmJoin(%d rows) made %d groups, want 1..%d", rows, got, want)
		}
	}
}
