package bench

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/nhs-tre/tre/queries"
	"github.com/nhs-tre/tre/synth"
)

// mustData writes a small synthetic dataset and returns its path and catalog.
func mustData(tb testing.TB) (string, *queries.Catalog) {
	tb.Helper()
	out := filepath.Join(tb.TempDir(), "gp.duckdb")
	if _, err := synth.Generate(context.Background(), synth.Options{Out: out, Patients: 500, Seed: 3, MemoryLimit: "512MB", Threads: 1}); err != nil {
		tb.Fatal(err)
	}
	cat, err := queries.LoadCatalog(synth.CatalogPath(out))
	if err != nil {
		tb.Fatal(err)
	}
	return out, cat
}

func TestRawPipelineExport(t *testing.T) {
	ctx := context.Background()
	data, cat := mustData(t)
	opts := Options{Threads: 1, MemoryLimit: 256 << 20}

	db, err := Open(ctx, data, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	n, err := db.Raw(ctx, "SELECT sex, count(*) FROM patients GROUP BY sex")
	if err != nil || n < 1 {
		t.Fatalf("Raw = %d rows, %v; want some rows", n, err)
	}
	if _, err := db.Raw(ctx, "CREATE TABLE scratch AS SELECT 1 AS a"); err == nil {
		t.Error("Raw wrote to the data file: it must be opened read-only")
	}
	tables, err := db.Tables(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rows := map[string]int64{}
	for _, tb := range tables {
		rows[tb.Name] = tb.Rows
	}
	if rows["patients"] != 500 || len(tables) != len(cat.Tables) {
		t.Errorf("Tables: %v, want every synth table and 500 patients", rows)
	}

	pipe, err := OpenPipeline(ctx, data, cat, opts, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer pipe.Close()
	for _, tq := range queries.TypicalQueries {
		t.Run(tq.Name, func(t *testing.T) {
			tm, err := pipe.Run(ctx, tq.SQL, 0)
			if err != nil {
				t.Fatal(err)
			}
			// Groups under DP partition selection on 500 patients may all
			// be too small to keep: a released row is not required.
			if tm.Total() <= 0 || tm.Rows < tm.Groups {
				t.Errorf("Run = %+v, want a positive time and every kept group released", tm)
			}
		})
	}
	plan, err := pipe.Plan(ctx, queries.TypicalQueries[0].SQL)
	if err != nil {
		t.Fatal(err)
	}
	profile, err := pipe.DB().ExplainAnalyze(ctx, plan.Rewritten)
	if err != nil || !strings.Contains(profile, "Total Time") {
		t.Errorf("ExplainAnalyze: %v, profile lacks the total time:\n%s", err, profile)
	}

	dir := t.TempDir()
	files, err := ExportCSV(ctx, data, []string{"optouts"}, dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(files["optouts"])
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if diff := cmp.Diff(int64(len(lines)-1), rows["optouts"]); diff != "" || !strings.HasPrefix(lines[0], "patient_id") {
		t.Errorf("optouts.csv: header %q, rows (-got +want):\n%s", lines[0], diff)
	}
}

func TestOpenRefuses(t *testing.T) {
	ctx := context.Background()
	data, _ := mustData(t)
	tests := []struct {
		name string
		path string
		opts Options
	}{
		{"query string in path", data + "?access_mode=READ_WRITE", Options{Threads: 1}},
		{"missing file", filepath.Join(t.TempDir(), "none.duckdb"), Options{Threads: 1}},
		{"no threads", data, Options{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if db, err := Open(ctx, tt.path, tt.opts); err == nil {
				db.Close()
				t.Errorf("Open(%q, %+v) succeeded", tt.path, tt.opts)
			}
		})
	}
}
