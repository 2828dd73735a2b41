package sandbox

import (
	"context"
	"strings"
	"sync"
	"testing"

	"github.com/nhs-tre/tre/dp"
	"github.com/nhs-tre/tre/job"
	"github.com/nhs-tre/tre/queries"
	"github.com/nhs-tre/tre/sandbox/sandboxtest"
)

// TestNeighbouringDatasetsFederated is the neighbouring-datasets test
// (TestNeighbouringDatasets) for federated queries (issue 21): every query
// of the corpus that can be federated (public domains; quantiles too, their
// trees sent whole) runs
// as a partial job through the real child at two sites, the one whose data
// is D or a neighbour D′ (one patient removed, changed or opted out) and a
// second site holding D, and the broker's dp.Combine of the two parts must
// show a researcher the same thing on D as on every D′, with every
// combined cell released (noise +1e6 at each site) and with every cell
// suppressed (−1e6). Among them are queries grouping by month, quarter or
// year, whose keys come from their WHERE bounds.
func TestNeighbouringDatasetsFederated(t *testing.T) {
	if testing.Short() {
		t.Skip("runs ~350 sandbox jobs")
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
	cat, err := queries.LoadCatalog(n.Base.Catalog)
	if err != nil {
		t.Fatal(err)
	}
	p, err := queries.NewParser()
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	federated, quantiles := 0, 0
	// Queries grouping by a month or year whose keys come from the WHERE
	// bounds must be among those federated.
	monthly := map[string]bool{}
	for i, q := range sandboxtest.FullCorpus(n.Target) {
		plan, err := p.Compile(ctx, cat, q.SQL, queries.Options{Federated: true, Epsilon: 1})
		if strings.HasPrefix(q.Name, "months: ") || q.Name == "typical: monthly_statin_prescribing" || q.Name == "typical: antibiotic_prescriptions_by_month_region" {
			monthly[q.Name] = err == nil && plan.Spec.ValidateFederated() == nil
		}
		if err != nil || plan.Spec.ValidateFederated() != nil {
			continue // refused, or not a federated query: the broker refuses it at submission
		}
		federated++
		for _, a := range plan.Spec.Aggregates {
			if a.Kind == dp.AggQuantile {
				quantiles++
				break
			}
		}
		for _, offset := range []float64{1e6, -1e6} {
			j := noiseJob(job.Job{QueryID: int64(i), SQL: q.SQL, SQLHash: queries.SQLHash(q.SQL), Epsilon: 1, Partial: true,
				Codelists: []job.Codelist{sandboxtest.CorpusCodelist}}, offset)
			parts := map[string]*dp.Partial{}
			errs := map[string]error{}
			var mu sync.Mutex
			var wg sync.WaitGroup
			for name, r := range runners {
				wg.Add(1)
				go func() {
					defer wg.Done()
					part, err := r.runPartial(ctx, j)
					mu.Lock()
					parts[name], errs[name] = part, err
					mu.Unlock()
				}()
			}
			wg.Wait()
			views := map[string]string{}
			for name := range runners {
				var res *dp.Result
				err := errs[name]
				if err == nil && errs[n.Base.Name] == nil {
					// The broker combines the site holding D or D′ with a
					// second site holding D.
					res, err = dp.Combine(plan.Spec, []*dp.Partial{parts[name], parts[n.Base.Name]})
				}
				views[name] = researcherView(t, res, err)
			}
			want := views[n.Base.Name]
			if strings.HasPrefix(want, "error ") {
				t.Errorf("%s: the federated part failed on D: %s", q.Name, want)
			}
			for name, got := range views {
				if got != want {
					t.Errorf("noise %+g, %s: what the researcher sees of the combined result differs on %q from D:\n  D:   %s\n  %s: %s\nquery: %s", offset, q.Name, name, want, name, got, q.SQL)
				}
			}
		}
	}
	t.Logf("%d corpus queries federated, %d with quantiles", federated, quantiles)
	if len(monthly) != 5 {
		t.Errorf("the corpus has %d monthly queries, want 5", len(monthly))
	}
	for name, ok := range monthly {
		if !ok {
			t.Errorf("%s: not federated", name)
		}
	}
	if federated < 5 || quantiles < 1 {
		t.Errorf("only %d corpus queries could be federated, %d with quantiles; the test covers too little", federated, quantiles)
	}
}
