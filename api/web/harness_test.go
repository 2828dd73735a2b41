package web_test

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nhs-tre/tre/api/auth"
	"github.com/nhs-tre/tre/api/web"
	"github.com/nhs-tre/tre/broker"
	"github.com/nhs-tre/tre/broker/brokertest"
	"github.com/nhs-tre/tre/broker/sqlite"
	"github.com/nhs-tre/tre/dp"
	"github.com/nhs-tre/tre/queries"
)

// testCatalog is a small dataset: enough for the pages, not the engine.
const testCatalog = `
dataset: gp_test
privacy_unit: patient_id
policy:
  max_groups_per_patient: 1
  max_rows_per_group: 1
  small_cell_threshold: 10
  rounding_base: 5
  optout_table: optouts
  default_epsilon: 0.5
  max_epsilon: 2.0
  delta: 1.0e-6
tables:
  - name: patients
    one_row_per_patient: true
    columns:
      - {name: patient_id, type: BIGINT, role: privacy_unit}
      - {name: sex, type: VARCHAR, role: categorical, domain: [female, male, unknown]}
      - {name: region, type: VARCHAR, role: categorical, domain: [North, South, Yorkshire and The Humber]}
      - {name: practice, type: VARCHAR, role: categorical}
      - {name: age, type: INTEGER, role: numeric, bounds: [0, 110]}
  - name: events
    columns:
      - {name: patient_id, type: BIGINT, role: privacy_unit}
      - name: code
        type: VARCHAR
        role: code
        code_system: snomed
        examples: [{code: "44054006", term: Diabetes mellitus type 2}, {code: "38341003", term: Hypertension}]
      - {name: date, type: DATE, role: date}
  - name: optouts
    columns:
      - {name: patient_id, type: BIGINT, role: privacy_unit}
`

// Test identities. erin is both researcher and reviewer: separation of
// duties must stop her reviewing her own query.
var testUsers = map[string]broker.User{
	"alice": {Subject: "alice", Name: "Alice Researcher", Org: "Uni", Roles: []broker.Role{broker.RoleResearcher}},
	"bob":   {Subject: "bob", Name: "Bob Reviewer", Org: "NHS", Roles: []broker.Role{broker.RoleReviewer}},
	"carol": {Subject: "carol", Name: "Carol Checker", Org: "NHS", Roles: []broker.Role{broker.RoleOutputChecker}},
	"dave":  {Subject: "dave", Name: "Dave Admin", Org: "NHS", Roles: []broker.Role{broker.RoleAdmin}},
	"erin":  {Subject: "erin", Name: "Erin Both", Org: "NHS", Roles: []broker.Role{broker.RoleResearcher, broker.RoleReviewer}},
	"agent": {Subject: "agent-a", Roles: []broker.Role{broker.RoleAgent}, Site: siteID},
}

// clock is a settable test clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// env is a real broker (SQLite store, DuckDB-backed SQL compiler) behind the
// web handler, with a real JWT verifier in dev (HS256) mode.
type env struct {
	svc     *broker.Service
	parser  *queries.Parser
	catalog *queries.Catalog
	h       *web.Handler
	srv     *httptest.Server
	clock   *clock
	tokens  map[string]string
	project *broker.Project
}

const siteID = "site-a"

// newEnv builds the environment. The clock starts at the real time so that
// a real browser accepts the session cookie's expiry, on a minute boundary:
// while it stands still there, researchers see every status change at once
// (the broker shows them changes from the next minute boundary on).
func newEnv(tb testing.TB) *env {
	tb.Helper()
	store, err := sqlite.Open(context.Background(), filepath.Join(tb.TempDir(), "broker.db"))
	if err != nil {
		tb.Fatalf("open sqlite: %v", err)
	}
	tb.Cleanup(func() { store.Close() })
	return newEnvOn(tb, store)
}

