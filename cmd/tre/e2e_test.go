package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nhs-tre/tre/api"
	"github.com/nhs-tre/tre/api/auth"
	"github.com/nhs-tre/tre/broker"
	"github.com/nhs-tre/tre/queries"
)

// treProcess is a tre subcommand running as its own process (the test
// binary playing tre), with its output kept for failure messages.
type treProcess struct {
	cmd  *exec.Cmd
	out  *bytes.Buffer
	done chan error
}

// startTre starts `tre args…` as a child process and stops it (SIGTERM, then
// SIGKILL) when the test ends.
func startTre(tb testing.TB, args ...string) *treProcess {
	tb.Helper()
	return startTreIn(tb, "", args...)
}

// startTreIn is startTre in the working directory dir ("": the test's).
func startTreIn(tb testing.TB, dir string, args ...string) *treProcess {
	tb.Helper()
	p := &treProcess{out: &bytes.Buffer{}, done: make(chan error, 1)}
	p.cmd = exec.Command(os.Args[0], args...)
	p.cmd.Dir = dir
	p.cmd.Env = append(os.Environ(), envPlayTre+"=1")
	p.cmd.Stdout = p.out
	p.cmd.Stderr = p.out
	if err := p.cmd.Start(); err != nil {
		tb.Fatalf("start tre %s: %v", args[0], err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	tb.Cleanup(func() {
		p.stop()
		if tb.Failed() {
			tb.Logf("tre %s output:\n%s", args[0], p.out.String())
		}
	})
	return p
}

// stop asks the process to shut down and kills it if it does not.
func (p *treProcess) stop() {
	if p.cmd.ProcessState != nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// kill stops the process with SIGKILL, as a crash or an operator would.
func (p *treProcess) kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

// freeAddr returns a loopback address with a free port.
func freeAddr(tb testing.TB) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// eventually polls f until it returns nil or the timeout passes.
func eventually(tb testing.TB, timeout time.Duration, what string, f func() error) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%s: still failing after %s: %v", what, timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// testSite is a broker process and a site agent process over synthetic data.
type testSite struct {
	dir, url, data, catalog string
	metricsURL              string
	agentMetricsURL         string
	tokens                  map[string]string // by subject
	broker, agent           *treProcess
	agentArgs               []string
}

// subjects of the end-to-end tests and their roles.
var e2eUsers = map[string]broker.Role{
	"alice": broker.RoleResearcher, // member of the project
	"eve":   broker.RoleResearcher, // not a member
	"bob":   broker.RoleReviewer,
	"carol": broker.RoleOutputChecker,
	"dave":  broker.RoleAdmin,
	"site":  broker.RoleAgent,
}

// e2eSite is the site the tests' agents act for; agent tokens name it.
const e2eSite = "site-1"

// devTokens mints a dev token for each user with the broker's dev key;
// agent tokens are bound to e2eSite.
func devTokens(tb testing.TB, brokerDir string, users map[string]broker.Role) map[string]string {
	tb.Helper()
	key, err := auth.LoadOrCreateDevKey(brokerDir)
	if err != nil {
		tb.Fatal(err)
	}
	tokens := map[string]string{}
	for sub, role := range users {
		c := auth.DevClaims{Subject: sub, Name: sub, Org: "Test", Roles: []broker.Role{role}, TTL: time.Hour}
		if role == broker.RoleAgent {
			c.Site = e2eSite
		}
		tok, err := auth.MintDevToken(key, c)
		if err != nil {
			tb.Fatal(err)
		}
		tokens[sub] = tok
	}
	return tokens
}

// registerSite registers e2eSite as the admin does before its agent starts.
func registerSite(tb testing.TB, admin *api.Client) {
	tb.Helper()
	if _, err := admin.CreateSite(context.Background(), api.SiteRequest{ID: e2eSite, Name: "Test site", Organisation: "Test NHS Trust"}); err != nil {
		tb.Fatalf("register site %s: %v", e2eSite, err)
	}
}

// writeAgentToken saves the agent's token as tre agent expects (mode 0600).
func writeAgentToken(tb testing.TB, dir, token string) string {
	tb.Helper()
	path := filepath.Join(dir, "agent.token")
	if err := os.WriteFile(path, []byte(token), 0o600); err != nil {
		tb.Fatal(err)
	}
	return path
}

// startSite generates data and starts `tre serve --dev` and `tre agent` as
// real processes. The agent's sandbox children are real too.
func startSite(tb testing.TB, patients int) *testSite {
	tb.Helper()
	if testing.Short() {
		tb.Skip("end-to-end test starts real processes; skipped with -short")
	}
	s := &testSite{dir: tb.TempDir(), tokens: map[string]string{}}
	s.data = filepath.Join(s.dir, "gp.duckdb")
	s.catalog = filepath.Join(s.dir, "gp.catalog.yaml")
	var out bytes.Buffer
	if code := run(context.Background(), []string{"synth", "--out", s.data, "--patients", fmt.Sprint(patients), "--seed", "7"}, &out, &out); code != 0 {
		tb.Fatalf("tre synth exited %d:\n%s", code, out.String())
	}
	brokerDir := filepath.Join(s.dir, "broker")
	addr := freeAddr(tb)
	s.url = "http://" + addr
	adminAddr := freeAddr(tb)
	s.metricsURL = "http://" + adminAddr + "/metrics"
	s.broker = startTre(tb, "serve", "--data-dir", brokerDir, "--addr", addr, "--admin-addr", adminAddr, "--dev",
		"--dry-run-data", s.data, "--lease-ttl", "3s", "--submit-per-minute", "600",
		"--researcher-time-granularity", e2eGranularity.String())
	eventually(tb, 60*time.Second, "broker ready", func() error {
		return (&api.Client{BaseURL: s.url}).Readyz(context.Background())
	})
	s.tokens = devTokens(tb, brokerDir, e2eUsers)
	registerSite(tb, s.as("dave"))
	tokenFile := writeAgentToken(tb, s.dir, s.tokens["site"])
	agentAdmin := freeAddr(tb)
	s.agentMetricsURL = "http://" + agentAdmin + "/metrics"
	s.agentArgs = []string{"agent", "--broker", s.url, "--site-id", e2eSite, "--token-file", tokenFile, "--admin-addr", agentAdmin,
		"--data", s.data, "--catalog", s.catalog, "--poll-interval", "100ms", "--memory-limit", "512MB",
		"--scratch-dir", filepath.Join(s.dir, "scratch")}
	s.agent = startTre(tb, s.agentArgs...)
	eventually(tb, 60*time.Second, "catalog published", func() error {
		list, err := s.as("dave").Datasets(context.Background(), api.ListOptions{})
		if err != nil {
			return err
		}
		if len(list.Items) == 0 {
			return errors.New("no dataset yet")
		}
		return nil
	})
	return s
}

func (s *testSite) as(sub string) *api.Client {
	return &api.Client{BaseURL: s.url, Token: s.tokens[sub], HTTPClient: &http.Client{Timeout: 30 * time.Second}}
}

// createProject creates a project with alice as its only member.
func (s *testSite) createProject(tb testing.TB, epsilon float64) int64 {
	tb.Helper()
	p, err := s.as("dave").CreateProject(context.Background(), api.ProjectRequest{
		Title: "E2E study", Organisation: "Test University", Purpose: "Testing the whole flow",
		LawfulBasis: "Art. 6(1)(e)", Members: []string{"alice"}, Datasets: []string{"nhs_gp_synthetic"},
		EpsilonBudget: epsilon, DeltaBudget: 1e-4, ExpiresAt: time.Now().AddDate(0, 1, 0),
	})
	if err != nil {
		tb.Fatalf("create project: %v", err)
	}
	return p.ID
}

// apiStatus returns the HTTP status of an API error (0 for success).
func apiStatus(err error) int {
	var ae *api.Error
	if errors.As(err, &ae) {
		return ae.Status
	}
	if err != nil {
		return -1
	}
	return 0
}

// e2eGranularity is the end-to-end brokers' researcher time granularity:
// researchers see status changes only at its multiples (a real broker's is
// a minute).
const e2eGranularity = 200 * time.Millisecond

// TestEndToEnd runs the whole flow through HTTP with the real broker, agent
// and sandbox processes and all four human roles.
func TestEndToEnd(t *testing.T) {
	s := startSite(t, 4000)
	ctx := context.Background()
	projectID := s.createProject(t, 5)

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
	_, err := s.as("alice").SubmitQuery(ctx, api.QueryRequest{ProjectID: projectID, SQL: "SELECT patient_id FROM patients", Purpose: "x"})
	if apiStatus(err) != http.StatusUnprocessableEntity {
		t.Fatalf("submitting a row-level query: err = %v, want a 422", err)
	}

	// A dry run answers from synthetic data and costs nothing.
	dry, err := s.as("alice").DryRun(ctx, api.QueryRequest{ProjectID: projectID, SQL: sql, Purpose: "prevalence"})
	if err != nil {
		t.Fatalf("dry run: %v", err)
	}
	if !dry.Synthetic || len(dry.Rows) == 0 {
		t.Fatalf("dry run: synthetic=%v rows=%d", dry.Synthetic, len(dry.Rows))
	}

	q, err := s.as("alice").SubmitQuery(ctx, api.QueryRequest{ProjectID: projectID, SQL: sql, Purpose: "T2D prevalence by age, sex and region", Epsilon: 1})
	if err != nil {
		t.Fatalf("submit: %v", err)
	}
	if q.Status != broker.StatusSubmitted || q.Cost.Epsilon != 1 || len(q.Accuracy) == 0 {
		t.Fatalf("submitted query = status %s cost %+v accuracy %d", q.Status, q.Cost, len(q.Accuracy))
	}

	// Nobody outside the project sees it; the submitter cannot review.
	if _, err := s.as("eve").Query(ctx, q.ID); apiStatus(err) != http.StatusForbidden && apiStatus(err) != http.StatusNotFound {
		t.Errorf("non-member reads the query: err = %v, want 403 or 404", err)
	}
	if _, err := s.as("alice").ApproveQuery(ctx, q.ID, "self"); apiStatus(err) != http.StatusForbidden {
		t.Errorf("researcher approves: err = %v, want 403", err)
	}

	if _, err := s.as("bob").ApproveQuery(ctx, q.ID, "fine"); err != nil {
		t.Fatalf("approve: %v", err)
	}
	q = waitStatus(t, s.as("bob"), q.ID, broker.StatusAwaitingOutputCheck)

	// Not released yet: the researcher cannot see the output.
	if _, err := s.as("alice").Result(ctx, q.ID); apiStatus(err) != http.StatusForbidden && apiStatus(err) != http.StatusConflict && apiStatus(err) != http.StatusNotFound {
		t.Errorf("result before release: err = %v, want a refusal", err)
	}

	out, err := s.as("carol").Output(ctx, q.ID)
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
	if _, err := s.as("carol").ReleaseQuery(ctx, q.ID, "safe"); err != nil {
		t.Fatalf("release: %v", err)
	}

	waitStatus(t, s.as("alice"), q.ID, broker.StatusReleased) // at the next multiple of the granularity
	res, err := s.as("alice").Result(ctx, q.ID)
	if err != nil {
		t.Fatalf("result: %v", err)
	}
	if len(res.Rows) == 0 || len(res.Columns) == 0 {
		t.Fatalf("released table is empty: %+v", res)
	}
	csv, err := s.as("alice").ResultRaw(ctx, q.ID, "csv")
	if err != nil || !bytes.Contains(csv, []byte(res.Columns[0].Name)) {
		t.Fatalf("CSV result: %v\n%s", err, csv)
	}

	proj, err := s.as("dave").Project(ctx, projectID)
	if err != nil {
		t.Fatal(err)
	}
	if proj.Budget.EpsilonSpent != 1 || proj.Budget.EpsilonReserved != 0 {
		t.Errorf("budget after one run = %+v, want ε spent 1, reserved 0", proj.Budget)
	}
	v, err := s.as("dave").VerifyAudit(ctx)
	if err != nil || !v.OK {
		t.Errorf("audit verify = %+v, %v", v, err)
	}
	reg, err := (&api.Client{BaseURL: s.url}).Register(ctx, api.ListOptions{})
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
	resp, err := http.Get(s.metricsURL)
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
	for _, secret := range []string{s.tokens["alice"], "SELECT", "patient_id"} {
		if bytes.Contains(body, []byte(secret)) {
			t.Errorf("metrics contain %.20q", secret)
		}
	}

	// The site agent's own listener reports its sandboxes.
	resp, err = http.Get(s.agentMetricsURL)
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

// waitStatus polls until the query reaches want; a terminal status fails.
func waitStatus(tb testing.TB, c *api.Client, id int64, want broker.Status) *broker.Query {
	tb.Helper()
	var q *broker.Query
	eventually(tb, 90*time.Second, fmt.Sprintf("query %d reaching %s", id, want), func() error {
		var err error
		q, err = c.Query(context.Background(), id)
		if err != nil {
			return err
		}
		if q.Status == want {
			return nil
		}
		switch q.Status {
		case broker.StatusFailed, broker.StatusRejected, broker.StatusCancelled, broker.StatusWithheld:
			tb.Fatalf("query %d ended %s (%s)", id, q.Status, q.FailureCode)
		}
		return fmt.Errorf("status %s", q.Status)
	})
	return q
}

// TestDemoWalkthrough runs `tre demo --walkthrough` as a user would.
func TestDemoWalkthrough(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the whole demo; skipped with -short")
	}
	dir := t.TempDir()
	var out bytes.Buffer
	args := []string{"demo", "--walkthrough", "--dir", dir, "--patients", "3000", "--addr", "127.0.0.1:0"}
	if code := run(context.Background(), args, &out, &out); code != 0 {
		t.Fatalf("tre demo --walkthrough exited %d:\n%s\n--- log:\n%s", code, out.String(), readFile(t, filepath.Join(dir, "tre.log")))
	}
	for _, want := range []string{"submits", "approves", "released", "Walkthrough complete"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("walkthrough output lacks %q:\n%s", want, out.String())
		}
	}
	// A second run reuses the directory: the data is not generated again.
	out.Reset()
	if code := run(context.Background(), args, &out, &out); code != 0 {
		t.Fatalf("second walkthrough exited %d:\n%s", code, out.String())
	}
	if !strings.Contains(out.String(), "Reusing") {
		t.Errorf("second run did not reuse the demo directory:\n%s", out.String())
	}
}

func readFile(tb testing.TB, path string) string {
	tb.Helper()
	b, _ := os.ReadFile(path)
	return string(b)
}

// TestWebDryRun signs in to the web interface as a browser would and dry-runs
// a query through the broker's real sandbox over synthetic data.
func TestWebDryRun(t *testing.T) {
	s := startSite(t, 3000)
	projectID := s.createProject(t, 5)
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
	_, body := page(c.Get(s.url + "/ui/signin"))
	if code, _ := page(c.PostForm(s.url+"/ui/signin", url.Values{"csrf": {csrf(body)}, "token": {s.tokens["alice"]}})); code != http.StatusSeeOther {
		t.Fatalf("sign in: status %d", code)
	}
	_, body = page(c.Get(s.url + "/ui/editor"))
	code, body := page(c.PostForm(s.url+"/ui/editor", url.Values{
		"csrf": {csrf(body)}, "action": {"dryrun"}, "project_id": {fmt.Sprint(projectID)},
		"sql":     {"SELECT p.sex, count(*) AS n FROM patients p GROUP BY p.sex"},
		"purpose": {"dry run from the browser"},
	}))
	if code != http.StatusOK || !strings.Contains(body, "SYNTHETIC DATA") || !strings.Contains(body, "female") {
		t.Fatalf("dry run page: status %d\n%.3000s", code, body)
	}
	// A dry run spends nothing.
	proj, err := s.as("dave").Project(context.Background(), projectID)
	if err != nil {
		t.Fatal(err)
	}
	if proj.Budget.EpsilonSpent != 0 || proj.Budget.EpsilonReserved != 0 {
		t.Errorf("budget after a dry run = %+v, want nothing spent or reserved", proj.Budget)
	}
}
