package web_test

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/nhs-tre/tre/broker"
)

// TestBrowserFindYourWay drives a real browser through the pages that help
// people find their way: each role's home page with what needs them, the
// catalog beside the editor (click to insert a value and a code), a chart
// with its axis, intervals and whole labels, a run retried at the site as
// one timeline row with times to the second for staff, and the audit log a
// page at a time with its filters.
func TestBrowserFindYourWay(t *testing.T) {
	ctx, problems := newBrowser(t, browserLimit)
	e := newEnv(t)

	// A researcher with nothing submitted is pointed at the editor.
	e.browserSignIn(t, ctx, "alice")
	run(t, ctx, "researcher home", chromedp.Navigate(e.srv.URL+"/ui/"), chromedp.WaitVisible(chromedp.CSS(`#home-results`)))
	home := value(t, ctx, "read the home page", chromedp.Text(chromedp.CSS(`main`)))
	for _, want := range []string{"You have not submitted a query yet", "Diabetes outcomes", "Remaining ε 10 of 10"} {
		if !strings.Contains(home, want) {
			t.Errorf("researcher home lacks %q:\n%s", want, home)
		}
	}

	// The catalog: open tables, click a domain value and a code into the
	// SQL; the live check then accepts the query.
	run(t, ctx, "write with the catalog",
		chromedp.Navigate(e.srv.URL+"/ui/editor"),
		chromedp.WaitVisible(chromedp.CSS(`aside.catalog`)),
		chromedp.SendKeys(chromedp.CSS(`#sql`), "SELECT region, count(*) AS n FROM patients p JOIN events e ON e.patient_id = p.patient_id WHERE sex = "),
		chromedp.Click(chromedp.CSS(`aside.catalog details.table:nth-of-type(1) > summary`)),
		chromedp.Click(chromedp.CSS(`aside.catalog button.insert.value[data-insert="'female'"]`)),
		chromedp.SendKeys(chromedp.CSS(`#sql`), " AND e.code = "),
		chromedp.Click(chromedp.CSS(`aside.catalog details.table:nth-of-type(2) > summary`)),
		chromedp.Click(chromedp.CSS(`aside.catalog details.codes > summary`)),
		chromedp.Click(chromedp.CSS(`aside.catalog button.insert.value[data-insert="'44054006'"]`)),
		chromedp.SendKeys(chromedp.CSS(`#sql`), " GROUP BY region"),
		chromedp.SendKeys(chromedp.CSS(`#purpose`), "Type 2 diabetes in women by region"),
		chromedp.WaitVisible(chromedp.CSS(`#check-result p.ok`)),
	)
	sql := value(t, ctx, "read the SQL", chromedp.Value(chromedp.CSS(`#sql`)))
	if want := "WHERE sex = 'female' AND e.code = '44054006' GROUP BY region"; !strings.Contains(sql, want) {
		t.Errorf("SQL after the clicks = %q, want it to contain %q", sql, want)
	}
	screenshot(t, ctx, "researcher-editor")
	run(t, ctx, "submit", chromedp.Click(chromedp.CSS(`button[value="submit"]`)), chromedp.WaitVisible(chromedp.CSS(`p.notice`)))
	loc := value(t, ctx, "location", chromedp.Location())
	var id int64
	if _, err := fmt.Sscanf(loc[strings.LastIndex(loc, "/")+1:], "%d", &id); err != nil {
		t.Fatalf("query id from %q: %v", loc, err)
	}
	e.browserSignOut(t, ctx)

	// The reviewer's home says what waits, with its age.
	e.clock.Add(40 * time.Minute) // tokens last an hour
	e.browserSignIn(t, ctx, "bob")
	run(t, ctx, "reviewer home", chromedp.Navigate(e.srv.URL+"/ui/"), chromedp.WaitVisible(chromedp.CSS(`#home-review`)))
	home = value(t, ctx, "read the home page", chromedp.Text(chromedp.CSS(`main`)))
	if want := "1 query waits for your review. The oldest has waited 40 minutes."; !strings.Contains(home, want) {
		t.Errorf("reviewer home lacks %q:\n%s", want, home)
	}
	screenshot(t, ctx, "reviewer-home")
	if _, err := e.svc.ApproveQuery(e.as("bob"), id, "fine"); err != nil {
		t.Fatal(err)
	}
	e.browserSignOut(t, ctx)

	// The site fails twice, then completes: one timeline row.
	for range 2 {
		lease, err := e.svc.LeaseJob(e.as("agent"), siteID, "")
		if err != nil || lease == nil {
			t.Fatalf("lease: %v %v", lease, err)
		}
		if err := e.svc.FailJob(e.as("agent"), id, lease.Token, "crashed", "the sandbox died without answering"); err != nil {
			t.Fatal(err)
		}
	}
	e.mustComplete(t, id, "North", "South", "Yorkshire and The Humber")

	// The output checker: the timeline and times to the second, the
	// chart with whole labels, axis and intervals.
	e.browserSignIn(t, ctx, "carol")
	run(t, ctx, "checker home", chromedp.Navigate(e.srv.URL+"/ui/"), chromedp.WaitVisible(chromedp.CSS(`#home-check`)))
	if home = value(t, ctx, "read the home page", chromedp.Text(chromedp.CSS(`main`))); !strings.Contains(home, "1 result waits for an output check") {
		t.Errorf("checker home:\n%s", home)
	}
	run(t, ctx, "open the output", chromedp.Navigate(fmt.Sprintf("%s/ui/queries/%d", e.srv.URL, id)), chromedp.WaitVisible(chromedp.CSS(`#release`)))
	rows := value(t, ctx, "timeline", chromedp.Evaluate[[]string](`Array.from(document.querySelectorAll("ol.timeline li")).map(li => li.textContent)`))
	running := 0
	for _, r := range rows {
		if strings.Contains(r, "Running at the site") {
			running++
			if !strings.Contains(r, "3 attempts") || !strings.Contains(r, "attempt 2 failed") {
				t.Errorf("running row %q, want 3 attempts and the failures", r)
			}
		}
		if !regexp.MustCompile(`\d\d:\d\d:\d\d UTC`).MatchString(r) {
			t.Errorf("timeline row %q has no time to the second", r)
		}
	}
	if running != 1 {
		t.Errorf("timeline has %d running rows, want 1:\n%s", running, strings.Join(rows, "\n"))
	}
	// Every label lies inside the chart: none is cut.
	cut := value(t, ctx, "labels inside the chart", chromedp.Evaluate[[]string](`(() => {
		const svg = document.querySelector("figure.chart svg"), out = [];
		for (const t of svg.querySelectorAll("text.label")) { const b = t.getBBox(); if (b.x < 0) out.push(t.textContent + " (x=" + b.x + ", width " + b.width + ")"); }
		return out; })()`))
	if len(cut) > 0 {
		t.Errorf("chart labels cut at the left edge: %q", cut)
	}
	labels := value(t, ctx, "chart labels", chromedp.Evaluate[[]string](`Array.from(document.querySelectorAll("figure.chart text.label")).map(t => t.textContent)`))
	if strings.Join(labels, "|") != "North|South|Yorkshire and The Humber" {
		t.Errorf("chart labels %q", labels)
	}
	ticks := value(t, ctx, "axis ticks", chromedp.Evaluate[int](`document.querySelectorAll("figure.chart text.tick").length`))
	whiskers := value(t, ctx, "interval lines", chromedp.Evaluate[int](`document.querySelectorAll("figure.chart line.ci").length`))
	if ticks < 3 || whiskers != 2*3 {
		t.Errorf("chart has %d ticks and %d interval lines, want ≥ 3 and 6 (two released bars)", ticks, whiskers)
	}
	run(t, ctx, "release", chromedp.Click(chromedp.CSS(`#release`)), chromedp.WaitVisible(chromedp.CSS(`p.notice`)))
	e.browserSignOut(t, ctx)

	// The researcher, once the release shows for them: the chart and the
	// result on the home page.
	e.clock.Add(time.Minute) // researchers see status changes a granularity later
	e.browserSignIn(t, ctx, "alice")
	run(t, ctx, "read the result", chromedp.Navigate(fmt.Sprintf("%s/ui/queries/%d", e.srv.URL, id)), chromedp.WaitVisible(chromedp.CSS(`figure.chart`)))
	if n := value(t, ctx, "researcher's chart intervals", chromedp.Evaluate[int](`document.querySelectorAll("figure.chart line.ci").length`)); n != 2*3 {
		t.Errorf("the researcher's chart has %d interval lines, want 6", n)
	}
	screenshot(t, ctx, "researcher-result")
	run(t, ctx, "researcher home", chromedp.Navigate(e.srv.URL+"/ui/"), chromedp.WaitVisible(chromedp.CSS(`#home-results`)))
	if home = value(t, ctx, "read the home page", chromedp.Text(chromedp.CSS(`section[aria-labelledby="home-results"]`))); !strings.Contains(home, "Results released to you") || !strings.Contains(home, "Type 2 diabetes in women by region") {
		t.Errorf("researcher home after the release:\n%s", home)
	}
	screenshot(t, ctx, "researcher-home")
	e.browserSignOut(t, ctx)

	// A run that fails: the output checker reads what the failure means
	// and what it cost; the researcher, once the notice is released, only
	// the data-independent explanation.
	slow := e.mustSubmit(t, "alice", "SELECT sex, count(*) AS n FROM patients GROUP BY sex", "A query that will time out")
	if _, err := e.svc.ApproveQuery(e.as("bob"), slow.ID, "fine"); err != nil {
		t.Fatal(err)
	}
	lease, err := e.svc.LeaseJob(e.as("agent"), siteID, "")
	if err != nil || lease == nil {
		t.Fatalf("lease: %v %v", lease, err)
	}
	if err := e.svc.FailJob(e.as("agent"), slow.ID, lease.Token, "timeout", "the job ran past its time limit"); err != nil {
		t.Fatal(err)
	}
	e.browserSignIn(t, ctx, "carol")
	run(t, ctx, "open the failure notice", chromedp.Navigate(fmt.Sprintf("%s/ui/queries/%d", e.srv.URL, slow.ID)), chromedp.WaitVisible(chromedp.CSS(`#release`)))
	notice := value(t, ctx, "read the notice", chromedp.Text(chromedp.CSS(`main`)))
	for _, want := range []string{"The run failed at the site: timeout", "the query ran longer than the site allows one job", "ε 0.5 of the project's budget was spent when the first attempt started"} {
		if !strings.Contains(notice, want) {
			t.Errorf("failure notice page lacks %q:\n%s", want, notice)
		}
	}
	screenshot(t, ctx, "output-check-failure")
	run(t, ctx, "release the notice", chromedp.Click(chromedp.CSS(`#release`)), chromedp.WaitVisible(chromedp.CSS(`p.notice`)))
	e.browserSignOut(t, ctx)
	e.clock.Add(time.Minute)
	e.browserSignIn(t, ctx, "alice")
	run(t, ctx, "researcher reads the failure", chromedp.Navigate(fmt.Sprintf("%s/ui/queries/%d", e.srv.URL, slow.ID)), chromedp.WaitVisible(chromedp.CSS(`#hist-h`)))
	failed := value(t, ctx, "read the failure", chromedp.Text(chromedp.CSS(`main`)))
	if !strings.Contains(failed, broker.FailedMessage+" That was ε 0.5 of the project's budget") {
		t.Errorf("researcher's failed query lacks the explanation of the spent ε:\n%s", failed)
	}
	for _, secret := range []string{"timeout", "time limit"} {
		if strings.Contains(failed, secret) {
			t.Errorf("the researcher sees the failure's class %q:\n%s", secret, failed)
		}
	}
	e.browserSignOut(t, ctx)

	// The audit log, 50 entries a page, newest first, filters kept across
	// pages.
	for i := range 60 {
		e.mustSubmit(t, "alice", fmt.Sprintf("SELECT sex, count(*) AS n FROM patients WHERE age > %d GROUP BY sex", i), "audit volume")
	}
	e.browserSignIn(t, ctx, "dave")
	run(t, ctx, "admin home", chromedp.Navigate(e.srv.URL+"/ui/"), chromedp.WaitVisible(chromedp.CSS(`#home-admin`)))
	screenshot(t, ctx, "admin-home")
	run(t, ctx, "audit page 1", chromedp.Navigate(e.srv.URL+"/ui/admin/audit"), chromedp.WaitVisible(chromedp.CSS(`nav.pager`)))
	caption := value(t, ctx, "caption", chromedp.Text(chromedp.CSS(`table.audit caption`)))
	if !regexp.MustCompile(`^Entries 1–50 of \d+, newest first \(page 1 of \d+\)$`).MatchString(caption) {
		t.Errorf("audit caption %q", caption)
	}
	n := value(t, ctx, "rows", chromedp.Evaluate[int](`document.querySelectorAll("table.audit tbody tr").length`))
	if n != 50 {
		t.Errorf("audit page shows %d rows, want 50", n)
	}
	when := value(t, ctx, "a time", chromedp.Text(chromedp.CSS(`table.audit tbody tr td:nth-child(2)`)))
	if !regexp.MustCompile(`^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$`).MatchString(when) {
		t.Errorf("audit time %q, want it to the second with its zone", when)
	}
	screenshot(t, ctx, "admin-audit")
	run(t, ctx, "filter and page",
		chromedp.SendKeys(chromedp.CSS(`#action`), "query.submit"),
		chromedp.Click(chromedp.CSS(`form.filters button`)),
		// The filtered page's link to the next page carries the filter.
		chromedp.WaitVisible(chromedp.CSS(`a[rel="next"][href*="action=query.submit"]`)),
		chromedp.Click(chromedp.CSS(`a[rel="next"]`)),
		chromedp.WaitVisible(chromedp.CSS(`a[rel="prev"]`)),
	)
	caption = value(t, ctx, "caption", chromedp.Text(chromedp.CSS(`table.audit caption`)))
	if caption != "Entries 51–62 of 62, newest first (page 2 of 2)" {
		t.Errorf("filtered page 2 caption %q", caption)
	}
	actions := value(t, ctx, "actions", chromedp.Evaluate[[]string](`Array.from(document.querySelectorAll("table.audit tbody td:nth-child(4)")).map(td => td.textContent)`))
	for _, a := range actions {
		if a != "query.submit" {
			t.Errorf("filtered audit page shows action %q", a)
		}
	}

	if msgs := problems.all(); len(msgs) > 0 {
		t.Errorf("the browser reported errors (CSP violations or script exceptions):\n%s", strings.Join(msgs, "\n"))
	}
}
