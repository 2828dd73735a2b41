package flow

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nhs-tre/tre/api"
	"github.com/nhs-tre/tre/broker"
	"github.com/nhs-tre/tre/e2e"
	"github.com/nhs-tre/tre/queries"
)

// TestEndToEnd runs the whole flow through HTTP with the real broker, agent
// and sandbox processes and all four human roles.
func TestEndToEnd(t *testing.T) {
	s := e2e.StartSite(t, 4000)
	ctx := context.Background()
	projectID := s.CreateProject(t, 5)

	var sql string
	for _, tq := range queries.TypicalQueries {
		if tq.Name == "t2d_prevalence_by_age_sex_region" {
			sql = tq.SQL
		}
	}
	if sql == "" {
		t.Fatal("no type 2 diabetes prevalence query in queries.TypicalQueries")
	}

	// A refused query says why, with a 422.
	_, err := s.As("alice").SubmitQuery(ctx, api.QueryRequest{ProjectID: projectID, SQL: "SELECT patient_id FROM patients", Purpose: "x"})
	if e2e.APIStatus(err) != http.StatusUnprocessableEntity {
		t.Fatalf("submitting a row-level query: err = %v, want a 422", err)
	}

	// A dry run answers from synthetic data and costs nothing.
	dry, err := s.As("alice").DryRun(ctx, api.QueryRequest{ProjectID: projectID, SQL: sql, Purpose: "prevalence"})
	if err != nil {
		t.Fatalf("dry run: %v", err)
	}
	if !dry.Synthetic || len(dry.Rows) == 0 {
		t.Fatalf("dry run: synthetic=%v rows=%d", dry.Synthetic, len(dry.Rows))
	}

	q, err := s.As("alice").SubmitQuery(ctx, api.QueryRequest{ProjectID: projectID, SQL: sql, Purpose: "T2D prevalence by age, sex and region", Epsilon: 1})
	if err != nil {
		t.Fatalf("submit: %v", err)
	}
	if q.Status != broker.StatusSubmitted || q.Cost.Epsilon != 1 || len(q.Accuracy) == 0 {
		t.Fatalf("submitted query = status %s cost %+v accuracy %d", q.Status, q.Cost, len(q.Accuracy))
	}

	// Nobody outside the project sees it; the submitter cannot review.
	if _, err := s.As("eve").Query(ctx, q.ID); e2e.APIStatus(err) != http.StatusForbidden && e2e.APIStatus(err) != http.StatusNotFound {
		t.Errorf("non-member reads the query: err = %v, want 403 or 404", err)
	}
	if _, err := s.As("alice").ApproveQuery(ctx, q.ID, "self"); e2e.APIStatus(err) != http.StatusForbidden {
		t.Errorf("researcher approves: err = %v, want 403", err)
	}

	if _, err := s.As("bob").ApproveQuery(ctx, q.ID, "fine"); err != nil {
		t.Fatalf("approve: %v", err)
	}
	q = e2e.WaitStatus(t, s.As("bob"), q.ID, broker.StatusAwaitingOutputCheck)

	// Not released yet: the researcher cannot see the output.
	if _, err := s.As("alice").Result(ctx, q.ID); e2e.APIStatus(err) != http.StatusForbidden && e2e.APIStatus(err) != http.StatusConflict && e2e.APIStatus(err) != http.StatusNotFound {
		t.Errorf("result before release: err = %v, want a refusal", err)
	}

	out, err := s.As("carol").Output(ctx, q.ID)
	if err != nil {
		t.Fatalf("output: %v", err)
	}
	rep := out.Result.Report
	if !rep.OptOut.Applied || rep.OptOut.SnapshotHash == "" {
		t.Errorf("disclosure report: opt-out filter not reported: %+v", rep.OptOut)
	}
	if rep.Epsilon != 1 || len(rep.Sandbox.Layers) == 0 {
		t.Errorf("disclosure report: ε %g, sandbox layers %v", rep.Epsilon, rep.Sandbox.Layers)
	}
	if _, err := s.As("carol").ReleaseQuery(ctx, q.ID, "safe"); err != nil {
		t.Fatalf("release: %v", err)
	}

	e2e.WaitStatus(t, s.As("alice"), q.ID, broker.StatusReleased) // at the next multiple of the granularity
	res, err := s.As("alice").Result(ctx, q.ID)
	if err != nil {
		t.Fatalf("result: %v", err)
	}
	if len(res.Rows) == 0 || len(res.Columns) == 0 {
		t.Fatalf("released table is empty: %+v", res)
	}
	csv, err := s.As("alice").ResultRaw(ctx, q.ID, "csv")
	if err != nil || !bytes.Contains(csv, []byte(res.Columns[0].Name)) {
		t.Fatalf("CSV result: %v\n%s", err, csv)
	}

	proj, err := s.As("dave").Project(ctx, projectID)
	if err != nil {
		t.Fatal(err)
	}
	if proj.Budget.EpsilonSpent != 1 || proj.Budget.EpsilonReserved != 0 {
		t.Errorf("budget after one run = %+v, want ε spent 1, reserved 0", proj.Budget)
	}
	v, err := s.As("dave").VerifyAudit(ctx)
	if err != nil || !v.OK {
		t.Errorf("audit verify = %+v, %v", v, err)
	}
	reg, err := (&api.Client{BaseURL: s.URL}).Register(ctx, api.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, e := range reg.Items {
		if e.ProjectID == projectID {
			found = true
			if e.ReleasedQueries != 1 || e.EpsilonSpent != 1 {
				t.Errorf("register entry = %+v, want 1 released query and ε 1 spent", e)
			}
		}
	}
	if !found {
		t.Errorf("project %d missing from the public register", projectID)
	}

	// The operator's metrics reflect the flow, with no ids, tokens or SQL in
	// their labels.
	resp, err := http.Get(s.MetricsURL)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`tre_http_requests_total{method="POST",route="/api/v1/queries",status="201"}`,
		`tre_queries{status="released"} 1`,
		`tre_query_state_duration_seconds_count{state="awaiting_output_check"} 1`,
		`tre_jobs_total{code="",outcome="completed"} 1`,
		fmt.Sprintf(`tre_project_budget_spent{parameter="epsilon",project="%d"} 1`, projectID),
		`tre_agent_last_seen_timestamp_seconds{site="site-1"}`,
	} {
		if !bytes.Contains(body, []byte(want)) {
			t.Errorf("metrics lack %s", want)
		}
	}
	for _, secret := range []string{s.Tokens["alice"], "SELECT", "patient_id"} {
		if bytes.Contains(body, []byte(secret)) {
			t.Errorf("metrics contain %.20q", secret)
		}
	}

	// The site agent's own listener reports its sandboxes.
	resp, err = http.Get(s.AgentMetricsURL)
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{"tre_sandbox_starts_total 1", `tre_sandbox_duration_seconds_count{outcome="ok"} 1`} {
		if !bytes.Contains(body, []byte(want)) {
			t.Errorf("agent metrics lack %s", want)
		}
	}
}

