package containertest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nhs-tre/tre/api"
	"github.com/nhs-tre/tre/broker"
	"github.com/nhs-tre/tre/e2e"
)

// replicaServices are compose.replicas.yaml's brokers.
var replicaServices = []string{"broker-1", "broker-2", "broker-3"}

// replicaHeader names the replica that answered through the proxy
// (deploy/replicas/Caddyfile), as "broker-N:8080".
const replicaHeader = "X-Tre-Replica"

// servedBy is an http.RoundTripper that remembers which replica answered
// the last request.
type servedBy struct {
	next http.RoundTripper
	mu   sync.Mutex
	last string
}

func (s *servedBy) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := s.next.RoundTrip(r)
	if err == nil {
		s.mu.Lock()
		s.last, _, _ = strings.Cut(resp.Header.Get(replicaHeader), ":")
		s.mu.Unlock()
	}
	return resp, err
}

func (s *servedBy) Last() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last
}

// tracked is a client for user whose transport records the replica that
// answered each request.
func (d *deployment) tracked(user string) (*api.Client, *servedBy) {
	rec := &servedBy{next: d.httpCli.Transport}
	return &api.Client{BaseURL: d.url, Token: d.tokens[user], HTTPClient: &http.Client{Timeout: d.httpCli.Timeout, Transport: rec}}, rec
}

// TestReplicaCompose brings up deploy/compose.replicas.yaml (three brokers
// behind Caddy on one PostgreSQL, one site), runs a researcher's flow and
// a web session through the proxy, restarts the brokers one at a time
// under load and counts every request a client would see fail, checks the
// audit chain with `tre audit verify`, and tears it all down.
func TestReplicaCompose(t *testing.T) {
	d := up(t, "tre-citest-replicas", "compose.replicas.yaml", []string{
		// Its own image tag: TestCompose's images may be built from
		// another tree at the same moment (two CI runs on one engine).
		"TRE_IMAGE_TAG=" + tag + "-replicas",
		"TRE_PATIENTS=2000",
		// The load below submits far more than a researcher would.
		"TRE_SUBMIT_PER_MINUTE=100000",
	}, "replicas")
	ctx := context.Background()
	admin := d.as("admin")

	e2e.Eventually(t, 2*time.Minute, "site-a's catalog", func() error {
		list, err := admin.Sites(ctx, api.ListOptions{})
		if err != nil {
			return err
		}
		for _, s := range list.Items {
			if s.ID == "site-a" && s.Registered && len(s.Datasets) == 1 {
				return nil
			}
		}
		return fmt.Errorf("site-a not seen with its dataset: %+v", list.Items)
	})
	p, err := admin.CreateProject(ctx, api.ProjectRequest{
		Title: "Replica container test", Organisation: "Test University", Purpose: "Testing brokers behind a proxy",
		LawfulBasis: "Art. 6(1)(e)", Members: []string{"alice"}, Datasets: []string{"gp_site_a"},
		EpsilonBudget: 10, DeltaBudget: 1e-4, ExpiresAt: time.Now().AddDate(0, 1, 0),
	})
	if err != nil {
		t.Fatalf("create project: %v", err)
	}

	first := replicaFlow(t, d, p.ID, "before the restarts")
	replicaWebSession(t, d, first)

	load := startLoad(t, d, p.ID, first)
	for _, svc := range replicaServices {
		restartReplica(t, d, svc)
	}
	st := load.stop()
	t.Logf("during the rolling restart: %d requests, %d answered after a documented retry (503, 429), %d failed; by replica %v",
		st.total, st.retried, len(st.failures), st.byReplica)
	for _, f := range st.failures {
		t.Errorf("failed during the rolling restart: %s", f)
	}
	if st.total < 50 {
		t.Errorf("only %d requests during the rolling restart: the load did not run", st.total)
	}
	for _, svc := range replicaServices {
		if st.byReplica[svc] == 0 {
			t.Errorf("%s answered no request during the rolling restart", svc)
		}
	}

	// After the restarts: the agent is still served and the flow works.
	second := replicaFlow(t, d, p.ID, "after the restarts")
	proj, err := admin.Project(ctx, p.ID)
	if err != nil {
		t.Fatal(err)
	}
	if proj.Budget.EpsilonSpent != 2 || proj.Budget.EpsilonReserved != 0 {
		t.Errorf("budget %+v after two runs of ε 1, want 2 spent and none reserved", proj.Budget)
	}
	for _, id := range []int64{first, second} {
		if q, err := admin.Query(ctx, id); err != nil || q.Status != broker.StatusReleased {
			t.Errorf("query %d: %+v, %v", id, q, err)
		}
	}

	// The audit chain, written by three brokers and restarts, is intact:
	// `tre audit verify` against the database, run in a broker container
	// (the database is on an internal network) and through the API.
	out := docker(t, "exec", d.c.container(t, "broker-2"), "tre", "audit", "verify")
	t.Logf("tre audit verify: %s", out)
	if v, err := admin.VerifyAudit(ctx); err != nil || !v.OK {
		t.Errorf("audit through the API: %+v, %v", v, err)
	}
}

