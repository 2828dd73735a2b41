package web_test

import (
	"context"
	"fmt"
	"html"
	"net/http"
	"strings"
	"testing"

	"github.com/nhs-tre/tre/broker"
	"github.com/nhs-tre/tre/broker/brokertest"
	"github.com/nhs-tre/tre/dp"
	"github.com/nhs-tre/tre/queries"
)

// completeWithDiagnostics runs query id's job to the output check with a
// result of the approved query's shape carrying every checker-only figure:
// dominance flags, partitions not released, rows dropped by bounding, the
// opt-out snapshot and the sandbox's layers.
func (e *env) completeWithDiagnostics(tb testing.TB, id int64) {
	tb.Helper()
	ctx := e.as("agent")
	lease, err := e.svc.LeaseJob(ctx, siteID, "")
	if err != nil || lease == nil || lease.QueryID != id {
		tb.Fatalf("lease for %d: %+v, %v", id, lease, err)
	}
	plan, err := e.parser.Compile(context.Background(), e.catalog, lease.SQL, queries.Options{Epsilon: lease.Epsilon})
	if err != nil {
		tb.Fatalf("compile the leased query: %v", err)
	}
	res := brokertest.ShapedResult(plan.Spec, []string{"female", "male", "unknown"}, func(row int) dp.Cell {
		return dp.Cell{Value: f64(float64(135 + 5*row)), Rounded: true, Dominance: []string{"nk", "p%"}}
	})
	res.Report.CellsDominanceFlags, res.Report.PartitionsNotRelease, res.Report.RowsDroppedByBounding = 3, 7, 4321
	res.Report.OptOut = dp.OptOutReport{Applied: true, Table: "optouts", SnapshotHash: strings.Repeat("cd", 32)}
	res.Report.Sandbox = dp.SandboxReport{Layers: []string{"landlock-abi-9"}}
	if err := e.svc.CompleteJob(ctx, id, lease.Token, res); err != nil {
		tb.Fatalf("complete: %v", err)
	}
}

// TestResearcherPagesShowNoCheckerData: what an output checker sees of an
// output — the full disclosure report, a failure notice's code and detail —
// never reaches a researcher's pages or downloads, whether the output was a
// result or a failure; the researcher learns of a failure only the generic
// message.
func TestResearcherPagesShowNoCheckerData(t *testing.T) {
	e := newEnv(t)
	e.mustProject(t, "Outcomes", []string{"alice"})
	alice, carol := e.signIn(t, "alice"), e.signIn(t, "carol")

	ok := e.mustSubmit(t, "alice", "SELECT sex, count(*) AS n FROM patients GROUP BY sex", "a result")
	bad := e.mustSubmit(t, "alice", "SELECT region, count(*) AS n FROM patients GROUP BY region", "a failure")
	for _, q := range []*broker.Query{ok, bad} {
		if _, err := e.svc.ApproveQuery(e.as("bob"), q.ID, ""); err != nil {
			t.Fatal(err)
		}
	}
	e.completeWithDiagnostics(t, ok.ID)
	lease, err := e.svc.LeaseJob(e.as("agent"), siteID, "")
	if err != nil || lease == nil || lease.QueryID != bad.ID {
		t.Fatalf("lease: %+v, %v", lease, err)
	}
	if err := e.svc.FailJob(e.as("agent"), bad.ID, lease.Token, "memory", "the query ran out of its 512 MB"); err != nil {
		t.Fatal(err)
	}
	checkerOnly := []string{"memory", "512 MB", "Failure notice", "dominance", "nk,", "p%", "4321", "not selected",
		"Rows dropped", strings.Repeat("cd", 32), "landlock-abi-9", "attempt"}

	// The output checker sees the notice and the diagnostics.
	for id, want := range map[int64][]string{ok.ID: {"4321", "landlock-abi-9", strings.Repeat("cd", 32)}, bad.ID: {"memory", "512 MB"}} {
		resp, body := carol.get(fmt.Sprintf("/ui/queries/%d", id))
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("checker's page of %d: %d", id, resp.StatusCode)
		}
		for _, w := range want {
			if !strings.Contains(body, w) {
				t.Errorf("checker's page of query %d lacks %q", id, w)
			}
		}
	}

	researcherPages := func(stage string, ids ...int64) map[string]string {
		pages := map[string]string{}
		paths := []string{"/ui/queries", "/ui/projects"}
		for _, id := range ids {
			paths = append(paths, fmt.Sprintf("/ui/queries/%d", id))
		}
		for _, p := range paths {
			resp, body := alice.get(p)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("%s: researcher's %s: status %d", stage, p, resp.StatusCode)
			}
			pages[p] = html.UnescapeString(body)
		}
		return pages
	}
	noCheckerData := func(stage string, pages map[string]string) {
		t.Helper()
		for p, body := range pages {
			for _, s := range checkerOnly {
				if strings.Contains(body, s) {
					t.Errorf("%s: researcher's %s contains %q", stage, p, s)
				}
			}
		}
	}
	awaiting := researcherPages("awaiting", ok.ID, bad.ID)
	noCheckerData("awaiting", awaiting)
	for _, id := range []int64{ok.ID, bad.ID} {
		if !strings.Contains(awaiting[fmt.Sprintf("/ui/queries/%d", id)], "output check") {
			t.Errorf("query %d: researcher's page does not say it awaits the output check", id)
		}
	}

	// A checker's comment on a released result is theirs to write to the
	// researcher; on a released failure notice the researcher sees only
	// the generic message, whatever the checker wrote.
	if _, err := e.svc.ReleaseQuery(e.as("carol"), ok.ID, "safe"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.ReleaseQuery(e.as("carol"), bad.ID, "checked: memory 512 MB"); err != nil {
		t.Fatal(err)
	}
	done := researcherPages("released", ok.ID, bad.ID)
	noCheckerData("released", done)
	if page := done[fmt.Sprintf("/ui/queries/%d", bad.ID)]; !strings.Contains(page, broker.FailedMessage) {
		t.Errorf("failed query's page lacks the generic message:\n%s", page)
	}
	if page := done[fmt.Sprintf("/ui/queries/%d", ok.ID)]; !strings.Contains(page, "135") {
		t.Errorf("released query's page lacks its value:\n%s", page)
	}
	for _, f := range []string{"csv", "json"} {
		resp, body := alice.get(fmt.Sprintf("/ui/queries/%d/result.%s", ok.ID, f))
		if resp.StatusCode != http.StatusOK || !strings.Contains(body, "135") {
			t.Fatalf("researcher's %s download: %d\n%s", f, resp.StatusCode, body)
		}
		for _, s := range checkerOnly {
			if strings.Contains(body, s) {
				t.Errorf("researcher's %s download contains %q", f, s)
			}
		}
	}
	if resp, _ := alice.get(fmt.Sprintf("/ui/queries/%d/result.csv", bad.ID)); resp.StatusCode != http.StatusForbidden {
		t.Errorf("download of a failed query: status %d, want 403", resp.StatusCode)
	}
}
