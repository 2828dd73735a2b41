package web_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nhs-tre/tre/api/auth"
	"github.com/nhs-tre/tre/api/web"
	"github.com/nhs-tre/tre/broker"
	"github.com/nhs-tre/tre/dp"
	"github.com/nhs-tre/tre/job"
)

// The web authorisation matrix mirrors api/matrix_test.go for the browser
// interface: every route registered in web.go's routes(), as every caller,
// against the member's project and another one where that matters, on the
// real broker over SQLite with the real verifier. Each row asserts the exact
// status; each POST that can change something also asserts that it changed
// exactly when the status says it succeeded.
//
// Decisions the matrix pins down:
//   - An agent token is a valid token, so the dev sign-in accepts it (303),
//     but the agent role uses no page: every signed-in page refuses it (403)
//     because the broker refuses the agent every call the pages make.
//   - Anonymous GETs of /ui/ pages redirect to the sign-in page (303);
//     anonymous POSTs have no session and so no CSRF token: 403.
//   - A POST whose CSRF token is missing, or belongs to another session, is
//     refused with 403 before the broker is called, even for a caller the
//     broker would allow.

// matrixDevKey is the HS256 key newEnv's verifier trusts (harness_test.go):
// the matrix mints tokens for two identities the harness does not have.
const matrixDevKey = "0123456789abcdef0123456789abcdef-web-test"

// Identities the matrix adds: frank is a researcher in no project; gina
// holds reviewer and output checker, so separation of duties must stop her
// releasing what she approved.
var matrixExtraUsers = map[string]broker.User{
	"frank": {Subject: "frank", Name: "Frank Outsider", Org: "Uni", Roles: []broker.Role{broker.RoleResearcher}},
	"gina":  {Subject: "gina", Name: "Gina Both", Org: "NHS", Roles: []broker.Role{broker.RoleReviewer, broker.RoleOutputChecker}},
	// Members of the own project who hold a staff role: hugo researcher and
	// output checker, ivy output checker only, jack reviewer only.
	"hugo": {Subject: "hugo", Name: "Hugo Both", Org: "Uni", Roles: []broker.Role{broker.RoleResearcher, broker.RoleOutputChecker}},
	"ivy":  {Subject: "ivy", Name: "Ivy Member-Checker", Org: "NHS", Roles: []broker.Role{broker.RoleOutputChecker}},
	"jack": {Subject: "jack", Name: "Jack Member-Reviewer", Org: "NHS", Roles: []broker.Role{broker.RoleReviewer}},
}

// webCallers are the matrix's callers by row name, with the test user each
// signs in as ("" for anonymous).
var webCallers = []struct{ name, user string }{
	{"anonymous", ""},
	{"member", "alice"},
	{"nonmember", "frank"},
	{"reviewer", "bob"},
	{"checker", "carol"},
	{"admin", "dave"},
	{"agent", "agent"},
}

func matrixUser(name string) broker.User {
	if u, ok := matrixExtraUsers[name]; ok {
		return u
	}
	return testUsers[name]
}

// matrixEnv is the harness env plus the projects the matrix targets: own
// (members alice and erin) and other (erin only), both with budget enough
// for every row.
type matrixEnv struct {
	*env
	own, other *broker.Project
	// third has alice only: a project erin, hugo, ivy and jack are not in.
	third *broker.Project
}

func newMatrixEnv(tb testing.TB, dryRun bool) *matrixEnv {
	tb.Helper()
	e := newEnv(tb)
	for name, u := range matrixExtraUsers {
		tok, err := auth.MintDevToken([]byte(matrixDevKey), auth.DevClaims{Subject: u.Subject, Name: u.Name, Org: u.Org, Roles: u.Roles, IssuedAt: e.clock.Now(), TTL: time.Hour})
		if err != nil {
			tb.Fatalf("mint token: %v", err)
		}
		e.tokens[name] = tok
	}
	if dryRun {
		e = withDryRunner(tb, e)
	}
	m := &matrixEnv{env: e}
	m.own = m.newProject(tb, "Matrix own", []string{"alice", "erin", "hugo", "ivy", "jack"})
	m.other = m.newProject(tb, "Matrix other", []string{"erin"})
	m.third = m.newProject(tb, "Matrix third", []string{"alice"})
	return m
}

