package sandbox

import (
	"context"
	"database/sql"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/nhs-tre/tre/job"
	"github.com/nhs-tre/tre/queries"
)

// mustSnapshotFile writes the release snapshot of data next to it, as the
// builder child does (WriteSnapshot), and returns its path.
func mustSnapshotFile(tb testing.TB, data string, cat *queries.Catalog) string {
	tb.Helper()
	db, err := sql.Open("duckdb", data+"?access_mode=READ_ONLY")
	if err != nil {
		tb.Fatal(err)
	}
	defer db.Close()
	conn, err := db.Conn(context.Background())
	if err != nil {
		tb.Fatal(err)
	}
	defer conn.Close()
	path := filepath.Join(tb.TempDir(), "release.duckdb")
	if _, err := WriteSnapshot(context.Background(), conn, cat, path); err != nil {
		tb.Fatal(err)
	}
	return path
}

// snapshotBuilds is how many builder children r has started.
func snapshotBuilds(r *Runner) int {
	r.snapMu.Lock()
	defer r.snapMu.Unlock()
	return r.snapBuilds
}

// keptSnapshots lists the snapshot files in r's snapshot directory.
func keptSnapshots(t *testing.T, r *Runner) []string {
	t.Helper()
	ents, err := os.ReadDir(r.snapshotDir())
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".duckdb") {
			out = append(out, e.Name())
		}
	}
	return out
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

// TestSnapshotOncePerVersion runs jobs through real children: the release
// snapshot is built once per version of the data file, rebuilt after an
// in-place change and after a new file is renamed over the path, the older
// one removed, and every job reports the opt-out hash of the data it read.
func TestSnapshotOncePerVersion(t *testing.T) {
	ctx := context.Background()
	data := MustFixture(t, 200)
	r := MustRunner(t, testConfig(t, data))
	j := newJob("SELECT sex, count(*) AS n FROM patients GROUP BY sex")
	step := func(name string, builds int) string {
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
		if b := snapshotBuilds(r); b != builds {
			t.Errorf("%s: %d builds, want %d", name, b, builds)
		}
		if kept := keptSnapshots(t, r); len(kept) != 1 {
			t.Errorf("%s: snapshots kept: %v, want one", name, kept)
		}
		return got.SnapshotHash
	}

	h1 := step("first job", 1)
	if h := step("same file", 1); h != h1 {
		t.Errorf("same file gave a different hash")
	}

	before := statIdentity(data)
	mustExecFile(t, data, "INSERT INTO optouts VALUES (424242, 'type1')")
	if after := statIdentity(data); after == nil || *after == *before {
		t.Fatalf("in-place change left the identity %+v unchanged", after)
	}
	h2 := step("modified in place", 2)
	if h2 == h1 {
		t.Error("an opt-out added in place did not change the hash")
	}
	step("modified in place, again", 2)

	next := mustOptOutFile(t, []*int64{ptr(7), ptr(8)})
	if err := os.Rename(next, data); err != nil {
		t.Fatal(err)
	}
	if h3 := step("new file renamed over", 3); h3 != canonicalHash([]int64{7, 8}) {
		t.Errorf("new file: hash %s", h3)
	}
	step("new file, again", 3)

	// A later Runner (a restarted agent, another tre run) on the same
	// scratch directory reuses the kept snapshot.
	cfg := r.cfg
	r2 := MustRunner(t, cfg)
	if _, err := r2.Run(ctx, j); err != nil {
		t.Fatal(err)
	}
	if b := snapshotBuilds(r2); b != 0 {
		t.Errorf("a new Runner built %d snapshots, want to reuse the kept one", b)
	}
}

