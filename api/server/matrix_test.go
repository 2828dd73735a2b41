package server

import (
	"context"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nhs-tre/tre/api"
	"github.com/nhs-tre/tre/api/apitest"
	"github.com/nhs-tre/tre/api/auth"
	"github.com/nhs-tre/tre/broker"
	"github.com/nhs-tre/tre/broker/brokertest"
	"github.com/nhs-tre/tre/broker/sqlite"
)

// The real service must satisfy the interface the handlers use.
var _ Service = (*broker.Service)(nil)

// Callers of the authorisation matrix, by the subject their token carries.
// The fixture's project has members res1, res2, dual1 and dual2; the other
// project only res3; res9 belongs to no project.
type matrixCaller struct {
	name  string
	sub   string
	roles []broker.Role
	site  string // the site claim of an agent token
}

// Agent callers: the fixture's site-a agent, an agent of another registered
// site (site-b, holding no dataset) and an agent token naming no site.
func matrixCallers() []matrixCaller {
	agent := []broker.Role{broker.RoleAgent}
	return []matrixCaller{
		{name: "member", sub: "res1", roles: []broker.Role{broker.RoleResearcher}},
		{name: "nonmember", sub: "res9", roles: []broker.Role{broker.RoleResearcher}},
		{name: "reviewer", sub: "rev1", roles: []broker.Role{broker.RoleReviewer}},
		{name: "checker", sub: "chk1", roles: []broker.Role{broker.RoleOutputChecker}},
		{name: "admin", sub: "admin1", roles: []broker.Role{broker.RoleAdmin}},
		{name: "agent", sub: "agent1", roles: agent, site: brokertest.SiteID},
		{name: "other-site agent", sub: "agent2", roles: agent, site: matrixOtherSite},
		{name: "siteless agent", sub: "agent3", roles: agent},
		{name: "anonymous"},
	}
}

// matrixOtherSite is a registered site that holds no dataset.
const matrixOtherSite = "site-b"

func (c matrixCaller) token(tb testing.TB) string {
	if c.sub == "" {
		return ""
	}
	return mustClaims(tb, auth.DevClaims{Subject: c.sub, Roles: c.roles, Site: c.site})
}

// realEnv is the HTTP server over the real broker service on a fresh
// SQLite store, with a second project the "member" caller is not in.
type realEnv struct {
	f         *brokertest.Fixture
	srv       *Server
	other     *broker.Project
	sites     int // sites registered through the matrix
	codelists int // codelists uploaded through the matrix
}

// matrixCodelist is the codelist every realEnv holds.
const matrixCodelist = "nhs/matrix/1"

func newRealEnv(tb testing.TB) *realEnv {
	tb.Helper()
	ctx := context.Background()
	store, err := sqlite.Open(ctx, filepath.Join(tb.TempDir(), "broker.db"))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { store.Close() })
	f := brokertest.NewFixture(tb, brokertest.Config{}, store, broker.Options{})
	e := &realEnv{f: f}
	e.other = f.MustProject(50, 1e-3, "res3")
	f.MustSite(matrixOtherSite)
	if _, err := f.Service.CreateCodelist(f.Researcher, broker.CodelistUpload{Name: matrixCodelist, CSV: "code,term\n1,One\n"}); err != nil {
		tb.Fatal(err)
	}
	e.srv = newTestServer(tb, f.Service, func(c *Config) { c.DryRunner = fakeDryRunner{} })
	return e
}

// project returns the target project: the member's own, or the other.
func (e *realEnv) project(own bool) *broker.Project {
	if own {
		return e.f.Project
	}
	return e.other
}

// queryIn drives a fresh query of the target project into status st and
// returns it with its lease token.
func (e *realEnv) queryIn(tb testing.TB, own bool, st broker.Status) (*broker.Query, string) {
	tb.Helper()
	f, svc := e.f, e.f.Service
	submitter := f.Researcher // res1
	if !own {
		submitter = f.Outsider // res3
	}
	q := f.MustSubmitTo(submitter, e.project(own).ID, brokertest.DefaultSQL, 0.5)
	if st == broker.StatusSubmitted {
		return q, ""
	}
	f.MustApprove(q.ID)
	if st == broker.StatusApproved {
		return q, ""
	}
	token := e.leaseFor(tb, q.ID)
	if st == broker.StatusRunning {
		return q, token
	}
	if st == broker.StatusFailed { // a failure notice, released
		if err := svc.FailJob(f.Agent, q.ID, token, "timeout", "the query ran past its time limit"); err != nil {
			tb.Fatalf("fail %d: %v", q.ID, err)
		}
		if _, err := svc.ReleaseQuery(f.Checker, q.ID, "nothing to release"); err != nil {
			tb.Fatalf("release the failure notice of %d: %v", q.ID, err)
		}
		return q, token
	}
	if err := svc.CompleteJob(f.Agent, q.ID, token, e.f.Result(0.5)); err != nil {
		tb.Fatalf("complete %d: %v", q.ID, err)
	}
	if st == broker.StatusAwaitingOutputCheck {
		return q, token
	}
	if _, err := svc.ReleaseQuery(f.Checker, q.ID, "safe"); err != nil {
		tb.Fatalf("release %d: %v", q.ID, err)
	}
	if st != broker.StatusReleased {
		tb.Fatalf("queryIn: unsupported status %s", st)
	}
	return q, token
}