// withDryRunner returns a copy of e served by a second handler over the same
// broker whose editor has a dry run (the harness's has none). The dry runner
// is a fake: what is under test is who may reach it.
func withDryRunner(tb testing.TB, e *env) *env {
	tb.Helper()
	ver, err := auth.NewVerifier(context.Background(), auth.AuthConfig{DevKey: []byte(matrixDevKey)}, auth.WithNow(e.clock.Now))
	if err != nil {
		tb.Fatalf("verifier: %v", err)
	}
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	h := web.New(web.Config{Dev: true, Now: e.clock.Now, DryRunner: fakeDryRunner{}}, e.svc, ver, logger)
	mux := http.NewServeMux()
	mux.Handle(web.PathPrefix, h)
	mux.Handle(web.RegisterPath, h)
	srv := httptest.NewServer(mux)
	tb.Cleanup(srv.Close)
	c := *e
	c.h, c.srv = h, srv
	return &c
}

type fakeDryRunner struct{}

func (fakeDryRunner) DryRun(_ context.Context, _, _ string, epsilon float64, _ []job.Codelist) (*dp.Result, []job.AbsentCodes, error) {
	return &dp.Result{
		Columns: []dp.Column{{Name: "sex", Kind: "group"}, {Name: "n", Kind: string(dp.AggCount)}},
		Rows:    [][]dp.Cell{{{Key: "female"}, {Value: f64(120), Rounded: true}}},
		Report:  dp.Report{Epsilon: epsilon, Mechanism: dp.MechanismLaplace, RoundingBase: 5, Threshold: 10},
	}, nil, nil
}

func (m *matrixEnv) ctx(name string) context.Context {
	u := matrixUser(name)
	return broker.NewContext(context.Background(), &u)
}

func (m *matrixEnv) newProject(tb testing.TB, title string, members []string) *broker.Project {
	tb.Helper()
	p := &broker.Project{
		Title: title, Organisation: "University of Example", Purpose: "Authorisation matrix.",
		LawfulBasis: "UK GDPR 6(1)(e), 9(2)(j)", Members: members, Datasets: []string{"gp_test"},
		EpsilonBudget: 1000, DeltaBudget: 0.5, ExpiresAt: m.clock.Now().AddDate(1, 0, 0),
	}
	if err := m.svc.CreateProject(m.ctx("dave"), p); err != nil {
		tb.Fatalf("create project: %v", err)
	}
	return p
}

func (m *matrixEnv) project(own bool) *broker.Project {
	if own {
		return m.own
	}
	return m.other
}

const matrixSQL = "SELECT sex, count(*) AS n FROM patients GROUP BY sex"

// queryIn drives a fresh query of project p, submitted by submitter and
// approved by approver, into status st.
func (m *matrixEnv) queryIn(tb testing.TB, p *broker.Project, submitter, approver string, st broker.Status) int64 {
	tb.Helper()
	q, err := m.svc.SubmitQuery(m.ctx(submitter), broker.QuerySubmission{ProjectID: p.ID, SQL: matrixSQL, Purpose: "matrix", Epsilon: 0.5})
	if err != nil {
		tb.Fatalf("submit: %v", err)
	}
	if st == broker.StatusSubmitted {
		return q.ID
	}
	if _, err := m.svc.ApproveQuery(m.ctx(approver), q.ID, "ok"); err != nil {
		tb.Fatalf("approve %d: %v", q.ID, err)
	}
	if st == broker.StatusFailed { // a failure notice, released
		lease, err := m.svc.LeaseJob(m.ctx("agent"), siteID, "")
		if err != nil || lease == nil || lease.QueryID != q.ID {
			tb.Fatalf("lease %d: %+v, %v", q.ID, lease, err)
		}
		if err := m.svc.FailJob(m.ctx("agent"), q.ID, lease.Token, "memory", "the query ran out of memory"); err != nil {
			tb.Fatalf("fail %d: %v", q.ID, err)
		}
		if _, err := m.svc.ReleaseQuery(m.ctx("carol"), q.ID, "nothing to release"); err != nil {
			tb.Fatalf("release the failure notice of %d: %v", q.ID, err)
		}
		return q.ID
	}
	m.mustComplete(tb, q.ID, "female", "male", "unknown")
	if st == broker.StatusAwaitingOutputCheck {
		return q.ID
	}
	if _, err := m.svc.ReleaseQuery(m.ctx("carol"), q.ID, "safe"); err != nil {
		tb.Fatalf("release %d: %v", q.ID, err)
	}
	if st != broker.StatusReleased {
		tb.Fatalf("queryIn: unsupported status %s", st)
	}
	return q.ID
}

