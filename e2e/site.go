package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/nhs-tre/tre/api"
	"github.com/nhs-tre/tre/api/auth"
	"github.com/nhs-tre/tre/broker"
)

// Process is a tre subcommand running as its own process (the test
// binary playing tre), with its output kept for failure messages.
type Process struct {
	Cmd  *exec.Cmd
	Out  *bytes.Buffer
	done chan error
}

// StartTre starts `tre args…` as a child process and stops it (SIGTERM, then
// SIGKILL) when the test ends.
func StartTre(tb testing.TB, args ...string) *Process {
	tb.Helper()
	return StartTreIn(tb, "", args...)
}

// StartTreIn is startTre in the working directory dir ("": the test's).
func StartTreIn(tb testing.TB, dir string, args ...string) *Process {
	tb.Helper()
	return startProcess(tb, dir, args, tre, args[0])
}

// startProcess starts name argv… in dir as tre's subcommand sub (for the
// messages), stopped when the test ends.
func startProcess(tb testing.TB, dir string, argv []string, name, sub string) *Process {
	tb.Helper()
	p := &Process{Out: &bytes.Buffer{}, done: make(chan error, 1)}
	p.Cmd = exec.Command(name, argv...)
	p.Cmd.Dir = dir
	p.Cmd.Stdout = p.Out
	p.Cmd.Stderr = p.Out
	if err := p.Cmd.Start(); err != nil {
		tb.Fatalf("start tre %s: %v", sub, err)
	}
	go func() { p.done <- p.Cmd.Wait() }()
	tb.Cleanup(func() {
		p.Stop()
		if tb.Failed() {
			tb.Logf("tre %s output:\n%s", sub, p.Out.String())
		}
	})
	return p
}

// Done receives the process's exit, once; Stop and Kill then return at
// once.
func (p *Process) Done() <-chan error { return p.done }

// Stop asks the process to shut down and kills it if it does not.
func (p *Process) Stop() {
	if p.Cmd.ProcessState != nil {
		return
	}
	_ = p.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		_ = p.Cmd.Process.Kill()
		<-p.done
	}
}

// Kill stops the process with SIGKILL, as a crash or an operator would.
func (p *Process) Kill() {
	if p.Cmd.ProcessState != nil {
		return
	}
	_ = p.Cmd.Process.Kill()
	<-p.done
}

// FreeAddr returns a loopback address with a free port.
func FreeAddr(tb testing.TB) string {
	tb.Helper()
	return FreeAddrOn(tb, "127.0.0.1")
}

