// Package replicas tests several `tre serve` processes over one PostgreSQL
// database, as behind a load balancer that is not sticky (issue 25).
package replicas

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nhs-tre/tre/api"
	"github.com/nhs-tre/tre/broker"
	"github.com/nhs-tre/tre/broker/brokertest"
	"github.com/nhs-tre/tre/e2e"
	"github.com/nhs-tre/tre/queries"
)

// replicaSQL is cheap to run and passes the synthetic catalog.
const replicaSQL = "SELECT sex, count(*) AS n FROM patients GROUP BY sex"

// replica is one `tre serve` process; it can be killed and started again on
// the same address.
type replica struct {
	URL  string
	Args []string
	Proc *e2e.Process
}

type cluster struct {
	Dir, Data, Catalog, DatabaseURL string
	Replicas                        []*replica
	Tokens                          map[string]string
	Agent                           *e2e.Process
}

// as is a client of replica i for subject sub.
func (c *cluster) as(i int, sub string) *api.Client {
	return &api.Client{BaseURL: c.Replicas[i].URL, Token: c.Tokens[sub], HTTPClient: &http.Client{Timeout: 30 * time.Second}}
}

// startReplicas starts n brokers over one fresh PostgreSQL schema and one
// empty data directory at the same moment and waits until every one is
// ready: the migrations must run once while the others wait, and the dev
// signing key must be made once and read by all (a replica that lost
// either race used to exit). The tokens are minted with that key.
func startReplicas(t *testing.T, n int, extra ...string) *cluster {
	t.Helper()
	if testing.Short() {
		t.Skip("starts real broker processes; skipped with -short")
	}
	c := &cluster{Dir: t.TempDir(), DatabaseURL: brokertest.PostgresURL(t)}
	brokerDir := filepath.Join(c.Dir, "broker")
	for range n {
		addr := e2e.FreeAddr(t)
		c.Replicas = append(c.Replicas, &replica{URL: "http://" + addr, Args: []string{
			"serve", "--data-dir", brokerDir, "--addr", addr, "--dev", "--database-url", c.DatabaseURL,
			"--lease-ttl", "2s", "--max-attempts", "10", "--submit-per-minute", "600",
			"--researcher-time-granularity", e2e.Granularity.String()}})
		r := c.Replicas[len(c.Replicas)-1]
		r.Args = append(r.Args, extra...) // later flags win
	}
	var wg sync.WaitGroup
	start := make(chan struct{})
	procs := make([]*e2e.Process, n)
	for i, r := range c.Replicas {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			procs[i] = e2e.StartTre(t, r.Args...)
		}()
	}
	close(start)
	wg.Wait()
	for i, r := range c.Replicas {
		r.Proc = procs[i]
		waitReady(t, r)
	}
	c.Tokens = e2e.DevTokens(t, brokerDir, e2e.Users) // the key the replicas made
	return c
}

// waitReady waits until r answers /readyz, failing at once if it exited.
func waitReady(t *testing.T, r *replica) {
	t.Helper()
	e2e.Eventually(t, 60*time.Second, "replica "+r.URL+" ready", func() error {
		select {
		case err := <-r.Proc.Done():
			t.Fatalf("replica %s exited while starting: %v\n%s", r.URL, err, r.Proc.Out.String())
		default:
		}
		return (&api.Client{BaseURL: r.URL, HTTPClient: &http.Client{Timeout: 5 * time.Second}}).Readyz(context.Background())
	})
}

