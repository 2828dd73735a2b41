package sandbox

import (
	"context"
	"database/sql"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nhs-tre/tre/queries"
)

// optOutCounts are the runner's opt-out-only children and the jobs whose
// child computed the hash itself.
func optOutCounts(r *Runner) [2]int {
	r.optMu.Lock()
	defer r.optMu.Unlock()
	return [2]int{r.optOutRuns, r.childComputed}
}

// mustExecFile runs statements on the data file opened read-write, then
// closes it (DuckDB checkpoints on close, leaving no WAL).
func mustExecFile(tb testing.TB, path string, stmts ...string) {
	tb.Helper()
	db, err := sql.Open("duckdb", path)
	if err != nil {
		tb.Fatal(err)
	}
	for _, s := range stmts {
		if _, err := db.Exec(s); err != nil {
			db.Close()
			tb.Fatalf("%s: %v", s, err)
		}
	}
	if err := db.Close(); err != nil {
		tb.Fatal(err)
	}
	if walPresent(path) {
		tb.Fatal("DuckDB left a WAL file")
	}
}

// TestOptOutSnapshotCachedPerFile runs jobs through real children and checks
// the snapshot hash is computed once per version of the data file: reused
// for the same file, recomputed after an in-place change and after a new
// file is renamed over the path, and always the hash of the opt-outs the
// job read.
func TestOptOutSnapshotCachedPerFile(t *testing.T) {
	ctx := context.Background()
	data := MustFixture(t, 200)
	r := MustRunner(t, testConfig(t, data))
	// Every file here was written moments ago; a clock an hour ahead makes
	// them old enough to cache (the racy rule has its own test).
	r.now = func() time.Time { return time.Now().Add(time.Hour) }
	j := job("SELECT sex, count(*) AS n FROM patients GROUP BY sex")
	step := func(name string, want [2]int) string {
		t.Helper()
		res, err := r.Run(ctx, j)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		got := res.Report.OptOut
		if wantHash := canonicalHash(fixtureOptOuts(t, data)); got.SnapshotHash != wantHash {
			t.Errorf("%s: SnapshotHash = %s, want %s (the opt-outs in the file)", name, got.SnapshotHash, wantHash)
		}
		if !got.Applied || got.Table != "optouts" {
			t.Errorf("%s: report = %+v", name, got)
		}
		if c := optOutCounts(r); c != want {
			t.Errorf("%s: (opt-out-only children, jobs computing) = %v, want %v", name, c, want)
		}
		return got.SnapshotHash
	}

	h1 := step("first job", [2]int{1, 0})
	if h := step("same file", [2]int{1, 0}); h != h1 {
		t.Errorf("same file gave a different hash")
	}

	before := statIdentity(data)
	mustExecFile(t, data, "INSERT INTO optouts VALUES (424242, 'type1')")
	if after := statIdentity(data); after == nil || *after == *before {
		t.Fatalf("in-place change left the identity %+v unchanged", after)
	}
	h2 := step("modified in place", [2]int{2, 0})
	if h2 == h1 {
		t.Error("an opt-out added in place did not change the hash")
	}
	step("modified in place, again", [2]int{2, 0})

	next := mustOptOutFile(t, []*int64{ptr(7), ptr(8)})
	if err := os.Rename(next, data); err != nil {
		t.Fatal(err)
	}
	if h3 := step("new file renamed over", [2]int{3, 0}); h3 != canonicalHash([]int64{7, 8}) {
		t.Errorf("new file: hash %s", h3)
	}
	step("new file, again", [2]int{3, 0})
}

// TestOptOutSnapshotConcurrentJobs: jobs starting together on an uncached
// file share one opt-out-only child.
func TestOptOutSnapshotConcurrentJobs(t *testing.T) {
	data := MustFixture(t, 100)
	r := MustRunner(t, testConfig(t, data))
	r.now = func() time.Time { return time.Now().Add(time.Hour) }
	want := canonicalHash(fixtureOptOuts(t, data))
	const n = 3
	errs := make(chan error, n)
	hashes := make(chan string, n)
	for range n {
		go func() {
			res, err := r.Run(context.Background(), job("SELECT sex, count(*) AS n FROM patients GROUP BY sex"))
			if err != nil {
				errs <- err
				return
			}
			hashes <- res.Report.OptOut.SnapshotHash
		}()
	}
	for range n {
		select {
		case err := <-errs:
			t.Fatal(err)
		case h := <-hashes:
			if h != want {
				t.Errorf("SnapshotHash = %s, want %s", h, want)
			}
		}
	}
	if c := optOutCounts(r); c != [2]int{1, 0} {
		t.Errorf("(opt-out-only children, jobs computing) = %v, want [1 0]", c)
	}
}

