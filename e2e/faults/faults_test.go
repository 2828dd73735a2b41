package faults

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/nhs-tre/tre/api"
	"github.com/nhs-tre/tre/broker"
	"github.com/nhs-tre/tre/broker/brokertest"
	"github.com/nhs-tre/tre/e2e"
)

// Fault tests: real broker and agent processes killed with SIGKILL,
// stopped, and starved of a writable database. What they prove is in each
// test's comment; none asserts on wall-clock time.

// faultSQL is cheap to run and passes the synthetic catalog.
const faultSQL = "SELECT sex, count(*) AS n FROM patients GROUP BY sex"

// faultEpsilon is exact in binary, so budget sums compare exactly.
const faultEpsilon = 0.5

// faultSite is a e2e.Site whose broker can be killed and restarted on the
// same address and store.
type faultSite struct {
	*e2e.Site
	brokerArgs []string
}

// startFaultSite is startSite with a restartable broker, an optional
// PostgreSQL store and a short lease.
func startFaultSite(tb testing.TB, databaseURL string, withAgent bool) *faultSite {
	tb.Helper()
	if testing.Short() {
		tb.Skip("fault tests start real processes; skipped with -short")
	}
	s := &faultSite{Site: &e2e.Site{Dir: tb.TempDir(), Tokens: map[string]string{}}}
	s.Data = filepath.Join(s.Dir, "gp.duckdb")
	s.Catalog = filepath.Join(s.Dir, "gp.catalog.yaml")
	var out syncBuffer
	if code := e2e.RunTre(context.Background(), []string{"synth", "--out", s.Data, "--patients", "2000", "--seed", "11"}, &out, &out); code != 0 {
		tb.Fatalf("tre synth exited %d:\n%s", code, out.String())
	}
	brokerDir := filepath.Join(s.Dir, "broker")
	addr := e2e.FreeAddr(tb)
	s.URL = "http://" + addr
	s.brokerArgs = []string{"serve", "--data-dir", brokerDir, "--addr", addr, "--dev",
		"--lease-ttl", "2s", "--max-attempts", "10", "--submit-per-minute", "6000",
		"--researcher-time-granularity", e2e.Granularity.String()}
	if databaseURL != "" {
		s.brokerArgs = append(s.brokerArgs, "--database-url", databaseURL)
	}
	s.restartBroker(tb)
	s.Tokens = e2e.DevTokens(tb, brokerDir, e2e.Users)
	e2e.RegisterSite(tb, s.As("dave"))
	tokenFile := e2e.WriteAgentToken(tb, s.Dir, s.Tokens["site"])
	s.AgentArgs = []string{"agent", "--broker", s.URL, "--site-id", e2e.SiteID, "--token-file", tokenFile,
		"--data", s.Data, "--catalog", s.Catalog, "--poll-interval", "100ms", "--memory-limit", "512MB",
		"--scratch-dir", filepath.Join(s.Dir, "scratch"),
		// No pool: these tests catch a job's own child mid-run and expect
		// none once the agent is idle.
		"--sandbox-pool", "0"}
	if withAgent {
		s.Agent = e2e.StartTre(tb, s.AgentArgs...)
		s.waitCatalog(tb)
	}
	return s
}

// restartBroker starts the broker process (again) and waits until ready.
func (s *faultSite) restartBroker(tb testing.TB) {
	tb.Helper()
	s.Broker = e2e.StartTre(tb, s.brokerArgs...)
	e2e.WaitReady(tb, s.URL)
}

func (s *faultSite) waitCatalog(tb testing.TB) {
	tb.Helper()
	e2e.Eventually(tb, 60*time.Second, "catalog published", func() error {
		list, err := s.As("dave").Datasets(context.Background(), api.ListOptions{})
		if err != nil {
			return err
		}
		if len(list.Items) == 0 {
			return errors.New("no dataset yet")
		}
		return nil
	})
}

// quick is a client whose calls fail fast while the broker is down.
func (s *faultSite) quick(sub string) *api.Client {
	return &api.Client{BaseURL: s.URL, Token: s.Tokens[sub], HTTPClient: &http.Client{Timeout: 5 * time.Second}}
}

// syncBuffer is an io.Writer safe to read after the writers are done.
type syncBuffer struct {
	mu  sync.Mutex
	buf []byte
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	return len(p), nil
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(b.buf)
}

