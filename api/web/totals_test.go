package web_test

import (
	"fmt"
	"strings"
	"testing"
)

// TestTotalsSection: a reviewer's page of a query with totals shows its
// grouping sets and L0 (from broker.Service.QuerySpec); a query without
// totals has no such section, and the researcher's page has none.
func TestTotalsSection(t *testing.T) {
	e := newEnv(t)
	rollup := e.mustSubmit(t, "alice", "SELECT sex, region, count(*) AS n FROM patients GROUP BY ROLLUP (sex, region)", "totals")
	plain := e.mustSubmit(t, "alice", "SELECT sex, count(*) AS n FROM patients GROUP BY sex", "no totals")
	bob := e.signIn(t, "bob")
	_, page := bob.get(fmt.Sprintf("/ui/queries/%d", rollup.ID))
	for _, want := range []string{`id="totals"`, "3 grouping sets", "<li>sex × region (the cells)</li>", "<li>sex (subtotals)</li>", "<li>the grand total (every group column totalled)</li>", "k × 3 = 3 cells"} {
		if !strings.Contains(page, want) {
			t.Errorf("reviewer's page of a ROLLUP lacks %q", want)
		}
	}
	if _, page := bob.get(fmt.Sprintf("/ui/queries/%d", plain.ID)); strings.Contains(page, `id="totals"`) {
		t.Error("a query without totals shows a totals section")
	}
	alice := e.signIn(t, "alice")
	if resp, page := alice.get(fmt.Sprintf("/ui/queries/%d", rollup.ID)); resp.StatusCode != 200 || strings.Contains(page, `id="totals"`) {
		t.Errorf("the researcher's page: status %d, totals section %v", resp.StatusCode, strings.Contains(page, `id="totals"`))
	}
}
