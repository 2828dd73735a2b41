package server

import (
	"context"
	"encoding/base64"
	"encoding/csv"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/nhs-tre/tre/api"
	"github.com/nhs-tre/tre/api/auth"
	"github.com/nhs-tre/tre/api/metrics"
	"github.com/nhs-tre/tre/broker"
	"github.com/nhs-tre/tre/broker/sqlite"
	"github.com/nhs-tre/tre/dp"
)

func mustErrorBody(tb testing.TB, body []byte) api.Error {
	tb.Helper()
	var e api.ErrorResponse
	if err := json.Unmarshal(body, &e); err != nil || e.Error.Code == "" {
		tb.Fatalf("not an error body: %q", body)
	}
	return e.Error
}

func TestStrictDecoding(t *testing.T) {
	srv := newTestServer(t, newFakeService())
	tok := mustToken(t, "alice", broker.RoleResearcher)
	big := `{"project_id":1,"sql":"` + strings.Repeat("x", maxBodyBytes) + `"}`
	tests := []struct {
		name        string
		contentType string
		body        string
		status      int
		msg         string
	}{
		{"valid", "application/json", `{"project_id":1,"sql":"SELECT 1","purpose":"p"}`, 201, ""},
		{"valid with charset", "application/json; charset=utf-8", `{"project_id":1,"sql":"SELECT 1"}`, 201, ""},
		{"unknown field", "application/json", `{"project_id":1,"sql":"SELECT 1","budget":9}`, 400, `unknown field "budget"`},
		{"trailing data", "application/json", `{"project_id":1,"sql":"SELECT 1"} {}`, 400, "after the JSON object"},
		{"trailing garbage", "application/json", `{"project_id":1,"sql":"SELECT 1"}x`, 400, "after the JSON object"},
		{"wrong type", "application/json", `{"project_id":"one","sql":"SELECT 1"}`, 400, `"project_id" must be int64`},
		{"wrong type nested", "application/json", `{"project_id":1,"sql":["SELECT 1"]}`, 400, `"sql" must be string`},
		{"array body", "application/json", `[1,2]`, 400, "JSON object"},
		{"null body", "application/json", `null`, 400, "JSON object"},
		{"empty body", "application/json", ``, 400, "empty"},
		{"truncated", "application/json", `{"project_id":1,`, 400, ""},
		{"syntax", "application/json", `{"project_id":1,,}`, 400, "malformed JSON"},
		{"invalid UTF-8", "application/json", "{\"project_id\":1,\"sql\":\"SELECT \xff\"}", 400, "UTF-8"},
		{"oversized", "application/json", big, 413, "larger than"},
		{"form content type", "application/x-www-form-urlencoded", `project_id=1`, 415, "application/json"},
		{"no content type", "", `{"project_id":1,"sql":"SELECT 1"}`, 415, "application/json"},
		{"number overflow", "application/json", `{"project_id":1e400,"sql":"x"}`, 400, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := newRequest(t, http.MethodPost, "/api/v1/queries", tok, tt.body)
			if tt.contentType != "" {
				req.Header.Set("Content-Type", tt.contentType)
			} else {
				req.Header.Del("Content-Type")
			}
			rec := serve(srv, req)
			if rec.Code != tt.status {
				t.Fatalf("status %d, want %d: %s", rec.Code, tt.status, rec.Body)
			}
			if tt.status >= 400 {
				e := mustErrorBody(t, rec.Body.Bytes())
				if !strings.Contains(e.Message, tt.msg) {
					t.Errorf("message %q does not contain %q", e.Message, tt.msg)
				}
				if strings.Contains(e.Message, "xxxxxxxx") {
					t.Error("error message echoes the body")
				}
			}
		})
	}
}