func (m *matrixEnv) queryStatus(tb testing.TB, id int64) string {
	tb.Helper()
	q, err := m.svc.FindQueryByID(m.ctx("dave"), id)
	if err != nil {
		tb.Fatalf("find query %d: %v", id, err)
	}
	return string(q.Status)
}

func (m *matrixEnv) projectStatus(tb testing.TB, id int64) string {
	tb.Helper()
	p, err := m.svc.FindProjectByID(m.ctx("dave"), id)
	if err != nil {
		tb.Fatalf("find project %d: %v", id, err)
	}
	return string(p.Status)
}

// csrfMode is how a row's POST carries its CSRF token.
type csrfMode int

const (
	csrfValid   csrfMode = iota // the session's own token
	csrfMissing                 // no csrf field
	csrfForeign                 // the token of another session of the same user
)

// webTarget is what a row's request acts on.
type webTarget struct {
	query   int64
	project int64
}

// webRoute is one registered route: how to prepare its target, the form it
// posts, the status each caller gets, and the state a POST may change.
type webRoute struct {
	method, path string // path has %d for the target's id
	// state is the status the target query needs; "" means no query.
	state broker.Status
	// projectStatus, when set, makes the target a fresh project (for the
	// admin's project actions) in that status.
	projectStatus broker.ProjectStatus
	// perProject runs the route against the member's project and another.
	perProject bool
	// public routes need no session: anonymous gets want("anonymous").
	public bool
	dryRun bool
	// variant tells apart rows of one route in the row names (the editor's
	// action).
	variant string
	form    func(m *matrixEnv, own bool) url.Values
	want    func(caller string, own bool) int
	// location, when set, is the Location a 303 must carry.
	location func(caller string) string
	// observe reads the state the route may change; a row's request must
	// change it exactly when its status is 303.
	observe func(tb testing.TB, m *matrixEnv, c *client, t webTarget) string
}

// allow returns ok for the listed callers and 403 for every other signed-in
// caller (anonymous is decided by the runner unless the route is public).
func allow(ok int, callers ...string) func(string, bool) int {
	return func(caller string, _ bool) int {
		for _, c := range callers {
			if c == caller {
				return ok
			}
		}
		return http.StatusForbidden
	}
}

// memberOwn returns ok for the member on their own project and for the
// listed callers, 403 otherwise.
func memberOwn(ok int, callers ...string) func(string, bool) int {
	base := allow(ok, callers...)
	return func(caller string, own bool) int {
		if caller == "member" && own {
			return ok
		}
		return base(caller, own)
	}
}

func everyone(status int) func(string, bool) int {
	return func(string, bool) int { return status }
}

