// Package containertest runs tre as deploy/compose.yaml deploys it: it
// builds the images with `make images`' script, brings up the broker and
// three site agents in Docker, and drives the researcher flow through the
// broker's API from the host. It skips when Docker or Compose is absent,
// and fails instead when TRE_REQUIRE_DOCKER=1 (CI sets it).
package containertest

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nhs-tre/tre/api"
	"github.com/nhs-tre/tre/broker"
	"github.com/nhs-tre/tre/e2e"
	"github.com/nhs-tre/tre/queries"
	"github.com/nhs-tre/tre/sandbox"
)

const (
	repoRoot = "../.."
	// project is TestCompose's Compose project name: its containers,
	// networks and volumes are tre-citest-*, apart from a deployment made
	// by hand.
	project = "tre-citest"
	tag     = "citest"
)

// compose runs Compose v2 (`docker compose`) where it is installed, else
// Compose 1.x (`docker-compose`), which resolves the seccomp profile's path
// from its working directory: it runs in deploy/. project names the
// deployment and file is the compose file in deploy/.
type compose struct {
	v2            bool
	env           []string
	project, file string
}

func findCompose() (*compose, error) {
	if _, err := exec.LookPath("docker"); err != nil {
		return nil, errors.New("no docker command")
	}
	if out, err := exec.Command("docker", "info", "--format", "{{.ServerVersion}}").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("no Docker engine: %v: %s", err, bytes.TrimSpace(out))
	}
	if exec.Command("docker", "compose", "version").Run() == nil {
		return &compose{v2: true}, nil
	}
	if _, err := exec.LookPath("docker-compose"); err == nil {
		return &compose{}, nil
	}
	return nil, errors.New("neither docker compose nor docker-compose is installed")
}

func (c *compose) cmd(ctx context.Context, args ...string) *exec.Cmd {
	var cmd *exec.Cmd
	if c.v2 {
		cmd = exec.CommandContext(ctx, "docker", append([]string{"compose", "-p", c.project, "-f", "deploy/" + c.file}, args...)...)
		cmd.Dir = repoRoot
	} else {
		cmd = exec.CommandContext(ctx, "docker-compose", append([]string{"-p", c.project, "-f", c.file}, args...)...)
		cmd.Dir = filepath.Join(repoRoot, "deploy")
	}
	cmd.Env = append(os.Environ(), c.env...)
	return cmd
}