// TestOptOutRacyFileComputedByJob: a file changed within racyWindow of now
// is not cached; the job's child computes the hash.
func TestOptOutRacyFileComputedByJob(t *testing.T) {
	data := MustFixture(t, 100)
	r := MustRunner(t, testConfig(t, data))
	r.now = func() time.Time { return time.Now() }
	res, err := r.Run(context.Background(), job("SELECT sex, count(*) AS n FROM patients GROUP BY sex"))
	if err != nil {
		t.Fatal(err)
	}
	if want := canonicalHash(fixtureOptOuts(t, data)); res.Report.OptOut.SnapshotHash != want {
		t.Errorf("SnapshotHash = %s, want %s", res.Report.OptOut.SnapshotHash, want)
	}
	if c := optOutCounts(r); c != [2]int{0, 1} {
		t.Errorf("(opt-out-only children, jobs computing) = %v, want [0 1]", c)
	}
}

// TestChildUsesKnownHashOnlyForItsFile sends jobs with a known snapshot
// straight to children: the child takes the host's hash only for exactly
// the file version it opened, and computes it otherwise.
func TestChildUsesKnownHashOnlyForItsFile(t *testing.T) {
	data := MustFixture(t, 100)
	r := MustRunner(t, testConfig(t, data))
	id := statIdentity(data)
	if id == nil {
		t.Fatal("no identity for the fixture")
	}
	actual := canonicalHash(fixtureOptOuts(t, data))
	planted := strings.Repeat("0", 64)
	with := func(f func(*fileIdentity)) *fileIdentity { c := *id; f(&c); return &c }
	tests := []struct {
		name     string
		known    *optOutSnapshot
		computed bool
	}{
		{name: "same file", known: &optOutSnapshot{File: id, Hash: planted}, computed: false},
		{name: "other inode", known: &optOutSnapshot{File: with(func(c *fileIdentity) { c.Ino++ }), Hash: planted}, computed: true},
		{name: "other device", known: &optOutSnapshot{File: with(func(c *fileIdentity) { c.Dev++ }), Hash: planted}, computed: true},
		{name: "other size", known: &optOutSnapshot{File: with(func(c *fileIdentity) { c.Size++ }), Hash: planted}, computed: true},
		{name: "other mtime", known: &optOutSnapshot{File: with(func(c *fileIdentity) { c.MtimeNs++ }), Hash: planted}, computed: true},
		{name: "other ctime", known: &optOutSnapshot{File: with(func(c *fileIdentity) { c.CtimeNs-- }), Hash: planted}, computed: true},
		{name: "no file identity", known: &optOutSnapshot{Hash: planted}, computed: true},
		{name: "malformed hash", known: &optOutSnapshot{File: id, Hash: "00"}, computed: true},
		{name: "upper-case hash", known: &optOutSnapshot{File: id, Hash: strings.Repeat("A", 64)}, computed: true},
		{name: "nothing known", computed: true},
	}
	const q = "SELECT sex, count(*) AS n FROM patients GROUP BY sex"
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, _, err := r.call(context.Background(), &request{QueryID: "q", SQL: q, SQLHash: hashSQL(q), Epsilon: 1, Catalog: r.cfg.Catalog, OptOut: tt.known})
			if err != nil {
				t.Fatal(err)
			}
			want := actual
			if !tt.computed {
				want = planted
			}
			if got := resp.Result.Report.OptOut.SnapshotHash; got != want {
				t.Errorf("SnapshotHash = %s, want %s", got, want)
			}
			if resp.OptOut == nil || resp.OptOut.Computed != tt.computed || resp.OptOut.Hash != want {
				t.Errorf("child's snapshot = %+v, want computed=%v", resp.OptOut, tt.computed)
			}
			if resp.OptOut != nil && (resp.OptOut.File == nil || *resp.OptOut.File != *id) {
				t.Errorf("child read file %+v, want %+v", resp.OptOut.File, id)
			}
		})
	}
}