func webRoutes() []webRoute {
	observeQuery := func(tb testing.TB, m *matrixEnv, _ *client, t webTarget) string { return m.queryStatus(tb, t.query) }
	observeProject := func(tb testing.TB, m *matrixEnv, _ *client, t webTarget) string {
		return m.projectStatus(tb, t.project)
	}
	countQueries := func(tb testing.TB, m *matrixEnv, _ *client, _ webTarget) string {
		_, n, err := m.svc.FindQueries(m.ctx("dave"), broker.QueryFilter{})
		if err != nil {
			tb.Fatalf("count queries: %v", err)
		}
		return strconv.Itoa(n)
	}
	countProjects := func(tb testing.TB, m *matrixEnv, _ *client, _ webTarget) string {
		_, n, err := m.svc.FindProjects(m.ctx("dave"), broker.ProjectFilter{})
		if err != nil {
			tb.Fatalf("count projects: %v", err)
		}
		return strconv.Itoa(n)
	}
	countSites := func(tb testing.TB, m *matrixEnv, _ *client, _ webTarget) string {
		ss, err := m.svc.FindSites(m.ctx("dave"))
		if err != nil {
			tb.Fatalf("count sites: %v", err)
		}
		return strconv.Itoa(len(ss))
	}
	// sessionState is what the caller's own client gets for a signed-in
	// page: a redirect to sign-in when the client has no session.
	sessionState := func(tb testing.TB, _ *matrixEnv, c *client, _ webTarget) string {
		resp, _ := c.get("/ui/queries")
		return strconv.Itoa(resp.StatusCode)
	}
	editor := func(action string) func(*matrixEnv, bool) url.Values {
		return func(m *matrixEnv, own bool) url.Values {
			return url.Values{"action": {action}, "project_id": {fmt.Sprint(m.project(own).ID)}, "sql": {matrixSQL}, "purpose": {"matrix"}, "epsilon": {"0.5"}}
		}
	}
	comment := func(*matrixEnv, bool) url.Values { return url.Values{"comment": {"fine"}} }
	reason := func(*matrixEnv, bool) url.Values { return url.Values{"reason": {"out of scope"}} }
	signedIn := []string{"member", "nonmember", "reviewer", "checker", "admin", "agent"}
	return []webRoute{
		{method: "GET", path: "/register", public: true, want: everyone(200)},
		{method: "GET", path: "/ui/signin", public: true, want: everyone(200)},
		{method: "GET", path: "/ui/static/style.css", public: true, want: everyone(200)},
		{method: "GET", path: "/ui/no-such-page", public: true, want: everyone(404)},
		{method: "POST", path: "/ui/signin", public: true, want: func(caller string, _ bool) int {
			if caller == "anonymous" {
				return http.StatusUnauthorized // no token to verify
			}
			return http.StatusSeeOther
		}, observe: sessionState},
		{method: "POST", path: "/ui/signout", want: allow(303, signedIn...), observe: sessionState,
			location: func(string) string { return "/ui/signin" }},
		{method: "GET", path: "/ui/", want: func(caller string, _ bool) int {
			if caller == "agent" {
				return http.StatusForbidden // no role that uses the interface
			}
			return http.StatusOK // the home page of the caller's roles
		}},
		{method: "GET", path: "/ui/projects", want: allow(200, "member", "nonmember", "reviewer", "admin")},
		{method: "GET", path: "/ui/editor", want: allow(200, "member", "nonmember", "reviewer", "admin")},
		{method: "POST", path: "/ui/editor", perProject: true, variant: "action=check", form: editor("check"), want: memberOwn(200), observe: countQueries},
		{method: "POST", path: "/ui/editor", perProject: true, dryRun: true, variant: "action=dryrun", form: editor("dryrun"), want: memberOwn(200), observe: countQueries},
		{method: "POST", path: "/ui/editor", perProject: true, variant: "action=submit", form: editor("submit"), want: memberOwn(303), observe: countQueries},
		{method: "POST", path: "/ui/editor/check", perProject: true, form: editor(""), want: memberOwn(200), observe: countQueries},
		{method: "GET", path: "/ui/queries", want: allow(200, "member", "nonmember", "reviewer", "checker", "admin")},
		{method: "GET", path: "/ui/queries/%d", state: broker.StatusSubmitted, perProject: true, want: memberOwn(200, "reviewer", "checker", "admin")},
		{method: "GET", path: "/ui/queries/%d", state: broker.StatusReleased, perProject: true, want: memberOwn(200, "reviewer", "checker", "admin")},
		{method: "GET", path: "/ui/queries/%d/result.csv", state: broker.StatusReleased, perProject: true, want: memberOwn(200)},
		{method: "GET", path: "/ui/queries/%d/result.json", state: broker.StatusReleased, perProject: true, want: memberOwn(200)},
		// A failed run: its researchers and staff see the query; nobody
		// downloads anything.
		{method: "GET", path: "/ui/queries/%d", state: broker.StatusFailed, perProject: true, want: memberOwn(200, "reviewer", "checker", "admin")},
		{method: "GET", path: "/ui/queries/%d/result.csv", state: broker.StatusFailed, perProject: true, want: everyone(403)},
		// Not released yet: nobody downloads, not even the member or checker.
		{method: "GET", path: "/ui/queries/%d/result.csv", state: broker.StatusAwaitingOutputCheck, perProject: true, want: everyone(403)},
		{method: "GET", path: "/ui/queries/%d/result.json", state: broker.StatusAwaitingOutputCheck, perProject: true, want: everyone(403)},
		{method: "POST", path: "/ui/queries/%d/approve", state: broker.StatusSubmitted, perProject: true, form: comment, want: allow(303, "reviewer"), observe: observeQuery},
		{method: "POST", path: "/ui/queries/%d/reject", state: broker.StatusSubmitted, perProject: true, form: reason, want: allow(303, "reviewer"), observe: observeQuery},
		{method: "POST", path: "/ui/queries/%d/cancel", state: broker.StatusSubmitted, perProject: true, want: memberOwn(303), observe: observeQuery},
		{method: "POST", path: "/ui/queries/%d/release", state: broker.StatusAwaitingOutputCheck, perProject: true, form: comment, want: allow(303, "checker"), observe: observeQuery},
		{method: "POST", path: "/ui/queries/%d/withhold", state: broker.StatusAwaitingOutputCheck, perProject: true, form: reason, want: allow(303, "checker"), observe: observeQuery},
		{method: "GET", path: "/ui/review", want: allow(200, "reviewer")},
		{method: "GET", path: "/ui/outputs", want: allow(200, "checker")},
		{method: "GET", path: "/ui/admin", want: allow(200, "admin")},
		{method: "POST", path: "/ui/admin/projects", want: allow(303, "admin"), observe: countProjects,
			form: func(m *matrixEnv, _ bool) url.Values {
				return url.Values{"title": {"Created by the matrix"}, "organisation": {"Uni"}, "purpose": {"p"}, "lawful_basis": {"6(1)(e)"},
					"members": {"alice"}, "datasets": {"gp_test"}, "epsilon_budget": {"5"}, "delta_budget": {"1e-6"},
					"expires_at": {m.clock.Now().AddDate(1, 0, 0).Format(time.DateOnly)}}
			}},
		{method: "POST", path: "/ui/admin/projects/%d/suspend", projectStatus: broker.ProjectActive, want: allow(303, "admin"), observe: observeProject},
		{method: "POST", path: "/ui/admin/projects/%d/resume", projectStatus: broker.ProjectSuspended, want: allow(303, "admin"), observe: observeProject},
		{method: "GET", path: "/ui/admin/sites", want: allow(200, "admin")},
		{method: "POST", path: "/ui/admin/sites", want: allow(303, "admin"), observe: countSites,
			form: func(*matrixEnv, bool) url.Values {
				return url.Values{"id": {"matrix-site"}, "name": {"Matrix site"}, "organisation": {"Test NHS Trust"}}
			}},
		{method: "GET", path: "/ui/admin/audit", want: allow(200, "admin")},
		{method: "POST", path: "/ui/admin/audit/verify", want: allow(200, "admin")},
	}
}

