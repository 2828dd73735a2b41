package sandbox

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"

	"github.com/nhs-tre/tre/dp"
	"github.com/nhs-tre/tre/job"
	"github.com/nhs-tre/tre/queries"
	"github.com/nhs-tre/tre/sandbox/sandboxtest"
)

// The neighbouring-datasets test (issue 15): for a corpus of realistic and
// hostile queries (sandboxtest.FullCorpus), everything a researcher can see
// of a run except the noisy values must be the same on a dataset D and on
// each neighbour D′ that differs from it in one patient, the target
// (sandboxtest: removed, changed — a depression code and many more
// readings — or opted out): the outcome (result, or the error code), the
// released table's layout, its keys under public domains, its suppression
// and rounding marks, and the researcher's report. Noise is the one thing
// that may differ, so the child replaces it with a fixed offset (a test
// hook, as the DP library's own tests do): a large positive one releases
// every cell, a large negative one suppresses every cell, and either way
// the marks are then functions of the query alone. Keys chosen by DP
// partition selection are noisy outputs too (the library's own randomness,
// no hook): for those queries the rows are left out of the comparison,
// never the layout or the report.

// researcherView is everything a researcher sees of a run but the noisy
// values, as JSON: the error code, or ForResearcher with every value and
// interval reduced to whether it is there, and under DP partition
// selection no rows (their keys are noisy) and no counts of them.
func researcherView(t *testing.T, res *dp.Result, err error) string {
	t.Helper()
	if err != nil {
		return "error " + job.Code(err)
	}
	v := res.ForResearcher()
	type cell struct {
		Key                                     string
		Null, Value, Suppressed, Secondary, Rnd bool
	}
	var rows [][]cell
	for _, row := range v.Rows {
		var r []cell
		for _, c := range row {
			if (c.Value == nil) != (c.CILow == nil) || (c.Value == nil) != (c.CIHigh == nil) {
				t.Errorf("a cell with a value but no interval, or the reverse: %+v", c)
			}
			r = append(r, cell{c.Key, c.Null, c.Value != nil, c.Suppressed, c.Secondary, c.Rounded})
		}
		rows = append(rows, r)
	}
	rep := v.Report
	if rep.PartitionSelection == dp.SelectionPreThreshold {
		rows = nil
		rep.GroupsReleased, rep.GroupsSuppressed, rep.CellsSuppressed, rep.CellsSecondary, rep.CellsRounded = 0, 0, 0, 0, 0
	}
	b, err := json.Marshal(struct {
		Columns []dp.Column
		Rows    [][]cell
		Report  dp.ResearcherReport
	}{v.Columns, rows, rep})
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestNeighbouringDatasets runs the corpus through the real sandbox child
// on D and on each neighbour, with every cell released (noise +1e6) and
// with every cell suppressed (noise −1e6), and requires the researcher's
// view to be identical: no query, however hostile, shows a researcher
// anything about the one patient but through noise. D runs twice in the
// first pass, so a view that varies from run to run on the same data is
// caught too.
func TestNeighbouringDatasets(t *testing.T) {
	if testing.Short() {
		t.Skip("runs ~400 sandbox jobs")
	}
	ctx := context.Background()
	n, err := sandboxtest.Build(ctx, t.TempDir(), 1500, 15)
	if err != nil {
		t.Fatal(err)
	}
	runners := map[string]*Runner{}
	for _, d := range n.All() {
		cfg := testConfig(t, d.Data)
		if cfg.Catalog, err = queries.LoadCatalog(d.Catalog); err != nil {
			t.Fatal(err)
		}
		runners[d.Name] = MustRunner(t, cfg)
	}
	corpus := sandboxtest.FullCorpus(n.Target)
	refused := 0
	for _, offset := range []float64{1e6, -1e6} {
		for i, q := range corpus {
			j := noiseJob(job.Job{QueryID: int64(i), SQL: q.SQL, SQLHash: queries.SQLHash(q.SQL), Epsilon: 1,
				Codelists: []job.Codelist{sandboxtest.CorpusCodelist}}, offset)
			views := map[string]string{}
			var mu sync.Mutex
			var wg sync.WaitGroup
			run := func(name string, r *Runner) {
				defer wg.Done()
				res, err := r.run(ctx, j)
				v := researcherView(t, res, err)
				mu.Lock()
				views[name] = v
				mu.Unlock()
			}
			for name, r := range runners {
				wg.Add(1)
				go run(name, r)
			}
			if offset > 0 {
				wg.Add(1)
				go run("base, again", runners[n.Base.Name])
			}
			wg.Wait()
			want := views[n.Base.Name]
			if strings.HasPrefix(want, "error ") {
				refused++
				if want != "error "+job.CodeRefused {
					t.Errorf("%s failed with %s on D, want a result or a refusal:\n%s", q.Name, want, q.SQL)
				}
			}
			for name, got := range views {
				if got != want {
					t.Errorf("noise %+g, %s: what the researcher sees differs on %q from D:\n  D:   %s\n  %s: %s\nquery: %s", offset, q.Name, name, want, name, got, q.SQL)
				}
			}
		}
	}
	// The corpus is meant to run, but for the refusals it holds on purpose
	// (the opt-out bypasses and type errors), in both passes.
	if refused > 10 {
		t.Errorf("%d runs refused; the corpus should mostly run", refused)
	}
}