// FreeAddrOn returns host's address host:port with a free port.
func FreeAddrOn(tb testing.TB, host string) string {
	tb.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// Eventually polls f until it returns nil or the timeout passes.
func Eventually(tb testing.TB, timeout time.Duration, what string, f func() error) {
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

// Site is a broker process and a site agent process over synthetic data.
type Site struct {
	Dir, URL, Data, Catalog string
	MetricsURL              string
	AgentMetricsURL         string
	Tokens                  map[string]string // by subject
	Broker, Agent           *Process
	AgentArgs               []string
}

// subjects of the end-to-end tests and their roles.
var Users = map[string]broker.Role{
	"alice": broker.RoleResearcher, // member of the project
	"eve":   broker.RoleResearcher, // not a member
	"bob":   broker.RoleReviewer,
	"carol": broker.RoleOutputChecker,
	"dave":  broker.RoleAdmin,
	"site":  broker.RoleAgent,
}

// SiteID is the site the tests' agents act for; agent tokens name it.
const SiteID = "site-1"

// DevTokens mints a dev token for each user with the broker's dev key;
// agent tokens are bound to SiteID.
func DevTokens(tb testing.TB, brokerDir string, users map[string]broker.Role) map[string]string {
	tb.Helper()
	key, err := auth.LoadOrCreateDevKey(brokerDir)
	if err != nil {
		tb.Fatal(err)
	}
	tokens := map[string]string{}
	for sub, role := range users {
		c := auth.DevClaims{Subject: sub, Name: sub, Org: "Test", Roles: []broker.Role{role}, TTL: time.Hour}
		if role == broker.RoleAgent {
			c.Site = SiteID
		}
		tok, err := auth.MintDevToken(key, c)
		if err != nil {
			tb.Fatal(err)
		}
		tokens[sub] = tok
	}
	return tokens
}

// RegisterSite registers SiteID as the admin does before its agent starts.
func RegisterSite(tb testing.TB, admin *api.Client) {
	tb.Helper()
	if _, err := admin.CreateSite(context.Background(), api.SiteRequest{ID: SiteID, Name: "Test site", Organisation: "Test NHS Trust"}); err != nil {
		tb.Fatalf("register site %s: %v", SiteID, err)
	}
}

// WriteAgentToken saves the agent's token as tre agent expects (mode 0600).
func WriteAgentToken(tb testing.TB, dir, token string) string {
	tb.Helper()
	path := filepath.Join(dir, "agent.token")
	if err := os.WriteFile(path, []byte(token), 0o600); err != nil {
		tb.Fatal(err)
	}
	return path
}

// StartSite generates data and starts `tre serve --dev` and `tre agent` as
// real processes. The agent's sandbox children are real too.
func StartSite(tb testing.TB, patients int) *Site {
	tb.Helper()
	if testing.Short() {
		tb.Skip("end-to-end test starts real processes; skipped with -short")
	}
	s := &Site{Dir: tb.TempDir(), Tokens: map[string]string{}}
	s.Data = filepath.Join(s.Dir, "gp.duckdb")
	s.Catalog = filepath.Join(s.Dir, "gp.catalog.yaml")
	var out bytes.Buffer
	if code := RunTre(context.Background(), []string{"synth", "--out", s.Data, "--patients", fmt.Sprint(patients), "--seed", "7"}, &out, &out); code != 0 {
		tb.Fatalf("tre synth exited %d:\n%s", code, out.String())
	}
	brokerDir := filepath.Join(s.Dir, "broker")
	addr := FreeAddr(tb)
	s.URL = "http://" + addr
	adminAddr := FreeAddr(tb)
	s.MetricsURL = "http://" + adminAddr + "/metrics"
	s.Broker = StartTre(tb, "serve", "--data-dir", brokerDir, "--addr", addr, "--admin-addr", adminAddr, "--dev",
		"--dry-run-data", s.Data, "--lease-ttl", "3s", "--submit-per-minute", "600",
		"--researcher-time-granularity", Granularity.String())
	Eventually(tb, 60*time.Second, "broker ready", func() error {
		return (&api.Client{BaseURL: s.URL}).Readyz(context.Background())
	})
	s.Tokens = DevTokens(tb, brokerDir, Users)
	RegisterSite(tb, s.As("dave"))
	tokenFile := WriteAgentToken(tb, s.Dir, s.Tokens["site"])
	agentAdmin := FreeAddr(tb)
	s.AgentMetricsURL = "http://" + agentAdmin + "/metrics"
	s.AgentArgs = []string{"agent", "--broker", s.URL, "--site-id", SiteID, "--token-file", tokenFile, "--admin-addr", agentAdmin,
		"--data", s.Data, "--catalog", s.Catalog, "--poll-interval", "100ms", "--memory-limit", "512MB",
		"--scratch-dir", filepath.Join(s.Dir, "scratch")}
	s.Agent = StartTre(tb, s.AgentArgs...)
	Eventually(tb, 60*time.Second, "catalog published", func() error {
		list, err := s.As("dave").Datasets(context.Background(), api.ListOptions{})
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

func (s *Site) As(sub string) *api.Client {
	return &api.Client{BaseURL: s.URL, Token: s.Tokens[sub], HTTPClient: &http.Client{Timeout: 30 * time.Second}}
}

// CreateProject creates a project with alice as its only member.
func (s *Site) CreateProject(tb testing.TB, epsilon float64) int64 {
	tb.Helper()
	p, err := s.As("dave").CreateProject(context.Background(), api.ProjectRequest{
		Title: "E2E study", Organisation: "Test University", Purpose: "Testing the whole flow",
		LawfulBasis: "Art. 6(1)(e)", Members: []string{"alice"}, Datasets: []string{"nhs_gp_synthetic"},
		EpsilonBudget: epsilon, DeltaBudget: 1e-4, ExpiresAt: time.Now().AddDate(0, 1, 0),
	})
	if err != nil {
		tb.Fatalf("create project: %v", err)
	}
	return p.ID
}

// APIStatus returns the HTTP status of an API error (0 for success).
func APIStatus(err error) int {
	var ae *api.Error
	if errors.As(err, &ae) {
		return ae.Status
	}
	if err != nil {
		return -1
	}
	return 0
}

// Granularity is the end-to-end brokers' researcher time granularity:
// researchers see status changes only at its multiples (a real broker's is
// a minute).
const Granularity = 200 * time.Millisecond

// WaitStatus polls until the query reaches want; a terminal status fails.
func WaitStatus(tb testing.TB, c *api.Client, id int64, want broker.Status) *broker.Query {
	tb.Helper()
	var q *broker.Query
	Eventually(tb, 90*time.Second, fmt.Sprintf("query %d reaching %s", id, want), func() error {
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

func ReadFile(tb testing.TB, path string) string {
	tb.Helper()
	b, _ := os.ReadFile(path)
	return string(b)
}