func TestRoutingErrors(t *testing.T) {
	srv := newTestServer(t, newFakeService())
	tok := mustToken(t, "alice", broker.RoleResearcher, broker.RoleReviewer)
	tests := []struct {
		name, method, path string
		status             int
	}{
		{"unknown route", "GET", "/api/v1/nope", 404},
		{"unknown root", "GET", "/wp-admin", 404},
		{"trailing slash", "GET", "/api/v1/queries/", 404},
		{"wrong method", "DELETE", "/api/v1/queries", 405},
		{"wrong method on id", "PUT", "/api/v1/queries/7", 405},
		{"bad id", "GET", "/api/v1/queries/abc", 400},
		{"zero id", "GET", "/api/v1/queries/0", 400},
		{"negative id", "GET", "/api/v1/queries/-3", 400},
		{"huge id", "GET", "/api/v1/queries/99999999999999999999999", 400},
		{"missing query", "GET", "/api/v1/queries/8", 404},
		{"bad status filter", "GET", "/api/v1/queries?status=done", 400},
		{"bad project filter", "GET", "/api/v1/queries?project_id=x", 400},
		{"bad format", "GET", "/api/v1/queries/7/result?format=xlsx", 400},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := call(t, srv.Handler(), tt.method, tt.path, tok, nil)
			if rec.Code != tt.status {
				t.Fatalf("status %d, want %d: %s", rec.Code, tt.status, rec.Body)
			}
			mustErrorBody(t, rec.Body.Bytes())
			if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
				t.Errorf("content type %q", ct)
			}
		})
	}
}

func TestErrorMapping(t *testing.T) {
	tests := []struct {
		name    string
		err     error
		status  int
		code    string
		message string
	}{
		{"invalid", broker.Errorf(broker.EINVALID, "bad"), 400, "invalid", "bad"},
		{"refused", broker.Errorf(broker.EREFUSED, "window functions are not allowed"), 422, "refused", "window functions are not allowed"},
		{"forbidden", broker.Errorf(broker.EFORBIDDEN, "not a member"), 403, "forbidden", "not a member"},
		{"not found", broker.Errorf(broker.ENOTFOUND, "no"), 404, "not_found", "no"},
		{"conflict", broker.Errorf(broker.ECONFLICT, "no"), 409, "conflict", "no"},
		{"budget", broker.Errorf(broker.EBUDGET, "overspend"), 409, "budget", "overspend"},
		{"limited", broker.Errorf(broker.ELIMIT, "slow down"), 429, "rate_limited", "slow down"},
		{"unavailable", broker.Errorf(broker.EUNAVAILABLE, "down"), 503, "unavailable", "down"},
		{"wrapped", errors.Join(errors.New("ctx"), broker.Errorf(broker.ECONFLICT, "stale")), 409, "conflict", "stale"},
		{"internal domain", broker.Errorf(broker.EINTERNAL, "disk /var/x failed"), 500, "internal", "internal error"},
		{"plain error", errors.New("duckdb: value 'Smith' is not a number"), 500, "internal", "internal error"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeService()
			f.err = tt.err
			srv := newTestServer(t, f)
			rec := call(t, srv.Handler(), "GET", "/api/v1/queries/7", mustToken(t, "alice", broker.RoleResearcher), nil)
			if rec.Code != tt.status {
				t.Fatalf("status %d, want %d", rec.Code, tt.status)
			}
			if diff := cmp.Diff(api.Error{Code: tt.code, Message: tt.message}, mustErrorBody(t, rec.Body.Bytes())); diff != "" {
				t.Errorf("error (-want +got):\n%s", diff)
			}
		})
	}
}

