package main

import (
	"context"
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
	"github.com/nhs-tre/tre/cli"
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

func newDemoMain(stdout, stderr io.Writer) cli.Command {
	return &DemoMain{stdout: stdout, stderr: stderr, getenv: os.Getenv, now: time.Now}
}

// ParseFlags parses the demo's flags.
func (m *DemoMain) ParseFlags(ctx context.Context, args []string) error {
	fs := cli.NewFlagSet("demo", m.stderr)
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
	if err := cli.NoArgs(fs); err != nil {
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

// demoSite is the site the demo's agent acts for.
const demoSite = cli.DemoSite

// Run prepares the demo directory, starts everything and either waits for
// Ctrl-C or runs the walkthrough. One function (124 lines): the demo's
// start-up is a sequence whose order the user watches (data, broker, site,
// agent, what to open next).
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
	if err := cli.EnsureDemoSite(ctx, admin); err != nil {
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
	dataset, err := cli.WaitForDataset(ctx, admin)
	if err != nil {
		return err
	}
	projectID, err := cli.EnsureDemoProject(ctx, admin, dataset, m.now())
	if err != nil {
		return err
	}
	if err := writeTokensFile(filepath.Join(m.Dir, "tokens.env"), b.URL(), tokens); err != nil {
		return err
	}

	if m.Walkthrough {
		return cli.Walkthrough(ctx, m.stdout, b.URL(), tokens, projectID)
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

// writeTokensFile saves the demo tokens for scripts (`source tokens.env`).
func writeTokensFile(path, url string, tokens map[broker.Role]string) error {
	var sb strings.Builder
	fmt.Fprintf(&sb, "TRE_BROKER=%s\n", url)
	for _, u := range demoUsers {
		fmt.Fprintf(&sb, "TRE_TOKEN_%s=%s\n", strings.ToUpper(string(u.Role)), tokens[u.Role])
	}
	return os.WriteFile(path, []byte(sb.String()), 0o600)
}

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