// startAgent generates data and starts a site agent polling replica i.
func (c *cluster) startAgent(t *testing.T, i int) {
	t.Helper()
	c.Data = filepath.Join(c.Dir, "gp.duckdb")
	c.Catalog = filepath.Join(c.Dir, "gp.catalog.yaml")
	var out bytes.Buffer
	if code := e2e.RunTre(context.Background(), []string{"synth", "--out", c.Data, "--patients", "2000", "--seed", "7"}, &out, &out); code != 0 {
		t.Fatalf("tre synth exited %d:\n%s", code, out.String())
	}
	tokenFile := e2e.WriteAgentToken(t, c.Dir, c.Tokens["site"])
	c.Agent = e2e.StartTre(t, "agent", "--broker", c.Replicas[i].URL, "--site-id", e2e.SiteID, "--token-file", tokenFile,
		"--data", c.Data, "--catalog", c.Catalog, "--poll-interval", "100ms", "--memory-limit", "512MB",
		"--scratch-dir", filepath.Join(c.Dir, "scratch"))
}

// TestReplicas is a researcher's flow alternating between three brokers on
// one PostgreSQL database, with a web session used through all three and
// one broker killed with SIGKILL mid-flow.
func TestReplicas(t *testing.T) {
	ctx := context.Background()
	c := startReplicas(t, 3)

	// Set-up on different replicas: the site registered on one, the
	// agent polling another, the project created on the third.
	e2e.RegisterSite(t, c.as(0, "dave"))
	c.startAgent(t, 2)
	e2e.Eventually(t, 60*time.Second, "catalog published through replica 2 seen by replica 0", func() error {
		list, err := c.as(0, "dave").Datasets(ctx, api.ListOptions{})
		if err != nil {
			return err
		}
		if len(list.Items) == 0 {
			return errors.New("no dataset yet")
		}
		return nil
	})
	p, err := c.as(1, "dave").CreateProject(ctx, api.ProjectRequest{
		Title: "Replica study", Organisation: "Test University", Purpose: "Testing brokers behind a load balancer",
		LawfulBasis: "Art. 6(1)(e)", Members: []string{"alice"}, Datasets: []string{"nhs_gp_synthetic"},
		EpsilonBudget: 10, DeltaBudget: 1e-4, ExpiresAt: time.Now().AddDate(0, 1, 0),
	})
	if err != nil {
		t.Fatalf("create project: %v", err)
	}

	// Submit on 0, approve on 1, the agent leases from 2, release on 0,
	// the result read on 1.
	q, err := c.as(0, "alice").SubmitQuery(ctx, api.QueryRequest{ProjectID: p.ID, SQL: replicaSQL, Epsilon: 1, Purpose: "first"})
	if err != nil {
		t.Fatalf("submit on replica 0: %v", err)
	}
	if _, err := c.as(1, "bob").ApproveQuery(ctx, q.ID, "fine"); err != nil {
		t.Fatalf("approve on replica 1: %v", err)
	}
	e2e.WaitStatus(t, c.as(2, "carol"), q.ID, broker.StatusAwaitingOutputCheck)
	if _, err := c.as(0, "carol").ReleaseQuery(ctx, q.ID, "safe"); err != nil {
		t.Fatalf("release on replica 0: %v", err)
	}
	e2e.WaitStatus(t, c.as(1, "alice"), q.ID, broker.StatusReleased)
	first, err := c.as(1, "alice").Result(ctx, q.ID)
	if err != nil || len(first.Rows) == 0 {
		t.Fatalf("result on replica 1: %+v, %v", first, err)
	}

	// The web UI: signed in on 0, the query's page on 1, sign-out on 2,
	// refused on 0.
	web := signIn(t, c.Replicas[0].URL, c.Tokens["alice"])
	for i := range c.Replicas {
		if code, body := web.get(t, c.Replicas[i].URL+"/ui/queries/"+strconv.FormatInt(q.ID, 10)); code != http.StatusOK || !strings.Contains(body, "first") {
			t.Fatalf("query page on replica %d with the session of replica 0: status %d", i, code)
		}
	}
	csrf := web.csrf(t, c.Replicas[1].URL)
	if code, _ := web.post(t, c.Replicas[2].URL+"/ui/signout", url.Values{"csrf": {csrf}}); code != http.StatusSeeOther {
		t.Fatalf("sign out on replica 2: status %d", code)
	}
	if code, _ := web.getWithCookies(t, c.Replicas[0].URL+"/ui/queries", web.kept); code != http.StatusSeeOther {
		t.Fatalf("replica 0 after sign-out on replica 2: status %d, want a redirect to sign-in", code)
	}

	// Mid-flow: a second query approved on replica 2 (the agent's); the
	// approval acknowledged, replica 2 is killed with SIGKILL. Nothing
	// acknowledged is lost: the other replicas see the approval, the run
	// completes once replica 2 is back, and the release on 1 is read on 0.
	q2, err := c.as(1, "alice").SubmitQuery(ctx, api.QueryRequest{ProjectID: p.ID, SQL: replicaSQL, Epsilon: 1, Purpose: "second"})
	if err != nil {
		t.Fatalf("submit on replica 1: %v", err)
	}
	if _, err := c.as(2, "bob").ApproveQuery(ctx, q2.ID, "fine"); err != nil {
		t.Fatalf("approve on replica 2: %v", err)
	}
	c.Replicas[2].Proc.Kill()
	got, err := c.as(0, "bob").Query(ctx, q2.ID)
	if err != nil {
		t.Fatalf("read on replica 0 after replica 2 was killed: %v", err)
	}
	switch got.Status {
	case broker.StatusApproved, broker.StatusRunning, broker.StatusAwaitingOutputCheck:
	default:
		t.Fatalf("after the kill the approved query is %s", got.Status)
	}
	// A submission while replica 2 is down goes through the others.
	q3, err := c.as(0, "alice").SubmitQuery(ctx, api.QueryRequest{ProjectID: p.ID, SQL: replicaSQL, Epsilon: 0.5, Purpose: "third"})
	if err != nil {
		t.Fatalf("submit on replica 0 while replica 2 is down: %v", err)
	}
	c.Replicas[2].Proc = e2e.StartTre(t, c.Replicas[2].Args...)
	waitReady(t, c.Replicas[2])
	e2e.WaitStatus(t, c.as(1, "carol"), q2.ID, broker.StatusAwaitingOutputCheck)
	if _, err := c.as(1, "carol").ReleaseQuery(ctx, q2.ID, "safe"); err != nil {
		t.Fatalf("release on replica 1: %v", err)
	}
	e2e.WaitStatus(t, c.as(0, "alice"), q2.ID, broker.StatusReleased)
	if res, err := c.as(0, "alice").Result(ctx, q2.ID); err != nil || len(res.Rows) == 0 {
		t.Fatalf("result on replica 0: %+v, %v", res, err)
	}
	if got, err := c.as(2, "bob").Query(ctx, q3.ID); err != nil || got.Status != broker.StatusSubmitted {
		t.Fatalf("the submission made while replica 2 was down, read on replica 2: %+v, %v", got, err)
	}

	// Every replica agrees on the budget: two runs of ε 1 spent.
	for i := range c.Replicas {
		proj, err := c.as(i, "dave").Project(ctx, p.ID)
		if err != nil {
			t.Fatal(err)
		}
		if proj.Budget.EpsilonSpent != 2 || proj.Budget.EpsilonReserved != 0 {
			t.Errorf("budget on replica %d = %+v, want ε 2 spent, 0 reserved", i, proj.Budget)
		}
	}
	// The audit chain, written by three processes, is intact.
	var out bytes.Buffer
	if code := e2e.RunTre(ctx, []string{"audit", "verify", "--database-url", c.DatabaseURL}, &out, &out); code != 0 {
		t.Fatalf("tre audit verify exited %d:\n%s", code, out.String())
	}
}