// testKey signs the test users' tokens (dev HS256).
var testKey = []byte("0123456789abcdef0123456789abcdef-web-test")

// newEnvOn is newEnv over a store the caller opened.
func newEnvOn(tb testing.TB, store broker.Store) *env {
	tb.Helper()
	ctx := context.Background()
	ck := &clock{t: time.Now().UTC().Truncate(time.Minute)}
	parser, err := queries.NewParser()
	if err != nil {
		tb.Fatalf("new parser: %v", err)
	}
	tb.Cleanup(func() { parser.Close() })
	svc := broker.NewService(store, parser, broker.Options{Now: ck.Now})

	key := testKey
	ver, err := auth.NewVerifier(ctx, auth.AuthConfig{DevKey: key}, auth.WithNow(ck.Now))
	if err != nil {
		tb.Fatalf("verifier: %v", err)
	}
	e := &env{svc: svc, parser: parser, clock: ck, tokens: map[string]string{}}
	for name, u := range testUsers {
		tok, err := auth.MintDevToken(key, auth.DevClaims{Subject: u.Subject, Name: u.Name, Org: u.Org, Roles: u.Roles, IssuedAt: ck.Now(), TTL: time.Hour})
		if err != nil {
			tb.Fatalf("mint token: %v", err)
		}
		e.tokens[name] = tok
	}
	var demo []web.DemoUser
	for _, n := range []string{"alice", "bob", "carol", "dave", "erin"} {
		demo = append(demo, web.DemoUser{Name: testUsers[n].Name, Role: testUsers[n].Roles[len(testUsers[n].Roles)-1], Token: e.tokens[n]})
	}
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	e.h = web.New(web.Config{Dev: true, DevUsers: demo, Now: ck.Now}, svc, ver, logger)
	mux := http.NewServeMux()
	mux.Handle(web.PathPrefix, e.h)
	mux.Handle(web.RegisterPath, e.h)
	mux.Handle("/{$}", http.RedirectHandler(web.PathPrefix, http.StatusSeeOther))
	e.srv = httptest.NewServer(mux)
	tb.Cleanup(e.srv.Close)

	cat, err := queries.ParseCatalog("test.yaml", []byte(testCatalog))
	if err != nil {
		tb.Fatalf("catalog: %v", err)
	}
	e.catalog = cat
	if err := svc.CreateSite(e.as("dave"), &broker.Site{ID: siteID, Name: "Site A", Organisation: "Test NHS Trust"}); err != nil {
		tb.Fatalf("register site: %v", err)
	}
	if err := svc.PublishCatalog(e.as("agent"), siteID, "", cat); err != nil {
		tb.Fatalf("publish catalog: %v", err)
	}
	e.project = e.mustProject(tb, "Diabetes outcomes", []string{"alice", "erin"})
	return e
}

// as returns a context carrying the named test user.
func (e *env) as(name string) context.Context {
	u := testUsers[name]
	return broker.NewContext(context.Background(), &u)
}

func (e *env) mustProject(tb testing.TB, title string, members []string) *broker.Project {
	tb.Helper()
	p := &broker.Project{
		Title: title, Organisation: "University of Example", Purpose: "Study outcomes of type 2 diabetes by region.",
		LawfulBasis: "UK GDPR 6(1)(e), 9(2)(j)", Members: members, Datasets: []string{"gp_test"},
		EpsilonBudget: 10, DeltaBudget: 1e-4, ExpiresAt: e.clock.Now().AddDate(1, 0, 0),
	}
	if err := e.svc.CreateProject(e.as("dave"), p); err != nil {
		tb.Fatalf("create project: %v", err)
	}
	return p
}

func (e *env) mustSubmit(tb testing.TB, who, sql, purpose string) *broker.Query {
	tb.Helper()
	q, err := e.svc.SubmitQuery(e.as(who), broker.QuerySubmission{ProjectID: e.project.ID, SQL: sql, Purpose: purpose})
	if err != nil {
		tb.Fatalf("submit: %v", err)
	}
	return q
}

