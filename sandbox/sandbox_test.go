package sandbox

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/nhs-tre/tre/job"
)

// expectedLayers are the layers this machine supports (root in a container
// with user namespaces, seccomp and Landlock ABI ≥ 1). The tests assert they
// are all applied; a machine without one of them fails here, on purpose.
func TestLayersApplied(t *testing.T) {
	t.Run("new child", func(t *testing.T) { testLayersApplied(t, 0) })
	// A pooled child, started before the job came, is hardened before it
	// joins the pool: the job's probes find every layer in place.
	t.Run("pooled child", func(t *testing.T) { testLayersApplied(t, 1) })
}

func testLayersApplied(t *testing.T, poolSize int) {
	data := MustFixture(t, 50)
	cfg := testConfig(t, data)
	cfg.PoolSize = poolSize
	r := MustRunner(t, cfg)
	if poolSize > 0 {
		if err := r.Prepare(context.Background()); err != nil {
			t.Fatal(err)
		}
		if n := r.waitPoolSettled(t); n != poolSize {
			t.Fatalf("%d idle children, want %d", n, poolSize)
		}
	}
	resp, host, err := r.callJob(context.Background(), &request{Job: job.Job{SQL: "SELECT 1", SQLHash: hashSQL("SELECT 1")}, Catalog: r.cfg.Catalog, Probe: true})
	if err != nil {
		t.Fatal(err)
	}
	if got := len(r.takenFromPool()); got != poolSize {
		t.Fatalf("%d children taken from the pool, want %d", got, poolSize)
	}
	rep := r.sandboxReport(resp.Layers, host)
	if rep.Degraded || len(rep.Missing) > 0 {
		t.Errorf("sandbox degraded: missing %v", rep.Missing)
	}
	want := requiredLayers()
	slices.Sort(want)
	if diff := cmp.Diff(want, rep.Layers); diff != "" {
		t.Errorf("layers (-want +got):\n%s", diff)
	}
	got := map[string]probeOutcome{}
	for _, p := range resp.Probes {
		got[p.Name] = p
	}
	tests := []struct {
		name    string
		blocked bool
	}{
		{"socket_tcp", true},
		{"socket_udp6", true},
		{"socket_unix_after_start", true},
		{"exec_true", true},
		{"open_etc_passwd_write", true},
		{"read_etc_hostname", true},
		{"write_beside_data", true},
		{"write_data_file", true},
		{"ptrace_traceme", true},
		{"mount_tmpfs", true},
		{"unshare_net", true},
		{"io_uring_setup", true},
		{"control_write_job_dir", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, ok := got[tt.name]
			if !ok {
				t.Fatal("probe did not run")
			}
			if p.Blocked != tt.blocked {
				t.Errorf("blocked = %v (%s), want %v", p.Blocked, p.Errno, tt.blocked)
			}
		})
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(data), "exfil.txt")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("file written beside the data: %v", err)
	}
}

func TestProductionChildRefusesHooks(t *testing.T) {
	// A server without hooks (what `tre __sandbox` runs) must refuse raw
	// and probe requests before touching the data.
	s := &server{cc: &childConfig{}}
	for _, req := range []string{`{"raw":true}`, `{"probe":true}`} {
		_, _, err := s.handle(context.Background(), []byte(req))
		if job.Code(err) != job.CodeRefused {
			t.Errorf("%s: code %q, want refused", req, job.Code(err))
		}
	}
}

func TestHashMismatchRefused(t *testing.T) {
	r := MustRunner(t, testConfig(t, MustFixture(t, 20)))
	j := rawJob(newJob("SELECT 1"))
	j.SQLHash = hashSQL("SELECT 2")
	_, err := r.run(context.Background(), j)
	if job.Code(err) != job.CodeInvalid {
		t.Fatalf("err = %v, want invalid", err)
	}
}

// runRawSQL sends SQL past the compiler to the locked-down child.
func runRawSQL(t *testing.T, r *Runner, sql string) (*rawOutcome, error) {
	t.Helper()
	resp, _, err := r.callJob(context.Background(), &request{Job: job.Job{SQL: sql, SQLHash: hashSQL(sql)}, Catalog: r.cfg.Catalog, Raw: true})
	if err != nil {
		return nil, err
	}
	return resp.Raw, nil
}