// TestDemoWalkthrough runs `tre demo --walkthrough` as a user would.
func TestDemoWalkthrough(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the whole demo; skipped with -short")
	}
	dir := t.TempDir()
	var out bytes.Buffer
	args := []string{"demo", "--walkthrough", "--dir", dir, "--patients", "3000", "--addr", "127.0.0.1:0"}
	if code := e2e.RunTre(context.Background(), args, &out, &out); code != 0 {
		t.Fatalf("tre demo --walkthrough exited %d:\n%s\n--- log:\n%s", code, out.String(), e2e.ReadFile(t, filepath.Join(dir, "tre.log")))
	}
	for _, want := range []string{"submits", "approves", "released", "Walkthrough complete"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("walkthrough output lacks %q:\n%s", want, out.String())
		}
	}
	// A second run reuses the directory: the data is not generated again.
	out.Reset()
	if code := e2e.RunTre(context.Background(), args, &out, &out); code != 0 {
		t.Fatalf("second walkthrough exited %d:\n%s", code, out.String())
	}
	if !strings.Contains(out.String(), "Reusing") {
		t.Errorf("second run did not reuse the demo directory:\n%s", out.String())
	}
}

// TestWebDryRun signs in to the web interface as a browser would and dry-runs
// a query through the broker's real sandbox over synthetic data.
func TestWebDryRun(t *testing.T) {
	s := e2e.StartSite(t, 3000)
	projectID := s.CreateProject(t, 5)
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	c := &http.Client{Jar: jar, Timeout: 60 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	page := func(resp *http.Response, err error) (int, string) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	csrf := func(body string) string {
		t.Helper()
		m := regexp.MustCompile(`name="csrf" value="([^"]+)"`).FindStringSubmatch(body)
		if m == nil {
			t.Fatalf("no CSRF token in page:\n%.2000s", body)
		}
		return m[1]
	}
	_, body := page(c.Get(s.URL + "/ui/signin"))
	if code, _ := page(c.PostForm(s.URL+"/ui/signin", url.Values{"csrf": {csrf(body)}, "token": {s.Tokens["alice"]}})); code != http.StatusSeeOther {
		t.Fatalf("sign in: status %d", code)
	}
	_, body = page(c.Get(s.URL + "/ui/editor"))
	code, body := page(c.PostForm(s.URL+"/ui/editor", url.Values{
		"csrf": {csrf(body)}, "action": {"dryrun"}, "project_id": {fmt.Sprint(projectID)},
		"sql":     {"SELECT p.sex, count(*) AS n FROM patients p GROUP BY p.sex"},
		"purpose": {"dry run from the browser"},
	}))
	if code != http.StatusOK || !strings.Contains(body, "SYNTHETIC DATA") || !strings.Contains(body, "female") {
		t.Fatalf("dry run page: status %d\n%.3000s", code, body)
	}
	// A dry run spends nothing.
	proj, err := s.As("dave").Project(context.Background(), projectID)
	if err != nil {
		t.Fatal(err)
	}
	if proj.Budget.EpsilonSpent != 0 || proj.Budget.EpsilonReserved != 0 {
		t.Errorf("budget after a dry run = %+v, want nothing spent or reserved", proj.Budget)
	}
}