// ackLog records the writes the broker acknowledged with a 2xx.
type ackLog struct {
	mu                           sync.Mutex
	submitted, approved, release map[int64]bool
}

func (a *ackLog) add(m map[int64]bool, id int64) {
	a.mu.Lock()
	m[id] = true
	a.mu.Unlock()
}

func (a *ackLog) count() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.submitted) + len(a.approved) + len(a.release)
}

// TestBrokerKill9 kills the broker with SIGKILL three times while a
// researcher submits, a reviewer approves and an output checker releases,
// concurrently, with the agent running jobs. After the last restart every
// acknowledged write is there, the audit chain verifies, and every query
// can still be driven to a final state — running jobs are re-leased after
// their lease expires — with the budget charged exactly once per query.
func TestBrokerKill9(t *testing.T) {
	for _, tt := range []struct {
		name  string
		dbURL func(testing.TB) string
	}{
		{"sqlite", func(testing.TB) string { return "" }},
		{"postgres", brokertest.PostgresURL},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := startFaultSite(t, tt.dbURL(t), true)
			testBrokerKill9(t, s)
		})
	}
}

func testBrokerKill9(t *testing.T, s *faultSite) {
	ctx := context.Background()
	projectID := s.CreateProject(t, 1000)
	acks := &ackLog{submitted: map[int64]bool{}, approved: map[int64]bool{}, release: map[int64]bool{}}

	wctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	pause := func(d time.Duration) bool {
		select {
		case <-wctx.Done():
			return false
		case <-time.After(d):
			return true
		}
	}
	// The researcher waits while maxBacklog of her queries are unreleased,
	// so that the agent's queue (one sandbox per job) stays short.
	const maxBacklog = 6
	backlog := func() int {
		acks.mu.Lock()
		defer acks.mu.Unlock()
		return len(acks.submitted) - len(acks.release)
	}
	wg.Add(3)
	go func() { // researcher
		defer wg.Done()
		for pause(50 * time.Millisecond) {
			if backlog() >= maxBacklog {
				continue
			}
			q, err := s.quick("alice").SubmitQuery(wctx, api.QueryRequest{ProjectID: projectID, SQL: faultSQL, Purpose: "kill -9", Epsilon: faultEpsilon})
			if err == nil {
				acks.add(acks.submitted, q.ID)
			}
		}
	}()
	go func() { // reviewer
		defer wg.Done()
		for pause(20 * time.Millisecond) {
			queue, err := s.quick("bob").ReviewQueue(wctx, api.ListOptions{Limit: 20})
			if err != nil {
				continue
			}
			for _, item := range queue.Items {
				if _, err := s.quick("bob").ApproveQuery(wctx, item.ID, "ok"); err == nil {
					acks.add(acks.approved, item.ID)
				}
			}
		}
	}()
	go func() { // output checker
		defer wg.Done()
		for pause(20 * time.Millisecond) {
			queue, err := s.quick("carol").OutputQueue(wctx, api.ListOptions{Limit: 20})
			if err != nil {
				continue
			}
			for _, q := range queue.Items {
				if _, err := s.quick("carol").ReleaseQuery(wctx, q.ID, "ok"); err == nil {
					acks.add(acks.release, q.ID)
				}
			}
		}
	}()

	sizes := func() (int, int, int) {
		acks.mu.Lock()
		defer acks.mu.Unlock()
		return len(acks.submitted), len(acks.approved), len(acks.release)
	}
	for kill := 0; kill < 3; kill++ {
		// Each kill comes after at least one acknowledged write of every
		// kind since the last restart.
		s0, a0, r0 := sizes()
		e2e.Eventually(t, 60*time.Second, "acknowledged writes of every kind before a kill", func() error {
			s1, a1, r1 := sizes()
			if s1 < s0+2 || a1 < a0+1 || r1 < r0+1 {
				return fmt.Errorf("new acknowledged writes: %d submitted, %d approved, %d released", s1-s0, a1-a0, r1-r0)
			}
			return nil
		})
		s.Broker.Kill()
		s.restartBroker(t)
	}
	// Let the clients run against the last broker a little, then stop them.
	before := acks.count()
	e2e.Eventually(t, 60*time.Second, "acknowledged writes after the last restart", func() error {
		if acks.count() < before+3 {
			return fmt.Errorf("%d new acknowledged writes", acks.count()-before)
		}
		return nil
	})
	stop()
	wg.Wait()
	t.Logf("acknowledged: %d submitted, %d approved, %d released", len(acks.submitted), len(acks.approved), len(acks.release))
	if len(acks.release) == 0 {
		t.Error("no release was acknowledged: the workload did not reach the output check")
	}

	// Every acknowledged write survived.
	for id := range acks.submitted {
		if _, err := s.As("dave").Query(ctx, id); err != nil {
			t.Errorf("acknowledged submission %d lost: %v", id, err)
		}
	}
	for id := range acks.approved {
		q, err := s.As("dave").Query(ctx, id)
		if err != nil || q.Status == broker.StatusSubmitted || q.ApprovedBy != "bob" {
			t.Errorf("acknowledged approval of %d lost: %+v, %v", id, q, err)
		}
	}
	for id := range acks.release {
		q, err := s.As("dave").Query(ctx, id)
		if err != nil || q.Status != broker.StatusReleased {
			t.Errorf("acknowledged release of %d lost: status %v, %v", id, q.Status, err)
		}
	}
	if v, err := s.As("dave").VerifyAudit(ctx); err != nil || !v.OK {
		t.Fatalf("audit chain after kill -9: %+v, %v", v, err)
	}

	// Nothing is stuck: drive every query to a final state.
	all := func() []broker.Query {
		t.Helper()
		var out []broker.Query
		for off := 0; ; off += 500 {
			page, err := s.As("dave").Queries(ctx, api.QueryListOptions{ProjectID: projectID, ListOptions: api.ListOptions{Limit: 500, Offset: off}})
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, page.Items...)
			if len(page.Items) < 500 {
				return out
			}
		}
	}
	for _, q := range all() {
		if q.Status == broker.StatusSubmitted {
			if _, err := s.As("bob").ApproveQuery(ctx, q.ID, "after the kills"); err != nil {
				t.Errorf("approve submitted query %d after the kills: %v", q.ID, err)
			}
		}
	}
	e2e.Eventually(t, 120*time.Second, "every query leaves approved and running", func() error {
		n := 0
		for _, q := range all() {
			switch q.Status {
			case broker.StatusApproved, broker.StatusRunning:
				n++
			case broker.StatusAwaitingOutputCheck:
				if _, err := s.As("carol").ReleaseQuery(ctx, q.ID, "after the kills"); err != nil {
					return fmt.Errorf("release %d: %w", q.ID, err)
				}
			}
		}
		if n > 0 {
			return fmt.Errorf("%d queries approved or running", n)
		}
		return nil
	})
	var charged float64
	statuses := map[broker.Status]int{}
	for _, q := range all() {
		statuses[q.Status]++
		switch q.Status {
		case broker.StatusReleased:
			charged += q.Cost.Epsilon
			e2e.WaitStatus(t, s.As("alice"), q.ID, broker.StatusReleased)
			if _, err := s.As("alice").Result(ctx, q.ID); err != nil {
				t.Errorf("released query %d has no downloadable result: %v", q.ID, err)
			}
		case broker.StatusFailed:
			charged += q.Cost.Epsilon // charged when first leased, never refunded
			t.Logf("query %d failed with %q after %d attempts", q.ID, q.FailureCode, q.Attempts)
		default:
			t.Errorf("query %d ended %s", q.ID, q.Status)
		}
	}
	t.Logf("final statuses: %v", statuses)
	p, err := s.As("dave").Project(ctx, projectID)
	if err != nil {
		t.Fatal(err)
	}
	if math.Abs(p.Budget.EpsilonSpent-charged) > 1e-9 || p.Budget.EpsilonReserved != 0 {
		t.Errorf("budget after the kills: spent %g reserved %g, want spent %g (one charge per query) reserved 0",
			p.Budget.EpsilonSpent, p.Budget.EpsilonReserved, charged)
	}
	if v, err := s.As("dave").VerifyAudit(ctx); err != nil || !v.OK {
		t.Errorf("audit chain at the end: %+v, %v", v, err)
	}
}

