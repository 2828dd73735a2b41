package server

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nhs-tre/tre/api/auth"
	"github.com/nhs-tre/tre/broker"
	"github.com/nhs-tre/tre/dp"
	"github.com/nhs-tre/tre/job"
	"github.com/nhs-tre/tre/queries"
)

// testNow is the fixed clock of the handler tests.
var testNow = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// mustVerifier is a dev-key verifier at testNow.
func mustVerifier(tb testing.TB, cfg auth.AuthConfig) *auth.Verifier {
	tb.Helper()
	v, err := auth.NewVerifier(context.Background(), cfg, auth.WithNow(func() time.Time { return testNow }))
	if err != nil {
		tb.Fatal(err)
	}
	return v
}

// testDevKey signs the tokens of handler tests.
var testDevKey = []byte("0123456789abcdef0123456789abcdef")

// mustToken mints a dev token for sub with roles, valid at testNow.
func mustToken(tb testing.TB, sub string, roles ...broker.Role) string {
	tb.Helper()
	return mustClaims(tb, auth.DevClaims{Subject: sub, Roles: roles})
}

// mustAgentToken mints an agent token bound to site ("" for none).
func mustAgentToken(tb testing.TB, sub, site string) string {
	tb.Helper()
	return mustClaims(tb, auth.DevClaims{Subject: sub, Roles: []broker.Role{broker.RoleAgent}, Site: site})
}

func mustClaims(tb testing.TB, c auth.DevClaims) string {
	tb.Helper()
	c.IssuedAt, c.TTL = testNow, time.Hour
	tok, err := auth.MintDevToken(testDevKey, c)
	if err != nil {
		tb.Fatal(err)
	}
	return tok
}

// newTestServer builds a Server on svc with a dev verifier at testNow and a
// generous rate limit; adjust changes the config first.
func newTestServer(tb testing.TB, svc Service, adjust ...func(*Config)) *Server {
	tb.Helper()
	cfg := Config{
		Verifier:    mustVerifier(tb, auth.AuthConfig{DevKey: testDevKey}),
		SubmitLimit: RateLimit{PerMinute: 6000, Burst: 1000},
		Now:         func() time.Time { return testNow },
	}
	for _, a := range adjust {
		a(&cfg)
	}
	return NewServer(cfg, svc, slog.New(slog.NewJSONHandler(io.Discard, nil)))
}

// call sends one request to h and returns the recorder.
func call(tb testing.TB, h http.Handler, method, path, token string, body any) *httptest.ResponseRecorder {
	tb.Helper()
	var r io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		r = strings.NewReader(b)
	case []byte:
		r = bytes.NewReader(b)
	default:
		data, err := json.Marshal(b)
		if err != nil {
			tb.Fatal(err)
		}
		r = bytes.NewReader(data)
	}
	req := httptest.NewRequest(method, path, r)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

// fakeService is a canned Service for handler unit tests. It checks
// nothing: authorisation is exercised against the real broker elsewhere.
type fakeService struct {
	mu          sync.Mutex
	err         error // returned by every call when set
	projects    []*broker.Project
	queries     []*broker.Query
	output      *broker.Output
	lease       *broker.Lease
	plan        *queries.Plan
	federation  *broker.Federation // of CheckQuery
	register    []*broker.RegisterEntry
	authFailure []string
	lastQF      broker.QueryFilter
	submissions []broker.QuerySubmission
}

func newFakeService() *fakeService {
	v := 12.5
	lo, hi := 10.0, 15.0
	p := &broker.Project{ID: 1, Title: "Asthma", Organisation: "UCL", Purpose: "p", LawfulBasis: "6(1)(e)",
		Members: []string{"alice"}, Datasets: []string{"gp"}, EpsilonBudget: 5, DeltaBudget: 1e-6,
		ExpiresAt: testNow.Add(24 * time.Hour), Status: broker.ProjectActive, Budget: broker.Budget{EpsilonRemaining: 5}}
	q := &broker.Query{ID: 7, ProjectID: 1, Dataset: "gp", SQL: "SELECT count(*) FROM patients", SQLHash: "ab",
		Status: broker.StatusSubmitted, SubmittedBy: "alice", SubmittedAt: testNow, Cost: dp.Cost{Epsilon: 1}}
	return &fakeService{
		projects: []*broker.Project{p},
		queries:  []*broker.Query{q},
		output: &broker.Output{QueryID: 7, CreatedAt: testNow, Result: &dp.Result{
			Columns: []dp.Column{{Name: "region", Kind: "group"}, {Name: "n", Kind: "count"}},
			Rows: [][]dp.Cell{
				{{Key: "=HYPERLINK(\"http://x\")"}, {Value: &v, CILow: &lo, CIHigh: &hi, Rounded: true}},
				{{Null: true}, {Suppressed: true}},
				{{Key: "-1+2"}, {Suppressed: true, Secondary: true}},
				{{Key: "@SUM(A1)"}, {Value: &v}},
			},
		}},
		lease: &broker.Lease{Job: job.Job{QueryID: 7, Dataset: "gp", SQL: q.SQL, SQLHash: "ab"}, Token: "lease-token", ExpiresAt: testNow.Add(time.Minute)},
		plan:  &queries.Plan{Dataset: "gp", Cost: dp.Cost{Epsilon: 1}},
		register: []*broker.RegisterEntry{
			{ProjectID: 1, Title: "Asthma", Organisation: "UCL", Purpose: "p", LawfulBasis: "x"},
			{ProjectID: 2, Title: "Diabetes", Organisation: "KCL", Purpose: "p", LawfulBasis: "x"},
			{ProjectID: 3, Title: "COPD", Organisation: "Leeds", Purpose: "p", LawfulBasis: "x"},
		},
	}
}

