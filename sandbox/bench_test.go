package sandbox

import (
	"context"
	"database/sql"
	"syscall"
	"testing"
	"time"

	"github.com/nhs-tre/tre/job"
)

// BenchmarkSandboxStart measures spawn + re-exec + hardening + handshake +
// DuckDB open + lock-down + a trivial query, per job.
func BenchmarkSandboxStart(b *testing.B) {
	r := MustRunner(b, testConfig(b, MustFixture(b, 100)))
	req := &request{Job: job.Job{SQL: "SELECT 1", SQLHash: hashSQL("SELECT 1")}, Catalog: r.cfg.Catalog, Raw: true}
	cpu := cpuTime()
	for b.Loop() {
		if _, _, err := r.callJob(context.Background(), req); err != nil {
			b.Fatal(err)
		}
	}
	r.Close() // the last children are reaped in the background
	reportCPU(b, cpu)
}

// cpuTime is the CPU time of this process and its reaped children (a
// sandbox child is reaped in the background after its job; Runner.Close
// waits for that).
func cpuTime() time.Duration {
	var self, kids syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &self)
	syscall.Getrusage(syscall.RUSAGE_CHILDREN, &kids)
	tv := func(t syscall.Timeval) time.Duration { return time.Duration(t.Nano()) }
	return tv(self.Utime) + tv(self.Stime) + tv(kids.Utime) + tv(kids.Stime)
}

// reportCPU reports the CPU time, host and children, per iteration since
// start: robust to the load others put on the machine, unlike ns/op.
func reportCPU(b *testing.B, start time.Duration) {
	b.ReportMetric(float64(cpuTime()-start)/float64(b.N)/1e6, "cpu-ms/op")
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
// hardening, open and lock-down, compile, the rewritten SQL, dp.Protect and
// the opt-out snapshot hash, over the 1,000-patient fixture ("fixture", 50
// opted out) and with as many distinct opted-out ids as the 10M-patient
// synthetic file ("574k"). One job runs before the timer, as the agent's
// steady state: the Runner has the file's opt-out hash by then.
func BenchmarkProtectedJob(b *testing.B) {
	for _, optouts := range []int{0, 574_000} {
		name := "fixture"
		if optouts > 0 {
			name = itoa(optouts/1000) + "k"
		}
		data := MustFixture(b, 1000)
		if optouts > 0 {
			db, err := sql.Open("duckdb", data)
			if err != nil {
				b.Fatal(err)
			}
			_, err = db.Exec("DELETE FROM optouts; INSERT INTO optouts SELECT DISTINCT 1000000000 + hash(i) % 9000000000, 'type1' FROM range(" + itoa(optouts) + ") t(i)")
			db.Close()
			if err != nil {
				b.Fatal(err)
			}
		}
		// A data file is cached only once it is a few seconds old (the
		// racy-file rule); real data files are.
		time.Sleep(3100 * time.Millisecond)
		r := MustRunner(b, testConfig(b, data))
		j := newJob("SELECT sex, count(*) AS n FROM patients GROUP BY sex")
		if _, err := r.Run(context.Background(), j); err != nil {
			b.Fatal(err)
		}
		b.Run(name, func(b *testing.B) {
			cpu := cpuTime()
			for b.Loop() {
				res, err := r.Run(context.Background(), j)
				if err != nil {
					b.Fatal(err)
				}
				if !res.Report.OptOut.Applied {
					b.Fatal("opt-out not applied")
				}
			}
			r.Close()
			reportCPU(b, cpu)
		})
	}
}