func TestPagination(t *testing.T) {
	srv := newTestServer(t, newFakeService())
	tests := []struct {
		name   string
		query  string
		status int
		want   []int64
		limit  int
		offset int
	}{
		{"defaults", "", 200, []int64{1, 2, 3}, 50, 0},
		{"limit", "?limit=2", 200, []int64{1, 2}, 2, 0},
		{"offset", "?limit=2&offset=2", 200, []int64{3}, 2, 2},
		{"offset past end", "?offset=10", 200, []int64{}, 50, 10},
		{"limit clamped", "?limit=100000", 200, []int64{1, 2, 3}, api.MaxPageLimit, 0},
		{"zero limit", "?limit=0", 400, nil, 0, 0},
		{"negative offset", "?offset=-1", 400, nil, 0, 0},
		{"text limit", "?limit=all", 400, nil, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := call(t, srv.Handler(), "GET", "/public/register"+tt.query, "", nil)
			if rec.Code != tt.status {
				t.Fatalf("status %d, want %d: %s", rec.Code, tt.status, rec.Body)
			}
			if tt.status != 200 {
				return
			}
			var got api.List[broker.RegisterEntry]
			if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
				t.Fatal(err)
			}
			ids := []int64{}
			for _, e := range got.Items {
				ids = append(ids, e.ProjectID)
			}
			if diff := cmp.Diff(tt.want, ids); diff != "" {
				t.Errorf("ids (-want +got):\n%s", diff)
			}
			if got.Total != 3 || got.Limit != tt.limit || got.Offset != tt.offset {
				t.Errorf("total/limit/offset = %d/%d/%d", got.Total, got.Limit, got.Offset)
			}
		})
	}
}

func TestRateLimit(t *testing.T) {
	now := testNow
	srv := newTestServer(t, newFakeService(), func(c *Config) {
		c.SubmitLimit = RateLimit{PerMinute: 6, Burst: 2} // one token every 10 s
		c.Now = func() time.Time { return now }
		c.DryRunner = fakeDryRunner{}
	})
	alice := mustToken(t, "alice", broker.RoleResearcher)
	bob := mustToken(t, "bob", broker.RoleResearcher)
	body := `{"project_id":1,"sql":"SELECT 1"}`
	submit := func(tok string) int {
		return call(t, srv.Handler(), "POST", "/api/v1/queries", tok, body).Code
	}
	got := []int{submit(alice), submit(alice)}
	rec := call(t, srv.Handler(), "POST", "/api/v1/queries/dry-run", alice, body)
	got = append(got, rec.Code, submit(bob))
	if diff := cmp.Diff([]int{201, 201, 429, 201}, got); diff != "" {
		t.Fatalf("statuses (-want +got):\n%s", diff)
	}
	if ra := rec.Header().Get("Retry-After"); ra != "10" {
		t.Errorf("Retry-After = %q, want 10", ra)
	}
	if e := mustErrorBody(t, rec.Body.Bytes()); e.Code != broker.ELIMIT {
		t.Errorf("code %q", e.Code)
	}
	now = now.Add(10 * time.Second)
	if c := submit(alice); c != 201 {
		t.Errorf("after refill: %d", c)
	}
	if c := submit(alice); c != 429 {
		t.Errorf("second after refill: %d", c)
	}
	// Reads are not limited.
	if c := call(t, srv.Handler(), "GET", "/api/v1/queries", alice, nil).Code; c != 200 {
		t.Errorf("list while limited: %d", c)
	}
}

func TestResultCSV(t *testing.T) {
	srv := newTestServer(t, newFakeService())
	rec := call(t, srv.Handler(), "GET", "/api/v1/queries/7/result?format=csv", mustToken(t, "alice", broker.RoleResearcher), nil)
	if rec.Code != 200 {
		t.Fatalf("status %d: %s", rec.Code, rec.Body)
	}
	if cd := rec.Header().Get("Content-Disposition"); cd != `attachment; filename="tre-query-7.csv"` {
		t.Errorf("Content-Disposition = %q", cd)
	}
	if ct := rec.Header().Get("Content-Type"); ct != "text/csv; charset=utf-8" {
		t.Errorf("Content-Type = %q", ct)
	}
	recs, err := csv.NewReader(strings.NewReader(rec.Body.String())).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	want := [][]string{
		{"region", "n", "n_ci_low", "n_ci_high", "n_flag"},
		{`'=HYPERLINK("http://x")`, "13", "10", "15", ""}, // a count: whole numbers
		{"", "", "", "", "suppressed"},
		{"'-1+2", "", "", "", "secondary_suppressed"},
		{"'@SUM(A1)", "13", "", "", ""},
	}
	if diff := cmp.Diff(want, recs); diff != "" {
		t.Errorf("csv (-want +got):\n%s", diff)
	}
}