// leaseFor leases jobs until it holds query id; jobs left approved by
// earlier cases are leased on the way and no longer matter.
func (e *realEnv) leaseFor(tb testing.TB, id int64) string {
	tb.Helper()
	for range 100 {
		l, err := e.f.Service.LeaseJob(e.f.Agent, brokertest.SiteID, "")
		if err != nil || l == nil {
			tb.Fatalf("lease for %d: %+v %v", id, l, err)
		}
		if l.QueryID == id {
			return l.Token
		}
	}
	tb.Fatalf("query %d never leased", id)
	return ""
}

// matrixRoute is one route of the matrix: how to prepare its target, the
// request, and the status each caller must get for own/other project.
type matrixRoute struct {
	method string
	path   string // with %d for the target id
	// state is the query status the target needs; "" means the target is
	// the project (or nothing).
	state broker.Status
	body  func(e *realEnv, own bool, q *broker.Query, token string) any
	want  func(caller string, own bool) int
}

// only returns a want func: ok for the listed callers, 403 for other
// roles, 401 for anonymous.
func only(ok int, callers ...string) func(string, bool) int {
	return func(caller string, own bool) int {
		if caller == "anonymous" {
			return http.StatusUnauthorized
		}
		for _, c := range callers {
			if c == caller {
				return ok
			}
		}
		return http.StatusForbidden
	}
}

// memberOwn returns ok for the member on their own project and for the
// listed staff roles, 403 otherwise.
func memberOwn(ok int, staff ...string) func(string, bool) int {
	base := only(ok, staff...)
	return func(caller string, own bool) int {
		if caller == "member" && own {
			return ok
		}
		return base(caller, own)
	}
}