// TestSnapshotConcurrentJobs: jobs starting together on a new version
// share one builder child.
func TestSnapshotConcurrentJobs(t *testing.T) {
	data := MustFixture(t, 100)
	r := MustRunner(t, testConfig(t, data))
	want := canonicalHash(fixtureOptOuts(t, data))
	const n = 3
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := r.Run(context.Background(), newJob("SELECT sex, count(*) AS n FROM patients GROUP BY sex"))
			if err == nil && res.Report.OptOut.SnapshotHash != want {
				err = errors.New("hash " + res.Report.OptOut.SnapshotHash)
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if b := snapshotBuilds(r); b != 1 {
		t.Errorf("%d builds, want 1", b)
	}
}

// TestSnapshotRacyFile: a job on a data file changed within racyWindow
// waits until the file is that old, then builds a snapshot that is kept.
func TestSnapshotRacyFile(t *testing.T) {
	data := MustFixture(t, 100)
	r := MustRunner(t, testConfig(t, data))
	clock := time.Now()
	var waited time.Duration
	r.now = func() time.Time { return clock }
	r.sleep = func(_ context.Context, d time.Duration) error {
		waited += d
		clock = clock.Add(d)
		return nil
	}
	for i := 1; i <= 2; i++ {
		res, err := r.Run(context.Background(), newJob("SELECT sex, count(*) AS n FROM patients GROUP BY sex"))
		if err != nil {
			t.Fatal(err)
		}
		if want := canonicalHash(fixtureOptOuts(t, data)); res.Report.OptOut.SnapshotHash != want {
			t.Errorf("SnapshotHash = %s, want %s", res.Report.OptOut.SnapshotHash, want)
		}
		if b := snapshotBuilds(r); b != 1 {
			t.Errorf("job %d: %d builds, want 1", i, b)
		}
	}
	id := statIdentity(data)
	if age := clock.Sub(time.Unix(0, max(id.MtimeNs, id.CtimeNs))); waited == 0 || age < racyWindow {
		t.Errorf("waited %v; the file was %v old at the build, want at least %v", waited, age, racyWindow)
	}
}

// TestSnapshotInUseKept: a snapshot a job still reads is not removed when
// a newer version's snapshot replaces it, and is once that job ends.
func TestSnapshotInUseKept(t *testing.T) {
	ctx := context.Background()
	data := MustFixture(t, 50)
	r := MustRunner(t, testConfig(t, data))
	old, release, err := r.acquireSnapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	mustExecFile(t, data, "INSERT INTO optouts VALUES (424242, 'type1')")
	if _, err := r.Run(ctx, newJob("SELECT count(*) AS n FROM patients")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(old.path); err != nil {
		t.Fatalf("the snapshot in use was removed: %v", err)
	}
	release()
	if _, err := os.Stat(old.path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the superseded snapshot is still there after its last job: %v", err)
	}
	if kept := keptSnapshots(t, r); len(kept) != 1 {
		t.Errorf("snapshots kept: %v, want the new one", kept)
	}
}

// TestSnapshotContents opens a release snapshot the builder child wrote and
// checks it by construction: no opted-out patient, no row without a
// patient id, no opt-out table, no forbidden column, dates outside the
// band NULL, the data's key kept.
func TestSnapshotContents(t *testing.T) {
	data := MustFixture(t, 200)
	mustExecFile(t, data,
		"ALTER TABLE patients ADD PRIMARY KEY (patient_id)",
		"INSERT INTO clinical_events VALUES (NULL, DATE '2020-01-01', '44054006', 1)",
		"INSERT INTO clinical_events SELECT patient_id, DATE 'infinity', 'x', 2 FROM patients WHERE patient_id NOT IN (SELECT patient_id FROM optouts) LIMIT 1",
	)
	r := MustRunner(t, testConfig(t, data))
	snap, release, err := r.acquireSnapshot(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	db, err := sql.Open("duckdb", snap.path+"?access_mode=READ_ONLY")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	optedOut := fixtureOptOuts(t, data)
	if len(optedOut) == 0 {
		t.Fatal("fixture has no opted-out patients")
	}
	for _, tbl := range []string{"patients", "clinical_events", "medications", "hospital_admissions", "vaccinations"} {
		var n int
		q := "SELECT count(*) FROM " + tbl + " WHERE patient_id IS NULL OR patient_id IN (" + joinInts(optedOut) + ")"
		if err := db.QueryRow(q).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != 0 {
			t.Errorf("%s holds %d rows of opted-out patients or without a patient id", tbl, n)
		}
	}
	for _, q := range []string{"SELECT count(*) FROM optouts", "SELECT count(practice_id) FROM patients"} {
		if _, err := db.Exec(q); err == nil {
			t.Errorf("%s: the snapshot holds it", q)
		}
	}
	var far int
	if err := db.QueryRow("SELECT count(*) FROM clinical_events WHERE snomed_code = 'x' AND date IS NULL").Scan(&far); err != nil || far != 1 {
		t.Errorf("a date outside the band: %d rows with it NULL, %v", far, err)
	}
	var n, want int
	if err := db.QueryRow("SELECT count(*) FROM patients").Scan(&n); err != nil {
		t.Fatal(err)
	}
	src, _ := sql.Open("duckdb", data+"?access_mode=READ_ONLY")
	defer src.Close()
	if err := src.QueryRow("SELECT count(*) FROM patients WHERE patient_id NOT IN (SELECT patient_id FROM optouts)").Scan(&want); err != nil {
		t.Fatal(err)
	}
	if n != want {
		t.Errorf("patients: %d rows, want %d", n, want)
	}
	unique, err := UniqueTables(context.Background(), mustConn(t, db), MustCatalog(t))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"patients"}, unique); diff != "" {
		t.Errorf("keys of the snapshot (-want +got):\n%s", diff)
	}
}

func mustConn(t *testing.T, db *sql.DB) *sql.Conn {
	t.Helper()
	c, err := db.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func joinInts(ids []int64) string {
	s := make([]string, len(ids))
	for i, id := range ids {
		s[i] = itoa(int(id))
	}
	return strings.Join(s, ", ")
}

// TestSnapshotRefused: data no snapshot may be built from fails every job
// with a message for the site's operator: a NULL in the opt-out table (it
// would opt nobody out by that row), a WAL beside the data.
func TestSnapshotRefused(t *testing.T) {
	for _, tt := range []struct {
		name  string
		setup func(t *testing.T, data string)
		want  string
	}{
		{name: "NULL opt-out id", setup: func(t *testing.T, data string) {
			mustExecFile(t, data, "INSERT INTO optouts VALUES (NULL, 'type1')")
		}, want: "the opt-out table optouts holds 1 rows whose patient_id is NULL"},
		{name: "WAL beside the data", setup: func(t *testing.T, data string) {
			if err := os.WriteFile(data+".wal", nil, 0o600); err != nil {
				t.Fatal(err)
			}
		}, want: "write-ahead log"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			data := MustFixture(t, 30)
			r := MustRunner(t, testConfig(t, data))
			tt.setup(t, data)
			_, err := r.Run(context.Background(), newJob("SELECT count(*) AS n FROM patients"))
			if job.Code(err) != job.CodeUnavailable || !strings.Contains(job.Message(err), tt.want) {
				t.Errorf("got %v, want %s containing %q", err, job.CodeUnavailable, tt.want)
			}
			if kept := keptSnapshots(t, r); len(kept) != 0 {
				t.Errorf("snapshots: %v", kept)
			}
		})
	}
}

// TestFindOpenedData checks the builder's identity is of the file DuckDB
// has open, not of whatever the path names now, and that a write to it is
// seen.
func TestFindOpenedData(t *testing.T) {
	data := MustFixture(t, 50)
	mustLocked(t, data, MustCatalog(t))
	opened, err := findOpenedData(data)
	if err != nil {
		t.Fatal(err)
	}
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
// the file's alone, so the host has no identity for it.
func TestWALMeansUnknown(t *testing.T) {
	data := MustFixture(t, 10)
	if err := os.WriteFile(data+".wal", nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if id := statIdentity(data); id != nil {
		t.Errorf("host identity with a WAL present = %+v, want nil", id)
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