func TestSafeFilename(t *testing.T) {
	for _, in := range []string{`../../etc/passwd`, `a"b;c.csv`, "", "..", "x\r\ny"} {
		got := safeFilename(in)
		if strings.ContainsAny(got, "/\\\"\r\n;") || got == "" || strings.HasPrefix(got, ".") {
			t.Errorf("safeFilename(%q) = %q", in, got)
		}
	}
}

func TestDryRun(t *testing.T) {
	body := `{"project_id":1,"sql":"SELECT count(*) FROM patients"}`
	tok := mustToken(t, "alice", broker.RoleResearcher)
	rec := call(t, newTestServer(t, newFakeService()).Handler(), "POST", "/api/v1/queries/dry-run", tok, body)
	if rec.Code != 503 || !strings.Contains(mustErrorBody(t, rec.Body.Bytes()).Message, "dry runs are not configured") {
		t.Fatalf("without a dry runner: %d %s", rec.Code, rec.Body)
	}
	srv := newTestServer(t, newFakeService(), func(c *Config) { c.DryRunner = fakeDryRunner{} })
	rec = call(t, srv.Handler(), "POST", "/api/v1/queries/dry-run", tok, body)
	if rec.Code != 200 {
		t.Fatalf("status %d: %s", rec.Code, rec.Body)
	}
	var got api.DryRunResponse
	if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	if !got.Synthetic || !got.Report.Synthetic || got.Dataset != "gp" || len(got.Rows) != 1 || got.Run != api.DryRunSynthetic || got.Federation != nil {
		t.Errorf("dry run = %+v", got)
	}
	// Over a dataset three sites hold: labelled one site's answer, with
	// the federated query's cost and the combined answer's accuracy.
	f := newFakeService()
	f.plan.Accuracy = []dp.Accuracy{{Column: "n", HalfWidth95: 9}}
	f.federation = &broker.Federation{Sites: 3, SiteCost: dp.Cost{Epsilon: 1}, ProjectCost: dp.Cost{Epsilon: 3}}
	srv = newTestServer(t, f, func(c *Config) { c.DryRunner = fakeDryRunner{} })
	rec = call(t, srv.Handler(), "POST", "/api/v1/queries/dry-run", tok, body)
	got = api.DryRunResponse{}
	if err := json.Unmarshal(rec.Body.Bytes(), &got); rec.Code != 200 || err != nil {
		t.Fatalf("federated dry run: %d %s", rec.Code, rec.Body)
	}
	if got.Run != api.DryRunSyntheticSingleSite || got.Federation == nil || *got.Federation != *f.federation ||
		len(got.Accuracy) != 1 || got.Accuracy[0].HalfWidth95 != 9 || !got.Synthetic {
		t.Errorf("federated dry run = %+v", got)
	}
	rec = call(t, srv.Handler(), "POST", "/api/v1/queries/check", tok, body)
	var check api.CheckResponse
	if err := json.Unmarshal(rec.Body.Bytes(), &check); rec.Code != 200 || err != nil || check.Federation == nil || *check.Federation != *f.federation {
		t.Errorf("federated check: %d %s", rec.Code, rec.Body)
	}
}