// TestAgentKill9MidJob kills the agent with SIGKILL while it holds a job's
// lease and before it reported a result, then starts it again: the lease
// expires, the job runs again (a second attempt), exactly one result is
// stored, the budget is charged once, and the query reaches the output
// check.
func TestAgentKill9MidJob(t *testing.T) {
	s := startFaultSite(t, "", true)
	ctx := context.Background()
	projectID := s.CreateProject(t, 100)

	var caught *broker.Query
	var submitted []int64
	for try := 0; try < 5 && caught == nil; try++ {
		q, err := s.As("alice").SubmitQuery(ctx, api.QueryRequest{ProjectID: projectID, SQL: faultSQL, Purpose: "kill the agent", Epsilon: faultEpsilon})
		if err != nil {
			t.Fatal(err)
		}
		submitted = append(submitted, q.ID)
		if _, err := s.As("bob").ApproveQuery(ctx, q.ID, "ok"); err != nil {
			t.Fatal(err)
		}
		// Kill the agent the moment its sandbox child for the job appears:
		// the child's start-up (exec, hardening, handshake, DuckDB open)
		// takes tens of milliseconds, far longer than this tight poll, so
		// the job is caught mid-run even on an idle machine.
		deadline := time.Now().Add(60 * time.Second)
		for sandboxJobChildren(t, s.Dir) == 0 {
			if time.Now().After(deadline) {
				t.Fatal("the agent started no sandbox for the job within 60 s")
			}
			time.Sleep(time.Millisecond)
		}
		s.Agent.Kill()
		cur, err := s.As("bob").Query(ctx, q.ID)
		if err != nil {
			t.Fatal(err)
		}
		if cur.Status == broker.StatusRunning {
			caught = cur
		} else {
			t.Logf("query %d finished (%s) before the kill; trying again", q.ID, cur.Status)
		}
		s.Agent = e2e.StartTre(t, s.AgentArgs...)
	}
	if caught == nil {
		t.Fatal("never caught the agent mid-job in 5 tries")
	}
	if caught.Attempts != 1 {
		t.Fatalf("killed mid-job: attempts %d, want 1", caught.Attempts)
	}
	// The killed agent's sandbox children do not outlive it for long: the
	// only sandboxes of this site left are the new agent's (none when idle).
	e2e.Eventually(t, 60*time.Second, "sandbox children of the killed agent exit", func() error {
		if n := sandboxChildren(t, s.Dir); n > 0 {
			return fmt.Errorf("%d sandbox processes of this site still running", n)
		}
		return nil
	})
	final := e2e.WaitStatus(t, s.As("bob"), caught.ID, broker.StatusAwaitingOutputCheck)
	if final.Attempts < 2 {
		t.Errorf("query %d reached the output check after %d attempt(s): the job did not run again", final.ID, final.Attempts)
	}
	if _, err := s.As("carol").Output(ctx, final.ID); err != nil {
		t.Fatalf("output of the re-run job: %v", err)
	}
	completes, err := s.As("dave").Audit(ctx, api.AuditOptions{Action: "job.complete", Object: fmt.Sprintf("query/%d", final.ID)})
	if err != nil {
		t.Fatal(err)
	}
	if completes.Total != 1 {
		t.Errorf("query %d completed %d times, want exactly 1 stored result", final.ID, completes.Total)
	}
	leases, err := s.As("dave").Audit(ctx, api.AuditOptions{Action: "job.lease", Object: fmt.Sprintf("query/%d", final.ID)})
	if err != nil {
		t.Fatal(err)
	}
	if leases.Total != final.Attempts {
		t.Errorf("query %d: %d lease entries for %d attempts", final.ID, leases.Total, final.Attempts)
	}
	// Every submitted query is charged once, whether or not it was re-run.
	for _, id := range submitted {
		waitOneOf(t, s.As("bob"), id, broker.StatusAwaitingOutputCheck)
	}
	p, err := s.As("dave").Project(ctx, projectID)
	if err != nil {
		t.Fatal(err)
	}
	want := faultEpsilon * float64(len(submitted))
	if p.Budget.EpsilonSpent != want || p.Budget.EpsilonReserved != 0 {
		t.Errorf("budget = spent %g reserved %g, want spent %g (one charge per query, the re-run free) reserved 0",
			p.Budget.EpsilonSpent, p.Budget.EpsilonReserved, want)
	}
	if v, err := s.As("dave").VerifyAudit(ctx); err != nil || !v.OK {
		t.Errorf("audit chain: %+v, %v", v, err)
	}
}