func (rt webRoute) label() string {
	l := rt.method + " " + strings.ReplaceAll(rt.path, "%d", "{id}")
	if rt.variant != "" {
		l += " " + rt.variant
	}
	switch {
	case rt.state != "":
		l += " (" + string(rt.state) + ")"
	case rt.projectStatus != "":
		l += " (project " + string(rt.projectStatus) + ")"
	}
	return l
}

// webRow is one route × caller × project × CSRF mode, with the exact status
// it must get. submitter and approver, when set, override who drives the
// target query into its state (separation of duties rows).
type webRow struct {
	name      string
	route     webRoute
	caller    string // row name of the caller
	user      string // test user signed in ("" = anonymous)
	own       bool
	csrf      csrfMode
	submitter string
	approver  string
	third     bool // the target is in m.third rather than own/other
	want      int
}

// webRows expands the routes into the matrix's rows.
func webRows() []webRow {
	var rows []webRow
	for _, rt := range webRoutes() {
		projects := []bool{true}
		if rt.perProject {
			projects = []bool{true, false}
		}
		for _, c := range webCallers {
			for _, own := range projects {
				want := 0
				switch {
				case c.name != "anonymous" || rt.public:
					want = rt.want(c.name, own)
				case rt.method == http.MethodGet:
					want = http.StatusSeeOther // to the sign-in page
				default:
					want = http.StatusForbidden // no session, no CSRF token
				}
				name := rt.label() + " as " + c.name
				if rt.perProject {
					name += map[bool]string{true: " (member's project)", false: " (other project)"}[own]
				}
				rows = append(rows, webRow{name: name, route: rt, caller: c.name, user: c.user, own: own, want: want})
				// A caller who would succeed is refused without a valid
				// CSRF token, and nothing changes.
				if rt.method == http.MethodPost && c.user != "" && want != http.StatusForbidden {
					rows = append(rows,
						webRow{name: name + " without CSRF token", route: rt, caller: c.name, user: c.user, own: own, csrf: csrfMissing, want: http.StatusForbidden},
						webRow{name: name + " with another session's CSRF token", route: rt, caller: c.name, user: c.user, own: own, csrf: csrfForeign, want: http.StatusForbidden})
				}
			}
		}
	}
	return append(rows, dutyRows()...)
}