func (f *fakeService) fail() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.err
}

func (f *fakeService) PublishCatalog(ctx context.Context, siteID, version string, cat *queries.Catalog) error {
	return f.fail()
}
func (f *fakeService) CreateSite(ctx context.Context, s *broker.Site) error {
	return f.fail()
}
func (f *fakeService) FindDatasets(ctx context.Context) ([]*queries.Catalog, error) {
	return []*queries.Catalog{{Dataset: "gp", PrivacyUnit: "patient_id"}}, f.fail()
}
func (f *fakeService) FindSites(ctx context.Context) ([]*broker.Site, error) {
	return []*broker.Site{{ID: "site-1", Datasets: []string{"gp"}, LastSeen: testNow}}, f.fail()
}
func (f *fakeService) CreateProject(ctx context.Context, p *broker.Project) error {
	if err := f.fail(); err != nil {
		return err
	}
	p.ID, p.Status = 2, broker.ProjectActive
	return nil
}
func (f *fakeService) FindProjectByID(ctx context.Context, id int64) (*broker.Project, error) {
	if err := f.fail(); err != nil {
		return nil, err
	}
	for _, p := range f.projects {
		if p.ID == id {
			return p, nil
		}
	}
	return nil, broker.Errorf(broker.ENOTFOUND, "project %d not found", id)
}
func (f *fakeService) FindProjects(ctx context.Context, pf broker.ProjectFilter) ([]*broker.Project, int, error) {
	return f.projects, len(f.projects), f.fail()
}
func (f *fakeService) UpdateProject(ctx context.Context, id int64, upd broker.ProjectUpdate) (*broker.Project, error) {
	return f.FindProjectByID(ctx, id)
}
func (f *fakeService) SubmitQuery(ctx context.Context, sub broker.QuerySubmission) (*broker.Query, error) {
	if err := f.fail(); err != nil {
		return nil, err
	}
	f.mu.Lock()
	f.submissions = append(f.submissions, sub)
	f.mu.Unlock()
	return f.queries[0], nil
}
func (f *fakeService) CheckQuery(ctx context.Context, sub broker.QuerySubmission) (*broker.Checked, error) {
	if err := f.fail(); err != nil {
		return nil, err
	}
	return &broker.Checked{Plan: f.plan, Federation: f.federation}, nil
}

// read returns qs as the service would under ctx: without their rewritten
// SQL unless ctx asks for it (broker.WithRewritten).
func read(ctx context.Context, qs []*broker.Query) []*broker.Query {
	return withoutRewritten(broker.WantsRewritten(ctx), qs)
}