// sandboxChildren counts running sandbox processes whose environment names
// a path under dir (their scratch directory), so that other tests' sandboxes
// on the same machine are not counted.
func sandboxChildren(tb testing.TB, dir string) int {
	tb.Helper()
	return countSandboxChildren(tb, dir, false)
}

// sandboxJobChildren counts the sandbox processes of dir that run a job,
// leaving out the child that builds the release snapshot (its config says
// "build").
func sandboxJobChildren(tb testing.TB, dir string) int {
	tb.Helper()
	return countSandboxChildren(tb, dir, true)
}

func countSandboxChildren(tb testing.TB, dir string, jobsOnly bool) int {
	tb.Helper()
	procs, err := filepath.Glob("/proc/[0-9]*")
	if err != nil {
		tb.Fatal(err)
	}
	n := 0
	for _, p := range procs {
		cmdline, err := os.ReadFile(filepath.Join(p, "cmdline"))
		if err != nil || !strings.Contains(string(cmdline), "__sandbox") {
			continue
		}
		env, err := os.ReadFile(filepath.Join(p, "environ"))
		if err == nil && strings.Contains(string(env), dir) && !(jobsOnly && strings.Contains(string(env), `"build":true`)) {
			n++
		}
	}
	return n
}

// waitOneOf waits for a query to reach want or any later non-failure state.
func waitOneOf(tb testing.TB, c *api.Client, id int64, want broker.Status) {
	tb.Helper()
	e2e.Eventually(tb, 90*time.Second, fmt.Sprintf("query %d reaching %s", id, want), func() error {
		q, err := c.Query(context.Background(), id)
		if err != nil {
			return err
		}
		switch q.Status {
		case want, broker.StatusReleased, broker.StatusWithheld:
			return nil
		case broker.StatusFailed:
			tb.Fatalf("query %d failed (%s)", id, q.FailureCode)
		}
		return fmt.Errorf("status %s", q.Status)
	})
}