func matrixRoutes() []matrixRoute {
	queryBody := func(e *realEnv, own bool, _ *broker.Query, _ string) any {
		return api.QueryRequest{ProjectID: e.project(own).ID, SQL: brokertest.DefaultSQL, Purpose: "matrix", Epsilon: 0.5}
	}
	comment := func(*realEnv, bool, *broker.Query, string) any { return api.CommentRequest{Comment: "ok"} }
	reason := func(*realEnv, bool, *broker.Query, string) any { return api.ReasonRequest{Reason: "out of scope"} }
	all := []string{"member", "nonmember", "reviewer", "checker", "admin", "agent", "other-site agent", "siteless agent"}
	public := func(string, bool) int { return http.StatusOK }
	return []matrixRoute{
		{method: "GET", path: "/healthz", want: public},
		{method: "GET", path: "/readyz", want: public},
		{method: "GET", path: "/api/v1/openapi.json", want: public},
		{method: "GET", path: "/public/register", want: public},
		{method: "GET", path: "/api/v1/datasets", want: only(200, all...)},
		{method: "GET", path: "/api/v1/sites", want: only(200, "admin")},
		{method: "POST", path: "/api/v1/sites", want: only(201, "admin"),
			body: func(e *realEnv, _ bool, _ *broker.Query, _ string) any {
				e.sites++
				return api.SiteRequest{ID: fmt.Sprintf("matrix-site-%d", e.sites), Name: "Matrix site", Organisation: "Test NHS Trust"}
			}},
		{method: "POST", path: "/api/v1/projects", want: only(201, "admin"),
			body: func(e *realEnv, _ bool, _ *broker.Query, _ string) any {
				now := e.f.Clock.Now()
				return api.ProjectRequest{Title: "New", Organisation: "KCL", Purpose: "p", LawfulBasis: "6(1)(e)",
					Members: []string{"res1"}, Datasets: []string{brokertest.Dataset}, EpsilonBudget: 3, DeltaBudget: 1e-4,
					StartsAt: now, ExpiresAt: now.Add(90 * 24 * time.Hour)}
			}},
		{method: "GET", path: "/api/v1/projects", want: only(200, "member", "nonmember", "reviewer", "admin")},
		{method: "GET", path: "/api/v1/projects/%d", want: memberOwn(200, "reviewer", "admin")},
		{method: "PATCH", path: "/api/v1/projects/%d", want: only(200, "admin"),
			body: func(*realEnv, bool, *broker.Query, string) any {
				t := "Renamed"
				return broker.ProjectUpdate{Title: &t}
			}},
		{method: "POST", path: "/api/v1/queries", body: queryBody, want: memberOwn(201)},
		{method: "POST", path: "/api/v1/queries/check", body: queryBody, want: memberOwn(200)},
		{method: "POST", path: "/api/v1/queries/dry-run", body: queryBody, want: memberOwn(200)},
		{method: "GET", path: "/api/v1/queries", want: only(200, "member", "nonmember", "reviewer", "checker", "admin")},
		{method: "GET", path: "/api/v1/queries/%d", state: broker.StatusSubmitted, want: memberOwn(200, "reviewer", "checker", "admin")},
		{method: "POST", path: "/api/v1/queries/%d/cancel", state: broker.StatusSubmitted, want: memberOwn(200)},
		{method: "GET", path: "/api/v1/review/queue", want: only(200, "reviewer")},
		{method: "POST", path: "/api/v1/queries/%d/approve", state: broker.StatusSubmitted, body: comment, want: only(200, "reviewer")},
		{method: "POST", path: "/api/v1/queries/%d/reject", state: broker.StatusSubmitted, body: reason, want: only(200, "reviewer")},
		{method: "GET", path: "/api/v1/outputs/queue", want: only(200, "checker")},
		{method: "GET", path: "/api/v1/queries/%d/output", state: broker.StatusReleased, want: memberOwn(200, "checker")},
		{method: "POST", path: "/api/v1/queries/%d/release", state: broker.StatusAwaitingOutputCheck, body: comment, want: only(200, "checker")},
		{method: "POST", path: "/api/v1/queries/%d/withhold", state: broker.StatusAwaitingOutputCheck, body: reason, want: only(200, "checker")},
		{method: "GET", path: "/api/v1/queries/%d/result", state: broker.StatusReleased, want: memberOwn(200)},
		{method: "GET", path: "/api/v1/queries/%d/result?format=csv", state: broker.StatusReleased, want: memberOwn(200)},
		// A failed run's notice is the output checker's; its researchers
		// have no output to read.
		{method: "GET", path: "/api/v1/queries/%d/output", state: broker.StatusFailed, want: only(200, "checker")},
		{method: "GET", path: "/api/v1/queries/%d/result", state: broker.StatusFailed, want: only(200)},
		{method: "POST", path: "/api/v1/codelists", want: only(201, "member", "nonmember", "reviewer", "admin"),
			body: func(e *realEnv, _ bool, _ *broker.Query, _ string) any {
				e.codelists++
				return api.CodelistRequest{Name: fmt.Sprintf("nhs/matrix-%d/1", e.codelists), CSV: "code,term\n1,One\n"}
			}},
		{method: "GET", path: "/api/v1/codelists", want: only(200, all...)},
		{method: "GET", path: "/api/v1/codelists/" + matrixCodelist, want: only(200, all...)},
		{method: "GET", path: "/api/v1/audit", want: only(200, "admin")},
		{method: "GET", path: "/api/v1/audit/verify", want: only(200, "admin")},
		{method: "PUT", path: "/api/v1/agent/catalog", want: only(204, "agent"),
			body: func(e *realEnv, _ bool, _ *broker.Query, _ string) any {
				return api.CatalogRequest{SiteID: brokertest.SiteID, Catalog: brokertest.Catalog(e.f.TB)}
			}},
		{method: "POST", path: "/api/v1/agent/lease", state: broker.StatusApproved, want: only(200, "agent"),
			body: func(*realEnv, bool, *broker.Query, string) any { return api.LeaseRequest{SiteID: brokertest.SiteID} }},
		{method: "POST", path: "/api/v1/agent/jobs/%d/heartbeat", state: broker.StatusRunning, want: only(200, "agent"),
			body: func(_ *realEnv, _ bool, _ *broker.Query, tok string) any { return api.HeartbeatRequest{Token: tok} }},
		{method: "POST", path: "/api/v1/agent/jobs/%d/complete", state: broker.StatusRunning, want: only(204, "agent"),
			body: func(e *realEnv, _ bool, _ *broker.Query, tok string) any {
				r := e.f.Result(0.5)
				return api.CompleteRequest{Token: tok, Result: &r}
			}},
		{method: "POST", path: "/api/v1/agent/jobs/%d/fail", state: broker.StatusRunning, want: only(204, "agent"),
			body: func(_ *realEnv, _ bool, _ *broker.Query, tok string) any {
				return api.FailRequest{Token: tok, Code: "sandbox_error", Message: "exit status 1"}
			}},
	}
}