func (f *fakeService) FindQueryByID(ctx context.Context, id int64) (*broker.Query, error) {
	if err := f.fail(); err != nil {
		return nil, err
	}
	for _, q := range f.queries {
		if q.ID == id {
			return read(ctx, []*broker.Query{q})[0], nil
		}
	}
	return nil, broker.Errorf(broker.ENOTFOUND, "query %d not found", id)
}
func (f *fakeService) FindQueries(ctx context.Context, qf broker.QueryFilter) ([]*broker.Query, int, error) {
	f.mu.Lock()
	f.lastQF = qf
	f.mu.Unlock()
	return read(ctx, f.queries), len(f.queries), f.fail()
}
func (f *fakeService) ReviewQueue(ctx context.Context) ([]*broker.Query, error) {
	return read(ctx, f.queries), f.fail()
}
func (f *fakeService) CancelQuery(ctx context.Context, id int64) (*broker.Query, error) {
	return f.FindQueryByID(ctx, id)
}
func (f *fakeService) ApproveQuery(ctx context.Context, id int64, comment string) (*broker.Query, error) {
	return f.FindQueryByID(ctx, id)
}
func (f *fakeService) RejectQuery(ctx context.Context, id int64, reason string) (*broker.Query, error) {
	return f.FindQueryByID(ctx, id)
}
func (f *fakeService) OutputQueue(ctx context.Context) ([]*broker.Query, error) {
	return read(ctx, f.queries), f.fail()
}
func (f *fakeService) FindOutput(ctx context.Context, id int64) (*broker.Output, error) {
	return f.output, f.fail()
}
func (f *fakeService) ReleaseQuery(ctx context.Context, id int64, comment string) (*broker.Query, error) {
	return f.FindQueryByID(ctx, id)
}
func (f *fakeService) WithholdQuery(ctx context.Context, id int64, reason string) (*broker.Query, error) {
	return f.FindQueryByID(ctx, id)
}
func (f *fakeService) DownloadResult(ctx context.Context, id int64) (*broker.ReleasedResult, error) {
	return f.ReleasedOutput(ctx, id)
}
func (f *fakeService) ReleasedOutput(ctx context.Context, id int64) (*broker.ReleasedResult, error) {
	if err := f.fail(); err != nil {
		return nil, err
	}
	return &broker.ReleasedResult{QueryID: f.output.QueryID, ReleasedAt: testNow, Result: f.output.Result.ForResearcher()}, nil
}
func (f *fakeService) ViewOutput(ctx context.Context, id int64) (*broker.OutputView, error) {
	return &broker.OutputView{Checker: f.output}, f.fail()
}
func (f *fakeService) LeaseJob(ctx context.Context, siteID, version string) (*broker.Lease, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lease, f.err
}
func (f *fakeService) HeartbeatJob(ctx context.Context, id int64, token string) (*broker.Lease, error) {
	return f.lease, f.fail()
}
func (f *fakeService) CompleteJob(ctx context.Context, id int64, token string, res dp.Result) error {
	return f.fail()
}
func (f *fakeService) CompletePartial(ctx context.Context, id int64, token string, part *dp.Partial) error {
	return f.fail()
}
func (f *fakeService) FailJob(ctx context.Context, id int64, token, code, message string) error {
	return f.fail()
}
func (f *fakeService) FindAuditEntries(ctx context.Context, af broker.AuditFilter) ([]*broker.AuditEntry, int, error) {
	return []*broker.AuditEntry{{Seq: 1, At: testNow, Actor: "alice", Action: "submit", Object: "query/7", Hash: "h"}}, 1, f.fail()
}
func (f *fakeService) VerifyAudit(ctx context.Context) (*broker.AuditVerification, error) {
	return &broker.AuditVerification{OK: true, Entries: 1}, f.fail()
}
func (f *fakeService) AuditHead(ctx context.Context) (*broker.AuditHead, error) {
	return &broker.AuditHead{Entries: 3, Hash: strings.Repeat("ab", 32)}, f.fail()
}
func (f *fakeService) Register(ctx context.Context) ([]*broker.RegisterEntry, error) {
	return f.register, f.fail()
}
func (f *fakeService) RecordAuthFailure(ctx context.Context, af broker.AuthFailure) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.authFailure = append(f.authFailure, af.Subject+"|"+af.Action+"|"+af.Reason)
}
func (f *fakeService) Ping(ctx context.Context) error { return f.fail() }
func (f *fakeService) CreateCodelist(ctx context.Context, up broker.CodelistUpload) (*broker.Codelist, error) {
	if err := f.fail(); err != nil {
		return nil, err
	}
	return &broker.Codelist{Name: up.Name, Hash: "ab", CodeCount: 1, UploadedBy: "alice", CreatedAt: testNow}, nil
}
func (f *fakeService) FindCodelists(ctx context.Context) ([]*broker.Codelist, error) {
	return []*broker.Codelist{{Name: "org/slug/1", Hash: "ab", CodeCount: 1, UploadedBy: "alice", CreatedAt: testNow}}, f.fail()
}
func (f *fakeService) FindCodelist(ctx context.Context, name string) (*broker.Codelist, error) {
	return &broker.Codelist{Name: name, Hash: "ab", CodeCount: 1, UploadedBy: "alice", CreatedAt: testNow,
		Codes: []job.CodelistCode{{Code: "1", Term: "t"}}}, f.fail()
}

// fakeDryRunner returns a fixed table.
type fakeDryRunner struct{}

func (fakeDryRunner) DryRun(ctx context.Context, dataset, sql string, epsilon float64, _ []job.Codelist) (*dp.Result, []job.AbsentCodes, error) {
	v := 40.0
	return &dp.Result{
		Columns: []dp.Column{{Name: "n", Kind: "count"}},
		Rows:    [][]dp.Cell{{{Value: &v}}},
	}, nil, nil
}

// newRequest builds a JSON request with a bearer token.
func newRequest(tb testing.TB, method, path, token, body string) *http.Request {
	tb.Helper()
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	return req
}

func serve(s *Server, req *http.Request) *httptest.ResponseRecorder {
	rec := httptest.NewRecorder()
	s.Handler().ServeHTTP(rec, req)
	return rec
}
