package sandbox

import (
	"context"
	"testing"
)

// BenchmarkSandboxStart measures spawn + re-exec + hardening + handshake +
// DuckDB open + lock-down + a trivial query, per job.
func BenchmarkSandboxStart(b *testing.B) {
	r := MustRunner(b, testConfig(b, MustFixture(b, 100)))
	req := &request{QueryID: "b", SQL: "SELECT 1", SQLHash: hashSQL("SELECT 1"), Catalog: r.cfg.Catalog, Raw: true}
	for b.Loop() {
		if _, _, err := r.call(context.Background(), req); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkInProcessQuery is the same open + lock-down + query without the
// process boundary, for the overhead comparison.
func BenchmarkInProcessQuery(b *testing.B) {
	cfg := testConfig(b, MustFixture(b, 100))
	cc := &childConfig{DataPath: cfg.DataPath, JobDir: b.TempDir(), MemoryLimit: cfg.MemoryLimit, Threads: cfg.Threads, MaxExpressionDepth: 250, TempDirMaxSize: 1 << 30}
	views, err := viewStatements(cfg.Catalog)
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		ldb, err := openLocked(context.Background(), cc, views)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := runRaw(context.Background(), ldb, "SELECT 1", 10); err != nil {
			b.Fatal(err)
		}
		ldb.Close()
	}
}

// BenchmarkProtectedJob is one protected job through a fresh child: start,
// hardening, open and lock-down, compile (parser start included), the
// rewritten SQL, dp.Protect and the opt-out snapshot hash.
func BenchmarkProtectedJob(b *testing.B) {
	r := MustRunner(b, testConfig(b, MustFixture(b, 1000)))
	j := job("SELECT sex, count(*) AS n FROM patients GROUP BY sex")
	for b.Loop() {
		res, err := r.Run(context.Background(), j)
		if err != nil {
			b.Fatal(err)
		}
		if !res.Report.OptOut.Applied {
			b.Fatal("opt-out not applied")
		}
	}
}