// TestBrokerOutage stops the broker while the agent keeps running, then
// starts it again on the same address: the agent backs off and resumes (a
// job approved after the restart completes). While the broker is down, a
// researcher's call fails at once with a connection error, and a broker
// that accepts connections but never answers costs the caller no more than
// the client's timeout.
func TestBrokerOutage(t *testing.T) {
	s := startFaultSite(t, "", true)
	ctx := context.Background()
	projectID := s.CreateProject(t, 100)
	req := api.QueryRequest{ProjectID: projectID, SQL: faultSQL, Purpose: "outage", Epsilon: faultEpsilon}

	s.Broker.Kill()
	_, err := s.quick("alice").SubmitQuery(ctx, req)
	var ae *api.Error
	if err != nil && !errors.As(err, &ae) && !errors.Is(err, syscall.ECONNREFUSED) {
		// A kept-alive connection to the dead process ends in EOF; the next
		// call dials and is refused.
		_, err = s.quick("alice").SubmitQuery(ctx, req)
	}
	switch {
	case err == nil:
		t.Fatal("submit with the broker down succeeded")
	case errors.As(err, &ae):
		t.Fatalf("submit with the broker down: an API error %v, want a connection error", err)
	case !errors.Is(err, syscall.ECONNREFUSED):
		t.Errorf("submit with the broker down: %v, want connection refused", err)
	}

	// The agent keeps polling a dead broker for a while (backing off).
	deadline := time.After(3 * time.Second)
	for polling := true; polling; {
		select {
		case <-deadline:
			polling = false
		case err := <-s.Agent.Done():
			t.Fatalf("the agent exited while the broker was down: %v", err)
		}
	}
	// A hung broker: the port accepts connections and never answers.
	hung, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer hung.Close()
	go func() {
		for {
			c, err := hung.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	hc := &api.Client{BaseURL: "http://" + hung.Addr().String(), Token: s.Tokens["alice"], HTTPClient: &http.Client{Timeout: 2 * time.Second}}
	_, err = hc.SubmitQuery(ctx, req)
	var ne net.Error
	if err == nil || errors.As(err, &ae) || !errors.As(err, &ne) || !ne.Timeout() {
		t.Errorf("submit to a hung broker: %v, want a client timeout", err)
	}

	s.restartBroker(t)
	q, err := s.As("alice").SubmitQuery(ctx, req)
	if err != nil {
		t.Fatalf("submit after the restart: %v", err)
	}
	if _, err := s.As("bob").ApproveQuery(ctx, q.ID, "ok"); err != nil {
		t.Fatal(err)
	}
	e2e.WaitStatus(t, s.As("bob"), q.ID, broker.StatusAwaitingOutputCheck)
}

// TestReadOnlyStore takes write access away from a running broker's store
// and gives it back. SQLite: the database and its WAL become immutable
// (chattr +i: tests run as root, and root ignores file modes). PostgreSQL:
// the broker's own role gets default_transaction_read_only, as on a standby
// or in a disk-full emergency, and its sessions are restarted. Either way
// writes fail with a 503 "unavailable" JSON error, nothing is half-written,
// reads still work, and once write access is back everything continues.
func TestReadOnlyStore(t *testing.T) {
	t.Run("sqlite", func(t *testing.T) {
		chattr, err := exec.LookPath("chattr")
		if err != nil {
			t.Skip("chattr not installed: cannot make the database read-only for root")
		}
		b := e2e.StartLonelyBroker(t)
		// The -shm file is SQLite's lock and index memory, not data, and
		// readers need it.
		files := []string{filepath.Join(b.Dir, "broker.db"), filepath.Join(b.Dir, "broker.db-wal")}
		for _, f := range files {
			if _, err := os.Stat(f); err != nil {
				t.Fatalf("SQLite file: %v", err)
			}
		}
		setReadOnly := func(on bool) error {
			flag := "-i"
			if on {
				flag = "+i"
			}
			out, err := exec.Command(chattr, append([]string{flag}, files...)...).CombinedOutput()
			if err != nil {
				return fmt.Errorf("chattr %s: %v: %s", flag, err, out)
			}
			return nil
		}
		if err := setReadOnly(true); err != nil {
			t.Skipf("cannot make the database immutable here: %v", err)
		}
		if err := setReadOnly(false); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = setReadOnly(false) }) // or TempDir removal fails
		testReadOnlyStore(t, b, setReadOnly)
	})
	t.Run("postgres", func(t *testing.T) {
		dbURL := brokertest.PostgresURL(t)
		u, err := url.Parse(dbURL)
		if err != nil {
			t.Fatal(err)
		}
		schema := u.Query().Get("search_path")
		role := schema + "_role"
		ctx := context.Background()
		admin, err := pgx.Connect(ctx, os.Getenv("TRE_TEST_DATABASE_URL"))
		if err != nil {
			t.Fatal(err)
		}
		defer admin.Close(ctx)
		for _, stmt := range []string{
			"CREATE ROLE " + role + " LOGIN",
			"GRANT ALL ON SCHEMA " + schema + " TO " + role,
		} {
			if _, err := admin.Exec(ctx, stmt); err != nil {
				t.Fatalf("%s: %v", stmt, err)
			}
		}
		kick := func() error {
			_, err := admin.Exec(ctx, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", role)
			return err
		}
		t.Cleanup(func() {
			c, err := pgx.Connect(context.Background(), os.Getenv("TRE_TEST_DATABASE_URL"))
			if err != nil {
				return
			}
			defer c.Close(context.Background())
			_, _ = c.Exec(context.Background(), "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", role)
			_, _ = c.Exec(context.Background(), "DROP OWNED BY "+role+" CASCADE")
			_, _ = c.Exec(context.Background(), "DROP ROLE "+role)
		})
		u.User = url.User(role)
		b := e2e.StartLonelyBroker(t, "--database-url", u.String())
		setReadOnly := func(on bool) error {
			stmt := "ALTER ROLE " + role + " RESET default_transaction_read_only"
			if on {
				stmt = "ALTER ROLE " + role + " SET default_transaction_read_only = on"
			}
			if _, err := admin.Exec(ctx, stmt); err != nil {
				return err
			}
			if err := kick(); err != nil {
				return err
			}
			// The pool finds its sessions gone as it uses them: let reads
			// replace every one before the writes are tried.
			for i := 0; i < 40; i++ {
				_, _ = b.As("dave").Projects(ctx, api.ListOptions{})
			}
			return nil
		}
		testReadOnlyStore(t, b, setReadOnly)
	})
}

func testReadOnlyStore(t *testing.T, b *e2e.LonelyBroker, setReadOnly func(bool) error) {
	ctx := context.Background()
	q1, err := b.As("alice").SubmitQuery(ctx, api.QueryRequest{ProjectID: b.Project, SQL: e2e.HostileSQL, Purpose: "before"})
	if err != nil {
		t.Fatal(err)
	}
	if err := setReadOnly(true); err != nil {
		t.Fatalf("make the store read-only: %v", err)
	}
	var auditBefore *api.List[broker.AuditEntry]
	e2e.Eventually(t, 30*time.Second, "read the audit log from a read-only store", func() error {
		auditBefore, err = b.As("dave").Audit(ctx, api.AuditOptions{ListOptions: api.ListOptions{Limit: 1}})
		return err
	})

	writes := []struct {
		name string
		do   func() error
	}{
		{"submit", func() error {
			_, err := b.As("alice").SubmitQuery(ctx, api.QueryRequest{ProjectID: b.Project, SQL: e2e.HostileSQL, Purpose: "read-only"})
			return err
		}},
		{"approve", func() error { _, err := b.As("bob").ApproveQuery(ctx, q1.ID, "read-only"); return err }},
		{"reject", func() error { _, err := b.As("bob").RejectQuery(ctx, q1.ID, "read-only"); return err }},
		{"create project", func() error {
			_, err := b.As("dave").CreateProject(ctx, api.ProjectRequest{Title: "RO", Organisation: "T", Purpose: "p", LawfulBasis: "x",
				Members: []string{"alice"}, Datasets: []string{"nhs_gp_synthetic"}, EpsilonBudget: 1, DeltaBudget: 1e-4, ExpiresAt: time.Now().AddDate(0, 1, 0)})
			return err
		}},
	}
	for _, w := range writes {
		t.Run("write/"+w.name, func(t *testing.T) {
			for range 3 {
				err := w.do()
				var ae *api.Error
				if !errors.As(err, &ae) || ae.Status != http.StatusServiceUnavailable || ae.Code != "unavailable" {
					t.Errorf("%s on a read-only store: %v, want 503 unavailable", w.name, err)
				}
			}
		})
	}
	t.Run("reads", func(t *testing.T) {
		got, err := b.As("alice").Query(ctx, q1.ID)
		if err != nil {
			t.Fatalf("read a query: %v", err)
		}
		if got.Status != broker.StatusSubmitted {
			t.Errorf("query %d is %s after failed writes, want submitted (nothing half-written)", q1.ID, got.Status)
		}
		if list, err := b.As("dave").Queries(ctx, api.QueryListOptions{}); err != nil || list.Total != 1 {
			t.Errorf("list queries: %+v, %v; want 1 query", list, err)
		}
		if ps, err := b.As("dave").Projects(ctx, api.ListOptions{}); err != nil || ps.Total != 1 {
			t.Errorf("list projects: %+v, %v; want 1 project", ps, err)
		}
		if v, err := b.As("dave").VerifyAudit(ctx); err != nil || !v.OK {
			t.Errorf("audit chain on a read-only store: %+v, %v", v, err)
		}
	})
	auditRO, err := b.As("dave").Audit(ctx, api.AuditOptions{ListOptions: api.ListOptions{Limit: 1}})
	if err != nil {
		t.Fatal(err)
	}
	if auditRO.Total != auditBefore.Total {
		t.Errorf("audit entries went from %d to %d while the store was read-only", auditBefore.Total, auditRO.Total)
	}

	if err := setReadOnly(false); err != nil {
		t.Fatal(err)
	}
	e2e.Eventually(t, 30*time.Second, "writes after restoring write access", func() error {
		_, err := b.As("bob").ApproveQuery(ctx, q1.ID, "writable again")
		return err
	})
	if _, err := b.As("alice").SubmitQuery(ctx, api.QueryRequest{ProjectID: b.Project, SQL: e2e.HostileSQL, Purpose: "after"}); err != nil {
		t.Errorf("submit after restoring write access: %v", err)
	}
	if v, err := b.As("dave").VerifyAudit(ctx); err != nil || !v.OK {
		t.Errorf("audit chain after restoring write access: %+v, %v", v, err)
	}
}