func TestCheckQuery(t *testing.T) {
	f := newFakeService()
	f.plan.Rewritten = "SELECT 1"
	srv := newTestServer(t, f)
	tok := mustToken(t, "alice", broker.RoleResearcher)
	rec := call(t, srv.Handler(), "POST", "/api/v1/queries/check", tok, `{"project_id":1,"sql":"SELECT count(*) FROM patients"}`)
	if rec.Code != 200 {
		t.Fatalf("status %d: %s", rec.Code, rec.Body)
	}
	var got api.CheckResponse
	if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	want := api.CheckResponse{Dataset: "gp", Cost: dp.Cost{Epsilon: 1}, Rewritten: "SELECT 1"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("check (-want +got):\n%s", diff)
	}
	if len(f.submissions) != 0 {
		t.Errorf("a check stored %d submissions", len(f.submissions))
	}
	f.err = broker.Errorf(broker.EREFUSED, "refused: function read_csv at position 14 is not allowed")
	rec = call(t, srv.Handler(), "POST", "/api/v1/queries/check", tok, `{"project_id":1,"sql":"SELECT * FROM read_csv('x')"}`)
	if e := mustErrorBody(t, rec.Body.Bytes()); rec.Code != 422 || e.Code != broker.EREFUSED || !strings.Contains(e.Message, "read_csv at position 14") {
		t.Errorf("refused check: %d %+v", rec.Code, e)
	}
}

func TestAuthFailuresRecorded(t *testing.T) {
	f := newFakeService()
	srv := newTestServer(t, f)
	call(t, srv.Handler(), "GET", "/api/v1/audit", mustToken(t, "alice", broker.RoleResearcher), nil)
	call(t, srv.Handler(), "GET", "/api/v1/audit", "bad.token.here", nil)
	call(t, srv.Handler(), "GET", "/api/v1/audit", "", nil) // no token: not recorded
	want := []string{
		"alice|GET /api/v1/audit|missing role",
		"|GET /api/v1/audit|malformed token",
	}
	if diff := cmp.Diff(want, f.authFailure); diff != "" {
		t.Errorf("recorded (-want +got):\n%s", diff)
	}
}

func TestHealth(t *testing.T) {
	f := newFakeService()
	srv := newTestServer(t, f)
	if c := call(t, srv.Handler(), "GET", "/readyz", "", nil).Code; c != 200 {
		t.Errorf("readyz %d", c)
	}
	f.err = errors.New("database is locked")
	if c := call(t, srv.Handler(), "GET", "/healthz", "", nil).Code; c != 200 {
		t.Errorf("healthz with store down %d", c)
	}
	rec := call(t, srv.Handler(), "GET", "/readyz", "", nil)
	if rec.Code != 503 || strings.Contains(rec.Body.String(), "locked") {
		t.Errorf("readyz with store down: %d %s", rec.Code, rec.Body)
	}
}

func TestOptionalBodies(t *testing.T) {
	srv := newTestServer(t, newFakeService())
	rev := mustToken(t, "rev", broker.RoleReviewer)
	tests := []struct {
		name, path, body string
		status           int
	}{
		{"approve without body", "/api/v1/queries/7/approve", "", 200},
		{"approve with comment", "/api/v1/queries/7/approve", `{"comment":"ok"}`, 200},
		{"approve with unknown field", "/api/v1/queries/7/approve", `{"coment":"ok"}`, 400},
		{"reject without body", "/api/v1/queries/7/reject", "", 400},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := serve(srv, newRequest(t, "POST", tt.path, rev, tt.body))
			if rec.Code != tt.status {
				t.Errorf("status %d, want %d: %s", rec.Code, tt.status, rec.Body)
			}
		})
	}
}

func TestMetricsByRouteTemplate(t *testing.T) {
	reg := metrics.New(metrics.Options{})
	srv := newTestServer(t, newFakeService(), func(c *Config) { c.Metrics = reg })
	// A bearer token and SQL as a hostile caller might put them in a path
	// (moved here from the metrics package, which no longer has a router).
	const (
		token = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJyZXNlYXJjaGVyIn0.c2lnbmF0dXJlc2lnbmF0dXJl"
		sql   = "SELECT count(*) FROM patients WHERE nhs_number = '9434765919'"
	)
	alice := mustToken(t, "alice", broker.RoleResearcher)
	for _, path := range []string{
		"/api/v1/queries/7",
		"/no/such/path",
		"/api/v1/queries/" + token,
		"/nowhere/" + token,
		"/?q=" + strings.ReplaceAll(sql, " ", "+"),
	} {
		call(t, srv.Handler(), "GET", path, alice, nil)
	}
	families, err := reg.Gatherer().Gather()
	if err != nil {
		t.Fatal(err)
	}
	var routes []string
	for _, f := range families {
		if f.GetName() != "tre_http_requests_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "route" {
					routes = append(routes, l.GetValue())
				}
			}
		}
	}
	sort.Strings(routes)
	if diff := cmp.Diff([]string{"/api/v1/queries/:id", "/api/v1/queries/:id", "unmatched"}, routes); diff != "" {
		t.Errorf("routes (-want +got):\n%s", diff)
	}
}