// dutyRows are separation of duties and the broker's other refusals on the
// query actions, with their positive controls.
func dutyRows() []webRow {
	byPath := map[string]webRoute{}
	for _, rt := range webRoutes() {
		if rt.method == http.MethodPost && strings.HasPrefix(rt.path, "/ui/queries/") {
			byPath[rt.path] = rt
		}
	}
	approve, reject := byPath["/ui/queries/%d/approve"], byPath["/ui/queries/%d/reject"]
	release, withhold := byPath["/ui/queries/%d/release"], byPath["/ui/queries/%d/withhold"]
	cancel := byPath["/ui/queries/%d/cancel"]
	noReason := func(rt webRoute) webRoute { rt.form = nil; return rt }
	inState := func(rt webRoute, st broker.Status) webRoute { rt.state = st; return rt }
	return []webRow{
		{name: "approve: reviewer who submitted the query", route: approve, caller: "erin", user: "erin", own: true, submitter: "erin", want: 403},
		{name: "reject: reviewer who submitted the query", route: reject, caller: "erin", user: "erin", own: true, submitter: "erin", want: 403},
		{name: "approve: reviewer-researcher on a fellow member's query", route: approve, caller: "erin", user: "erin", own: true, want: 403},
		{name: "approve: reviewer-researcher on a query of a project she is not in (control)", route: approve, caller: "erin", user: "erin", own: true, third: true, want: 303},
		{name: "approve: reviewer who is a member of the project", route: approve, caller: "jack", user: "jack", own: true, want: 403},
		{name: "reject: reviewer who is a member of the project", route: reject, caller: "jack", user: "jack", own: true, want: 403},
		{name: "approve: reviewer of no project (control)", route: approve, caller: "jack", user: "jack", own: true, third: true, want: 303},
		{name: "release: researcher-checker who submitted the query", route: release, caller: "hugo", user: "hugo", own: true, submitter: "hugo", want: 403},
		{name: "withhold: researcher-checker who submitted the query", route: withhold, caller: "hugo", user: "hugo", own: true, submitter: "hugo", want: 403},
		{name: "release: researcher-checker on a fellow member's query", route: release, caller: "hugo", user: "hugo", own: true, want: 403},
		{name: "release: researcher-checker on a query of a project he is not in (control)", route: release, caller: "hugo", user: "hugo", own: true, third: true, want: 303},
		{name: "release: output checker who is a member of the project", route: release, caller: "ivy", user: "ivy", own: true, want: 403},
		{name: "withhold: output checker who is a member of the project", route: withhold, caller: "ivy", user: "ivy", own: true, want: 403},
		{name: "release: output checker who approved the query", route: release, caller: "gina", user: "gina", own: true, approver: "gina", want: 403},
		{name: "withhold: output checker who approved the query", route: withhold, caller: "gina", user: "gina", own: true, approver: "gina", want: 403},
		{name: "release: output checker who approved another query (control)", route: release, caller: "gina", user: "gina", own: true, want: 303},
		{name: "cancel: project member who did not submit", route: cancel, caller: "erin", user: "erin", own: true, want: 403},
		{name: "reject without a reason", route: noReason(reject), caller: "reviewer", user: "bob", own: true, want: 422},
		{name: "withhold without a reason", route: noReason(withhold), caller: "checker", user: "carol", own: true, want: 422},
		{name: "approve a query awaiting output check", route: inState(approve, broker.StatusAwaitingOutputCheck), caller: "reviewer", user: "bob", own: true, want: 409},
		{name: "release a submitted query", route: inState(release, broker.StatusSubmitted), caller: "checker", user: "carol", own: true, want: 409},
		{name: "cancel a released query", route: inState(cancel, broker.StatusReleased), caller: "member", user: "alice", own: true, want: 409},
	}
}

// TestWebAuthorizationMatrix runs every row on a fresh environment per
// route, asserting the exact status and, for POSTs that change state, that
// the state changed exactly when the request succeeded.
func TestWebAuthorizationMatrix(t *testing.T) {
	if testing.Short() {
		t.Skip("matrix runs the real broker")
	}
	rows := webRows()
	// Rows run grouped by route so each route gets one environment.
	var order []string
	groups := map[string][]webRow{}
	for _, r := range rows {
		k := r.route.label()
		if _, ok := groups[k]; !ok {
			order = append(order, k)
		}
		groups[k] = append(groups[k], r)
	}
	for _, k := range order {
		t.Run(k, func(t *testing.T) {
			m := newMatrixEnv(t, groups[k][0].route.dryRun)
			for _, row := range groups[k] {
				t.Run(row.name, func(t *testing.T) { runWebRow(t, m, row) })
			}
		})
	}
	t.Logf("%d routes, %d rows", len(webRoutes()), len(rows))
}