func TestTimeoutKillsAndNextJobRuns(t *testing.T) {
	cfg := testConfig(t, MustFixture(t, 20))
	cfg.Timeout = 1 * time.Second
	cfg.KillGrace = 1 * time.Second
	r := MustRunner(t, cfg)
	start := time.Now()
	_, err := runRawSQL(t, r, "SELECT count(*) FROM range(1000000000000) a(i), range(1000000) b(j) WHERE i*j % 7 = 3")
	t.Logf("timeout after %v (limit %v + grace %v)", time.Since(start), cfg.Timeout, cfg.KillGrace)
	if job.Code(err) != job.CodeTimeout {
		t.Fatalf("err = %v, want timeout", err)
	}
	out, err := runRawSQL(t, r, "SELECT count(*) FROM patients")
	if err != nil || out.Rows != 1 {
		t.Fatalf("next job: %+v, %v", out, err)
	}
}

func TestMemoryLimit(t *testing.T) {
	tests := []struct {
		name string
		mod  func(*Config)
		sql  string
	}{
		// DuckDB's own memory_limit stops a large aggregate.
		{"duckdb_memory_limit", func(c *Config) { c.MemoryLimit = 32 << 20 },
			"SELECT len(l) FROM (SELECT list(i) AS l FROM range(50000000) t(i))"},
		// The host's RSS watchdog kills what DuckDB does not account for.
		{"rss_watchdog", func(c *Config) { c.MemoryLimit = 4 << 30; c.RSSLimit = 300 << 20 },
			"SELECT sum(length(s)) FROM (SELECT string_agg(CAST(i AS VARCHAR), ',') AS s FROM range(200000000) t(i))"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig(t, MustFixture(t, 20))
			tt.mod(&cfg)
			r := MustRunner(t, cfg)
			_, err := runRawSQL(t, r, tt.sql)
			if job.Code(err) != job.CodeMemory {
				t.Fatalf("err = %v, want memory", err)
			}
			out, err := runRawSQL(t, r, "SELECT count(*) FROM patients")
			if err != nil || out.Rows != 1 {
				t.Fatalf("next job: %+v, %v", out, err)
			}
		})
	}
}

// TestDuckDBMemoryLimitLeavesReserve: the child's DuckDB gets the job's
// memory limit less a reserve for what its buffer manager does not count
// (issue 24: at 10M patients a child whose DuckDB had the whole 2 GiB held
// up to 3.06 GiB, and the watchdog at 2.5 GiB killed queries DuckDB could
// have finished by spilling). The child reads the setting back itself
// (verifySettings); here the query sees it.
func TestDuckDBMemoryLimitLeavesReserve(t *testing.T) {
	for _, tt := range []struct{ limit, want int64 }{
		{16 << 20, 12 << 20},
		{256 << 20, 192 << 20},
		{1 << 30, 1<<30 - 256<<20},
		{2 << 30, 2<<30 - 384<<20},
		{8 << 30, 8<<30 - 384<<20},
	} {
		if got := DuckDBMemoryLimit(tt.limit); got != tt.want {
			t.Errorf("DuckDBMemoryLimit(%d) = %d, want %d", tt.limit, got, tt.want)
		}
	}
	cfg := testConfig(t, MustFixture(t, 20))
	cfg.MemoryLimit = 256 << 20
	r := MustRunner(t, cfg)
	for _, q := range []string{
		"SELECT 1 FROM duckdb_settings() WHERE name = 'memory_limit' AND value = '192.0 MiB'",
		"SELECT 1 FROM duckdb_settings() WHERE name = 'allocator_background_threads' AND value = 'true'",
	} {
		out, err := runRawSQL(t, r, q)
		if err != nil || out.Rows != 1 {
			t.Errorf("%s: %+v, %v", q, out, err)
		}
	}
}