func f64(v float64) *float64 { return &v }

// mustComplete leases the approved job as the site agent and completes it
// with a protected result of the approved query's shape (as the broker
// checks): its columns, report and, for a public-domain grouping, every key
// of the domains in order; for a grouping released by partition selection
// the keys are keys. The first row is released, the second suppressed, the
// rest rounded.
func (e *env) mustComplete(tb testing.TB, id int64, keys ...string) {
	tb.Helper()
	ctx := e.as("agent")
	lease, err := e.svc.LeaseJob(ctx, siteID, "")
	if err != nil || lease == nil {
		tb.Fatalf("lease: %v, %v", lease, err)
	}
	if lease.QueryID != id {
		tb.Fatalf("leased query %d, want %d", lease.QueryID, id)
	}
	plan, err := e.parser.Compile(context.Background(), e.catalog, lease.SQL, queries.Options{Epsilon: lease.Epsilon})
	if err != nil {
		tb.Fatalf("compile the leased query: %v", err)
	}
	res := brokertest.ShapedResult(plan.Spec, keys, func(row int) dp.Cell {
		if row == 1 {
			return dp.Cell{Suppressed: true}
		}
		v := float64(100 + 35*row)
		return dp.Cell{Value: f64(v), CILow: f64(v - 6), CIHigh: f64(v + 6), Rounded: true}
	})
	res.Report.OptOut = dp.OptOutReport{Applied: true, Table: "optouts", SnapshotHash: strings.Repeat("ab", 32)}
	res.Report.Sandbox = dp.SandboxReport{Layers: []string{"landlock", "seccomp", "rlimits"}}
	if err := e.svc.CompleteJob(ctx, id, lease.Token, res); err != nil {
		tb.Fatalf("complete: %v", err)
	}
}

// client is a browser-like HTTP client for one signed-in user: a cookie
// jar, no redirects followed automatically.
type client struct {
	tb   testing.TB
	e    *env
	http *http.Client
}

// signIn signs name in through the dev sign-in form, as a browser would.
func (e *env) signIn(tb testing.TB, name string) *client {
	tb.Helper()
	jar, _ := cookiejar.New(nil)
	c := &client{tb: tb, e: e, http: &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
	_, body := c.get("/ui/signin")
	csrf := csrfOf(tb, body)
	resp, _ := c.post("/ui/signin", url.Values{"csrf": {csrf}, "token": {e.tokens[name]}})
	if resp.StatusCode != http.StatusSeeOther {
		tb.Fatalf("sign in %s: status %d", name, resp.StatusCode)
	}
	return c
}

func (c *client) do(req *http.Request) (*http.Response, string) {
	c.tb.Helper()
	resp, err := c.http.Do(req)
	if err != nil {
		c.tb.Fatalf("%s %s: %v", req.Method, req.URL.Path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		c.tb.Fatalf("read body: %v", err)
	}
	return resp, string(b)
}

func (c *client) get(path string) (*http.Response, string) {
	c.tb.Helper()
	req, _ := http.NewRequest(http.MethodGet, c.e.srv.URL+path, nil)
	return c.do(req)
}

func (c *client) post(path string, form url.Values) (*http.Response, string) {
	c.tb.Helper()
	req, _ := http.NewRequest(http.MethodPost, c.e.srv.URL+path, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	return c.do(req)
}

// csrf returns the CSRF token of the user's session, read from a page.
func (c *client) csrf() string {
	c.tb.Helper()
	_, body := c.get("/ui/queries")
	return csrfOf(c.tb, body)
}

var csrfRE = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

func csrfOf(tb testing.TB, body string) string {
	tb.Helper()
	m := csrfRE.FindStringSubmatch(body)
	if m == nil {
		tb.Fatalf("no CSRF token in page:\n%s", body)
	}
	return m[1]
}
