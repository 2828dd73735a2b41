package server

import (
	"bytes"
	"context"
	"encoding/csv"
	"errors"
	"log/slog"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/nhs-tre/tre/api"
	"github.com/nhs-tre/tre/broker"
	"github.com/nhs-tre/tre/broker/brokertest"
)

// TestClientFlow drives the whole lifecycle through the Go client over real
// HTTP against the real broker: the path the CLI and the site agent take.
func TestClientFlow(t *testing.T) {
	e := newRealEnv(t)
	ts := httptest.NewServer(e.srv.Handler())
	defer ts.Close()
	ctx := context.Background()
	as := func(sub string, roles ...broker.Role) *api.Client {
		return &api.Client{BaseURL: ts.URL, Token: mustToken(t, sub, roles...), HTTPClient: ts.Client()}
	}
	researcher := as("res1", broker.RoleResearcher)
	reviewer := as("rev1", broker.RoleReviewer)
	checker := as("chk1", broker.RoleOutputChecker)
	agent := &api.Client{BaseURL: ts.URL, Token: mustAgentToken(t, "agent1", brokertest.SiteID), HTTPClient: ts.Client(), AgentVersion: "tre test"}
	admin := as("admin1", broker.RoleAdmin)
	pid := e.f.Project.ID

	if err := agent.PublishCatalog(ctx, brokertest.SiteID, brokertest.Catalog(t)); err != nil {
		t.Fatalf("publish: %v", err)
	}
	if l, err := agent.Lease(ctx, brokertest.SiteID); err != nil || l != nil {
		t.Fatalf("lease with no job = %+v, %v; want nil, nil", l, err)
	}

	// Refused SQL is a typed 422 naming the construct.
	_, err := researcher.SubmitQuery(ctx, api.QueryRequest{ProjectID: pid, Purpose: "test", SQL: "SELECT sex, count(*) OVER () FROM patients GROUP BY sex"})
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Status != 422 || ae.Code != broker.EREFUSED {
		t.Fatalf("window function: %v", err)
	}
	if !strings.Contains(strings.ToLower(ae.Message), "window") {
		t.Errorf("refusal %q does not name the construct", ae.Message)
	}

	q, err := researcher.SubmitQuery(ctx, api.QueryRequest{ProjectID: pid, SQL: brokertest.DefaultSQL, Purpose: "flow", Epsilon: 0.5})
	if err != nil {
		t.Fatalf("submit: %v", err)
	}
	if q.Status != broker.StatusSubmitted || q.Cost.Epsilon != 0.5 || len(q.Accuracy) == 0 {
		t.Errorf("submitted query = %+v", q)
	}
	queue, err := reviewer.ReviewQueue(ctx, api.ListOptions{})
	if err != nil || queue.Total != 1 || queue.Items[0].ID != q.ID || queue.Items[0].ProjectBudget == nil {
		t.Fatalf("review queue = %+v, %v", queue, err)
	}
	if _, err := researcher.ApproveQuery(ctx, q.ID, "self"); !isStatus(err, 403) {
		t.Errorf("researcher approving: %v", err)
	}
	if q, err = reviewer.ApproveQuery(ctx, q.ID, "fine"); err != nil || q.Status != broker.StatusApproved {
		t.Fatalf("approve = %+v, %v", q, err)
	}
	lease, err := agent.Lease(ctx, brokertest.SiteID)
	if err != nil || lease == nil || lease.QueryID != q.ID || lease.SQL != brokertest.DefaultSQL {
		t.Fatalf("lease = %+v, %v", lease, err)
	}
	if _, err := agent.Heartbeat(ctx, q.ID, lease.Token); err != nil {
		t.Fatalf("heartbeat: %v", err)
	}
	if _, err := agent.Heartbeat(ctx, q.ID, "stolen"); !isStatus(err, 409) && !isStatus(err, 403) {
		t.Errorf("heartbeat with a wrong token: %v", err)
	}
	if err := agent.Complete(ctx, q.ID, lease.Token, e.f.Result(0.5)); err != nil {
		t.Fatalf("complete: %v", err)
	}
	if _, err := researcher.Result(ctx, q.ID); !isStatus(err, 403) {
		t.Errorf("result before release: %v", err)
	}
	out, err := checker.Output(ctx, q.ID)
	if err != nil || len(out.Result.Rows) != len(e.f.Result(0.5).Rows) {
		t.Fatalf("output = %+v, %v", out, err)
	}
	if q, err = checker.ReleaseQuery(ctx, q.ID, "safe"); err != nil || q.Status != broker.StatusReleased {
		t.Fatalf("release = %+v, %v", q, err)
	}
	res, err := researcher.Result(ctx, q.ID)
	if err != nil {
		t.Fatalf("result: %v", err)
	}
	if diff := cmp.Diff(e.f.Result(0.5).Rows, res.Rows); diff != "" {
		t.Errorf("released rows (-want +got):\n%s", diff)
	}
	data, err := researcher.ResultRaw(ctx, q.ID, "csv")
	if err != nil {
		t.Fatalf("csv: %v", err)
	}
	recs, err := csv.NewReader(bytes.NewReader(data)).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	var wantCSV strings.Builder
	released := e.f.Result(0.5)
	if err := api.WriteResultCSV(&wantCSV, released.ForResearcher()); err != nil {
		t.Fatal(err)
	}
	want, err := csv.NewReader(strings.NewReader(wantCSV.String())).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(want) != 4 || !slices.Equal(want[0], []string{"sex", "count", "count_ci_low", "count_ci_high", "count_flag"}) {
		t.Fatalf("the released table's CSV = %q, want a header and three rows", want)
	}
	if diff := cmp.Diff(want, recs); diff != "" {
		t.Errorf("csv (-want +got):\n%s", diff)
	}
	got, err := researcher.Query(ctx, q.ID)
	if err != nil || len(got.History) < 4 {
		t.Fatalf("query history = %+v, %v", got, err)
	}
	v, err := admin.VerifyAudit(ctx)
	if err != nil || !v.OK {
		t.Fatalf("audit verify = %+v, %v", v, err)
	}
	entries, err := admin.Audit(ctx, api.AuditOptions{Object: "query/" + strconv.FormatInt(q.ID, 10)})
	if err != nil || entries.Total == 0 {
		t.Fatalf("audit entries = %+v, %v", entries, err)
	}
	if _, err := researcher.Query(ctx, 999999); !isStatus(err, 404) {
		t.Errorf("missing query: %v", err)
	}
	reg, err := (&api.Client{BaseURL: ts.URL}).Register(ctx, api.ListOptions{})
	if err != nil || reg.Total < 2 {
		t.Errorf("register = %+v, %v", reg, err)
	}
}