func TestTooLarge(t *testing.T) {
	cfg := testConfig(t, MustFixture(t, 20))
	cfg.MaxRows = 100
	r := MustRunner(t, cfg)
	_, err := runRawSQL(t, r, "SELECT i FROM range(1000) t(i)")
	if job.Code(err) != job.CodeTooLarge {
		t.Fatalf("err = %v, want too_large", err)
	}
}

func TestErrorNeverCarriesData(t *testing.T) {
	r := MustRunner(t, testConfig(t, MustFixture(t, 50)))
	// The cast error message would quote the practice id.
	_, err := runRawSQL(t, r, "SELECT CAST(practice_id AS INTEGER) FROM patients")
	if err == nil {
		t.Fatal("cast of text to integer succeeded")
	}
	if strings.Contains(err.Error(), "SECRET") {
		t.Fatalf("data value leaked into error: %v", err)
	}
	if job.Code(err) != job.CodeRefused {
		t.Fatalf("code = %q, want refused", job.Code(err))
	}
}

// TestUnopenableDataUnavailable: a data file DuckDB cannot open is the
// site's problem, reported as unavailable, never as a refused query.
// NewRunner refuses such a file at start-up (datafile_test.go); here it is
// replaced after the runner started.
func TestUnopenableDataUnavailable(t *testing.T) {
	data := MustFixture(t, 20)
	r := MustRunner(t, testConfig(t, data))
	if err := os.WriteFile(data, []byte("not a DuckDB file, but the site's mistake"), 0o600); err != nil {
		t.Fatal(err)
	}
	sql := "SELECT count(*) AS n FROM patients"
	_, err := r.Run(context.Background(), newJob(sql))
	if job.Code(err) != job.CodeUnavailable {
		t.Fatalf("err = %v (code %q), want unavailable", err, job.Code(err))
	}
	if strings.Contains(err.Error(), "DuckDB") || strings.Contains(err.Error(), "not a DuckDB file") {
		t.Errorf("error echoes the database's text: %v", err)
	}
}

// Each child reports its peak resident size once, read before it is
// killed: the release snapshot's builder, which the first job waits for,
// and each job's. The peak is the child's own: this test process first
// touches 512 MiB, which wait4's ru_maxrss would hand on to every child
// started after it (vfork carries the parent's high-water mark into exec).
func TestObserveChildPeak(t *testing.T) {
	ballast := make([]byte, 512<<20)
	for i := 0; i < len(ballast); i += 4096 {
		ballast[i] = 1
	}
	cfg := testConfig(t, MustFixture(t, 50))
	type report struct {
		peak    int64
		builder bool
	}
	var got []report
	cfg.ObserveChildPeak = func(peak int64, builder bool) { got = append(got, report{peak, builder}) }
	r := MustRunner(t, cfg)
	for range 2 {
		if _, err := r.Run(context.Background(), newJob("SELECT sex, count(*) AS n FROM patients GROUP BY sex")); err != nil {
			t.Fatal(err)
		}
	}
	runtime.KeepAlive(ballast)
	if len(got) != 3 || !got[0].builder || got[1].builder || got[2].builder {
		t.Fatalf("reports %+v, want the builder's and then one for each of the 2 jobs", got)
	}
	for _, g := range got {
		// A Go process with DuckDB open holds tens of MiB; 50 patients'
		// data is far below the ballast.
		if g.peak < 16<<20 || g.peak >= int64(len(ballast)) {
			t.Errorf("peak %d bytes, want between 16 MiB and the host's 512 MiB", g.peak)
		}
	}
}

func TestStatusBytes(t *testing.T) {
	status := []byte("Name:\ttre\nVmPeak:\t 2000000 kB\nVmHWM:\t  1048576 kB\nVmRSS:\t   524288 kB\n")
	for field, want := range map[string]int64{"VmHWM": 1 << 30, "VmRSS": 512 << 20} {
		if got, err := statusBytes(status, field); err != nil || got != want {
			t.Errorf("%s: %d, %v; want %d", field, got, err, want)
		}
	}
	if _, err := statusBytes(status, "VmSwap"); err == nil {
		t.Error("a missing field gave no error")
	}
}
