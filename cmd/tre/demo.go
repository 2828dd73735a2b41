package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nhs-tre/tre/api"
	"github.com/nhs-tre/tre/api/auth"
	"github.com/nhs-tre/tre/api/web"
	"github.com/nhs-tre/tre/broker"
	"github.com/nhs-tre/tre/synth"
)

// DemoMain is `tre demo`: synthetic data, a broker, a site agent and its
// sandbox in one process tree, with a demo project and a token per role.
type DemoMain struct {
	Dir         string
	Addr        string
	Patients    int
	Seed        int64
	Walkthrough bool
	Strict      bool

	stdout, stderr io.Writer
	getenv         func(string) string
	now            func() time.Time
}

func newDemoMain(stdout, stderr io.Writer) command {
	return &DemoMain{stdout: stdout, stderr: stderr, getenv: os.Getenv, now: time.Now}
}

// ParseFlags parses the demo's flags.
func (m *DemoMain) ParseFlags(ctx context.Context, args []string) error {
	fs := newFlagSet("demo", m.stderr)
	fs.StringVar(&m.Dir, "dir", "tre-demo", "directory for the demo's data, store and keys (reused by later runs)")
	addr := m.getenv("TRE_ADDR")
	if addr == "" {
		addr = "127.0.0.1:8080"
	}
	fs.StringVar(&m.Addr, "addr", addr, "broker listen address, loopback only; from TRE_ADDR if set (port 0: any free port)")
	fs.IntVar(&m.Patients, "patients", 100_000, "synthetic patients to generate on the first run")
	fs.Int64Var(&m.Seed, "seed", 1, "seed of the synthetic data")
	fs.BoolVar(&m.Walkthrough, "walkthrough", false, "drive the whole flow through the HTTP API, print each step, and exit")
	fs.BoolVar(&m.Strict, "strict-sandbox", false, "refuse to run jobs when an isolation layer is unavailable on this kernel")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := noArgs(fs); err != nil {
		return err
	}
	if m.Patients < 1000 {
		return fmt.Errorf("--patients %d: the demo needs at least 1000", m.Patients)
	}
	if !isLoopback(m.Addr) {
		return fmt.Errorf("--addr %s: the demo serves plain HTTP with development tokens, so it listens on loopback only", m.Addr)
	}
	return nil
}

// demoUser is one of the demo's people.
type demoUser struct {
	Sub, Name, Org string
	Role           broker.Role
}

var demoUsers = []demoUser{
	{"alice", "Alice Researcher", "University of Leeds", broker.RoleResearcher},
	{"bob", "Bob Reviewer", "NHS England", broker.RoleReviewer},
	{"carol", "Carol Output-Checker", "NHS England", broker.RoleOutputChecker},
	{"dave", "Dave Admin", "NHS England", broker.RoleAdmin},
}

const (
	demoSite    = "demo-site"
	demoProject = "Cardiometabolic disease in English primary care (demo)"
)

