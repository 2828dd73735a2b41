package web_test

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"testing"

	"github.com/nhs-tre/tre/broker"
	"github.com/nhs-tre/tre/dp"
	"github.com/nhs-tre/tre/queries"
)

// TestFederationPages: a dataset two sites hold is shown with both on the
// sites page; a query over it explains to the reviewer what each site and
// the project are charged; the output checker sees each site's part of a
// failure.
func TestFederationPages(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	if err := e.svc.CreateSite(e.as("dave"), &broker.Site{ID: "site-b", Name: "Site B", Organisation: "Other NHS Trust"}); err != nil {
		t.Fatal(err)
	}
	agentB := broker.NewContext(ctx, &broker.User{Subject: "agent-b", Roles: []broker.Role{broker.RoleAgent}, Site: "site-b"})
	cat := *e.catalog
	cat.Description = "site b's copy"
	if err := e.svc.PublishCatalog(agentB, "site-b", "", &cat); err != nil {
		t.Fatal(err)
	}
	dave, bob, carol := e.signIn(t, "dave"), e.signIn(t, "bob"), e.signIn(t, "carol")
	_, body := dave.get("/ui/admin/sites")
	if !strings.Contains(body, "site-a, site-b <span class=\"status wait\">federated") {
		t.Errorf("the sites page does not show gp_test held by both sites")
	}
	q := e.mustSubmit(t, "alice", "SELECT sex, count(*) AS n FROM patients GROUP BY sex", "federated")
	if q.Federation == nil || q.Federation.Sites != 2 {
		t.Fatalf("federation %+v, want 2 sites", q.Federation)
	}
	_, body = bob.get(fmt.Sprintf("/ui/queries/%d", q.ID))
	for _, want := range []string{
		"held by <strong>2 sites</strong>",
		"(2 × the site cost: a patient may be at several sites)",
		fmt.Sprintf("Approve and reserve ε %s", epsText(q.Federation.ProjectCost.Epsilon)),
	} {
		if !strings.Contains(body, want) {
			t.Errorf("the review page lacks %q", want)
		}
	}
	// The editor: the check quotes the project's cost for both sites; a
	// dry run is labelled one site's answer.
	alice := withDryRunner(t, e).signIn(t, "alice")
	form := url.Values{"csrf": {alice.csrf()}, "project_id": {fmt.Sprint(e.project.ID)}, "sql": {q.SQL}, "purpose": {"federated"}}
	for action, wants := range map[string][]string{
		"check": {"2 sites hold this dataset", fmt.Sprintf("<strong>ε %s</strong>", epsText(q.Federation.ProjectCost.Epsilon)),
			fmt.Sprintf("ε %s for each site", epsText(q.Cost.Epsilon)), "The accuracy below is the combined answer's."},
		"dryrun": {"2 sites hold this dataset", "One site's answer, not the combined one.", "The submitted query runs at all 2 sites"},
	} {
		form.Set("action", action)
		resp, body := alice.post("/ui/editor", form)
		if resp.StatusCode != 200 {
			t.Fatalf("editor %s: status %d", action, resp.StatusCode)
		}
		for _, want := range wants {
			if !strings.Contains(body, want) {
				t.Errorf("the editor's %s lacks %q", action, want)
			}
		}
		if action == "check" && strings.Contains(body, "One site's answer") {
			t.Errorf("a check is labelled as a dry run")
		}
	}
	if _, err := e.svc.ApproveQuery(e.as("bob"), q.ID, ""); err != nil {
		t.Fatal(err)
	}
	l, err := e.svc.LeaseJob(e.as("agent"), siteID, "")
	if err != nil || l == nil || !l.Partial {
		t.Fatalf("lease %+v, %v", l, err)
	}
	plan, err := e.parser.Compile(ctx, e.catalog, q.SQL, queries.Options{Epsilon: q.Cost.Epsilon, Federated: true})
	if err != nil {
		t.Fatal(err)
	}
	part, err := dp.ProtectPartial(plan.Spec, nil, dp.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.svc.CompletePartial(e.as("agent"), q.ID, l.Token, part); err != nil {
		t.Fatal(err)
	}
	lb, err := e.svc.LeaseJob(agentB, "site-b", "")
	if err != nil || lb == nil {
		t.Fatalf("lease at site-b %+v, %v", lb, err)
	}
	if err := e.svc.FailJob(agentB, q.ID, lb.Token, "timeout", "too slow"); err != nil {
		t.Fatal(err)
	}
	_, body = carol.get(fmt.Sprintf("/ui/queries/%d", q.ID))
	for _, want := range []string{"federation_site_failed", "<td>site-a</td><td>done</td>", "<td>site-b</td><td>failed</td><td>1</td><td>timeout</td>"} {
		if !strings.Contains(body, want) {
			t.Errorf("the output check page lacks %q", want)
		}
	}
}

// epsText is ε as the pages print it.
func epsText(eps float64) string {
	return strings.TrimRight(strings.TrimRight(fmt.Sprintf("%.6f", eps), "0"), ".")
}