// TestRejectedTokensAre401: every token the verifier refuses is a 401 over
// HTTP, with WWW-Authenticate (api/auth's TestVerifierRejects checks the
// refusals themselves, over every key type).
func TestRejectedTokensAre401(t *testing.T) {
	mint := func(key []byte, c auth.DevClaims) string {
		t.Helper()
		tok, err := auth.MintDevToken(key, c)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	b64 := base64.RawURLEncoding.EncodeToString
	other := []byte("another key, another key, another key")
	alice := auth.DevClaims{Subject: "alice", Roles: []broker.Role{broker.RoleResearcher}, IssuedAt: testNow, TTL: time.Hour}
	expired := alice
	expired.IssuedAt = testNow.Add(-2 * time.Hour)
	tests := []struct{ name, token string }{
		{"malformed", "not-a-jwt"},
		{"alg none", b64([]byte(`{"alg":"none","typ":"JWT"}`)) + "." + b64([]byte(`{"sub":"alice","roles":["researcher"],"exp":9999999999}`)) + "."},
		{"signed by another key", mint(other, alice)},
		{"expired", mint(testDevKey, expired)},
		{"too large", strings.Repeat("a", 20<<10)},
	}
	srv := newTestServer(t, newFakeService())
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := httptest.NewRequest(http.MethodGet, "/api/v1/datasets", nil)
			req.Header.Set("Authorization", "Bearer "+tt.token)
			rec := httptest.NewRecorder()
			srv.Handler().ServeHTTP(rec, req)
			if rec.Code != http.StatusUnauthorized {
				t.Fatalf("status %d, want 401: %s", rec.Code, rec.Body)
			}
			if !strings.HasPrefix(rec.Header().Get("WWW-Authenticate"), "Bearer") {
				t.Errorf("WWW-Authenticate = %q", rec.Header().Get("WWW-Authenticate"))
			}
		})
	}
}

// TestRateLimitShared is two API servers (two replicas) whose buckets are
// kept in one database: the limit holds per user across both.
func TestRateLimitShared(t *testing.T) {
	path := filepath.Join(t.TempDir(), "broker.db")
	clock := func() time.Time { return testNow }
	replica := func() *Server {
		store, err := sqlite.Open(context.Background(), path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { store.Close() })
		shared := broker.NewService(store, nil, broker.Options{Now: clock})
		return newTestServer(t, newFakeService(), func(c *Config) {
			c.SubmitLimit = RateLimit{PerMinute: 6, Burst: 2, Shared: shared}
			c.Now = clock
		})
	}
	one, two := replica(), replica()
	alice := mustToken(t, "alice", broker.RoleResearcher)
	body := `{"project_id":1,"sql":"SELECT 1"}`
	submit := func(srv *Server) *httptest.ResponseRecorder {
		return call(t, srv.Handler(), "POST", "/api/v1/queries", alice, body)
	}
	got := []int{submit(one).Code, submit(two).Code}
	rec := submit(one)
	got = append(got, rec.Code, submit(two).Code)
	if diff := cmp.Diff([]int{201, 201, 429, 429}, got); diff != "" {
		t.Fatalf("statuses (-want +got):\n%s", diff)
	}
	if ra := rec.Header().Get("Retry-After"); ra != "10" {
		t.Errorf("Retry-After = %q, want 10", ra)
	}
}