// Run prepares the demo directory, starts everything and either waits for
// Ctrl-C or runs the walkthrough.
func (m *DemoMain) Run(ctx context.Context) error {
	if err := os.MkdirAll(m.Dir, 0o700); err != nil {
		return err
	}
	logPath := filepath.Join(m.Dir, "tre.log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logFile.Close()
	logger := newLogger(logFile, "info")

	data := filepath.Join(m.Dir, "gp.duckdb")
	dryData := filepath.Join(m.Dir, "dryrun.duckdb")
	if err := m.ensureData(ctx, data, m.Patients, m.Seed); err != nil {
		return err
	}
	if err := m.ensureData(ctx, dryData, 5000, m.Seed+1000); err != nil {
		return err
	}

	brokerDir := filepath.Join(m.Dir, "broker")
	cfg := DefaultServeConfig()
	cfg.DataDir = brokerDir
	cfg.Addr = m.Addr
	cfg.Dev = true
	cfg.LeaseTTL = 30 * time.Second
	// Researchers see status changes at multiples of this: shorter than a
	// real broker's minute so that the demo does not keep people waiting.
	cfg.TimeGranularity = 5 * time.Second
	cfg.DryRunData = dryData
	cfg.AllowWeakSBX = !m.Strict
	cfg.SubmitPerMinute = 600
	if err := cfg.Validate(); err != nil {
		return err
	}
	key, err := auth.LoadOrCreateDevKey(brokerDir)
	if err != nil {
		return err
	}
	tokens := map[broker.Role]string{}
	for _, u := range append(demoUsers, demoUser{demoSite, "Demo site agent", "Demo NHS Trust", broker.RoleAgent}) {
		c := auth.DevClaims{Subject: u.Sub, Name: u.Name, Org: u.Org, Roles: []broker.Role{u.Role}, IssuedAt: m.now(), TTL: 24 * time.Hour}
		if u.Role == broker.RoleAgent {
			c.Site = demoSite // the agent acts for the demo site only
		}
		tok, err := auth.MintDevToken(key, c)
		if err != nil {
			return err
		}
		tokens[u.Role] = tok
	}
	extras := &brokerExtras{}
	for _, u := range demoUsers {
		extras.devUsers = append(extras.devUsers, web.DemoUser{Name: u.Name, Role: u.Role, Token: tokens[u.Role]})
	}
	m.progress("Starting the broker on %s …", m.Addr)
	b, err := startBroker(ctx, cfg, logger, extras)
	if err != nil {
		return err
	}
	defer b.Close()

	admin := &api.Client{BaseURL: b.URL(), Token: tokens[broker.RoleAdmin]}
	if err := ensureDemoSite(ctx, admin); err != nil {
		return err
	}
	agentToken := filepath.Join(m.Dir, "agent.token")
	if err := os.WriteFile(agentToken, []byte(tokens[broker.RoleAgent]+"\n"), 0o600); err != nil {
		return err
	}

	acfg := DefaultAgentConfig()
	acfg.Broker = b.URL()
	acfg.SiteID = demoSite
	acfg.TokenFile = agentToken
	acfg.Data = data
	acfg.Catalog = synth.CatalogPath(data)
	// The release snapshot stays beside the demo's data, reused by later runs.
	acfg.ScratchDir = filepath.Join(m.Dir, "scratch")
	acfg.Poll = 500 * time.Millisecond
	acfg.Timeout = 2 * time.Minute
	acfg.AllowWeak = !m.Strict
	m.progress("Starting the site agent and its sandbox over %s …", data)
	agent, cleanup, err := newSiteAgent(acfg, logger, b.metrics)
	if err != nil {
		return err
	}
	defer cleanup()
	agentCtx, stopAgent := context.WithCancel(ctx)
	agentDone := make(chan error, 1)
	go func() { agentDone <- agent.Run(agentCtx) }()
	defer func() {
		stopAgent()
		<-agentDone
	}()

	m.progress("Waiting for the site agent to publish its catalog …")
	dataset, err := waitForDataset(ctx, admin)
	if err != nil {
		return err
	}
	projectID, err := ensureDemoProject(ctx, admin, dataset, m.now())
	if err != nil {
		return err
	}
	if err := writeTokensFile(filepath.Join(m.Dir, "tokens.env"), b.URL(), tokens); err != nil {
		return err
	}

	if m.Walkthrough {
		return m.walkthrough(ctx, b.URL(), tokens, projectID)
	}
	m.printWelcome(b.URL(), tokens, projectID, logPath)
	select {
	case <-ctx.Done():
		fmt.Fprintln(m.stdout, "\nShutting down…")
		return nil
	case err := <-agentDone:
		return fmt.Errorf("site agent stopped: %w", err)
	case err := <-b.done:
		return fmt.Errorf("broker stopped: %w", err)
	}
}

// Close releases nothing: Run owns every resource.
func (m *DemoMain) Close() error { return nil }

// ensureData generates synthetic data unless the file is already there.
func (m *DemoMain) ensureData(ctx context.Context, path string, patients int, seed int64) error {
	if _, err := os.Stat(path); err == nil {
		if _, err := os.Stat(synth.CatalogPath(path)); err == nil {
			m.progress("Reusing %s", path)
			return nil
		}
	}
	m.progress("Generating %d synthetic patients into %s …", patients, path)
	start := time.Now()
	_, err := synth.Generate(ctx, synth.Options{Out: path, Patients: patients, Seed: seed, Force: true})
	if err != nil {
		return fmt.Errorf("synthetic data: %w", err)
	}
	fmt.Fprintf(m.stdout, "  done in %s\n", time.Since(start).Round(100*time.Millisecond))
	return nil
}

// ensureDemoSite registers the demo site once, as an admin must before its
// agent may act; later runs find it registered.
func ensureDemoSite(ctx context.Context, admin *api.Client) error {
	_, err := admin.CreateSite(ctx, api.SiteRequest{ID: demoSite, Name: "Demo site", Organisation: "Demo NHS Trust"})
	var ae *api.Error
	if errors.As(err, &ae) && ae.Code == broker.ECONFLICT {
		return nil
	}
	if err != nil {
		return fmt.Errorf("register the demo site: %w", err)
	}
	return nil
}

// waitForDataset waits until the agent has published its catalog.
func waitForDataset(ctx context.Context, c *api.Client) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	for {
		list, err := c.Datasets(ctx, api.ListOptions{})
		if err == nil && len(list.Items) > 0 {
			return list.Items[0].Dataset, nil
		}
		select {
		case <-ctx.Done():
			return "", errors.New("the site agent did not publish its catalog within 60 s (see tre.log)")
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// ensureDemoProject creates the demo project once; later runs reuse it.
func ensureDemoProject(ctx context.Context, admin *api.Client, dataset string, now time.Time) (int64, error) {
	list, err := admin.Projects(ctx, api.ListOptions{Limit: api.MaxPageLimit})
	if err != nil {
		return 0, err
	}
	for _, p := range list.Items {
		if p.Title == demoProject && p.Status == broker.ProjectActive && p.ExpiresAt.After(now) {
			return p.ID, nil
		}
	}
	p, err := admin.CreateProject(ctx, api.ProjectRequest{
		Title:                demoProject,
		Organisation:         "University of Leeds",
		Purpose:              "Describe the prevalence and management of type 2 diabetes, hypertension and heart failure by age, sex, region and deprivation, to plan NHS services.",
		LawfulBasis:          "UK GDPR Art. 6(1)(e) and 9(2)(j); COPI Regulation 3",
		DataSharingAgreement: "DSA-DEMO-0001",
		Members:              []string{"alice"},
		Datasets:             []string{dataset},
		EpsilonBudget:        10,
		DeltaBudget:          1e-4,
		ExpiresAt:            now.AddDate(1, 0, 0),
	})
	if err != nil {
		return 0, fmt.Errorf("create demo project: %w", err)
	}
	return p.ID, nil
}

// writeTokensFile saves the demo tokens for scripts (`source tokens.env`).
func writeTokensFile(path, url string, tokens map[broker.Role]string) error {
	var sb strings.Builder
	fmt.Fprintf(&sb, "TRE_BROKER=%s\n", url)
	for _, u := range demoUsers {
		fmt.Fprintf(&sb, "TRE_TOKEN_%s=%s\n", strings.ToUpper(string(u.Role)), tokens[u.Role])
	}
	return os.WriteFile(path, []byte(sb.String()), 0o600)
}

const demoSQL = `SELECT p.region, count(DISTINCT p.patient_id) AS patients_with_t2d
FROM patients p JOIN clinical_events e ON e.patient_id = p.patient_id
WHERE e.snomed_code = '44054006'
GROUP BY p.region`

// progress says what the demo is doing, so the minutes of a first run are
// never silent.
func (m *DemoMain) progress(format string, args ...any) {
	fmt.Fprintf(m.stdout, format+"\n", args...)
}

func (m *DemoMain) printWelcome(url string, tokens map[broker.Role]string, projectID int64, logPath string) {
	w := m.stdout
	env := filepath.Join(m.Dir, "tokens.env")
	fmt.Fprintf(w, "\ntre demo is running.\n\n")
	fmt.Fprintf(w, "  Web interface:   %s/ui/ (sign in as any demo user)\n", url)
	fmt.Fprintf(w, "  API:             %s/api/v1/openapi.json\n", url)
	fmt.Fprintf(w, "  Public register: %s/register (JSON: %s/public/register)\n", url, url)
	fmt.Fprintf(w, "  Logs:            %s\n", logPath)
	fmt.Fprintf(w, "  Demo project:    #%d (member: alice)\n", projectID)
	fmt.Fprintf(w, "  Tokens:          %s (valid 24 h; TRE_BROKER and TRE_TOKEN_<ROLE> for each role)\n\n", env)
	for _, u := range demoUsers {
		fmt.Fprintf(w, "  %-15s %s — %s\n  %s\n", u.Role, u.Sub, u.Name, tokens[u.Role])
	}
	fmt.Fprintf(w, "\nWhat next:\n")
	fmt.Fprintf(w, "  1. Open %s/ui/ and sign in as Alice Researcher: browse the tables beside the editor, dry-run a query,\n", url)
	fmt.Fprintf(w, "     submit it; then sign in as Bob Reviewer to approve it, and as Carol Output-Checker to release it.\n")
	fmt.Fprintf(w, "  2. Or, in another terminal in this directory, load the tokens (set -a; . %s; set +a) and follow\n", env)
	fmt.Fprintf(w, "     README.md, \"Submitting a query and fetching the result\": the same flow with curl, Python or the tre command.\n")
	fmt.Fprintf(w, "\nPress Ctrl-C to stop. The data and the store stay in %s for the next run.\n", m.Dir)
}

// walkthrough drives submit → review → run → output check → release →
// download through the real HTTP API, one role at a time.
func (m *DemoMain) walkthrough(ctx context.Context, url string, tokens map[broker.Role]string, projectID int64) error {
	w := m.stdout
	as := func(r broker.Role) *api.Client { return &api.Client{BaseURL: url, Token: tokens[r]} }
	step := func(format string, args ...any) { fmt.Fprintf(w, "\n▶ "+format+"\n", args...) }

	step("Researcher (alice) submits a question to project #%d:\n%s", projectID, indent(demoSQL))
	q, err := as(broker.RoleResearcher).SubmitQuery(ctx, api.QueryRequest{ProjectID: projectID, SQL: demoSQL, Purpose: "Type 2 diabetes by region", Epsilon: 0.5})
	if err != nil {
		return fmt.Errorf("submit: %w", err)
	}
	fmt.Fprintf(w, "  query #%d %s; cost ε=%g δ=%g", q.ID, q.Status, q.Cost.Epsilon, q.Cost.Delta)
	for _, a := range q.Accuracy {
		fmt.Fprintf(w, "; %s ±%.1f (95%%)", a.Column, a.HalfWidth95)
	}
	fmt.Fprintln(w)
	for _, f := range q.RiskFlags {
		fmt.Fprintf(w, "  risk flag %s: %s\n", f.Kind, f.Message)
	}

	step("Reviewer (bob) approves it; the budget is reserved in the same transaction")
	if q, err = as(broker.RoleReviewer).ApproveQuery(ctx, q.ID, "Aggregate by region only; purpose matches the project."); err != nil {
		return fmt.Errorf("approve: %w", err)
	}
	fmt.Fprintf(w, "  query #%d %s\n", q.ID, q.Status)

	step("The site agent leases the job and runs it in the sandbox")
	if q, err = waitForStatus(ctx, as(broker.RoleReviewer), q.ID, broker.StatusAwaitingOutputCheck); err != nil {
		return err
	}
	fmt.Fprintf(w, "  query #%d %s\n", q.ID, q.Status)

	step("Output checker (carol) reviews the protected table and its disclosure report")
	out, err := as(broker.RoleOutputChecker).Output(ctx, q.ID)
	if err != nil {
		return fmt.Errorf("output: %w", err)
	}
	if out.Result == nil {
		return fmt.Errorf("the run failed at the site: %+v", out.Failure)
	}
	rep := out.Result.Report
	fmt.Fprintf(w, "  ε=%g δ=%g mechanism=%s k=%d C=%d threshold=%d rounding=%d partition selection=%s\n",
		rep.Epsilon, rep.Delta, rep.Mechanism, rep.MaxGroupsPerPatient, rep.MaxRowsPerGroup, rep.Threshold, rep.RoundingBase, rep.PartitionSelection)
	fmt.Fprintf(w, "  groups released=%d suppressed=%d; opt-out filter applied=%v; sandbox layers: %s",
		rep.GroupsReleased, rep.GroupsSuppressed, rep.OptOut.Applied, strings.Join(rep.Sandbox.Layers, ", "))
	if rep.Sandbox.Degraded {
		fmt.Fprintf(w, " (DEGRADED: missing %s)", strings.Join(rep.Sandbox.Missing, ", "))
	}
	fmt.Fprintln(w)
	if q, err = as(broker.RoleOutputChecker).ReleaseQuery(ctx, q.ID, "Noisy, rounded counts by region; nothing below threshold."); err != nil {
		return fmt.Errorf("release: %w", err)
	}
	fmt.Fprintf(w, "  query #%d %s\n", q.ID, q.Status)

	step("Researcher downloads the released table")
	// Researchers see the release from the next multiple of the broker's
	// time granularity on.
	if _, err = waitForStatus(ctx, as(broker.RoleResearcher), q.ID, broker.StatusReleased); err != nil {
		return err
	}
	res, err := as(broker.RoleResearcher).Result(ctx, q.ID)
	if err != nil {
		return fmt.Errorf("result: %w", err)
	}
	if err := printResultTable(w, res.Columns, res.Rows); err != nil {
		return err
	}
	csv, err := as(broker.RoleResearcher).ResultRaw(ctx, q.ID, "csv")
	if err != nil {
		return fmt.Errorf("result csv: %w", err)
	}
	fmt.Fprintf(w, "\n  (CSV: %d bytes)\n\nWalkthrough complete.\n", len(csv))
	fmt.Fprintf(w, "\nWhat next: keep the demo running (go run ./cmd/tre demo) and open the web interface it prints,\n")
	fmt.Fprintf(w, "or follow README.md with curl, Python or the tre command.\n")
	return nil
}

// waitForStatus polls a query until it reaches want, fails or times out.
func waitForStatus(ctx context.Context, c *api.Client, id int64, want broker.Status) (*broker.Query, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	for {
		q, err := c.Query(ctx, id)
		if err != nil {
			return nil, err
		}
		switch q.Status {
		case want:
			return q, nil
		case broker.StatusFailed, broker.StatusCancelled, broker.StatusRejected, broker.StatusWithheld:
			return q, fmt.Errorf("query #%d ended %s (%s)", id, q.Status, q.FailureCode)
		}
		select {
		case <-ctx.Done():
			return q, fmt.Errorf("query #%d still %s after 3 minutes", id, q.Status)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func indent(s string) string { return "    " + strings.ReplaceAll(s, "\n", "\n    ") }
