package cli

import (
	"bytes"
	"strings"
	"testing"

	"github.com/nhs-tre/tre/api"
	"github.com/nhs-tre/tre/broker"
	"github.com/nhs-tre/tre/dp"
)

// TestQueryDetailFederation: a federated query's detail says how many
// sites, what each site's ledger and the project's are charged, and each
// site's part as staff see it.
func TestQueryDetailFederation(t *testing.T) {
	q := &broker.Query{ID: 7, Status: broker.StatusRunning, Dataset: "gp", SQL: "SELECT 1", Cost: dp.Cost{Epsilon: 0.5, Delta: 1e-6},
		Federation: &broker.Federation{Sites: 3, SiteCost: dp.Cost{Epsilon: 0.5, Delta: 1e-6}, ProjectCost: dp.Cost{Epsilon: 1.5, Delta: 3e-6}},
		Sites:      []broker.QuerySite{{SiteID: "leeds", Status: broker.JobDone, Attempts: 1}, {SiteID: "york"}}}
	var out bytes.Buffer
	if err := printQueryDetail(&out, q); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"3 (each site's ledger ε=0.5 δ=1e-06; the project's ε=1.5 δ=3e-06, ε and δ once per site",
		"leeds: done, 1 attempt(s)",
		"york\n",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("detail lacks %q:\n%s", want, out.String())
		}
	}
	q.Federation.DisjointPopulations = true
	out.Reset()
	if err := printQueryDetail(&out, q); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "once: disjoint populations") {
		t.Errorf("disjoint populations not explained:\n%s", out.String())
	}
}

// TestOutputSites: the output checker's view lists each site's part.
func TestOutputSites(t *testing.T) {
	o := &broker.Output{QueryID: 7, Failure: &broker.Failure{Code: broker.FailureFederationDeadline, Detail: "late"},
		Sites: []broker.SiteOutput{
			{SiteID: "leeds", Status: broker.JobDone, Attempts: 1, Report: &broker.SiteReport{RowsDroppedByBounding: 5, OptOut: dp.OptOutReport{Applied: true}, Sandbox: dp.SandboxReport{Layers: []string{"seccomp"}}}},
			{SiteID: "york", Status: broker.JobFailed, Attempts: 1, Failure: &broker.Failure{Code: "abandoned"}},
		}}
	var out bytes.Buffer
	if err := PrintOutput(&out, o); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"2 sites:", "leeds", "seccomp", "york", "abandoned"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}

// TestDryRunFederation: a dry run over a dataset several sites hold is
// labelled one site's answer, with the federated query's cost; one over a
// single site's is not.
func TestDryRunFederation(t *testing.T) {
	r := &api.DryRunResponse{Synthetic: true, Run: api.DryRunSynthetic, Dataset: "gp", Cost: dp.Cost{Epsilon: 0.5, Delta: 1e-6},
		Columns: []dp.Column{{Name: "n", Kind: "count"}}, Rows: [][]dp.Cell{{{}}}}
	var out bytes.Buffer
	if err := printDryRun(&out, r); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out.String(), "SYNTHETIC DATA") || strings.Contains(out.String(), "ONE SITE") {
		t.Errorf("single-site dry run:\n%s", out.String())
	}
	r.Run = api.DryRunSyntheticSingleSite
	r.Federation = &broker.Federation{Sites: 3, SiteCost: r.Cost, ProjectCost: dp.Cost{Epsilon: 1.5, Delta: 3e-6}}
	out.Reset()
	if err := printDryRun(&out, r); err != nil {
		t.Fatal(err)
	}
	if want := "ONE SITE'S ANSWER: 3 sites hold the dataset"; !strings.Contains(out.String(), want) ||
		!strings.Contains(out.String(), "(ε=0.5 δ=1e-06 each) and costs the project ε=1.5 δ=3e-06") {
		t.Errorf("federated dry run lacks %q and the costs:\n%s", want, out.String())
	}
}
