package web_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/nhs-tre/tre/broker"
)

// TestTotalsSection: a reviewer's page of a query with totals shows its
// grouping sets and L0 (from broker.Service.QuerySpec), and so does the
// page of a researcher of its project; a query without totals has no such
// section, and a researcher outside the project gets no spec.
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
	resp, page := alice.get(fmt.Sprintf("/ui/queries/%d", rollup.ID))
	for _, want := range []string{`id="totals"`, "3 grouping sets", "<li>sex (subtotals)</li>", "k × 3 = 3 cells"} {
		if resp.StatusCode != 200 || !strings.Contains(page, want) {
			t.Errorf("the researcher's page (status %d) lacks %q", resp.StatusCode, want)
		}
	}
	other := e.mustProject(t, "Another team", []string{"erin"})
	theirs, err := e.svc.SubmitQuery(e.as("erin"), broker.QuerySubmission{ProjectID: other.ID, SQL: "SELECT sex, count(*) AS n FROM patients GROUP BY ROLLUP (sex)", Purpose: "theirs"})
	if err != nil {
		t.Fatal(err)
	}
	if spec, err := e.svc.QuerySpec(e.as("alice"), theirs.ID); broker.ErrorCode(err) != broker.EFORBIDDEN {
		t.Errorf("a researcher outside the project read the spec: %v, %v", spec, err)
	}
	if _, err := e.svc.QuerySpec(e.as("agent"), theirs.ID); broker.ErrorCode(err) != broker.EFORBIDDEN {
		t.Errorf("an agent read a spec: %v", err)
	}
}