func (c *compose) run(tb testing.TB, timeout time.Duration, args ...string) string {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := c.cmd(ctx, args...).CombinedOutput()
	if err != nil {
		tb.Fatalf("compose %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// container returns the id of a service's container.
func (c *compose) container(tb testing.TB, service string) string {
	tb.Helper()
	id := strings.TrimSpace(c.run(tb, time.Minute, "ps", "-q", service))
	if id == "" {
		tb.Fatalf("no container for service %s", service)
	}
	return id
}

func docker(tb testing.TB, args ...string) string {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "docker", args...).CombinedOutput()
	if err != nil {
		tb.Fatalf("docker %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

func freePort(tb testing.TB) int {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// deployment is a running compose project and clients for its users.
type deployment struct {
	c       *compose
	url     string
	tokens  map[string]string
	httpCli *http.Client
}

func (d *deployment) as(user string) *api.Client {
	return &api.Client{BaseURL: d.url, Token: d.tokens[user], HTTPClient: d.httpCli}
}

// waitStatus waits for a query to reach want, read as staff (dave, admin),
// who see status changes at once.
func (d *deployment) waitStatus(tb testing.TB, id int64, want broker.Status, timeout time.Duration) *broker.Query {
	tb.Helper()
	var q *broker.Query
	e2e.Eventually(tb, timeout, fmt.Sprintf("query %d %s", id, want), func() error {
		var err error
		q, err = d.as("admin").Query(context.Background(), id)
		if err != nil {
			return err
		}
		if q.Status != want {
			return fmt.Errorf("status %s (attempts %d, failure %q)", q.Status, q.Attempts, q.FailureCode)
		}
		return nil
	})
	return q
}

// up builds the images (build.sh with buildArgs), writes secrets and
// brings up the deployment of file in deploy/ as project, with env added
// to the compose variables.
func up(t *testing.T, project, file string, env []string, buildArgs ...string) *deployment {
	t.Helper()
	c, err := findCompose()
	if err != nil {
		if os.Getenv("TRE_REQUIRE_DOCKER") == "1" {
			t.Fatalf("TRE_REQUIRE_DOCKER=1 but %v", err)
		}
		t.Skipf("container test skipped: %v (set TRE_REQUIRE_DOCKER=1 to make this a failure)", err)
	}
	if testing.Short() {
		t.Skip("container test builds images and starts containers; skipped with -short")
	}
	c.project, c.file = project, file
	secrets := t.TempDir()
	port := freePort(t)
	c.env = append([]string{
		"TRE_IMAGE_TAG=" + tag,
		"TRE_SECRETS_DIR=" + secrets,
		"TRE_PUBLISH=127.0.0.1:" + strconv.Itoa(port),
		"TRE_PATIENTS=20000",
		// Short enough that a lease lost with its site's network expires
		// within the test; researchers see status changes each second.
		"TRE_LEASE_TTL=10s",
		"TRE_TIME_GRANULARITY=1s",
	}, env...) // env last: the last of a duplicated variable wins

	start := time.Now()
	build := exec.Command("deploy/image/build.sh", buildArgs...)
	build.Dir = repoRoot
	build.Env = append(os.Environ(), c.env...)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("deploy/image/build.sh: %v\n%s", err, out)
	} else {
		t.Logf("images built in %s:\n%s", time.Since(start).Round(time.Second), out)
	}

	t.Cleanup(func() {
		if t.Failed() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			out, _ := c.cmd(ctx, "ps").CombinedOutput()
			t.Logf("compose ps:\n%s", out)
			logs, _ := c.cmd(ctx, "logs", "--no-color", "--tail", "40").CombinedOutput()
			t.Logf("compose logs:\n%s", logs)
			cancel()
		}
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		if out, err := c.cmd(ctx, "down", "-v", "--remove-orphans", "-t", "5").CombinedOutput(); err != nil {
			t.Errorf("compose down: %v\n%s", err, out)
		}
	})
	// Leftovers of an interrupted run would keep their old volumes.
	c.run(t, 3*time.Minute, "down", "-v", "--remove-orphans", "-t", "5")

	start = time.Now()
	if c.v2 {
		c.run(t, 10*time.Minute, "up", "--wait")
	} else {
		// Compose 1.x has no --wait: `up -d` returns once the ready
		// service has started, which waits for every service's health.
		c.run(t, 10*time.Minute, "up", "-d")
	}
	t.Logf("compose up (%s, every service healthy) in %s", file, time.Since(start).Round(100*time.Millisecond))

	pem, err := os.ReadFile(filepath.Join(secrets, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatal("ca.pem: no certificate")
	}
	d := &deployment{
		c:      c,
		url:    "https://localhost:" + strconv.Itoa(port),
		tokens: map[string]string{},
		httpCli: &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		}},
	}
	for _, u := range []string{"admin", "researcher", "reviewer", "output_checker"} {
		b, err := os.ReadFile(filepath.Join(secrets, u+".token"))
		if err != nil {
			t.Fatal(err)
		}
		d.tokens[u] = strings.TrimSpace(string(b))
	}
	return d
}

func typicalSQL(tb testing.TB, name string) string {
	for _, q := range queries.TypicalQueries {
		if q.Name == name {
			return q.SQL
		}
	}
	tb.Fatalf("no typical query %s", name)
	return ""
}

// slowSQL joins each patient's events to their prescriptions twice over:
// about ten seconds at 20,000 patients, long enough to cut a site's
// network while its sandbox runs it.
const slowSQL = `SELECT p.region, count(*) AS n
FROM patients p
JOIN clinical_events a ON a.patient_id = p.patient_id
JOIN clinical_events b ON b.patient_id = p.patient_id
JOIN medications m ON m.patient_id = p.patient_id
GROUP BY p.region`

// checkFullSandbox fails unless the run had every isolation layer.
func checkFullSandbox(tb testing.TB, out *broker.Output) {
	tb.Helper()
	if out.Result == nil {
		tb.Fatalf("query %d: no result (failure %+v)", out.QueryID, out.Failure)
	}
	sb := out.Result.Report.Sandbox
	if sb.Degraded || len(sb.Missing) > 0 {
		tb.Errorf("query %d ran in a degraded sandbox: missing %v", out.QueryID, sb.Missing)
	}
	for _, l := range []string{sandbox.LayerUserNamespace, sandbox.LayerNetNamespace, sandbox.LayerLandlock, sandbox.LayerSeccomp, sandbox.LayerNoNewPrivs} {
		if !slices.Contains(sb.Layers, l) {
			tb.Errorf("query %d: layer %s missing from %v", out.QueryID, l, sb.Layers)
		}
	}
}

// TestCompose brings the deployment up, runs the flow at every site, cuts
// one site's network in the middle of a job, restarts the broker, and
// tears it all down.
func TestCompose(t *testing.T) {
	d := up(t, project, "compose.yaml", nil)
	ctx := context.Background()
	admin, researcher, reviewer, checker := d.as("admin"), d.as("researcher"), d.as("reviewer"), d.as("output_checker")

	// Every site registered and its agent's catalog published.
	sites := []string{"site-a", "site-b", "site-c"}
	datasets := []string{"gp_site_a", "gp_site_b", "gp_site_c"}
	e2e.Eventually(t, 2*time.Minute, "three sites' catalogs", func() error {
		list, err := admin.Sites(ctx, api.ListOptions{})
		if err != nil {
			return err
		}
		seen := map[string]bool{}
		for _, s := range list.Items {
			if s.Registered && !s.LastSeen.IsZero() && len(s.Datasets) == 1 {
				seen[s.ID] = true
			}
		}
		for _, s := range sites {
			if !seen[s] {
				return fmt.Errorf("site %s not seen with its dataset: %+v", s, list.Items)
			}
		}
		return nil
	})

	p, err := admin.CreateProject(ctx, api.ProjectRequest{
		Title: "Container test", Organisation: "Test University", Purpose: "Testing the container deployment",
		LawfulBasis: "Art. 6(1)(e)", Members: []string{"alice"}, Datasets: datasets,
		EpsilonBudget: 10, DeltaBudget: 1e-4, ExpiresAt: time.Now().AddDate(0, 1, 0),
	})
	if err != nil {
		t.Fatalf("create project: %v", err)
	}

	// A dry run: the broker's own sandbox, on its synthetic data.
	dry, err := researcher.DryRun(ctx, api.QueryRequest{ProjectID: p.ID, Dataset: "gp_site_a", SQL: typicalSQL(t, "t2d_prevalence_by_age_sex_region"), Purpose: "dry"})
	if err != nil {
		t.Fatalf("dry run: %v", err)
	}
	if !dry.Synthetic || len(dry.Rows) == 0 {
		t.Errorf("dry run: synthetic=%v rows=%d", dry.Synthetic, len(dry.Rows))
	}

	submit := func(dataset, sql, purpose string) int64 {
		t.Helper()
		q, err := researcher.SubmitQuery(ctx, api.QueryRequest{ProjectID: p.ID, Dataset: dataset, SQL: sql, Purpose: purpose, Epsilon: 1})
		if err != nil {
			t.Fatalf("submit to %s: %v", dataset, err)
		}
		if _, err := reviewer.ApproveQuery(ctx, q.ID, "fine"); err != nil {
			t.Fatalf("approve %d: %v", q.ID, err)
		}
		return q.ID
	}
	release := func(id int64) {
		t.Helper()
		d.waitStatus(t, id, broker.StatusAwaitingOutputCheck, 3*time.Minute)
		out, err := checker.Output(ctx, id)
		if err != nil {
			t.Fatalf("output %d: %v", id, err)
		}
		checkFullSandbox(t, out)
		if _, err := checker.ReleaseQuery(ctx, id, "safe"); err != nil {
			t.Fatalf("release %d: %v", id, err)
		}
	}
	download := func(id int64) {
		t.Helper()
		var res *api.ResultResponse
		e2e.Eventually(t, time.Minute, fmt.Sprintf("query %d's result", id), func() error {
			var err error
			res, err = researcher.Result(ctx, id)
			return err
		})
		if len(res.Rows) == 0 || len(res.Columns) == 0 {
			t.Fatalf("query %d: released table is empty", id)
		}
		csv, err := researcher.ResultRaw(ctx, id, "csv")
		if err != nil || !bytes.Contains(csv, []byte(res.Columns[0].Name)) {
			t.Fatalf("query %d: CSV: %v\n%s", id, err, csv)
		}
	}

	// The flow at site A: submit, approve, run, release, download.
	first := submit("gp_site_a", typicalSQL(t, "t2d_prevalence_by_age_sex_region"), "T2D prevalence")
	release(first)
	download(first)

	// Site B's network is cut while its sandbox runs a job: the lease
	// expires, nothing is lost, site C goes on meanwhile, and once B is
	// back its agent finishes the job (again, if its lease had passed).
	agentB := d.c.container(t, "site-b")
	netB := project + "_site-b" // both Compose versions name networks PROJECT_NETWORK
	cut := submit("gp_site_b", slowSQL, "cut mid-job")
	d.waitStatus(t, cut, broker.StatusRunning, 2*time.Minute)
	docker(t, "network", "disconnect", netB, agentB)
	t.Logf("site-b disconnected while query %d ran", cut)
	cutAt := time.Now()
	reconnected := false
	defer func() {
		if !reconnected {
			exec.Command("docker", "network", "connect", netB, agentB).Run()
		}
	}()

	other := submit("gp_site_c", typicalSQL(t, "t2d_prevalence_by_age_sex_region"), "while B is cut off")
	release(other)

	// Past the lease TTL (10s) the broker no longer holds B's lease, but
	// the query is neither failed nor finished: it waits for its site.
	time.Sleep(time.Until(cutAt.Add(15 * time.Second)))
	q, err := admin.Query(ctx, cut)
	if err != nil {
		t.Fatal(err)
	}
	if q.Status != broker.StatusRunning && q.Status != broker.StatusApproved {
		t.Fatalf("query %d with its site cut off: status %s, want running or approved (waiting for the site)", cut, q.Status)
	}
	docker(t, "network", "connect", netB, agentB)
	reconnected = true
	q = d.waitStatus(t, cut, broker.StatusAwaitingOutputCheck, 4*time.Minute)
	t.Logf("query %d finished after the cut: %d attempt(s)", cut, q.Attempts)
	release(cut)

	proj, err := admin.Project(ctx, p.ID)
	if err != nil {
		t.Fatal(err)
	}
	if proj.Budget.EpsilonSpent != 3 {
		t.Errorf("ε spent %g after three runs of ε 1 (one cut off and re-leased), want 3", proj.Budget.EpsilonSpent)
	}

	// Restart the broker: its SQLite store is on a volume, so every query,
	// result, budget, registration and audit entry survives.
	audit, err := admin.VerifyAudit(ctx)
	if err != nil || !audit.OK {
		t.Fatalf("audit before restart: %+v, %v", audit, err)
	}
	start := time.Now()
	docker(t, "restart", "-t", "10", d.c.container(t, "broker"))
	e2e.Eventually(t, 2*time.Minute, "broker ready after restart", func() error {
		return (&api.Client{BaseURL: d.url, HTTPClient: d.httpCli}).Readyz(ctx)
	})
	t.Logf("broker restarted and ready in %s", time.Since(start).Round(100*time.Millisecond))
	after, err := admin.VerifyAudit(ctx)
	if err != nil || !after.OK || after.Entries < audit.Entries {
		t.Fatalf("audit after restart: %+v (before: %d entries), %v", after, audit.Entries, err)
	}
	for _, id := range []int64{first, other, cut} {
		q, err := admin.Query(ctx, id)
		if err != nil || q.Status != broker.StatusReleased {
			t.Errorf("query %d after restart: %+v, %v", id, q, err)
		}
	}
	if proj2, err := admin.Project(ctx, p.ID); err != nil || proj2.Budget.EpsilonSpent != proj.Budget.EpsilonSpent {
		t.Errorf("budget after restart: %+v, %v; before %+v", proj2, err, proj.Budget)
	}
	download(first)
	// The agents find the broker again by themselves.
	again := submit("gp_site_a", typicalSQL(t, "t2d_prevalence_by_age_sex_region"), "after the restart")
	release(again)
	download(again)
}
