package cli

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/nhs-tre/tre/queries"
	"github.com/nhs-tre/tre/synth"
)

// TestPrintPlanTotals: `tre check` tells a reviewer how many grouping sets
// a ROLLUP has and the L0 they give, and says nothing of totals otherwise.
func TestPrintPlanTotals(t *testing.T) {
	p, err := queries.NewParser()
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	for sql, want := range map[string]string{
		`SELECT sex, region, count(*) AS n FROM patients GROUP BY ROLLUP (sex, region)`: `totals: 3 grouping sets, shown as "(total)"; a patient counts in up to 3 cells (L0 = k × 3)`,
		`SELECT sex, region, count(*) AS n FROM patients GROUP BY sex, region`:          "",
	} {
		plan, err := p.Compile(context.Background(), synth.Catalog(), sql, queries.Options{})
		if err != nil {
			t.Fatal(err)
		}
		var b bytes.Buffer
		if err := PrintPlan(&b, plan); err != nil {
			t.Fatal(err)
		}
		if got := b.String(); (want == "" && strings.Contains(got, "totals:")) || !strings.Contains(got, want) {
			t.Errorf("%s:\n%s\nwant %q", sql, got, want)
		}
	}
}