// TestAuthorizationMatrix calls every route as every caller against their
// own and another project, on the real broker over SQLite, asserting the
// exact status, and checks every response against the OpenAPI document.
func TestAuthorizationMatrix(t *testing.T) {
	if testing.Short() {
		t.Skip("matrix runs the real broker")
	}
	cf := apitest.NewConformance(t)
	for _, rt := range matrixRoutes() {
		t.Run(strings.TrimSpace(rt.method+" "+strings.ReplaceAll(rt.path, "%d", "{id}")+" "+string(rt.state)), func(t *testing.T) {
			e := newRealEnv(t)
			for _, c := range matrixCallers() {
				for _, own := range []bool{true, false} {
					var q *broker.Query
					var token string
					id := e.project(own).ID
					if rt.state != "" {
						q, token = e.queryIn(t, own, rt.state)
						id = q.ID
					}
					path := rt.path
					if strings.Contains(path, "%d") {
						path = fmt.Sprintf(path, id)
					}
					var body any
					if rt.body != nil {
						body = rt.body(e, own, q, token)
					}
					tok := c.token(t)
					status, respBody := checkedCall(t, cf, e.srv, rt.method, path, tok, body)
					if want := rt.want(c.name, own); status != want {
						t.Errorf("%s (own project %v): status %d, want %d: %s", c.name, own, status, want, respBody)
					}
				}
			}
		})
	}
	if t.Failed() {
		return
	}
	// Every documented operation must have been called at least once.
	for _, op := range cf.Uncovered() {
		t.Errorf("documented operation never exercised: %s", op)
	}
}