func runWebRow(t *testing.T, m *matrixEnv, row webRow) {
	rt := row.route
	p := m.project(row.own)
	if row.third {
		p = m.third
	}
	var tg webTarget
	tg.project = p.ID
	switch {
	case rt.state != "":
		submitter, approver := "alice", "bob"
		if !row.own {
			submitter = "erin"
		}
		if row.submitter != "" {
			submitter = row.submitter
		}
		if row.approver != "" {
			approver = row.approver
		}
		tg.query = m.queryIn(t, p, submitter, approver, rt.state)
	case rt.projectStatus != "":
		np := m.newProject(t, "Matrix target", []string{"alice"})
		if rt.projectStatus != broker.ProjectActive {
			st := rt.projectStatus
			if _, err := m.svc.UpdateProject(m.ctx("dave"), np.ID, broker.ProjectUpdate{Status: &st}); err != nil {
				t.Fatalf("set project status: %v", err)
			}
		}
		tg.project = np.ID
	}
	path := rt.path
	if strings.Contains(path, "%d") {
		id := tg.project
		if rt.state != "" {
			id = tg.query
		}
		path = fmt.Sprintf(path, id)
	}

	var c *client
	switch {
	case rt.path == "/ui/signin" && rt.method == http.MethodPost, row.user == "":
		jar, _ := cookiejar.New(nil)
		c = &client{tb: t, e: m.env, http: &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
	default:
		c = m.signIn(t, row.user)
	}
	form := url.Values{}
	if rt.form != nil {
		form = rt.form(m, row.own)
	}
	if rt.method == http.MethodPost {
		csrf := ""
		switch {
		case rt.path == "/ui/signin":
			// The sign-in form's token is a double-submit cookie: read the
			// page first, as a browser would, and post the caller's token.
			// A foreign token is one another browser's sign-in page got.
			_, body := c.get("/ui/signin")
			csrf = csrfOf(t, body)
			if row.csrf == csrfForeign {
				other := &client{tb: t, e: m.env, http: &http.Client{}}
				_, body := other.get("/ui/signin")
				csrf = csrfOf(t, body)
			}
			form.Set("token", m.tokens[row.user])
		case row.user == "":
		case row.csrf == csrfValid:
			csrf = c.csrf()
		case row.csrf == csrfForeign:
			csrf = m.signIn(t, row.user).csrf()
		}
		if row.csrf == csrfMissing {
			csrf = ""
		}
		if csrf != "" {
			form.Set("csrf", csrf)
		}
	}

	before := ""
	if rt.observe != nil {
		before = rt.observe(t, m, c, tg)
	}
	denied := m.denials(t)
	var resp *http.Response
	var body string
	if rt.method == http.MethodPost {
		resp, body = c.post(path, form)
	} else {
		resp, body = c.get(path)
	}
	if resp.StatusCode != row.want {
		t.Fatalf("%s %s: status %d, want %d\n%s", rt.method, path, resp.StatusCode, row.want, firstLines(body, 40))
	}
	if resp.StatusCode == http.StatusSeeOther {
		wantLoc := ""
		switch {
		case row.user == "" && !rt.public:
			wantLoc = "/ui/signin"
		case rt.location != nil:
			wantLoc = rt.location(row.caller)
		}
		if got := resp.Header.Get("Location"); wantLoc != "" && got != wantLoc {
			t.Errorf("Location %q, want %q", got, wantLoc)
		}
	}
	if rt.observe != nil {
		after := rt.observe(t, m, c, tg)
		changed := after != before
		if wantChange := row.want == http.StatusSeeOther; changed != wantChange {
			t.Errorf("state %q → %q: changed %v, want %v", before, after, changed, wantChange)
		}
	}
	// A page a caller may open records no refusal: the audit chain holds
	// security events, not the page's lookups of what it may not show.
	if rt.method == http.MethodGet && resp.StatusCode == http.StatusOK {
		if n := m.denials(t); n != denied {
			t.Errorf("opening the page recorded %d authz.denied entries", n-denied)
		}
	}
}

// denials counts the audit chain's authz.denied entries.
func (m *matrixEnv) denials(tb testing.TB) int {
	tb.Helper()
	action := "authz.denied"
	_, n, err := m.svc.FindAuditEntries(m.ctx("dave"), broker.AuditFilter{Action: &action, Limit: 1})
	if err != nil {
		tb.Fatalf("count denials: %v", err)
	}
	return n
}

func firstLines(s string, n int) string {
	lines := strings.SplitN(s, "\n", n+1)
	if len(lines) > n {
		lines = lines[:n]
	}
	return strings.Join(lines, "\n")
}

// TestWebForwardedTokenMatrix covers the other way in: a bearer token the
// OIDC proxy forwards on each request instead of a session cookie. The
// token's roles decide exactly as a session's do; a bad token is 401; a POST
// that arrives with a forwarded token but no session has no CSRF token yet
// and is refused, so a forged cross-site form gains nothing from the proxy.
func TestWebForwardedTokenMatrix(t *testing.T) {
	if testing.Short() {
		t.Skip("matrix runs the real broker")
	}
	m := newMatrixEnv(t, false)
	tests := []struct {
		name   string
		user   string // "" sends a token no key signed
		method string
		path   string // %d is a submitted query of the member's project
		want   int
	}{
		{name: "reviewer reads the review queue", user: "bob", method: "GET", path: "/ui/review", want: 200},
		{name: "member reads their query", user: "alice", method: "GET", path: "/ui/queries/%d", want: 200},
		{name: "nonmember reads the query", user: "frank", method: "GET", path: "/ui/queries/%d", want: 403},
		{name: "researcher opens the admin page", user: "alice", method: "GET", path: "/ui/admin", want: 403},
		{name: "agent opens the home page", user: "agent", method: "GET", path: "/ui/", want: 403},
		{name: "forged token", user: "", method: "GET", path: "/ui/review", want: 401},
		{name: "reviewer approves with no session", user: "bob", method: "POST", path: "/ui/queries/%d/approve", want: 403},
		{name: "admin verifies the audit chain with no session", user: "dave", method: "POST", path: "/ui/admin/audit/verify", want: 403},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := m.queryIn(t, m.own, "alice", "bob", broker.StatusSubmitted)
			path := tt.path
			if strings.Contains(path, "%d") {
				path = fmt.Sprintf(path, id)
			}
			tok := m.tokens[tt.user]
			if tt.user == "" {
				tok = m.tokens["bob"][:len(m.tokens["bob"])-4] + "AAAA"
			}
			req, _ := http.NewRequest(tt.method, m.srv.URL+path, strings.NewReader(url.Values{"comment": {"fine"}}.Encode()))
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			req.Header.Set("Authorization", "Bearer "+tok)
			c := &client{tb: t, e: m.env, http: &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
			resp, body := c.do(req)
			if resp.StatusCode != tt.want {
				t.Fatalf("%s %s: status %d, want %d\n%s", tt.method, path, resp.StatusCode, tt.want, firstLines(body, 40))
			}
			if got := m.queryStatus(t, id); got != string(broker.StatusSubmitted) {
				t.Errorf("query %d is %s after the request, want submitted", id, got)
			}
		})
	}
}

