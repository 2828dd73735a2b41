package web_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/chromedp/chromedp"

	"github.com/nhs-tre/tre/broker"
)

// TestBrowserCodelists drives a real browser through the codelist pages: a
// reviewer's query page lists the codelist the query joins (name, number of
// codes, first terms) with a link to its page, which shows its codes,
// terms, uploader and the queries that used it; the list of codelists and a
// codelist's page are public (signed out); the register names the
// codelist beside the project once the query is released.
func TestBrowserCodelists(t *testing.T) {
	ctx, problems := newBrowser(t, browserLimit)
	e := newEnv(t)
	const name = "opensafely/asthma-diagnosis/2020-04-15"
	cl, err := e.svc.CreateCodelist(e.as("alice"), broker.CodelistUpload{Name: name, Description: "Asthma diagnosis",
		CSV: "code,term\n195967001,Asthma\n44054006,Diabetes mellitus type 2\n266361008,Intrinsic asthma\n389145006,Allergic asthma\n"})
	if err != nil {
		t.Fatal(err)
	}
	q := e.mustSubmit(t, "alice", "SELECT region, count(*) AS n FROM patients p JOIN events e ON e.patient_id = p.patient_id "+
		"JOIN codelists cl ON cl.code = e.code AND cl.codelist = '"+name+"' GROUP BY region", "Asthma by region")

	e.browserSignIn(t, ctx, "bob")
	run(t, ctx, "review page", chromedp.Navigate(fmt.Sprintf("%s/ui/queries/%d", e.srv.URL, q.ID)), chromedp.WaitVisible(chromedp.CSS(`section.codelists`)))
	section := value(t, ctx, "read the codelists section", chromedp.Text(chromedp.CSS(`section.codelists`)))
	for _, want := range []string{name, "4 codes", "Asthma; Diabetes mellitus type 2; Intrinsic asthma"} {
		if !strings.Contains(section, want) {
			t.Errorf("review page's codelists lack %q:\n%s", want, section)
		}
	}
	run(t, ctx, "open the codelist", chromedp.Click(chromedp.CSS(`section.codelists a`)), chromedp.WaitVisible(chromedp.CSS(`#codelist-codes`)))
	page := value(t, ctx, "read the codelist page", chromedp.Text(chromedp.CSS(`main`)))
	for _, want := range []string{"389145006", "Allergic asthma", "alice", cl.Hash, fmt.Sprintf("Query %d of project %d", q.ID, e.project.ID)} {
		if !strings.Contains(page, want) {
			t.Errorf("codelist page lacks %q:\n%s", want, page)
		}
	}
	if _, err := e.svc.ApproveQuery(e.as("bob"), q.ID, "ok"); err != nil {
		t.Fatal(err)
	}
	e.mustComplete(t, q.ID)
	if _, err := e.svc.ReleaseQuery(e.as("carol"), q.ID, "ok"); err != nil {
		t.Fatal(err)
	}
	e.browserSignOut(t, ctx)

	// Signed out: the list, the codelist and the register.
	run(t, ctx, "public list", chromedp.Navigate(e.srv.URL+"/ui/codelists"), chromedp.WaitVisible(chromedp.CSS(`table.codelists`)))
	list := value(t, ctx, "read the list", chromedp.Text(chromedp.CSS(`table.codelists`)))
	if !strings.Contains(list, name) || !strings.Contains(list, "Asthma diagnosis") {
		t.Errorf("public list:\n%s", list)
	}
	run(t, ctx, "public codelist", chromedp.Click(chromedp.CSS(`table.codelists a`)), chromedp.WaitVisible(chromedp.CSS(`#codelist-used`)))
	used := value(t, ctx, "read who used it", chromedp.Text(chromedp.CSS(`#codelist-used`)))
	if !strings.Contains(used, fmt.Sprintf("Query %d", q.ID)) {
		t.Errorf("public codelist page does not show the released query: %s", used)
	}
	run(t, ctx, "register", chromedp.Navigate(e.srv.URL+"/register"), chromedp.WaitVisible(chromedp.CSS(`table.register`)))
	reg := value(t, ctx, "read the register", chromedp.Text(chromedp.CSS(`table.register`)))
	if !strings.Contains(reg, name) || !strings.Contains(reg, cl.Hash) {
		t.Errorf("register lacks the codelist and its hash:\n%s", reg)
	}
	for _, p := range problems.all() {
		t.Errorf("browser: %s", p)
	}
}
