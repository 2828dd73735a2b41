package sandbox

import (
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/nhs-tre/tre/job"
	"github.com/nhs-tre/tre/queries"
)

// inProcessServer is the child's job server in the test process, over the
// release snapshot of a fresh fixture. Its seccomp policy is marked loaded without being loaded:
// it would forbid this test process its own sockets.
func inProcessServer(t *testing.T) (*server, Config) {
	t.Helper()
	cfg := testConfig(t, MustFixture(t, 50))
	cfg.DataPath = mustSnapshotFile(t, cfg.DataPath, cfg.Catalog)
	cc := &childConfig{
		DataPath: cfg.DataPath, JobDir: t.TempDir(), MemoryLimit: cfg.MemoryLimit, Threads: cfg.Threads,
		MaxExpressionDepth: 250, TempDirMaxSize: 1 << 30, MaxRows: cfg.MaxRows, AllowWeak: true,
	}
	s := &server{cc: cc, log: slog.New(slog.DiscardHandler), opts: testServeOptions()}
	s.policyOnce.Do(func() {})
	return s, cfg
}

// The child sends its answer before it closes DuckDB (freeing the buffer
// pool is work the host need not wait for), and has closed it when run
// returns.
func TestResponseSentBeforeDataClosed(t *testing.T) {
	s, cfg := inProcessServer(t)
	j := newJob("SELECT sex, count(*) AS n FROM patients GROUP BY sex")
	in, err := json.Marshal(&request{Job: job.Job{SQL: j.SQL, SQLHash: j.SQLHash, Epsilon: j.Epsilon}, Catalog: cfg.Catalog})
	if err != nil {
		t.Fatal(err)
	}
	var buf []byte
	frames, openWhileSending := 0, 0
	err = s.run(context.Background(), in, func(f frame) error {
		frames++
		if _, err := findOpenedData(cfg.DataPath); err == nil {
			openWhileSending++
		}
		if f.Error != nil {
			t.Errorf("error frame: %s: %s", f.Error.Code, f.Error.Message)
		}
		buf = append(buf, f.Data...)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var resp response
	if err := json.Unmarshal(buf, &resp); err != nil || resp.Result == nil || len(resp.Result.Rows) == 0 {
		t.Fatalf("response %s: %v, want a protected result", buf, err)
	}
	if frames == 0 || openWhileSending != frames {
		t.Errorf("data open during %d of %d frames, want all", openWhileSending, frames)
	}
	if _, err := findOpenedData(cfg.DataPath); err == nil {
		t.Error("the data file is still open after run returned")
	}
}

// runInProcess runs one request through s.run and returns the response or
// the error frame's code.
func runInProcess(t *testing.T, s *server, req *request) (*response, string) {
	t.Helper()
	in, err := json.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	var buf []byte
	code := ""
	err = s.run(context.Background(), in, func(f frame) error {
		if f.Error != nil {
			code = f.Error.Code
		}
		buf = append(buf, f.Data...)
		return nil
	})
	if err != nil || code != "" {
		return nil, code
	}
	var resp response
	if err := json.Unmarshal(buf, &resp); err != nil {
		t.Fatal(err)
	}
	return &resp, ""
}

// The data opened while the handshake completes serves the first job, locked
// down like any other (the job's SQL cannot undo the settings); a second job
// in the same process, which the host never sends, opens its own.
func TestEarlyOpenServesFirstJobOnly(t *testing.T) {
	s, cfg := inProcessServer(t)
	s.openEarly()
	set := "SET enable_external_access = true"
	if _, code := runInProcess(t, s, &request{Job: job.Job{SQL: set, SQLHash: hashSQL(set)}, Catalog: cfg.Catalog, Raw: true}); code != job.CodeRefused {
		t.Errorf("%s on the early-opened data: code %q, want refused", set, code)
	}
	if s.early != nil {
		t.Error("the early-opened data is still offered after the first job")
	}
	q := "SELECT count(*) FROM patients"
	resp, code := runInProcess(t, s, &request{Job: job.Job{SQL: q, SQLHash: hashSQL(q)}, Catalog: cfg.Catalog, Raw: true})
	if code != "" || resp.Raw == nil || resp.Raw.Rows != 1 {
		t.Errorf("second job: %+v, code %q; want one row", resp, code)
	}
	if !slices.Contains(resp.Layers, LayerDuckDBLockdown) {
		t.Errorf("second job layers %v lack %s", resp.Layers, LayerDuckDBLockdown)
	}
}

// A child given the runner's views locks its data down before the job
// arrives, and a job of that catalog runs on that lock-down: the settings
// it locked cannot be undone, its views are there.
func TestEarlyLockDownServesSameCatalog(t *testing.T) {
	s, cfg := inProcessServer(t)
	views, err := viewStatements(cfg.Catalog)
	if err != nil {
		t.Fatal(err)
	}
	s.cc.Views = views
	s.openEarly()
	o := <-s.early
	if o.err != nil || !o.locked {
		t.Fatalf("early open: locked %v, error %v; want locked down before any job", o.locked, o.err)
	}
	s.early <- o
	set := "SET enable_external_access = true"
	if _, code := runInProcess(t, s, &request{Job: job.Job{SQL: set, SQLHash: hashSQL(set)}, Catalog: cfg.Catalog, Raw: true}); code != job.CodeRefused {
		t.Errorf("%s on the data locked down early: code %q, want refused", set, code)
	}
	s.openEarly()
	q := "SELECT count(*) FROM " + queries.ViewName("patients")
	if resp, code := runInProcess(t, s, &request{Job: job.Job{SQL: q, SQLHash: hashSQL(q)}, Catalog: cfg.Catalog, Raw: true}); code != "" || resp.Raw == nil || resp.Raw.Rows != 1 {
		t.Errorf("%s: %+v, code %q; want one row", q, resp, code)
	}
}

// A job whose catalog gives other views than the child locked down with
// never runs beside them: the child opens its data afresh for that job's
// catalog alone.
func TestEarlyLockDownOtherCatalogOpensAfresh(t *testing.T) {
	s, cfg := inProcessServer(t)
	views, err := viewStatements(cfg.Catalog)
	if err != nil {
		t.Fatal(err)
	}
	s.cc.Views = append(slices.Clone(views), "CREATE OR REPLACE TEMP VIEW tre_view_other AS SELECT 1 AS x")
	s.openEarly()
	q := "SELECT x FROM tre_view_other"
	if _, code := runInProcess(t, s, &request{Job: job.Job{SQL: q, SQLHash: hashSQL(q)}, Catalog: cfg.Catalog, Raw: true}); code == "" {
		t.Errorf("%s ran: a view the job's catalog does not give reached its SQL", q)
	}
	q = "SELECT count(*) FROM " + queries.ViewName("patients")
	s.openEarly()
	if resp, code := runInProcess(t, s, &request{Job: job.Job{SQL: q, SQLHash: hashSQL(q)}, Catalog: cfg.Catalog, Raw: true}); code != "" || resp.Raw == nil || resp.Raw.Rows != 1 {
		t.Errorf("%s: %+v, code %q; want one row", q, resp, code)
	}
}

// A data file that cannot be opened fails the early open; the job reports
// the site's data unavailable, as when it opened the file itself.
func TestEarlyOpenFailureUnavailable(t *testing.T) {
	s, cfg := inProcessServer(t)
	s.cc.DataPath += ".missing"
	s.openEarly()
	q := "SELECT count(*) FROM patients"
	if _, code := runInProcess(t, s, &request{Job: job.Job{SQL: q, SQLHash: hashSQL(q)}, Catalog: cfg.Catalog, Raw: true}); code != job.CodeUnavailable {
		t.Errorf("code %q, want %s", code, job.CodeUnavailable)
	}
}

// A job returns once its child is killed; the child's exit and the removal
// of its job directory follow in the background, and Close waits for them:
// afterwards the scratch directory holds only the kept release snapshot
// (for the next Runner) and no child of the runner is left.
func TestCloseWaitsForFinishedJobs(t *testing.T) {
	cfg := testConfig(t, MustFixture(t, 50))
	r, err := NewRunner(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if _, err := r.Run(context.Background(), newJob("SELECT sex, count(*) AS n FROM patients GROUP BY sex")); err != nil {
			t.Fatalf("job %d: %v", i, err)
		}
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(cfg.ScratchDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Name() != "snapshots" {
			t.Errorf("left in the scratch directory after Close: %s", e.Name())
		}
	}
	if kept := keptSnapshots(t, r); len(kept) != 1 {
		t.Errorf("release snapshots kept: %v, want one", kept)
	}
	if n := runnerChildren(t, cfg.ScratchDir); n > 0 {
		t.Errorf("%d sandbox children of this runner alive after Close", n)
	}
}

// runnerChildren counts this process's children whose environment names
// dir (a runner's scratch directory) and that have not been reaped.
func runnerChildren(t *testing.T, dir string) int {
	t.Helper()
	procs, err := filepath.Glob("/proc/[0-9]*")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, p := range procs {
		env, err := os.ReadFile(filepath.Join(p, "environ"))
		if err == nil && strings.Contains(string(env), dir) {
			n++
		}
	}
	return n
}

// A job child is started with its runner's views, so that it can lock
// its data down before the job comes; a snapshot builder, which runs no
// query, without.
func TestChildConfigCarriesViews(t *testing.T) {
	cfg := testConfig(t, "unused.duckdb")
	r := &Runner{cfg: cfg}
	want, err := viewStatements(cfg.Catalog)
	if err != nil || len(want) == 0 {
		t.Fatalf("views %v, %v", want, err)
	}
	for _, build := range []bool{false, true} {
		ccJSON, _, err := r.newChildConfig(callOptions{dataPath: cfg.DataPath, build: build}, t.TempDir(), 0)
		if err != nil {
			t.Fatal(err)
		}
		var cc childConfig
		if err := json.Unmarshal(ccJSON, &cc); err != nil {
			t.Fatal(err)
		}
		switch {
		case !build && !slices.Equal(cc.Views, want):
			t.Errorf("job child views %q, want %q", cc.Views, want)
		case build && len(cc.Views) > 0:
			t.Errorf("builder child views %q, want none", cc.Views)
		}
	}
}