func isStatus(err error, status int) bool {
	var ae *api.Error
	return errors.As(err, &ae) && ae.Status == status
}

// TestRequestLogNeverHoldsSecrets checks the request log: one line per
// request with an id, and never the token, the body or the result.
func TestRequestLogNeverHoldsSecrets(t *testing.T) {
	var buf bytes.Buffer
	f := newFakeService()
	srv := newTestServer(t, f)
	srv.logger = slog.New(slog.NewJSONHandler(&buf, nil))
	tok := mustToken(t, "alice", broker.RoleResearcher)
	call(t, srv.Handler(), "POST", "/api/v1/queries", tok, `{"project_id":1,"sql":"SELECT secret_marker FROM patients"}`)
	rec := call(t, srv.Handler(), "GET", "/api/v1/queries/7/result?format=json", tok, nil)
	f.err = errors.New("internal detail")
	call(t, srv.Handler(), "GET", "/api/v1/queries/7", tok, nil)
	log := buf.String()
	for _, secret := range []string{tok, "secret_marker", "HYPERLINK", "Bearer"} {
		if strings.Contains(log, secret) {
			t.Errorf("log contains %q:\n%s", secret, log)
		}
	}
	if !strings.Contains(log, `"request_id":"`+rec.Header().Get("X-Request-Id")+`"`) {
		t.Errorf("log lacks the request id %q", rec.Header().Get("X-Request-Id"))
	}
	if !strings.Contains(log, `"route":"/api/v1/queries/:id/result"`) || !strings.Contains(log, `"sub":"alice"`) {
		t.Errorf("log lacks route or subject:\n%s", log)
	}
	if !strings.Contains(log, "internal detail") {
		t.Errorf("internal error not logged for operators:\n%s", log)
	}
}

// TestAgentPollsLoggedAtDebug checks a site agent's empty lease polls and
// heartbeats, sent every few seconds by every agent, do not fill the info
// log, while a refused poll still appears there.
func TestAgentPollsLoggedAtDebug(t *testing.T) {
	var buf bytes.Buffer
	f := newFakeService()
	f.lease = nil // no job: every poll is empty
	srv := newTestServer(t, f)
	srv.logger = slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo}))
	tok := mustAgentToken(t, "agent1", "site-1")
	for range 5 {
		if rec := call(t, srv.Handler(), "POST", "/api/v1/agent/lease", tok, `{"site_id":"site-1"}`); rec.Code != 204 {
			t.Fatalf("poll: %d %s", rec.Code, rec.Body)
		}
	}
	if n := strings.Count(buf.String(), `"msg":"request"`); n != 0 {
		t.Errorf("%d info lines for 5 empty polls:\n%s", n, buf.String())
	}
	f.err = broker.Errorf(broker.EFORBIDDEN, "site %q is not registered", "site-1")
	if rec := call(t, srv.Handler(), "POST", "/api/v1/agent/lease", tok, `{"site_id":"site-1"}`); rec.Code != 403 {
		t.Fatalf("refused poll: %d", rec.Code)
	}
	if !strings.Contains(buf.String(), `"status":403`) {
		t.Errorf("a refused poll is not logged at info:\n%s", buf.String())
	}
}