// TestRewrittenSQLOnlyWhenAsked: every answer carrying queries leaves their
// rewritten SQL out unless a GET asks ?include=rewritten_sql; an unknown
// include is a 400; the service's query is never changed.
func TestRewrittenSQLOnlyWhenAsked(t *testing.T) {
	f := newFakeService()
	f.queries[0].Rewritten = "WITH __patients AS (SELECT 1) SELECT 2"
	srv := newTestServer(t, f)
	researcher := mustToken(t, "alice", broker.RoleResearcher)
	reviewer := mustToken(t, "bob", broker.RoleReviewer)
	checker := mustToken(t, "carol", broker.RoleOutputChecker)
	reads := []struct{ tok, method, path, body string }{
		{researcher, "GET", "/api/v1/queries/7", ""},
		{researcher, "GET", "/api/v1/queries", ""},
		{reviewer, "GET", "/api/v1/review/queue", ""},
		{checker, "GET", "/api/v1/outputs/queue", ""},
	}
	for _, r := range reads {
		for _, include := range []bool{false, true} {
			path := r.path
			if include {
				path += "?include=rewritten_sql"
			}
			rec := call(t, srv.Handler(), r.method, path, r.tok, r.body)
			if rec.Code != 200 {
				t.Fatalf("%s %s: status %d: %s", r.method, path, rec.Code, rec.Body)
			}
			if got := strings.Contains(rec.Body.String(), `"rewritten_sql":"WITH __patients`); got != include {
				t.Errorf("%s %s: rewritten SQL in the answer %v, want %v", r.method, path, got, include)
			}
		}
		rec := call(t, srv.Handler(), r.method, r.path+"?include=everything", r.tok, r.body)
		if e := mustErrorBody(t, rec.Body.Bytes()); rec.Code != 400 || e.Code != broker.EINVALID || !strings.Contains(e.Message, "include") {
			t.Errorf("%s %s?include=everything: %d %+v", r.method, r.path, rec.Code, e)
		}
	}
	for _, r := range []struct{ tok, path, body string }{
		{researcher, "/api/v1/queries", `{"project_id":1,"sql":"SELECT count(*) FROM patients","purpose":"p"}`},
		{researcher, "/api/v1/queries/7/cancel", ""},
		{reviewer, "/api/v1/queries/7/approve", ""},
		{checker, "/api/v1/queries/7/release", ""},
	} {
		rec := call(t, srv.Handler(), "POST", r.path, r.tok, r.body)
		if rec.Code/100 != 2 || strings.Contains(rec.Body.String(), "rewritten_sql") {
			t.Errorf("POST %s: %d %s, want 2xx without rewritten_sql", r.path, rec.Code, rec.Body)
		}
	}
	if f.queries[0].Rewritten == "" {
		t.Error("the service's query lost its rewritten SQL")
	}
}

// TestCompleteBodyLimit: a job completion may be larger than other bodies
// (a federated part carries every node of its quantile trees), up to
// dp.MaxPartialBytes, and no larger.
func TestCompleteBodyLimit(t *testing.T) {
	srv := newTestServer(t, newFakeService())
	tok := mustAgentToken(t, "agent", "site-a")
	for _, tc := range []struct {
		name   string
		size   int
		status int
		msg    string
	}{
		{"above other bodies' limit", 2 * maxBodyBytes, 400, "exactly one of result and partial"},
		{"above a part's limit", dp.MaxPartialBytes, 413, "larger than"},
	} {
		body := `{"token":"` + strings.Repeat("x", tc.size) + `"}`
		rec := serve(srv, newRequest(t, http.MethodPost, "/api/v1/agent/jobs/7/complete", tok, body))
		if rec.Code != tc.status {
			t.Fatalf("%s: status %d, want %d: %.200s", tc.name, rec.Code, tc.status, rec.Body)
		}
		if e := mustErrorBody(t, rec.Body.Bytes()); !strings.Contains(e.Message, tc.msg) {
			t.Errorf("%s: message %q does not contain %q", tc.name, e.Message, tc.msg)
		}
	}
}