// TestRateLimitAcrossReplicas: replicas on one PostgreSQL database keep
// the submission rate limit's buckets there, so N replicas behind a
// balancer allow a user what one allows (docs/operations.md).
func TestRateLimitAcrossReplicas(t *testing.T) {
	ctx := context.Background()
	// One a minute: the bucket holds one token and refills in 60 s, far
	// longer than the three requests below take even on a loaded machine.
	const perMinute = 1
	c := startReplicas(t, 2, "--submit-per-minute", strconv.Itoa(perMinute))
	e2e.RegisterSite(t, c.as(0, "dave"))
	cat, err := queries.LoadCatalog(e2e.TestCatalogPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.as(0, "site").PublishCatalog(ctx, e2e.SiteID, cat); err != nil {
		t.Fatalf("publish catalog: %v", err)
	}
	p, err := c.as(1, "dave").CreateProject(ctx, api.ProjectRequest{
		Title: "Rate study", Organisation: "Test University", Purpose: "Testing rate limits across replicas",
		LawfulBasis: "Art. 6(1)(e)", Members: []string{"alice"}, Datasets: []string{cat.Dataset},
		EpsilonBudget: 100, DeltaBudget: 1e-3, ExpiresAt: time.Now().AddDate(0, 1, 0),
	})
	if err != nil {
		t.Fatalf("create project: %v", err)
	}
	submit := func(i int) error {
		_, err := c.as(i, "alice").SubmitQuery(ctx, api.QueryRequest{ProjectID: p.ID, SQL: e2e.HostileSQL, Purpose: "rate"})
		return err
	}
	// The token spent on replica 1, the next submission is refused on both.
	if err := submit(1); err != nil {
		t.Fatalf("first submission on replica 1: %v", err)
	}
	for i := range c.Replicas {
		if err := submit(i); e2e.APIStatus(err) != http.StatusTooManyRequests {
			t.Fatalf("second submission, on replica %d: %v, want 429", i, err)
		}
	}
}

// browser is a cookie-keeping HTTP client that follows no redirects. Go's
// cookie jar does not isolate cookies by port, so the session cookie set
// by one replica on 127.0.0.1 goes to all of them, as through one proxy.
type browser struct {
	http *http.Client
	kept []*http.Cookie // the session cookie as it was before sign-out
}

func signIn(t *testing.T, base, token string) *browser {
	t.Helper()
	jar, _ := cookiejar.New(nil)
	b := &browser{http: &http.Client{Jar: jar, Timeout: 30 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
	_, body := b.get(t, base+"/ui/signin")
	code, _ := b.post(t, base+"/ui/signin", url.Values{"csrf": {csrfOf(t, body)}, "token": {token}})
	if code != http.StatusSeeOther {
		t.Fatalf("sign in: status %d", code)
	}
	u, _ := url.Parse(base + "/")
	b.kept = jar.Cookies(u)
	return b
}

var csrfRE = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

func csrfOf(t *testing.T, body string) string {
	t.Helper()
	m := csrfRE.FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("no CSRF token in the page")
	}
	return m[1]
}

func (b *browser) csrf(t *testing.T, base string) string {
	t.Helper()
	_, body := b.get(t, base+"/ui/queries")
	return csrfOf(t, body)
}

func (b *browser) do(t *testing.T, req *http.Request) (int, string) {
	t.Helper()
	resp, err := b.http.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	buf.ReadFrom(resp.Body)
	return resp.StatusCode, buf.String()
}

func (b *browser) get(t *testing.T, u string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, u, nil)
	return b.do(t, req)
}

// getWithCookies sends the given cookies and not the jar's: a browser (or
// an attacker) that kept the cookie after signing out.
func (b *browser) getWithCookies(t *testing.T, u string, cookies []*http.Cookie) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, u, nil)
	for _, ck := range cookies {
		req.AddCookie(ck)
	}
	c := &http.Client{Timeout: 30 * time.Second, CheckRedirect: b.http.CheckRedirect}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	resp.Body.Close()
	return resp.StatusCode, fmt.Sprint(resp.Header.Get("Location"))
}

func (b *browser) post(t *testing.T, u string, form url.Values) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, u, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	return b.do(t, req)
}