// mustOpenedFixture opens a 50-patient fixture locked down and finds the
// file DuckDB has open.
func mustOpenedFixture(t *testing.T) (*queries.Catalog, string, *lockedDB, *openedData) {
	t.Helper()
	cat := MustCatalog(t)
	data := MustFixture(t, 50)
	ldb := mustLocked(t, data, cat)
	opened, err := findOpenedData(data)
	if err != nil {
		t.Fatal(err)
	}
	return cat, data, ldb, opened
}

// TestFindOpenedData checks the child's identity is of the file DuckDB has
// open, not of whatever the path names now, and that a write to it is seen.
func TestFindOpenedData(t *testing.T) {
	cat, data, ldb, opened := mustOpenedFixture(t)
	if id := statIdentity(data); id == nil || *id != opened.id {
		t.Fatalf("opened %+v, stat %+v", opened.id, id)
	}
	if !opened.unchanged() {
		t.Fatal("unchanged() false before any change")
	}

	// A new file renamed over the path: DuckDB still reads the old one.
	next := MustFixture(t, 10)
	if err := os.Rename(next, data); err != nil {
		t.Fatal(err)
	}
	if id := statIdentity(data); id == nil || *id == opened.id {
		t.Fatalf("the renamed file has the opened file's identity %+v", id)
	}
	if !opened.unchanged() {
		t.Error("rename over the path changed the opened file's identity")
	}
	snap, err := applyOptOut(context.Background(), ldb, cat, data, opened, &optOutSnapshot{File: statIdentity(data), Hash: strings.Repeat("0", 64)})
	if err != nil {
		t.Fatal(err)
	}
	if !snap.Computed || *snap.File != opened.id {
		t.Errorf("known hash of the new file applied to the old one: %+v", snap)
	}

	// An in-place write to the open file is seen.
	f, err := os.OpenFile(filepath.Join("/proc/self/fd", itoa(opened.fd)), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(make([]byte, 4096)); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if opened.unchanged() {
		t.Error("unchanged() true after a write to the open file")
	}
}

// TestWALMeansUnknown: with a WAL file beside the data its contents are not
// the file's alone, so neither side treats the identity as reusable.
func TestWALMeansUnknown(t *testing.T) {
	cat, data, ldb, opened := mustOpenedFixture(t)
	if err := os.WriteFile(data+".wal", nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if id := statIdentity(data); id != nil {
		t.Errorf("host identity with a WAL present = %+v, want nil", id)
	}
	snap, err := applyOptOut(context.Background(), ldb, cat, data, opened, &optOutSnapshot{File: &opened.id, Hash: strings.Repeat("0", 64)})
	if err != nil {
		t.Fatal(err)
	}
	if !snap.Computed || snap.File != nil {
		t.Errorf("snapshot with a WAL present = %+v, want computed with no file identity", snap)
	}
}

func TestRacy(t *testing.T) {
	now := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name         string
		mtime, ctime time.Time
		racy         bool
	}{
		{name: "old", mtime: now.Add(-time.Hour), ctime: now.Add(-time.Hour), racy: false},
		{name: "just outside", mtime: now.Add(-racyWindow), ctime: now.Add(-racyWindow), racy: false},
		{name: "recent mtime", mtime: now.Add(-time.Second), ctime: now.Add(-time.Hour), racy: true},
		{name: "recent ctime, old mtime (touch -d)", mtime: now.Add(-time.Hour), ctime: now.Add(-time.Second), racy: true},
		{name: "future", mtime: now.Add(time.Hour), ctime: now.Add(time.Hour), racy: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := fileIdentity{MtimeNs: tt.mtime.UnixNano(), CtimeNs: tt.ctime.UnixNano()}
			if got := id.racy(now); got != tt.racy {
				t.Errorf("racy = %v, want %v", got, tt.racy)
			}
		})
	}
}
