package sandbox

import (
	"context"
	"database/sql"
	"math"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nhs-tre/tre/synth"
)

// The accuracy tests run queries through the real sandbox child on
// synthetic data and compare what it releases with DuckDB's exact answer
// on the same file. These are their shared parts.

// synthRunner generates a synthetic dataset of n patients from seed in a
// temporary directory and returns its path and a runner over it with the
// synthetic catalog.
func synthRunner(t *testing.T, n int, seed int64) (string, *Runner) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "synth.duckdb")
	if _, err := synth.Generate(context.Background(), synth.Options{Out: path, Patients: n, Seed: seed, Threads: 2}); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t, path)
	cfg.Catalog = synth.Catalog()
	return path, MustRunner(t, cfg)
}

// exactRows runs q on the data file itself, read-only. Its first keys
// columns are the row's key, joined by "|"; the rest are its values, in
// order. A row with a NULL key is left out.
func exactRows(t *testing.T, path, q string, keys int) map[string][]float64 {
	t.Helper()
	db, err := sql.Open("duckdb", path+"?access_mode=read_only")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rows, err := db.Query(q)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]float64{}
	for rows.Next() {
		k := make([]sql.NullString, keys)
		v := make([]float64, len(cols)-keys)
		dst := make([]any, 0, len(cols))
		for i := range k {
			dst = append(dst, &k[i])
		}
		for i := range v {
			dst = append(dst, &v[i])
		}
		if err := rows.Scan(dst...); err != nil {
			t.Fatal(err)
		}
		parts := make([]string, keys)
		ok := true
		for i, s := range k {
			parts[i], ok = s.String, ok && s.Valid
		}
		if ok {
			out[strings.Join(parts, "|")] = v
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// coverage counts how often an exact value lies inside a released
// interval.
type coverage struct{ cells, covered int }

// add records one released cell's interval against the exact value and
// says whether it covered it.
func (c *coverage) add(low, high, exact float64) bool {
	c.cells++
	in := low <= exact && exact <= high
	if in {
		c.covered++
	}
	return in
}

// check fails t unless at least minCells cells were seen and the exact
// value lay inside the released 95% intervals in at least 95% of them less
// six standard errors of their number.
func (c coverage) check(t *testing.T, minCells int, what string) {
	t.Helper()
	rate := float64(c.covered) / float64(max(c.cells, 1))
	t.Logf("%d cells, exact %s inside the 95%% interval in %.1f%%", c.cells, what, 100*rate)
	if c.cells < minCells || rate < 0.95-6*math.Sqrt(0.05*0.95/float64(max(c.cells, 1))) {
		t.Errorf("%d of %d exact %ss inside the released 95%% intervals (at least %d cells needed)", c.covered, c.cells, what, minCells)
	}
}