// replicaFlow submits, approves and releases one query through the proxy,
// each step as its own user, and reads the result; it logs which replica
// took each step and fails if one replica took all three (the proxy's
// round robin sends consecutive requests to different replicas).
func replicaFlow(t *testing.T, d *deployment, project int64, purpose string) int64 {
	t.Helper()
	ctx := context.Background()
	researcher, atR := d.tracked("researcher")
	reviewer, atV := d.tracked("reviewer")
	checker, atC := d.tracked("output_checker")
	q, err := researcher.SubmitQuery(ctx, api.QueryRequest{ProjectID: project, Dataset: "gp_site_a", SQL: typicalSQL(t, "t2d_prevalence_by_age_sex_region"), Purpose: purpose, Epsilon: 1})
	if err != nil {
		t.Fatalf("submit: %v", err)
	}
	steps := []string{atR.Last()}
	if _, err := reviewer.ApproveQuery(ctx, q.ID, "fine"); err != nil {
		t.Fatalf("approve %d: %v", q.ID, err)
	}
	steps = append(steps, atV.Last())
	d.waitStatus(t, q.ID, broker.StatusAwaitingOutputCheck, 3*time.Minute)
	if _, err := checker.Output(ctx, q.ID); err != nil {
		t.Fatalf("output %d: %v", q.ID, err)
	}
	if _, err := checker.ReleaseQuery(ctx, q.ID, "safe"); err != nil {
		t.Fatalf("release %d: %v", q.ID, err)
	}
	steps = append(steps, atC.Last())
	t.Logf("query %d (%s): submitted on %s, approved on %s, released on %s", q.ID, purpose, steps[0], steps[1], steps[2])
	if steps[0] == steps[1] && steps[1] == steps[2] {
		t.Errorf("query %d: one replica (%s) took every step: the proxy does not spread requests", q.ID, steps[0])
	}
	for _, s := range steps {
		if !strings.HasPrefix(s, "broker-") {
			t.Errorf("no %s header naming a replica: %q", replicaHeader, s)
		}
	}
	e2e.Eventually(t, time.Minute, fmt.Sprintf("query %d's result", q.ID), func() error {
		res, err := researcher.Result(ctx, q.ID)
		if err == nil && len(res.Rows) == 0 {
			return errors.New("empty result")
		}
		return err
	})
	return q.ID
}

// webClient is a browser: it keeps cookies, follows no redirect and
// records the replica that answered.
type webClient struct {
	http *http.Client
	at   *servedBy
	url  string
}