// TestDutyMatrix is separation of duties over role combinations at the
// HTTP level, on the real broker: the same people as the conformance
// suite's DutiesByPerson (researcher+checker, reviewer+researcher, a member
// reviewer, a member checker, the approver as checker, admin+researcher),
// each refusal a 403 JSON error, each control a success.
func TestDutyMatrix(t *testing.T) {
	if testing.Short() {
		t.Skip("matrix runs the real broker")
	}
	e := newRealEnv(t)
	f := e.f
	type who struct {
		sub   string
		roles []broker.Role
		ctx   context.Context
	}
	r := func(roles ...broker.Role) []broker.Role { return roles }
	res1 := who{"res1", r(broker.RoleResearcher), f.Researcher}
	dual1 := who{"dual1", r(broker.RoleResearcher, broker.RoleReviewer), f.ResearchReview}
	dual2 := who{"dual2", r(broker.RoleResearcher, broker.RoleOutputChecker), f.ResearchCheck}
	dual3 := who{"dual3", r(broker.RoleReviewer, broker.RoleOutputChecker), f.ReviewCheck}
	rev1 := who{"rev1", r(broker.RoleReviewer), f.Reviewer}
	rev9 := who{"rev9", r(broker.RoleReviewer), f.MemberReviewer}
	chk1 := who{"chk1", r(broker.RoleOutputChecker), f.Checker}
	chk9 := who{"chk9", r(broker.RoleOutputChecker), f.MemberChecker}
	boss := who{"boss", r(broker.RoleAdmin, broker.RoleResearcher), f.AdminResearcher}
	admin := who{"admin1", r(broker.RoleAdmin), f.Admin}
	awaiting, released, withheld, submitted := broker.StatusAwaitingOutputCheck, broker.StatusReleased, broker.StatusWithheld, broker.StatusSubmitted
	tests := []struct {
		name                string
		caller              who
		submitter, approver *who
		state               broker.Status
		method, path        string // %d: the query, or the project for /projects
		body                any
		want                int
	}{
		{name: "researcher+checker reads own output awaiting check", caller: dual2, submitter: &dual2, state: awaiting, method: "GET", path: "/api/v1/queries/%d/output", want: 403},
		{name: "researcher+checker reads own withheld output", caller: dual2, submitter: &dual2, state: withheld, method: "GET", path: "/api/v1/queries/%d/output", want: 403},
		{name: "researcher+checker releases own query", caller: dual2, submitter: &dual2, state: awaiting, method: "POST", path: "/api/v1/queries/%d/release", body: api.CommentRequest{}, want: 403},
		{name: "researcher+checker withholds own query", caller: dual2, submitter: &dual2, state: awaiting, method: "POST", path: "/api/v1/queries/%d/withhold", body: api.ReasonRequest{Reason: "x"}, want: 403},
		{name: "researcher+checker reads a fellow member's output", caller: dual2, state: awaiting, method: "GET", path: "/api/v1/queries/%d/output", want: 403},
		{name: "researcher+checker downloads own released result", caller: dual2, submitter: &dual2, state: released, method: "GET", path: "/api/v1/queries/%d/result", want: 200},
		{name: "reviewer+researcher approves own query", caller: dual1, submitter: &dual1, state: submitted, method: "POST", path: "/api/v1/queries/%d/approve", body: api.CommentRequest{}, want: 403},
		{name: "reviewer+researcher approves a fellow member's query", caller: dual1, state: submitted, method: "POST", path: "/api/v1/queries/%d/approve", body: api.CommentRequest{}, want: 403},
		{name: "reviewer+researcher rejects a fellow member's query", caller: dual1, state: submitted, method: "POST", path: "/api/v1/queries/%d/reject", body: api.ReasonRequest{Reason: "x"}, want: 403},
		{name: "member reviewer approves", caller: rev9, state: submitted, method: "POST", path: "/api/v1/queries/%d/approve", body: api.CommentRequest{}, want: 403},
		{name: "independent reviewer approves", caller: rev1, state: submitted, method: "POST", path: "/api/v1/queries/%d/approve", body: api.CommentRequest{}, want: 200},
		{name: "member checker reads output awaiting check", caller: chk9, state: awaiting, method: "GET", path: "/api/v1/queries/%d/output", want: 403},
		{name: "member checker releases", caller: chk9, state: awaiting, method: "POST", path: "/api/v1/queries/%d/release", body: api.CommentRequest{}, want: 403},
		{name: "approver as checker releases", caller: dual3, approver: &dual3, state: awaiting, method: "POST", path: "/api/v1/queries/%d/release", body: api.CommentRequest{}, want: 403},
		{name: "approver as checker withholds", caller: dual3, approver: &dual3, state: awaiting, method: "POST", path: "/api/v1/queries/%d/withhold", body: api.ReasonRequest{Reason: "x"}, want: 403},
		{name: "independent checker reads output awaiting check", caller: chk1, state: awaiting, method: "GET", path: "/api/v1/queries/%d/output", want: 200},
		{name: "independent checker releases", caller: chk1, state: awaiting, method: "POST", path: "/api/v1/queries/%d/release", body: api.CommentRequest{}, want: 200},
		{name: "researcher reads output awaiting check", caller: res1, state: awaiting, method: "GET", path: "/api/v1/queries/%d/output", want: 403},
		{name: "admin+researcher raises their project's budget", caller: boss, method: "PATCH", path: "/api/v1/projects/%d", body: map[string]any{"epsilon_budget": 1000}, want: 403},
		{name: "independent admin changes the project", caller: admin, method: "PATCH", path: "/api/v1/projects/%d", body: map[string]any{"title": "Renamed"}, want: 200},
	}
	cf := apitest.NewConformance(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := f.Project.ID
			if tt.state != "" {
				submitter, approver := res1, rev1
				if tt.submitter != nil {
					submitter = *tt.submitter
				}
				if tt.approver != nil {
					approver = *tt.approver
				}
				id = f.DutyQuery(t, submitter.ctx, approver.ctx, tt.state).ID
			}
			tok := mustClaims(t, auth.DevClaims{Subject: tt.caller.sub, Roles: tt.caller.roles})
			status, body := checkedCall(t, cf, e.srv, tt.method, fmt.Sprintf(tt.path, id), tok, tt.body)
			if status != tt.want {
				t.Fatalf("status %d, want %d: %s", status, tt.want, body)
			}
		})
	}
	now := f.Clock.Now()
	status, body := checkedCall(t, cf, e.srv, "POST", "/api/v1/projects", mustClaims(t, auth.DevClaims{Subject: boss.sub, Roles: boss.roles}), api.ProjectRequest{
		Title: "Mine", Organisation: "o", Purpose: "p", LawfulBasis: "l", Members: []string{"boss"}, Datasets: []string{brokertest.Dataset},
		EpsilonBudget: 50, ExpiresAt: now.Add(time.Hour)})
	if status != http.StatusForbidden {
		t.Errorf("admin+researcher creates a project listing themselves: %d %s", status, body)
	}
}