// TestWebDutiesHideOutput opens a query page awaiting output check as
// people separation of duties keeps from the output: the researcher and
// output checker who submitted it, and an output checker who is a member of
// its project. Their pages show no table and no disclosure report; the
// independent output checker's does.
func TestWebDutiesHideOutput(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the real broker")
	}
	m := newMatrixEnv(t, false)
	own := m.queryIn(t, m.own, "hugo", "bob", broker.StatusAwaitingOutputCheck)
	colleague := m.queryIn(t, m.own, "alice", "bob", broker.StatusAwaitingOutputCheck)
	tests := []struct {
		name, user string
		query      int64
		shown      bool
	}{
		{"researcher-checker on their own query", "hugo", own, false},
		{"researcher-checker on a fellow member's query", "hugo", colleague, false},
		{"member output checker", "ivy", colleague, false},
		{"independent output checker", "carol", colleague, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			denied := m.denials(t)
			resp, body := m.signIn(t, tt.user).get(fmt.Sprintf("/ui/queries/%d", tt.query))
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status %d", resp.StatusCode)
			}
			if shown := strings.Contains(body, "Disclosure report"); shown != tt.shown {
				t.Errorf("output shown %v, want %v", shown, tt.shown)
			}
			if n := m.denials(t); n != denied {
				t.Errorf("opening the page recorded %d authz.denied entries", n-denied)
			}
		})
	}
}