func (d *deployment) browser() *webClient {
	jar, _ := cookiejar.New(nil)
	rec := &servedBy{next: d.httpCli.Transport}
	return &webClient{url: d.url, at: rec, http: &http.Client{Jar: jar, Timeout: d.httpCli.Timeout, Transport: rec,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

// do sends a request and returns its status and body.
func (w *webClient) do(req *http.Request) (int, string, error) {
	resp, err := w.http.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

func (w *webClient) get(path, token string) (int, string, error) {
	req, err := http.NewRequest(http.MethodGet, w.url+path, nil)
	if err != nil {
		return 0, "", err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	return w.do(req)
}

var csrfField = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// replicaWebSession starts a web session through the proxy the way an
// OIDC proxy would (a forwarded token on the first request), uses it by
// its cookie alone until every replica has served it, signs out through
// one, and checks that no replica accepts the cookie afterwards.
func replicaWebSession(t *testing.T, d *deployment, query int64) {
	t.Helper()
	w := d.browser()
	page := "/ui/queries/" + strconv.FormatInt(query, 10)
	if code, body, err := w.get(page, d.tokens["researcher"]); err != nil || code != http.StatusOK || !strings.Contains(body, "before the restarts") {
		t.Fatalf("query page with a forwarded token: %d, %v", code, err)
	}
	cookies := w.http.Jar.Cookies(mustURL(t, d.url+"/"))
	if len(cookies) == 0 {
		t.Fatal("no session cookie set")
	}
	// The cookie alone, until each replica has served the page.
	served := map[string]int{}
	var csrf string
	for i := 0; i < 30 && len(served) < len(replicaServices); i++ {
		code, body, err := w.get(page, "")
		if err != nil || code != http.StatusOK {
			t.Fatalf("query page with the session cookie, on %s: %d, %v", w.at.Last(), code, err)
		}
		served[w.at.Last()]++
		if m := csrfField.FindStringSubmatch(body); m != nil {
			csrf = m[1]
		}
	}
	t.Logf("web session pages served by %v", served)
	if len(served) < len(replicaServices) {
		t.Fatalf("the session's page was served by %v only", served)
	}
	if csrf == "" {
		t.Fatal("no CSRF token on the query page")
	}
	req, _ := http.NewRequest(http.MethodPost, d.url+"/ui/signout", strings.NewReader("csrf="+csrf))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if code, _, err := w.do(req); err != nil || code != http.StatusSeeOther {
		t.Fatalf("sign out: %d, %v", code, err)
	}
	t.Logf("signed out on %s", w.at.Last())
	// The old cookie, kept as an attacker would, on every replica.
	old := d.browser()
	old.http.Jar.SetCookies(mustURL(t, d.url+"/"), cookies)
	refused := map[string]bool{}
	for i := 0; i < 30 && len(refused) < len(replicaServices); i++ {
		code, _, err := old.get(page, "")
		if err != nil || code != http.StatusSeeOther {
			t.Fatalf("query page with the signed-out cookie, on %s: %d, %v (want a redirect to sign in)", old.at.Last(), code, err)
		}
		refused[old.at.Last()] = true
	}
	if len(refused) < len(replicaServices) {
		t.Fatalf("signed-out cookie tried on %v only", refused)
	}
}

// restartReplica restarts one broker container (SIGTERM: it drains for its
// shutdown_delay, then stops) and waits until it is healthy and the proxy
// sends it requests again.
func restartReplica(t *testing.T, d *deployment, svc string) {
	t.Helper()
	id := d.c.container(t, svc)
	start := time.Now()
	docker(t, "restart", "-t", "20", id)
	e2e.Eventually(t, 2*time.Minute, svc+" healthy after its restart", func() error {
		if h := docker(t, "inspect", "--format", "{{.State.Health.Status}}", id); h != "healthy" {
			return fmt.Errorf("health %s", h)
		}
		return nil
	})
	probe := d.browser()
	e2e.Eventually(t, time.Minute, svc+" back in the proxy's rotation", func() error {
		if _, _, err := probe.get("/readyz", ""); err != nil {
			return err
		}
		if probe.at.Last() != svc {
			return fmt.Errorf("answered by %s", probe.at.Last())
		}
		return nil
	})
	t.Logf("%s restarted and back in rotation in %s", svc, time.Since(start).Round(100*time.Millisecond))
}

// loadStats counts what the load saw.
type loadStats struct {
	total, retried int
	failures       []string
	byReplica      map[string]int
}

// load is requests sent one after another by a few clients, as researchers,
// reviewers and browsers would, until stop.
type load struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	st     loadStats
}

// startLoad starts four clients through the proxy: a researcher listing
// and submitting queries, staff reading one, and a browser using a web
// session. Each retries only what the API documents as retryable: 503
// unavailable (nothing was stored) and 429 rate_limited; any other error,
// a proxy's 502 or 504 or a broken connection included, is a failure.
func startLoad(t *testing.T, d *deployment, project, query int64) *load {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	l := &load{cancel: cancel, st: loadStats{byReplica: map[string]int{}}}
	sql := typicalSQL(t, "t2d_prevalence_by_age_sex_region")
	researcher, atR := d.tracked("researcher")
	staff, atS := d.tracked("admin")
	lister, atL := d.tracked("researcher")
	web := d.browser()
	if code, _, err := web.get("/ui/queries", d.tokens["researcher"]); err != nil || code != http.StatusOK {
		t.Fatalf("web session for the load: %d, %v", code, err)
	}
	workers := []struct {
		name string
		at   *servedBy
		call func() error
	}{
		{"submit", atR, func() error {
			_, err := researcher.SubmitQuery(ctx, api.QueryRequest{ProjectID: project, Dataset: "gp_site_a", SQL: sql, Purpose: "load", Epsilon: 0.1})
			return err
		}},
		{"read query", atS, func() error { _, err := staff.Query(ctx, query); return err }},
		{"list queries", atL, func() error {
			_, err := lister.Queries(ctx, api.QueryListOptions{ProjectID: project})
			return err
		}},
		{"web page", web.at, func() error {
			code, _, err := web.get("/ui/queries", "")
			if err == nil && code != http.StatusOK {
				err = &api.Error{Status: code, Code: "web"}
			}
			return err
		}},
	}
	t.Cleanup(func() { l.stop() }) // also when the test stops early
	for _, w := range workers {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for ctx.Err() == nil {
				l.call(ctx, w.name, w.at, w.call)
				time.Sleep(20 * time.Millisecond) // a busy client, not a flood
			}
		}()
	}
	return l
}

// call makes one request, retrying it while it is answered 503 or 429,
// and counts it.
func (l *load) call(ctx context.Context, name string, at *servedBy, f func() error) {
	retried := false
	var err error
	for attempt := 0; attempt < 20; attempt++ {
		err = f()
		if status := e2e.APIStatus(err); status != http.StatusServiceUnavailable && status != http.StatusTooManyRequests {
			break
		}
		retried = true
		time.Sleep(250 * time.Millisecond)
	}
	if ctx.Err() != nil {
		return // stopped mid-request: not counted
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.st.total++
	if retried {
		l.st.retried++
	}
	if err != nil {
		l.st.failures = append(l.st.failures, fmt.Sprintf("%s at %s (last answered by %s): %v", name, time.Now().Format("15:04:05.000"), at.Last(), err))
		return
	}
	l.st.byReplica[at.Last()]++
}

// stop ends the load and returns what it saw.
func (l *load) stop() loadStats {
	l.cancel()
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.st
}

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}
