package sandbox

import (
	"context"
	"database/sql"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestRelativePathsResolved: a runner configured with paths relative to the
// working directory runs jobs over the file they named there, though the
// child runs in its own job directory.
func TestRelativePathsResolved(t *testing.T) {
	data := MustFixture(t, 60)
	cfg := testConfig(t, data)
	t.Chdir(filepath.Dir(data))
	cfg.DataPath = filepath.Base(data)
	cfg.ScratchDir = "scratch"
	r := MustRunner(t, cfg)
	if !filepath.IsAbs(r.cfg.DataPath) || !filepath.IsAbs(r.cfg.ScratchDir) {
		t.Fatalf("runner paths %q, %q are not absolute", r.cfg.DataPath, r.cfg.ScratchDir)
	}
	res, err := r.Run(context.Background(), newJob("SELECT sex, count(*) AS n FROM patients GROUP BY sex"))
	if err != nil {
		t.Fatalf("run over %s from %s: %v", cfg.DataPath, filepath.Dir(data), err)
	}
	if len(res.Rows) == 0 {
		t.Error("no rows")
	}
}

// leftoverWAL writes a DuckDB file whose last transaction is only in its
// WAL, as a writer that stopped without a checkpoint leaves it.
func leftoverWAL(tb testing.TB) string {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "wal.duckdb")
	db, err := sql.Open("duckdb", path)
	if err != nil {
		tb.Fatal(err)
	}
	for _, s := range []string{"CREATE TABLE t(x INTEGER)", "CHECKPOINT", "PRAGMA disable_checkpoint_on_shutdown", "INSERT INTO t VALUES (1)"} {
		if _, err := db.Exec(s); err != nil {
			tb.Fatal(err)
		}
	}
	if err := db.Close(); err != nil {
		tb.Fatal(err)
	}
	if _, err := os.Stat(path + ".wal"); err != nil {
		tb.Fatalf("no WAL left: %v", err)
	}
	return path
}

// TestDataFileProblemsAtStart: a data file no job could open is refused by
// NewRunner, naming the absolute path and the reason, before any job.
func TestDataFileProblemsAtStart(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := []struct {
		name string
		path string
		want string
	}{
		{name: "missing", path: filepath.Join(dir, "missing.duckdb"), want: "no such file or directory"},
		{name: "directory", path: dir, want: "is not a regular file"},
		{name: "empty", path: write("empty.duckdb", nil), want: "is not a DuckDB database (0 bytes)"},
		{name: "CSV", path: write("gp.csv", []byte("patient_id,sex\n1,female\n2,male\n")), want: "is not a DuckDB database"},
		{name: "leftover WAL", path: leftoverWAL(t), want: "has a write-ahead log beside it"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewRunner(testConfig(t, tt.path))
			if err == nil {
				t.Fatal("NewRunner accepted the file")
			}
			if !strings.Contains(err.Error(), tt.path) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q, want the path %s and %q", err, tt.path, tt.want)
			}
		})
	}
}
