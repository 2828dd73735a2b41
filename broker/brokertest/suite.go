package brokertest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nhs-tre/tre/broker"
	"github.com/nhs-tre/tre/queries"
)

// Run runs the conformance suite against the stores cfg opens.
func Run(t *testing.T, cfg Config) {
	fresh := func(t *testing.T, opts broker.Options) *Fixture {
		t.Helper()
		return NewFixture(t, cfg, cfg.Open(t), opts)
	}
	t.Run("Transitions", func(t *testing.T) { testTransitions(t, fresh) })
	t.Run("SeparationOfDuties", func(t *testing.T) { testSeparationOfDuties(t, fresh(t, broker.Options{})) })
	t.Run("DutiesByPerson", func(t *testing.T) { testDutiesByPerson(t, fresh(t, broker.Options{})) })
	t.Run("Visibility", func(t *testing.T) { testVisibility(t, fresh(t, broker.Options{})) })
	t.Run("Projects", func(t *testing.T) { testProjects(t, fresh(t, broker.Options{})) })
	t.Run("Catalogs", func(t *testing.T) { testCatalogs(t, fresh(t, broker.Options{})) })
	t.Run("Sites", func(t *testing.T) { testSites(t, fresh(t, broker.Options{})) })
	t.Run("BudgetLedger", func(t *testing.T) { testBudgetLedger(t, fresh(t, broker.Options{})) })
	t.Run("ConcurrentApprovals", func(t *testing.T) { testConcurrentApprovals(t, fresh(t, broker.Options{})) })
	t.Run("ConcurrentSubmissions", func(t *testing.T) { testConcurrentSubmissions(t, cfg, fresh(t, broker.Options{})) })
	t.Run("Leases", func(t *testing.T) { testLeases(t, fresh(t, broker.Options{LeaseTTL: time.Minute})) })
	t.Run("FailureNotices", func(t *testing.T) { testFailureNotices(t, fresh(t, broker.Options{})) })
	t.Run("ResearcherView", func(t *testing.T) { testResearcherView(t, fresh(t, broker.Options{})) })
	t.Run("MemberStaffView", func(t *testing.T) { testMemberStaffView(t, fresh(t, broker.Options{})) })
	t.Run("RunHold", func(t *testing.T) { testRunHold(t, fresh(t, broker.Options{RunHold: 5 * time.Minute})) })
	t.Run("LeaseExpiryExhaustsAttempts", func(t *testing.T) {
		testLeaseExpiryExhaustsAttempts(t, fresh(t, broker.Options{LeaseTTL: time.Minute}))
	})
	t.Run("LeaseExpiryObserved", func(t *testing.T) { testLeaseExpiryObserved(t, fresh) })
	t.Run("AuditTampering", func(t *testing.T) { testAuditTampering(t, fresh) })
	t.Run("AuditTruncation", func(t *testing.T) { testAuditTruncation(t, fresh(t, broker.Options{})) })
	t.Run("AuthFailureAggregation", func(t *testing.T) {
		testAuthFailureAggregation(t, fresh(t, broker.Options{AuthFailureWindow: time.Minute}))
	})
	t.Run("RiskFlags", func(t *testing.T) { testRiskFlags(t, fresh(t, broker.Options{})) })
	t.Run("DifferencingFlags", func(t *testing.T) { testDifferencingFlags(t, fresh(t, broker.Options{})) })
	t.Run("RiskFlagsNotDodged", func(t *testing.T) { testRiskFlagsNotDodged(t, fresh(t, broker.Options{})) })
	t.Run("PlanCache", func(t *testing.T) { testPlanCache(t, cfg) })
	if cfg.Reopen != nil {
		t.Run("PredicateSetBackfill", func(t *testing.T) { testPredicateSetBackfill(t, cfg) })
	}
	t.Run("Register", func(t *testing.T) { testRegister(t, fresh(t, broker.Options{})) })
	if cfg.OpenPair != nil {
		t.Run("TwoReplicas", func(t *testing.T) { testTwoReplicas(t, cfg) })
	}
}

// action is one thing that can be done to a query, and the status it aims
// for. When onlyFrom is set the action is legal only from that status
// (a retryable failure needs a lease, though approved→running is legal).
type action struct {
	name     string
	to       broker.Status
	onlyFrom broker.Status
	do       func(f *Fixture, q *broker.Query, token string) error
}

func actions() []action {
	const wrongToken = "0000000000000000000000000000000000000000000000000000000000000000"
	return []action{
		{"approve", broker.StatusApproved, "", func(f *Fixture, q *broker.Query, _ string) error {
			_, err := f.Service.ApproveQuery(f.Reviewer2, q.ID, "fine")
			return err
		}},
		{"reject", broker.StatusRejected, "", func(f *Fixture, q *broker.Query, _ string) error {
			_, err := f.Service.RejectQuery(f.Reviewer2, q.ID, "too narrow")
			return err
		}},
		{"cancel", broker.StatusCancelled, "", func(f *Fixture, q *broker.Query, _ string) error {
			_, err := f.Service.CancelQuery(f.Researcher, q.ID)
			return err
		}},
		{"complete", broker.StatusAwaitingOutputCheck, "", func(f *Fixture, q *broker.Query, tok string) error {
			if q.Status != broker.StatusRunning {
				tok = wrongToken // the holder's token would be an idempotent repeat
			}
			return f.Service.CompleteJob(f.Agent, q.ID, tok, f.Result(0.5))
		}},
		{"fail", broker.StatusAwaitingOutputCheck, "", func(f *Fixture, q *broker.Query, tok string) error {
			return f.Service.FailJob(f.Agent, q.ID, tok, "timeout", "the query ran past its time limit")
		}},
		{"fail retryable", broker.StatusRunning, broker.StatusRunning, func(f *Fixture, q *broker.Query, tok string) error {
			return f.Service.FailJob(f.Agent, q.ID, tok, "crashed", "the sandbox exited")
		}},
		{"release", broker.StatusReleased, "", func(f *Fixture, q *broker.Query, _ string) error {
			_, err := f.Service.ReleaseQuery(f.Checker, q.ID, "safe")
			return err
		}},
		{"withhold", broker.StatusWithheld, "", func(f *Fixture, q *broker.Query, _ string) error {
			_, err := f.Service.WithholdQuery(f.Checker, q.ID, "dominance")
			return err
		}},
	}
}

// testTransitions tries every action from every status: legal moves land
// where the state machine says, illegal ones are conflicts naming both
// states and change nothing.
func testTransitions(t *testing.T, fresh func(*testing.T, broker.Options) *Fixture) {
	for _, from := range broker.Statuses() {
		for _, a := range actions() {
			t.Run(fmt.Sprintf("%s/%s", from, a.name), func(t *testing.T) {
				f := fresh(t, broker.Options{})
				q, token := f.QueryIn(from)
				err := a.do(f, q, token)
				got := f.MustQuery(q.ID)
				want := a.to
				if broker.CanTransition(from, a.to) && (a.onlyFrom == "" || a.onlyFrom == from) {
					if err != nil {
						t.Fatalf("%s from %s: %v", a.name, from, err)
					}
					if got.Status != want {
						t.Fatalf("%s from %s: status %s, want %s", a.name, from, got.Status, want)
					}
					last := got.History[len(got.History)-1]
					if last.From != from || last.To != want {
						t.Fatalf("last event %+v, want %s → %s", last, from, want)
					}
					return
				}
				MustCode(t, err, broker.ECONFLICT)
				// A refused cancel names no status: see CancelQuery.
				if msg := broker.ErrorMessage(err); a.onlyFrom == "" && a.name != "cancel" && (a.name != "fail" && a.name != "complete" || from != broker.StatusRunning) {
					if !strings.Contains(msg, string(from)) || !strings.Contains(msg, string(a.to)) {
						t.Errorf("message %q does not name %s and %s", msg, from, a.to)
					}
				}
				if got.Status != from {
					t.Fatalf("illegal %s changed status %s to %s", a.name, from, got.Status)
				}
				if len(got.History) != len(q.History) {
					t.Fatalf("illegal %s added history: %d events, had %d", a.name, len(got.History), len(q.History))
				}
			})
		}
	}
	t.Run("lease only approved or expired", func(t *testing.T) {
		for _, from := range broker.Statuses() {
			f := fresh(t, broker.Options{})
			q, _ := f.QueryIn(from)
			l, err := f.Service.LeaseJob(f.Agent, SiteID, "")
			if err != nil {
				t.Fatalf("lease from %s: %v", from, err)
			}
			if (l != nil) != (from == broker.StatusApproved) {
				t.Fatalf("lease from %s = %+v", from, l)
			}
			if l != nil && f.MustQuery(q.ID).Status != broker.StatusRunning {
				t.Fatalf("leased query is not running")
			}
		}
	})
}

func testSeparationOfDuties(t *testing.T, f *Fixture) {
	svc := f.Service
	own := f.MustSubmit(f.ResearchReview, DefaultSQL, 0.5)
	ownCheck := f.MustSubmit(f.ResearchCheck, DefaultSQL, 0.5)
	approvedByDual := f.MustSubmit(f.Researcher, DefaultSQL, 0.5)
	before := auditCount(t, f, "authz.denied")

	tests := []struct {
		name string
		do   func() error
	}{
		{"reviewer approves own query", func() error { _, err := svc.ApproveQuery(f.ResearchReview, own.ID, ""); return err }},
		{"reviewer rejects own query", func() error { _, err := svc.RejectQuery(f.ResearchReview, own.ID, "x"); return err }},
		{"researcher approves", func() error { _, err := svc.ApproveQuery(f.Researcher2, own.ID, ""); return err }},
		{"checker approves", func() error { _, err := svc.ApproveQuery(f.Checker, own.ID, ""); return err }},
		{"other researcher cancels", func() error { _, err := svc.CancelQuery(f.Researcher2, approvedByDual.ID); return err }},
		{"reviewer leases", func() error { _, err := svc.LeaseJob(f.Reviewer, SiteID, ""); return err }},
		{"researcher publishes catalog", func() error { return svc.PublishCatalog(f.Researcher, SiteID, "", Catalog(t)) }},
		{"researcher creates project", func() error { return svc.CreateProject(f.Researcher, &broker.Project{}) }},
		{"researcher reads audit", func() error { _, _, err := svc.FindAuditEntries(f.Researcher, broker.AuditFilter{}); return err }},
		{"agent submits", func() error {
			_, err := svc.SubmitQuery(f.Agent, broker.QuerySubmission{ProjectID: f.Project.ID, SQL: DefaultSQL})
			return err
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { MustCode(t, tt.do(), broker.EFORBIDDEN) })
	}
	if got := auditCount(t, f, "authz.denied"); got != before+len(tests) {
		t.Errorf("authz.denied entries = %d, want %d", got, before+len(tests))
	}

	// Output checks: not the submitter, not the approver.
	f.MustApprove(ownCheck.ID)
	tok := f.MustLease(ownCheck.ID).Token
	if err := svc.CompleteJob(f.Agent, ownCheck.ID, tok, f.Result(0.5)); err != nil {
		t.Fatal(err)
	}
	_, err := svc.ReleaseQuery(f.ResearchCheck, ownCheck.ID, "")
	MustCode(t, err, broker.EFORBIDDEN)
	_, err = svc.WithholdQuery(f.ResearchCheck, ownCheck.ID, "x")
	MustCode(t, err, broker.EFORBIDDEN)

	if _, err := svc.ApproveQuery(f.ReviewCheck, approvedByDual.ID, ""); err != nil {
		t.Fatal(err)
	}
	tok = f.MustLease(approvedByDual.ID).Token
	if err := svc.CompleteJob(f.Agent, approvedByDual.ID, tok, f.Result(0.5)); err != nil {
		t.Fatal(err)
	}
	_, err = svc.ReleaseQuery(f.ReviewCheck, approvedByDual.ID, "")
	MustCode(t, err, broker.EFORBIDDEN)
	_, err = svc.WithholdQuery(f.ReviewCheck, approvedByDual.ID, "x")
	MustCode(t, err, broker.EFORBIDDEN)
	if _, err := svc.ReleaseQuery(f.Checker, approvedByDual.ID, "ok"); err != nil {
		t.Fatalf("independent checker release: %v", err)
	}
	// A reviewer may approve a colleague's query.
	if _, err := svc.ApproveQuery(f.Reviewer, own.ID, ""); err != nil {
		t.Fatalf("independent approval: %v", err)
	}
	_, err = svc.FindQueryByID(context.Background(), own.ID)
	MustCode(t, err, broker.EUNAUTHORIZED)
}

// dutyCase is one person trying one action on a query of the fixture's
// project in a given state, submitted and approved by given people.
type dutyCase struct {
	name      string
	who       func(f *Fixture) context.Context
	submitter func(f *Fixture) context.Context // default res1
	approver  func(f *Fixture) context.Context // default rev1
	state     broker.Status
	action    string // approve, reject, view, release, withhold, download
	allowed   bool
}

// testDutiesByPerson is the matrix of separation of duties over role
// combinations (docs/threat-model.md): whoever submitted a query never
// decides on it nor sees its output before release; reviewers and output
// checkers never act on queries of projects they are members of, nor read
// their outputs before release; the approver never releases. Each refusal
// is audited and changes nothing; each allowed case is the control that the
// refusal is the person's, not the action's. QueryAccess, which the web
// interface draws its buttons from, must agree with every outcome.
func testDutiesByPerson(t *testing.T, f *Fixture) {
	svc := f.Service
	res1 := func(f *Fixture) context.Context { return f.Researcher }
	dual2 := func(f *Fixture) context.Context { return f.ResearchCheck }
	dual1 := func(f *Fixture) context.Context { return f.ResearchReview }
	dual3 := func(f *Fixture) context.Context { return f.ReviewCheck }
	rev1 := func(f *Fixture) context.Context { return f.Reviewer }
	rev9 := func(f *Fixture) context.Context { return f.MemberReviewer }
	chk1 := func(f *Fixture) context.Context { return f.Checker }
	chk9 := func(f *Fixture) context.Context { return f.MemberChecker }
	awaiting, released, withheld := broker.StatusAwaitingOutputCheck, broker.StatusReleased, broker.StatusWithheld
	submitted := broker.StatusSubmitted
	cases := []dutyCase{
		// researcher + output checker
		{name: "researcher+checker views own output awaiting check", who: dual2, submitter: dual2, state: awaiting, action: "view"},
		{name: "researcher+checker views own withheld output", who: dual2, submitter: dual2, state: withheld, action: "view"},
		{name: "researcher+checker releases own query", who: dual2, submitter: dual2, state: awaiting, action: "release"},
		{name: "researcher+checker withholds own query", who: dual2, submitter: dual2, state: awaiting, action: "withhold"},
		{name: "researcher+checker views a colleague's output awaiting check", who: dual2, state: awaiting, action: "view"},
		{name: "researcher+checker releases a colleague's query", who: dual2, state: awaiting, action: "release"},
		{name: "researcher+checker downloads own released result", who: dual2, submitter: dual2, state: released, action: "download", allowed: true},
		{name: "researcher+checker views own released output", who: dual2, submitter: dual2, state: released, action: "view", allowed: true},
		// reviewer + researcher
		{name: "reviewer+researcher approves own query", who: dual1, submitter: dual1, state: submitted, action: "approve"},
		{name: "reviewer+researcher rejects own query", who: dual1, submitter: dual1, state: submitted, action: "reject"},
		{name: "reviewer+researcher approves a colleague's query", who: dual1, state: submitted, action: "approve"},
		{name: "reviewer+researcher rejects a colleague's query", who: dual1, state: submitted, action: "reject"},
		// a reviewer who is a member
		{name: "member reviewer approves", who: rev9, state: submitted, action: "approve"},
		{name: "member reviewer rejects", who: rev9, state: submitted, action: "reject"},
		{name: "independent reviewer approves", who: rev1, state: submitted, action: "approve", allowed: true},
		// an output checker who is a member
		{name: "member checker views output awaiting check", who: chk9, state: awaiting, action: "view"},
		{name: "member checker releases", who: chk9, state: awaiting, action: "release"},
		{name: "member checker withholds", who: chk9, state: awaiting, action: "withhold"},
		{name: "member checker views a released output", who: chk9, state: released, action: "view"},
		// the approver as output checker
		{name: "approver releases", who: dual3, approver: dual3, state: awaiting, action: "release"},
		{name: "approver withholds", who: dual3, approver: dual3, state: awaiting, action: "withhold"},
		{name: "reviewer+checker releases a query another reviewer approved", who: dual3, state: awaiting, action: "release", allowed: true},
		// the independent output checker
		{name: "independent checker views output awaiting check", who: chk1, state: awaiting, action: "view", allowed: true},
		{name: "independent checker releases", who: chk1, state: awaiting, action: "release", allowed: true},
		{name: "independent checker withholds", who: chk1, state: awaiting, action: "withhold", allowed: true},
		{name: "independent checker views a withheld output", who: chk1, state: withheld, action: "view", allowed: true},
		{name: "researcher views output awaiting check", who: res1, state: awaiting, action: "view"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			submitter, approver := f.Researcher, f.Reviewer
			if c.submitter != nil {
				submitter = c.submitter(f)
			}
			if c.approver != nil {
				approver = c.approver(f)
			}
			q := f.DutyQuery(t, submitter, approver, c.state)
			ctx := c.who(f)
			access, err := svc.QueryAccess(ctx, q.ID)
			if err != nil {
				t.Fatalf("QueryAccess: %v", err)
			}
			before := auditCount(t, f, "authz.denied")
			var got error
			switch c.action {
			case "approve":
				_, got = svc.ApproveQuery(ctx, q.ID, "")
				if access.Review.Allowed != c.allowed {
					t.Errorf("QueryAccess.Review = %+v, want allowed %v", access.Review, c.allowed)
				}
			case "reject":
				_, got = svc.RejectQuery(ctx, q.ID, "no")
				if access.Review.Allowed != c.allowed {
					t.Errorf("QueryAccess.Review = %+v, want allowed %v", access.Review, c.allowed)
				}
			case "release", "withhold":
				if c.action == "release" {
					_, got = svc.ReleaseQuery(ctx, q.ID, "")
				} else {
					_, got = svc.WithholdQuery(ctx, q.ID, "no")
				}
				if access.Check.Allowed != c.allowed {
					t.Errorf("QueryAccess.Check = %+v, want allowed %v", access.Check, c.allowed)
				}
			case "view":
				_, got = svc.ViewOutput(ctx, q.ID)
				if c.state != broker.StatusReleased && access.CheckerView != c.allowed {
					t.Errorf("QueryAccess.CheckerView = %v, want %v", access.CheckerView, c.allowed)
				}
			case "download":
				_, got = svc.DownloadResult(ctx, q.ID)
			default:
				t.Fatalf("unknown action %q", c.action)
			}
			if c.allowed {
				if got != nil {
					t.Fatalf("%s: %v", c.action, got)
				}
				return
			}
			MustCode(t, got, broker.EFORBIDDEN)
			if n := auditCount(t, f, "authz.denied"); n != before+1 {
				t.Errorf("authz.denied entries %d → %d, want one more", before, n)
			}
			if st := f.MustQuery(q.ID).Status; st != c.state {
				t.Errorf("a refused %s moved the query from %s to %s", c.action, c.state, st)
			}
		})
	}

	// An admin who is a member of a project changes neither it nor a new
	// one listing them.
	t.Run("admin+researcher changes their own project", func(t *testing.T) {
		eps := 100.0
		_, err := svc.UpdateProject(f.AdminResearcher, f.Project.ID, broker.ProjectUpdate{EpsilonBudget: &eps})
		MustCode(t, err, broker.EFORBIDDEN)
		if p, err := svc.FindProjectByID(f.Admin, f.Project.ID); err != nil || p.EpsilonBudget != ProjectEpsilon {
			t.Fatalf("project after a refused budget raise = %+v, %v", p, err)
		}
	})
	t.Run("admin+researcher adds themselves to a project", func(t *testing.T) {
		other := f.MustProject(5, 1e-3, "res3")
		members := []string{"res3", "boss"}
		_, err := svc.UpdateProject(f.AdminResearcher, other.ID, broker.ProjectUpdate{Members: &members})
		MustCode(t, err, broker.EFORBIDDEN)
	})
	t.Run("admin+researcher creates a project listing themselves", func(t *testing.T) {
		now := f.Clock.Now()
		p := &broker.Project{Title: "Mine", Organisation: "o", Purpose: "p", LawfulBasis: "l", Members: []string{"boss"},
			Datasets: []string{Dataset}, EpsilonBudget: 50, ExpiresAt: now.Add(time.Hour)}
		MustCode(t, svc.CreateProject(f.AdminResearcher, p), broker.EFORBIDDEN)
	})
	t.Run("independent admin changes the project", func(t *testing.T) {
		eps := ProjectEpsilon + 1
		if _, err := svc.UpdateProject(f.Admin, f.Project.ID, broker.ProjectUpdate{EpsilonBudget: &eps}); err != nil {
			t.Fatal(err)
		}
	})
	f.MustVerify()
}

// DutyQuery submits DefaultSQL to the fixture's project as submitter and
// drives it into st, approved by approver (Drive).
func (f *Fixture) DutyQuery(tb testing.TB, submitter, approver context.Context, st broker.Status) *broker.Query {
	tb.Helper()
	q, err := f.Service.SubmitQuery(submitter, broker.QuerySubmission{ProjectID: f.Project.ID, SQL: DefaultSQL, Purpose: "duties", Epsilon: 0.1})
	if err != nil {
		tb.Fatalf("submit: %v", err)
	}
	f.Drive(tb, q.ID, approver, st)
	return q
}

// SubmitAs submits sql to the fixture's project as ctx's user and drives
// it into st (Drive), approved by rev1.
func (f *Fixture) SubmitAs(tb testing.TB, ctx context.Context, sql string, st broker.Status) *broker.Query {
	tb.Helper()
	q, err := f.Service.SubmitQuery(ctx, broker.QuerySubmission{ProjectID: f.Project.ID, SQL: sql, Purpose: "test", Epsilon: 0.5})
	if err != nil {
		tb.Fatalf("submit %q: %v", sql, err)
	}
	f.Drive(tb, q.ID, f.Reviewer, st)
	return q
}

// Drive takes submitted query id into st (submitted, awaiting output
// check, released or withheld): approver approves, the site runs it with a
// result of the approved shape, chk1 releases or withholds.
func (f *Fixture) Drive(tb testing.TB, id int64, approver context.Context, st broker.Status) {
	tb.Helper()
	if st == broker.StatusSubmitted {
		return
	}
	svc := f.Service
	must := func(err error) {
		tb.Helper()
		if err != nil {
			tb.Fatalf("drive query %d to %s: %v", id, st, err)
		}
	}
	_, err := svc.ApproveQuery(approver, id, "ok")
	must(err)
	var l *broker.Lease
	for l == nil || l.QueryID != id { // earlier cases may have left approved jobs
		l, err = svc.LeaseJob(f.Agent, SiteID, "")
		must(err)
		if l == nil {
			tb.Fatalf("query %d was never leased", id)
		}
	}
	q, err := svc.FindQueryByID(f.Admin, id)
	must(err)
	must(svc.CompleteJob(f.Agent, id, l.Token, f.ResultOf(tb, q.SQL, l.Epsilon)))
	switch st {
	case broker.StatusReleased:
		_, err = svc.ReleaseQuery(f.Checker, id, "safe")
	case broker.StatusWithheld:
		_, err = svc.WithholdQuery(f.Checker, id, "dominance")
	}
	must(err)
}

func auditCount(t *testing.T, f *Fixture, action string) int {
	t.Helper()
	_, n, err := f.Service.FindAuditEntries(f.Admin, broker.AuditFilter{Action: &action})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func testVisibility(t *testing.T, f *Fixture) {
	svc := f.Service
	other := f.MustProject(5, 1e-3, "res3")
	mine := f.MustSubmit(f.Researcher, DefaultSQL, 0.5)
	theirs := f.MustSubmitTo(f.Outsider, other.ID, DefaultSQL, 0.5)

	_, err := svc.FindQueryByID(f.Outsider, mine.ID)
	MustCode(t, err, broker.EFORBIDDEN)
	if _, err := svc.FindQueryByID(f.Researcher2, mine.ID); err != nil {
		t.Errorf("fellow member reads query: %v", err)
	}
	for _, ctx := range []context.Context{f.Reviewer, f.Checker, f.Admin} {
		if _, err := svc.FindQueryByID(ctx, theirs.ID); err != nil {
			t.Errorf("staff reads query: %v", err)
		}
	}
	_, err = svc.FindQueryByID(f.Agent, mine.ID)
	MustCode(t, err, broker.EFORBIDDEN)

	list, n, err := svc.FindQueries(f.Outsider, broker.QueryFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if n != 1 || len(list) != 1 || list[0].ID != theirs.ID {
		t.Errorf("outsider lists %d queries (%d), want only %d", n, len(list), theirs.ID)
	}
	if _, n, _ := svc.FindQueries(f.Reviewer, broker.QueryFilter{}); n != 2 {
		t.Errorf("reviewer lists %d queries, want 2", n)
	}
	ps, n, err := svc.FindProjects(f.Outsider, broker.ProjectFilter{})
	if err != nil || n != 1 || ps[0].ID != other.ID {
		t.Errorf("outsider projects = %d, %v", n, err)
	}
	_, err = svc.FindProjectByID(f.Outsider, f.Project.ID)
	MustCode(t, err, broker.EFORBIDDEN)
	_, err = svc.SubmitQuery(f.Outsider, broker.QuerySubmission{ProjectID: f.Project.ID, Purpose: "test", SQL: DefaultSQL})
	MustCode(t, err, broker.EFORBIDDEN)

	// Outputs: checkers once awaiting, with the whole report; researchers
	// only once released, without what was computed from exact data.
	f.MustApprove(mine.ID)
	tok := f.MustLease(mine.ID).Token
	full := f.DiagnosedResult(0.5)
	if err := svc.CompleteJob(f.Agent, mine.ID, tok, full); err != nil {
		t.Fatal(err)
	}
	if out, err := svc.FindOutput(f.Checker, mine.ID); err != nil || !cmp.Equal(&full, out.Result) {
		t.Errorf("checker views output: %+v, %v", out, err)
	}
	_, err = svc.FindOutput(f.Researcher, mine.ID)
	MustCode(t, err, broker.EFORBIDDEN)
	_, err = svc.DownloadResult(f.Researcher, mine.ID)
	MustCode(t, err, broker.EFORBIDDEN)
	queue, err := svc.OutputQueue(f.Checker)
	if err != nil || len(queue) != 1 || queue[0].ID != mine.ID {
		t.Errorf("output queue = %v, %v", queue, err)
	}
	if _, err := svc.ReleaseQuery(f.Checker, mine.ID, "safe"); err != nil {
		t.Fatal(err)
	}
	out, err := svc.DownloadResult(f.Researcher, mine.ID)
	if err != nil {
		t.Fatalf("download released: %v", err)
	}
	if diff := cmp.Diff(full.ForResearcher(), out.Result); diff != "" {
		t.Errorf("downloaded result differs (-want +got):\n%s", diff)
	}
	if !out.ReleasedAt.Equal(f.Clock.Now()) {
		t.Errorf("released output dated %s, want %s", out.ReleasedAt, f.Clock.Now())
	}
	_, err = svc.DownloadResult(f.Outsider, mine.ID)
	MustCode(t, err, broker.EFORBIDDEN)
	if n := auditCount(t, f, "result.download"); n != 1 {
		t.Errorf("result.download audited %d times, want 1", n)
	}
	if n := auditCount(t, f, "output.view"); n != 1 {
		t.Errorf("output.view audited %d times, want 1", n)
	}
}

func testProjects(t *testing.T, f *Fixture) {
	svc := f.Service
	bad := []struct {
		name string
		p    broker.Project
	}{
		{"no title", broker.Project{Organisation: "o", Purpose: "p", LawfulBasis: "l", Members: []string{"a"}, Datasets: []string{Dataset}, EpsilonBudget: 1, ExpiresAt: f.Clock.Now().Add(time.Hour)}},
		{"no members", broker.Project{Title: "t", Organisation: "o", Purpose: "p", LawfulBasis: "l", Datasets: []string{Dataset}, EpsilonBudget: 1, ExpiresAt: f.Clock.Now().Add(time.Hour)}},
		{"zero budget", broker.Project{Title: "t", Organisation: "o", Purpose: "p", LawfulBasis: "l", Members: []string{"a"}, Datasets: []string{Dataset}, ExpiresAt: f.Clock.Now().Add(time.Hour)}},
		{"expires before start", broker.Project{Title: "t", Organisation: "o", Purpose: "p", LawfulBasis: "l", Members: []string{"a"}, Datasets: []string{Dataset}, EpsilonBudget: 1, ExpiresAt: f.Clock.Now().Add(-time.Hour)}},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			p := tt.p
			MustCode(t, svc.CreateProject(f.Admin, &p), broker.EINVALID)
		})
	}

	q := f.MustSubmit(f.Researcher, DefaultSQL, 0.5)
	suspended := broker.ProjectSuspended
	if _, err := svc.UpdateProject(f.Admin, f.Project.ID, broker.ProjectUpdate{Status: &suspended}); err != nil {
		t.Fatal(err)
	}
	_, err := svc.SubmitQuery(f.Researcher, broker.QuerySubmission{ProjectID: f.Project.ID, Purpose: "test", SQL: DefaultSQL})
	MustCode(t, err, broker.EFORBIDDEN)
	_, err = svc.ApproveQuery(f.Reviewer, q.ID, "")
	MustCode(t, err, broker.EFORBIDDEN)
	active := broker.ProjectActive
	if _, err := svc.UpdateProject(f.Admin, f.Project.ID, broker.ProjectUpdate{Status: &active}); err != nil {
		t.Fatal(err)
	}
	f.Clock.Advance(400 * 24 * time.Hour) // past expiry
	_, err = svc.SubmitQuery(f.Researcher, broker.QuerySubmission{ProjectID: f.Project.ID, Purpose: "test", SQL: DefaultSQL})
	MustCode(t, err, broker.EFORBIDDEN)
	if !strings.Contains(broker.ErrorMessage(err), "expired") {
		t.Errorf("message %q does not say expired", broker.ErrorMessage(err))
	}
	_, err = svc.ApproveQuery(f.Reviewer, q.ID, "")
	MustCode(t, err, broker.EFORBIDDEN)

	_, err = svc.FindProjectByID(f.Admin, 999999)
	MustCode(t, err, broker.ENOTFOUND)
	_, err = svc.FindQueryByID(f.Admin, 999999)
	MustCode(t, err, broker.ENOTFOUND)
	_, err = svc.SubmitQuery(f.Researcher, broker.QuerySubmission{ProjectID: f.Project.ID, SQL: "   "})
	MustCode(t, err, broker.EINVALID)
	// Reviewers judge a query by its purpose: a submission needs one.
	_, err = svc.SubmitQuery(f.Researcher, broker.QuerySubmission{ProjectID: f.Project.ID, SQL: DefaultSQL, Purpose: " \n"})
	MustCode(t, err, broker.EINVALID)
	if !strings.Contains(broker.ErrorMessage(err), "purpose is required") {
		t.Errorf("message %q does not say the purpose is required", broker.ErrorMessage(err))
	}
}

func testCatalogs(t *testing.T, f *Fixture) {
	svc := f.Service
	siteB := f.MustSite("site-b")
	MustCode(t, svc.PublishCatalog(AgentOf("agent2", "site-b"), "site-b", "", Catalog(t)), broker.ECONFLICT)
	if err := svc.PublishCatalog(f.Agent, SiteID, "tre 1.2.3", Catalog(t)); err != nil {
		t.Fatalf("republish: %v", err)
	}
	cats, err := svc.FindDatasets(f.Researcher)
	if err != nil || len(cats) != 1 || cats[0].Dataset != Dataset {
		t.Fatalf("datasets = %v, %v", cats, err)
	}
	sites, err := svc.FindSites(f.Admin)
	if err != nil {
		t.Fatal(err)
	}
	now := f.Clock.Now()
	want := []*broker.Site{
		{ID: SiteID, Name: "Test site " + SiteID, Organisation: "Test NHS Trust", Registered: true, RegisteredBy: "admin1",
			RegisteredAt: now, Datasets: []string{Dataset}, LastSeen: now, Version: "tre 1.2.3"},
		{ID: "site-b", Name: siteB.Name, Organisation: siteB.Organisation, Registered: true, RegisteredBy: "admin1",
			RegisteredAt: now, Datasets: []string{}},
	}
	if diff := cmp.Diff(want, sites); diff != "" {
		t.Errorf("sites (-want +got):\n%s", diff)
	}
	bad := Catalog(t)
	bad.PrivacyUnit = ""
	MustCode(t, svc.PublishCatalog(f.Agent, SiteID, "", bad), broker.EINVALID)
	MustCode(t, svc.PublishCatalog(f.Agent, SiteID, "bad\nversion", Catalog(t)), broker.EINVALID)
	_, err = svc.FindDatasets(context.Background())
	MustCode(t, err, broker.EUNAUTHORIZED)
}

// testSites checks that agents act only for their own registered site: a
// token without a site, for another site or for an unregistered site is
// refused on every agent call, a site leases only jobs over datasets it
// published, and a job leased by one site cannot be reported by another,
// even with the lease token.
func testSites(t *testing.T, f *Fixture) {
	svc := f.Service
	other := Catalog(t)
	other.Dataset = "gp_other"
	f.MustSite("site-b")
	siteB := AgentOf("agent-b", "site-b")
	if err := svc.PublishCatalog(siteB, "site-b", "", other); err != nil {
		t.Fatalf("site-b publishes its own dataset: %v", err)
	}
	q := f.MustSubmit(f.Researcher, DefaultSQL, 0.5)
	f.MustApprove(q.ID)
	if l, err := svc.LeaseJob(siteB, "site-b", ""); err != nil || l != nil {
		t.Fatalf("site-b leased a job over a dataset it does not hold: %+v, %v", l, err)
	}
	lease := f.MustLease(q.ID)

	noSite := as("agent0", broker.RoleAgent)
	unregistered := AgentOf("agent-x", "site-x")
	before := auditCount(t, f, "authz.denied")
	refused := []struct {
		name string
		do   func() error
	}{
		{"token without a site publishes", func() error { return svc.PublishCatalog(noSite, SiteID, "", Catalog(t)) }},
		{"token without a site leases", func() error { _, err := svc.LeaseJob(noSite, SiteID, ""); return err }},
		{"token without a site heartbeats", func() error { _, err := svc.HeartbeatJob(noSite, q.ID, lease.Token); return err }},
		{"token without a site completes", func() error { return svc.CompleteJob(noSite, q.ID, lease.Token, f.Result(0.5)) }},
		{"token without a site fails", func() error { return svc.FailJob(noSite, q.ID, lease.Token, "sandbox_error", "") }},
		{"site-b publishes as site-a", func() error { return svc.PublishCatalog(siteB, SiteID, "", Catalog(t)) }},
		{"site-b leases as site-a", func() error { _, err := svc.LeaseJob(siteB, SiteID, ""); return err }},
		{"site-b heartbeats site-a's job", func() error { _, err := svc.HeartbeatJob(siteB, q.ID, lease.Token); return err }},
		{"site-b completes site-a's job", func() error { return svc.CompleteJob(siteB, q.ID, lease.Token, f.Result(0.5)) }},
		{"site-b fails site-a's job", func() error { return svc.FailJob(siteB, q.ID, lease.Token, "sandbox_error", "") }},
		{"unregistered site publishes", func() error { return svc.PublishCatalog(unregistered, "site-x", "", other) }},
		{"unregistered site leases", func() error { _, err := svc.LeaseJob(unregistered, "site-x", ""); return err }},
		{"reviewer registers a site", func() error {
			return svc.CreateSite(f.Reviewer, &broker.Site{ID: "site-y", Name: "Y", Organisation: "Y"})
		}},
	}
	for _, tt := range refused {
		t.Run(tt.name, func(t *testing.T) { MustCode(t, tt.do(), broker.EFORBIDDEN) })
	}
	if got := auditCount(t, f, "authz.denied"); got != before+len(refused) {
		t.Errorf("authz.denied entries = %d, want %d", got, before+len(refused))
	}
	if got := f.MustQuery(q.ID); got.Status != broker.StatusRunning {
		t.Fatalf("after the refused calls query %d is %s, want running", q.ID, got.Status)
	}

	// Registration: admins only, once, with a valid id, name and organisation.
	MustCode(t, svc.CreateSite(f.Admin, &broker.Site{ID: "site-b", Name: "B", Organisation: "B"}), broker.ECONFLICT)
	MustCode(t, svc.CreateSite(f.Admin, &broker.Site{ID: "bad id", Name: "B", Organisation: "B"}), broker.EINVALID)
	MustCode(t, svc.CreateSite(f.Admin, &broker.Site{ID: "site-z", Organisation: "Z"}), broker.EINVALID)

	// A lease poll with no job records the site as seen, with its version.
	f.Clock.Advance(time.Minute)
	if l, err := svc.LeaseJob(siteB, "site-b", "tre 9.9"); err != nil || l != nil {
		t.Fatalf("empty poll = %+v, %v", l, err)
	}
	sites, err := svc.FindSites(f.Admin)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range sites {
		if s.ID == "site-b" && (!s.LastSeen.Equal(f.Clock.Now()) || s.Version != "tre 9.9" || !slices.Equal(s.Datasets, []string{"gp_other"})) {
			t.Errorf("site-b after a poll = %+v, want last seen now, version tre 9.9, dataset gp_other", s)
		}
	}

	// The right site completes its own job.
	if err := svc.CompleteJob(f.Agent, q.ID, lease.Token, f.Result(0.5)); err != nil {
		t.Fatalf("site-a completes its job: %v", err)
	}

	// A site an agent announced before registration existed is refused until
	// an admin registers it; registering keeps its health.
	ctx := context.Background()
	if err := f.Store.Exec(ctx, `INSERT INTO sites (id, last_seen, version) VALUES (?, ?, ?)`,
		"site-old", f.Clock.Now().Add(-time.Hour).UnixMicro(), "tre 0.1"); err != nil {
		t.Fatal(err)
	}
	old := AgentOf("agent-old", "site-old")
	_, err = svc.LeaseJob(old, "site-old", "")
	MustCode(t, err, broker.EFORBIDDEN)
	f.MustSite("site-old")
	if _, err := svc.LeaseJob(old, "site-old", ""); err != nil {
		t.Fatalf("registered site-old polls: %v", err)
	}
	f.MustVerify()
}

func testBudgetLedger(t *testing.T, f *Fixture) {
	svc := f.Service
	a := f.MustSubmit(f.Researcher, DefaultSQL, 2)
	b := f.MustSubmit(f.Researcher, DefaultSQL, 1)
	c := f.MustSubmit(f.Researcher, DefaultSQL, 1)
	d := f.MustSubmit(f.Researcher, DefaultSQL, 1)
	check := func(spent, reserved float64) {
		t.Helper()
		got := f.MustBudget()
		if !near(got.EpsilonSpent, spent) || !near(got.EpsilonReserved, reserved) || !near(got.EpsilonRemaining, ProjectEpsilon-spent-reserved) {
			t.Fatalf("budget = %+v, want spent %g reserved %g", got, spent, reserved)
		}
	}
	check(0, 0) // submitted queries cost nothing yet
	if _, err := svc.CancelQuery(f.Researcher, d.ID); err != nil {
		t.Fatal(err)
	}
	f.MustApprove(a.ID)
	f.MustApprove(b.ID)
	f.MustApprove(c.ID)
	check(0, 4)
	// An approved query is not cancelled: the reservation stays until the
	// run is charged.
	_, err := svc.CancelQuery(f.Researcher, c.ID)
	MustCode(t, err, broker.ECONFLICT)
	check(0, 4)
	tok := f.MustLease(a.ID).Token // charges 2
	check(2, 2)
	if err := svc.FailJob(f.Agent, a.ID, tok, "sandbox_error", ""); err != nil {
		t.Fatal(err)
	}
	check(2, 2) // never refunded once run started
	_, err = svc.CancelQuery(f.Researcher, a.ID)
	MustCode(t, err, broker.ECONFLICT)
	check(2, 2)
	// Spend up to the budget, then one more is refused.
	var ids []int64
	for range 7 {
		ids = append(ids, f.MustSubmit(f.Researcher, DefaultSQL, 1).ID)
	}
	for _, id := range ids[:6] {
		f.MustApprove(id)
	}
	check(2, 8)
	_, err = svc.ApproveQuery(f.Reviewer, ids[6], "")
	MustCode(t, err, broker.EBUDGET)
	if !errors.Is(err, broker.ErrBudgetExhausted) {
		t.Errorf("error %v is not ErrBudgetExhausted", err)
	}
	if _, err := svc.RejectQuery(f.Reviewer, ids[6], "over budget"); err != nil {
		t.Fatal(err)
	}
	check(2, 8)
}

func near(a, b float64) bool { return a-b < 1e-9 && b-a < 1e-9 }

// testConcurrentApprovals approves 100 queries of ε 0.25 at once against a
// budget of 10: exactly 40 fit.
func testConcurrentApprovals(t *testing.T, f *Fixture) {
	const n, cost = 100, 0.25
	ids := make([]int64, n)
	for i := range ids {
		ids[i] = f.MustSubmit(f.Researcher, DefaultSQL, cost).ID
	}
	approved, refused := approveAll(t, []*broker.Service{f.Service}, f, ids)
	if approved != 40 || refused != 60 {
		t.Fatalf("approved %d, refused %d; want 40 and 60", approved, refused)
	}
	b := f.MustBudget()
	if !near(b.EpsilonReserved, ProjectEpsilon) || b.EpsilonRemaining < -1e-9 {
		t.Fatalf("budget after race = %+v", b)
	}
	f.MustVerify()
}

// testConcurrentSubmissions submits at once from members and from an
// outsider, whose submissions are refused inside the transaction (on
// SQLite, inside a group shared with members' submissions). Every member's
// submission lands once, every refusal is audited and the chain is intact.
// Where writes are serial, the chain's order is also the order the queries
// were stored in, and each submission saw those stored before it (the
// repeat flag names the first).
func testConcurrentSubmissions(t *testing.T, cfg Config, f *Fixture) {
	const n = 48
	var wg sync.WaitGroup
	var mu sync.Mutex
	var ids []int64
	var denied int
	byID := map[int64]*broker.Query{}
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx := []context.Context{f.Researcher, f.Researcher2, f.Researcher, f.Outsider}[i%4]
			q, err := f.Service.SubmitQuery(ctx, broker.QuerySubmission{ProjectID: f.Project.ID, SQL: DefaultSQL, Purpose: "test", Epsilon: 0.1})
			mu.Lock()
			defer mu.Unlock()
			switch {
			case i%4 == 3 && broker.ErrorCode(err) == broker.EFORBIDDEN:
				denied++
			case i%4 != 3 && err == nil:
				ids = append(ids, q.ID)
				byID[q.ID] = q
			default:
				t.Errorf("submission %d: %v", i, err)
			}
		}()
	}
	wg.Wait()
	if len(byID) != n/4*3 || denied != n/4 {
		t.Fatalf("%d distinct queries stored and %d refused, want %d and %d", len(byID), denied, n/4*3, n/4)
	}
	slices.Sort(ids)
	first := ids[0]
	for _, id := range ids {
		if got := f.MustQuery(id); got.Status != broker.StatusSubmitted {
			t.Errorf("query %d: status %s", id, got.Status)
		}
		// Every store: the project's lock makes each submission see the
		// ones committed before it, so only the first is no repeat.
		var repeatOf int64
		for _, fl := range byID[id].RiskFlags {
			if fl.Kind == broker.RiskRepeat {
				repeatOf = fl.SimilarQueryID
			}
		}
		want := first
		if id == first {
			want = 0
		}
		if repeatOf != want {
			t.Errorf("query %d: flagged as a repeat of %d, want %d", id, repeatOf, want)
		}
	}
	if got := auditCount(t, f, "authz.denied"); got != n/4 {
		t.Errorf("%d refusals audited, want %d", got, n/4)
	}
	action := "query.submit"
	entries, _, err := f.Service.FindAuditEntries(f.Admin, broker.AuditFilter{Action: &action, Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	var objects []string
	for _, e := range entries {
		objects = append(objects, e.Object)
	}
	var want []string
	for _, id := range ids {
		want = append(want, fmt.Sprintf("query/%d", id))
	}
	if !cfg.SerialWrites {
		// Chain order is commit order; ids were taken before commit.
		slices.Sort(objects)
		slices.Sort(want)
	}
	if fmt.Sprint(objects) != fmt.Sprint(want) {
		t.Errorf("query.submit entries in chain order %v, want the queries in id order %v", objects, want)
	}
	f.MustVerify()
}

// approveAll approves ids concurrently, spreading them over services, and
// counts approvals and budget refusals.
func approveAll(t *testing.T, svcs []*broker.Service, f *Fixture, ids []int64) (approved, refused int) {
	t.Helper()
	var ok, budget atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, len(ids))
	for i, id := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx := f.Reviewer
			if i%2 == 1 {
				ctx = f.Reviewer2
			}
			_, err := svcs[i%len(svcs)].ApproveQuery(ctx, id, "")
			switch broker.ErrorCode(err) {
			case "":
				ok.Add(1)
			case broker.EBUDGET:
				budget.Add(1)
			default:
				errs <- fmt.Errorf("approve %d: %w", id, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	return int(ok.Load()), int(budget.Load())
}

func testLeases(t *testing.T, f *Fixture) {
	svc := f.Service
	q := f.MustSubmit(f.Researcher, DefaultSQL, 1)
	f.MustApprove(q.ID)
	f.MustSite("site-b")
	if l, err := svc.LeaseJob(AgentOf("agent2", "site-b"), "site-b", ""); err != nil || l != nil {
		t.Fatalf("lease for a site without the dataset = %+v, %v", l, err)
	}
	first := f.MustLease(q.ID)
	if first.Attempt != 1 || first.SQL != q.SQL || first.SQLHash != q.SQLHash || len(first.Token) != 64 {
		t.Fatalf("lease = %+v", first)
	}
	if !first.ExpiresAt.Equal(f.Clock.Now().Add(time.Minute)) {
		t.Fatalf("lease expires %v, want now+1m", first.ExpiresAt)
	}
	if l, _ := svc.LeaseJob(f.Agent, SiteID, ""); l != nil {
		t.Fatalf("a held lease was leased again: %+v", l)
	}
	f.Clock.Advance(50 * time.Second)
	hb, err := svc.HeartbeatJob(f.Agent, q.ID, first.Token)
	if err != nil || !hb.ExpiresAt.Equal(f.Clock.Now().Add(time.Minute)) {
		t.Fatalf("heartbeat = %+v, %v", hb, err)
	}
	f.Clock.Advance(50 * time.Second)
	if l, _ := svc.LeaseJob(f.Agent, SiteID, ""); l != nil {
		t.Fatalf("heartbeat did not extend the lease: %+v", l)
	}
	f.Clock.Advance(11 * time.Second) // expired
	second := f.MustLease(q.ID)
	if second.Attempt != 2 || second.Token == first.Token {
		t.Fatalf("re-lease = %+v", second)
	}
	if b := f.MustBudget(); !near(b.EpsilonSpent, 1) || !near(b.EpsilonReserved, 0) {
		t.Fatalf("budget after re-lease = %+v, want charged once", b)
	}
	// The first agent comes back late.
	err = svc.CompleteJob(f.Agent, q.ID, first.Token, f.Result(1))
	MustCode(t, err, broker.ECONFLICT)
	if !errors.Is(err, broker.ErrLeaseExpired) {
		t.Errorf("late completion error %v is not ErrLeaseExpired", err)
	}
	_, err = svc.HeartbeatJob(f.Agent, q.ID, first.Token)
	MustCode(t, err, broker.ECONFLICT)
	MustCode(t, svc.FailJob(f.Agent, q.ID, first.Token, "sandbox_error", ""), broker.ECONFLICT)
	// Over-budget results are refused.
	MustCode(t, svc.CompleteJob(f.Agent, q.ID, second.Token, f.Result(1.5)), broker.EINVALID)
	if err := svc.CompleteJob(f.Agent, q.ID, second.Token, f.Result(1)); err != nil {
		t.Fatalf("complete: %v", err)
	}
	if err := svc.CompleteJob(f.Agent, q.ID, second.Token, f.Result(1)); err != nil {
		t.Fatalf("duplicate completion: %v", err)
	}
	MustCode(t, svc.CompleteJob(f.Agent, q.ID, first.Token, f.Result(1)), broker.ECONFLICT)
	_, err = svc.HeartbeatJob(f.Agent, q.ID, second.Token)
	MustCode(t, err, broker.ECONFLICT)
	got := f.MustQuery(q.ID)
	if got.Status != broker.StatusAwaitingOutputCheck || got.Attempts != 2 {
		t.Fatalf("query after completion = %s, %d attempts", got.Status, got.Attempts)
	}
	if n := auditCount(t, f, "job.complete"); n != 1 {
		t.Errorf("job.complete audited %d times, want 1", n)
	}

	// A retryable failure (the child crashed) is leasable again until
	// MaxAttempts; the last one's failure notice goes to the output check.
	r := f.MustSubmit(f.Researcher, DefaultSQL, 1)
	f.MustApprove(r.ID)
	for i := 1; i <= broker.DefaultMaxAttempts; i++ {
		l := f.MustLease(r.ID)
		if l.Attempt != i {
			t.Fatalf("attempt %d leased as %d", i, l.Attempt)
		}
		if err := svc.FailJob(f.Agent, r.ID, l.Token, "crashed", "the sandbox exited"); err != nil {
			t.Fatalf("fail attempt %d: %v", i, err)
		}
	}
	got = f.MustQuery(r.ID)
	if got.Status != broker.StatusAwaitingOutputCheck || got.FailureCode != "crashed" || got.FailureDetail != "the sandbox exited" {
		t.Fatalf("after %d failures: %s %q %q", broker.DefaultMaxAttempts, got.Status, got.FailureCode, got.FailureDetail)
	}
	if l, _ := svc.LeaseJob(f.Agent, SiteID, ""); l != nil {
		t.Fatalf("failed job leased: %+v", l)
	}
	if b := f.MustBudget(); !near(b.EpsilonSpent, 2) {
		t.Fatalf("spent %g after a failed run, want 2 (charged once each)", b.EpsilonSpent)
	}
	MustCode(t, svc.FailJob(f.Agent, r.ID, "x", "bad code!", ""), broker.EINVALID)
}

// testFailureNotices: a run that fails at the site is an output. Codes that
// would only fail again end the run at once; the output checker sees the
// notice in the queue and the output; releasing it makes the query failed,
// withholding it withheld. The budget stays spent.
func testFailureNotices(t *testing.T, f *Fixture) {
	svc := f.Service
	codes := []string{"refused", "invalid", "timeout", "memory", "too_large", "unavailable", "something_new"}
	var ids []int64
	for _, code := range codes {
		q := f.MustSubmit(f.Researcher, DefaultSQL, 0.5)
		f.MustApprove(q.ID)
		l := f.MustLease(q.ID)
		if err := svc.FailJob(f.Agent, q.ID, l.Token, code, "safe detail of "+code); err != nil {
			t.Fatalf("fail %s: %v", code, err)
		}
		got := f.MustQuery(q.ID)
		if got.Status != broker.StatusAwaitingOutputCheck || got.Attempts != 1 || got.FailureCode != code {
			t.Fatalf("%s: query is %s after %d attempts with code %q, want awaiting_output_check after 1 with %q",
				code, got.Status, got.Attempts, got.FailureCode, code)
		}
		last := got.History[len(got.History)-1]
		if last.From != broker.StatusRunning || last.To != broker.StatusAwaitingOutputCheck || last.Actor != "agent1" {
			t.Errorf("%s: last event %+v", code, last)
		}
		out, err := svc.FindOutput(f.Checker, q.ID)
		if err != nil {
			t.Fatalf("%s: checker output: %v", code, err)
		}
		want := &broker.Output{QueryID: q.ID, Failure: &broker.Failure{Code: code, Detail: "safe detail of " + code},
			SiteID: SiteID, CreatedAt: f.Clock.Now()}
		if diff := cmp.Diff(want, out); diff != "" {
			t.Errorf("%s: failure notice (-want +got):\n%s", code, diff)
		}
		ids = append(ids, q.ID)
	}
	queue, err := svc.OutputQueue(f.Checker)
	if err != nil || len(queue) != len(codes) {
		t.Fatalf("output queue = %d items, %v", len(queue), err)
	}
	for i, q := range queue {
		if q.FailureCode != codes[i] || q.FailureDetail != "safe detail of "+codes[i] {
			t.Errorf("queue item %d: failure %q %q", i, q.FailureCode, q.FailureDetail)
		}
	}
	// Separation of duties holds for failure notices too.
	_, err = svc.ReleaseQuery(f.Reviewer, ids[0], "")
	MustCode(t, err, broker.EFORBIDDEN)

	f.Clock.Advance(time.Minute)
	rel, err := svc.ReleaseQuery(f.Checker, ids[0], "nothing to release")
	if err != nil {
		t.Fatalf("release failure notice: %v", err)
	}
	if rel.Status != broker.StatusFailed {
		t.Fatalf("released failure notice: status %s, want failed", rel.Status)
	}
	out, err := svc.FindOutput(f.Checker, ids[0])
	if err != nil || out.Failure == nil || out.ReleasedAt == nil || !out.ReleasedAt.Equal(f.Clock.Now()) {
		t.Fatalf("released failure notice output = %+v, %v", out, err)
	}
	_, err = svc.DownloadResult(f.Researcher, ids[0])
	MustCode(t, err, broker.EFORBIDDEN)
	if _, err := svc.ReleaseQuery(f.Checker, ids[0], ""); broker.ErrorCode(err) != broker.ECONFLICT {
		t.Errorf("second release of a failure notice: %v", err)
	}
	wh, err := svc.WithholdQuery(f.Checker, ids[1], "the failure itself is disclosive")
	if err != nil || wh.Status != broker.StatusWithheld {
		t.Fatalf("withhold failure notice = %+v, %v", wh, err)
	}
	if b := f.MustBudget(); !near(b.EpsilonSpent, 0.5*float64(len(codes))) {
		t.Errorf("spent %g after %d failed runs, want each charged", b.EpsilonSpent, len(codes))
	}
	f.MustVerify()
}

func testLeaseExpiryExhaustsAttempts(t *testing.T, f *Fixture) {
	q := f.MustSubmit(f.Researcher, DefaultSQL, 1)
	f.MustApprove(q.ID)
	for range broker.DefaultMaxAttempts {
		f.MustLease(q.ID)
		f.Clock.Advance(2 * time.Minute)
	}
	if l, err := f.Service.LeaseJob(f.Agent, SiteID, ""); err != nil || l != nil {
		t.Fatalf("lease after the last attempt expired = %+v, %v", l, err)
	}
	got := f.MustQuery(q.ID)
	if got.Status != broker.StatusAwaitingOutputCheck || got.FailureCode != broker.FailureLeaseExpired {
		t.Fatalf("query = %s %q, want awaiting_output_check with a lease_expired notice", got.Status, got.FailureCode)
	}
	out, err := f.Service.FindOutput(f.Checker, q.ID)
	if err != nil || out.Failure == nil || out.Failure.Code != broker.FailureLeaseExpired || out.Result != nil {
		t.Fatalf("output = %+v, %v", out, err)
	}
	if got, err := f.Service.ReleaseQuery(f.Checker, q.ID, ""); err != nil || got.Status != broker.StatusFailed {
		t.Fatalf("release = %+v, %v", got, err)
	}
}

// testLeaseExpiryObserved: the transitions a lapsed lease causes — the job
// leased again, and the end of its last attempt — say so (the metrics count
// expired leases from them); a re-lease after a failure the site reported
// does not.
func testLeaseExpiryObserved(t *testing.T, fresh func(*testing.T, broker.Options) *Fixture) {
	var mu sync.Mutex
	var seen []broker.Transition
	f := fresh(t, broker.Options{LeaseTTL: time.Minute, OnTransition: func(tr broker.Transition) {
		mu.Lock()
		defer mu.Unlock()
		seen = append(seen, tr)
	}})
	q := f.MustSubmit(f.Researcher, DefaultSQL, 1)
	f.MustApprove(q.ID)
	l := f.MustLease(q.ID)
	if err := f.Service.FailJob(f.Agent, q.ID, l.Token, "crashed", "the sandbox crashed"); err != nil {
		t.Fatalf("retryable failure: %v", err)
	}
	f.MustLease(q.ID) // attempt 2, after a reported failure
	f.Clock.Advance(2 * time.Minute)
	f.MustLease(q.ID) // attempt 3, after a lapsed lease
	f.Clock.Advance(2 * time.Minute)
	if l, err := f.Service.LeaseJob(f.Agent, SiteID, ""); err != nil || l != nil {
		t.Fatalf("lease after the last attempt expired = %+v, %v", l, err)
	}
	type step struct {
		From, To     broker.Status
		LeaseExpired bool
	}
	var got []step
	mu.Lock()
	for _, tr := range seen {
		if tr.From == broker.StatusRunning || tr.To == broker.StatusRunning {
			got = append(got, step{tr.From, tr.To, tr.LeaseExpired})
		}
	}
	mu.Unlock()
	want := []step{
		{broker.StatusApproved, broker.StatusRunning, false},
		{broker.StatusRunning, broker.StatusRunning, false}, // the reported failure
		{broker.StatusRunning, broker.StatusRunning, false}, // leased again after it
		{broker.StatusRunning, broker.StatusRunning, true},  // leased again after a lapse
		{broker.StatusRunning, broker.StatusAwaitingOutputCheck, true},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("transitions of running jobs (-want +got):\n%s", diff)
	}
}

// testAuditTampering alters, removes and swaps one row and expects verify
// to name it.
func testAuditTampering(t *testing.T, fresh func(*testing.T, broker.Options) *Fixture) {
	tests := []struct {
		name   string
		tamper func(ctx context.Context, s Store) error
		bad    int64
	}{
		{"update detail", func(ctx context.Context, s Store) error {
			return s.Exec(ctx, `UPDATE audit_log SET detail = ? WHERE seq = 4`, `from="submitted" to="approved"`)
		}, 4},
		{"update actor", func(ctx context.Context, s Store) error {
			return s.Exec(ctx, `UPDATE audit_log SET actor = ? WHERE seq = 5`, "someone-else")
		}, 5},
		{"delete row", func(ctx context.Context, s Store) error {
			return s.Exec(ctx, `DELETE FROM audit_log WHERE seq = 3`)
		}, 3},
		{"swap rows", func(ctx context.Context, s Store) error {
			// Move row 4's contents to seq 3 and row 3's to seq 4.
			if err := s.Exec(ctx, `UPDATE audit_log SET seq = -3 WHERE seq = 3`); err != nil {
				return err
			}
			if err := s.Exec(ctx, `UPDATE audit_log SET seq = 3 WHERE seq = 4`); err != nil {
				return err
			}
			return s.Exec(ctx, `UPDATE audit_log SET seq = 4 WHERE seq = -3`)
		}, 3},
		{"rewrite hash too", func(ctx context.Context, s Store) error {
			// Recomputing one entry's hash after editing it still breaks
			// the next link.
			return s.Exec(ctx, `UPDATE audit_log SET hash = ? WHERE seq = 4`, strings.Repeat("a", 64))
		}, 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := fresh(t, broker.Options{})
			q := f.MustSubmit(f.Researcher, DefaultSQL, 1)
			f.MustApprove(q.ID)
			f.MustLease(q.ID)
			v := f.MustVerify()
			if v.Entries < 5 {
				t.Fatalf("only %d entries", v.Entries)
			}
			if err := tt.tamper(context.Background(), f.Store); err != nil {
				t.Fatalf("tamper: %v", err)
			}
			got, err := f.Service.VerifyAudit(f.Admin)
			if err != nil {
				t.Fatal(err)
			}
			if got.OK || got.FirstBadSeq != tt.bad {
				t.Fatalf("verify = %+v, want first bad entry %d", got, tt.bad)
			}
		})
	}
}

// testAuditTruncation cuts entries from the end of the chain, which leaves
// a valid chain, and expects verification against a head published before
// the cut (the register's) to fail; a chain that only grew verifies.
func testAuditTruncation(t *testing.T, f *Fixture) {
	ctx := context.Background()
	q := f.MustSubmit(f.Researcher, DefaultSQL, 1)
	f.MustApprove(q.ID)
	published, err := f.Service.AuditHead(ctx)
	if err != nil {
		t.Fatal(err)
	}
	v := f.MustVerify()
	if published.Entries != v.Entries || published.Hash != v.Head || published.Entries < 4 {
		t.Fatalf("published head %+v, verification %+v", published, v)
	}
	f.MustLease(q.ID) // the chain grows past the published head
	for _, expect := range []*broker.AuditHead{published, {Hash: published.Hash}, {Entries: published.Entries}} {
		if got, err := broker.VerifyChain(ctx, f.Store, expect); err != nil || !got.OK {
			t.Fatalf("verify a grown chain against %+v = %+v, %v", expect, got, err)
		}
	}
	cut := published.Entries - 1
	if err := f.Store.Exec(ctx, `DELETE FROM audit_log WHERE seq >= ?`, cut); err != nil {
		t.Fatal(err)
	}
	if got, err := broker.VerifyChain(ctx, f.Store, nil); err != nil || !got.OK {
		t.Fatalf("a truncated chain alone = %+v, %v; want intact (only a published head shows the cut)", got, err)
	}
	for _, expect := range []*broker.AuditHead{published, {Hash: published.Hash}, {Entries: published.Entries}} {
		got, err := broker.VerifyChain(ctx, f.Store, expect)
		if err != nil {
			t.Fatal(err)
		}
		if got.OK || !strings.Contains(got.Reason, "removed") {
			t.Errorf("verify a truncated chain against %+v = %+v, want the cut reported", expect, got)
		}
	}
	// New entries appended after the cut make the chain as long again, but
	// the published head is gone.
	f.MustSubmit(f.Researcher, DefaultSQL, 1)
	f.MustSubmit(f.Researcher, DefaultSQL, 1)
	got, err := broker.VerifyChain(ctx, f.Store, published)
	if err != nil {
		t.Fatal(err)
	}
	if got.OK || got.FirstBadSeq != published.Entries {
		t.Errorf("verify a chain rewritten after the cut = %+v, want entry %d reported", got, published.Entries)
	}
}

// testAuthFailureAggregation floods the service with failed
// authentications from one source and a few from another: each source gets
// one auth.failure entry per window, with the count, not one per request.
func testAuthFailureAggregation(t *testing.T, f *Fixture) {
	ctx := context.Background()
	svc := f.Service
	entries := func() []*broker.AuditEntry {
		t.Helper()
		action := "auth.failure"
		es, _, err := svc.FindAuditEntries(f.Admin, broker.AuditFilter{Action: &action, Limit: broker.MaxLimit})
		if err != nil {
			t.Fatal(err)
		}
		return es
	}
	start := len(entries())
	for i := range 1000 {
		svc.RecordAuthFailure(ctx, broker.AuthFailure{Source: "203.0.113.7", Action: "GET /api/v1/projects", Reason: []string{"malformed token", "invalid token signature or algorithm"}[i%2]})
	}
	for range 3 {
		svc.RecordAuthFailure(ctx, broker.AuthFailure{Source: "198.51.100.2", Subject: "res1", Action: "GET /api/v1/audit", Reason: "missing role"})
	}
	if n := len(entries()) - start; n != 0 {
		t.Fatalf("%d entries while the windows are open, want 0", n)
	}
	f.Clock.Advance(time.Minute)
	// The flood's source fails again: its first window is written.
	svc.RecordAuthFailure(ctx, broker.AuthFailure{Source: "203.0.113.7", Action: "GET /api/v1/projects", Reason: "malformed token"})
	svc.FlushAuthFailures(ctx, false) // the quiet source's window ended too
	es := entries()[start:]
	if len(es) != 2 {
		t.Fatalf("%d entries after the windows ended, want 2: %+v", len(es), es)
	}
	byObject := map[string]*broker.AuditEntry{}
	for _, e := range es {
		byObject[e.Object] = e
	}
	flood, quiet := byObject["source/203.0.113.7"], byObject["source/198.51.100.2"]
	if flood == nil || !strings.Contains(flood.Detail, `count="1000"`) || flood.Actor != "anonymous" ||
		!strings.Contains(flood.Detail, "malformed token") || !strings.Contains(flood.Detail, "invalid token signature") {
		t.Errorf("the flood's entry = %+v", flood)
	}
	if quiet == nil || !strings.Contains(quiet.Detail, `count="3"`) || quiet.Actor != "res1" {
		t.Errorf("the quiet source's entry = %+v", quiet)
	}
	svc.FlushAuthFailures(ctx, true) // shutdown: the open window too
	if es := entries()[start:]; len(es) != 3 || !strings.Contains(es[2].Detail, `count="1"`) {
		t.Errorf("after the final flush: %d entries, last %+v", len(es), es[len(es)-1])
	}
	f.MustVerify()
}

func testRiskFlags(t *testing.T, f *Fixture) {
	const (
		base   = "SELECT sex, count(*) FROM patients WHERE region = 'London' GROUP BY sex"
		repeat = "select sex,   COUNT(*) from patients where region = 'London' group by sex"
		added  = "SELECT sex, count(*) FROM patients WHERE region = 'London' AND imd_quintile = 1 GROUP BY sex"
		shape  = "SELECT region, count(*) FROM patients GROUP BY region"
		narrow = "SELECT sex, count(*) FROM patients WHERE region = 'London' AND imd_quintile = 1 AND ethnicity = 'Mixed' AND date_of_birth = DATE '1950-01-01' GROUP BY sex"
	)
	first := f.MustSubmit(f.Researcher, base, 0.5)
	if len(first.RiskFlags) != 0 {
		t.Fatalf("first query flagged: %+v", first.RiskFlags)
	}
	kinds := func(q *broker.Query) []string {
		var out []string
		for _, r := range q.RiskFlags {
			out = append(out, r.Kind)
		}
		return out
	}
	rep := f.MustSubmit(f.Researcher2, repeat, 0.5)
	if diff := cmp.Diff([]string{broker.RiskRepeat}, kinds(rep)); diff != "" {
		t.Fatalf("repeat flags (-want +got):\n%s", diff)
	}
	if rep.RiskFlags[0].SimilarQueryID != first.ID || rep.RiskFlags[0].SimilarSQL != base {
		t.Errorf("repeat points at %d %q, want %d", rep.RiskFlags[0].SimilarQueryID, rep.RiskFlags[0].SimilarSQL, first.ID)
	}
	diff := f.MustSubmit(f.Researcher, added, 0.5)
	if got := kinds(diff); len(got) == 0 || got[0] != broker.RiskDifferencing {
		t.Fatalf("added predicate flags = %v, want differencing", got)
	}
	if id := diff.RiskFlags[0].SimilarQueryID; id != first.ID && id != rep.ID {
		t.Errorf("differencing points at %d, want %d or %d", id, first.ID, rep.ID)
	}
	if got := f.MustSubmit(f.Researcher, shape, 0.5); len(got.RiskFlags) != 0 {
		t.Errorf("different shape flagged: %+v", got.RiskFlags)
	}
	n := f.MustSubmit(f.Researcher, narrow, 0.5)
	found := false
	for _, k := range kinds(n) {
		found = found || k == broker.RiskNarrowPopulation
	}
	if !found {
		t.Errorf("narrow query flags = %v, want narrow_population", kinds(n))
	}
	// Reviewers see the flags in their queue.
	queue, err := f.Service.ReviewQueue(f.Reviewer)
	if err != nil || len(queue) != 5 || len(queue[1].RiskFlags) != 1 {
		t.Fatalf("review queue = %d queries, %v", len(queue), err)
	}
}

// differencing returns q's differencing flag, or nil.
// testRiskFlagsNotDodged submits a query, releases its answer, and then
// rewrites of it that ask the same question: renamed outputs, another
// layout, conjuncts swapped, literals written otherwise, a table alias.
// Each is flagged as a repeat of the released query, and one condition
// more, however written, as differencing; the flags say the earlier answer
// was released (to staff, as it is now; not to researchers, whose view of
// statuses is coarse).
func testRiskFlagsNotDodged(t *testing.T, f *Fixture) {
	const base = "SELECT sex, count(*) AS n FROM patients WHERE region = 'London' AND imd_quintile = 2 GROUP BY sex"
	released := f.SubmitAs(t, f.Researcher, base, broker.StatusReleased)
	flag := func(q *broker.Query, kind string) *broker.RiskFlag {
		for i := range q.RiskFlags {
			if q.RiskFlags[i].Kind == kind {
				return &q.RiskFlags[i]
			}
		}
		return nil
	}
	repeats := []struct{ name, sql string }{
		{"renamed output", "SELECT sex, count(*) AS n_again FROM patients WHERE region = 'London' AND imd_quintile = 2 GROUP BY sex"},
		{"layout and case", "select SEX ,count( * ) as N\nfrom PATIENTS\nwhere REGION='London'   and IMD_QUINTILE=2\ngroup by 1"},
		{"conjuncts swapped", "SELECT sex, count(*) AS n FROM patients WHERE imd_quintile = 2 AND region = 'London' GROUP BY sex"},
		{"literal written otherwise", "SELECT sex, count(*) AS n FROM patients WHERE region = 'London' AND imd_quintile = 2.0 GROUP BY sex"},
		{"literal as a string", "SELECT sex, count(*) AS n FROM patients WHERE region = 'London' AND imd_quintile = '2' GROUP BY sex"},
		{"table alias", "SELECT p.sex, count(*) AS total FROM patients p WHERE p.region = 'London' AND p.imd_quintile = 2 GROUP BY p.sex"},
	}
	for _, tt := range repeats {
		t.Run(tt.name, func(t *testing.T) {
			q := f.MustSubmit(f.Researcher2, tt.sql, 0.5)
			q, err := f.Service.FindQueryByID(f.Reviewer, q.ID)
			if err != nil {
				t.Fatal(err)
			}
			r := flag(q, broker.RiskRepeat)
			if r == nil || r.SimilarQueryID != released.ID || !r.SimilarReleased || r.SimilarStatus != broker.StatusReleased {
				t.Fatalf("flags %+v, want a repeat of released query %d", q.RiskFlags, released.ID)
			}
			if flag(q, broker.RiskDifferencing) != nil {
				t.Errorf("a repeat flagged as differencing: %+v", q.RiskFlags)
			}
		})
	}
	t.Run("one condition more, renamed", func(t *testing.T) {
		q := f.MustSubmit(f.Researcher2, "SELECT p.sex, count(*) AS n_fewer FROM patients p WHERE p.imd_quintile = 2.0 AND p.region = 'London' AND p.ethnicity = 'Mixed' GROUP BY 1", 0.5)
		if d := flag(q, broker.RiskDifferencing); d == nil || !strings.Contains(d.Message, "ethnicity") {
			t.Fatalf("flags %+v, want differencing naming the added condition", q.RiskFlags)
		}
	})

	// Researchers see the flags without the earlier query's status; staff
	// see its status now, not when the flag was raised.
	pending := f.MustSubmit(f.Researcher, "SELECT region, count(*) AS n FROM patients GROUP BY region", 0.5)
	twin := f.MustSubmit(f.Researcher2, "SELECT region, count(*) AS m FROM patients GROUP BY region", 0.5)
	if r := flag(twin, broker.RiskRepeat); r == nil || r.SimilarQueryID != pending.ID || r.SimilarReleased || r.SimilarStatus != "" {
		t.Fatalf("the submitter sees the twin's flags as %+v, want a repeat of query %d without its status", twin.RiskFlags, pending.ID)
	}
	if q, err := f.Service.FindQueryByID(f.Reviewer, twin.ID); err != nil {
		t.Fatal(err)
	} else if r := flag(q, broker.RiskRepeat); r == nil || r.SimilarReleased || r.SimilarStatus != broker.StatusSubmitted {
		t.Fatalf("a reviewer sees the twin's flags as %+v, want the earlier query submitted", q.RiskFlags)
	}
	f.Drive(t, pending.ID, f.Reviewer, broker.StatusReleased)
	asResearcher, err := f.Service.FindQueryByID(f.Researcher2, twin.ID)
	if err != nil {
		t.Fatal(err)
	}
	if r := flag(asResearcher, broker.RiskRepeat); r == nil || r.SimilarStatus != "" || r.SimilarReleased {
		t.Errorf("a researcher sees the flag as %+v, want no status", r)
	}
	asReviewer, err := f.Service.FindQueryByID(f.Reviewer, twin.ID)
	if err != nil {
		t.Fatal(err)
	}
	if r := flag(asReviewer, broker.RiskRepeat); r == nil || !r.SimilarReleased {
		t.Errorf("a reviewer sees the flag as %+v, want the earlier query released now", r)
	}
	queue, err := f.Service.ReviewQueue(f.Reviewer)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range queue {
		if q.ID == twin.ID {
			if r := flag(q, broker.RiskRepeat); r == nil || !r.SimilarReleased {
				t.Errorf("the review queue shows the flag as %+v, want the earlier query released now", r)
			}
		}
	}
}

func differencing(q *broker.Query) *broker.RiskFlag {
	for i := range q.RiskFlags {
		if q.RiskFlags[i].Kind == broker.RiskDifferencing {
			return &q.RiskFlags[i]
		}
	}
	return nil
}

// mustDiffer checks q carries a differencing flag against want whose message
// says how it differs.
func mustDiffer(t *testing.T, q *broker.Query, want *broker.Query, how string) {
	t.Helper()
	d := differencing(q)
	switch {
	case d == nil:
		t.Errorf("query %q has no differencing flag (flags %+v), want one against query %d", q.SQL, q.RiskFlags, want.ID)
	case d.SimilarQueryID != want.ID || d.SimilarSQL != want.SQL:
		t.Errorf("query %q: differencing points at %d %q, want %d %q", q.SQL, d.SimilarQueryID, d.SimilarSQL, want.ID, want.SQL)
	case !strings.Contains(d.Message, how):
		t.Errorf("query %q: differencing message %q does not say %q", q.SQL, d.Message, how)
	}
}

// testDifferencingFlags covers the differencing flag's cases: an added,
// removed and changed predicate; the most recent match wins; two changes,
// another shape or the same predicates are not flagged; and a match far back
// in a long-lived project is still found.
func testDifferencingFlags(t *testing.T, f *Fixture) {
	const sel = "SELECT sex, count(*) FROM patients WHERE "
	two := f.MustSubmit(f.Researcher, sel+"region = 'London' AND imd_quintile = 1 GROUP BY sex", 0.1)
	if len(two.RiskFlags) != 0 {
		t.Fatalf("first query flagged: %+v", two.RiskFlags)
	}
	removed := f.MustSubmit(f.Researcher, sel+"region = 'London' GROUP BY sex", 0.1)
	mustDiffer(t, removed, two, "removes the condition")
	// Both earlier queries differ from this one by one predicate (a change
	// from two, an addition to removed): the most recent is named.
	changed := f.MustSubmit(f.Researcher, sel+"imd_quintile = 2 AND region = 'London' GROUP BY sex", 0.1)
	mustDiffer(t, changed, removed, "adds the condition")
	// Two changed predicates are not a one-predicate difference from any.
	if d := differencing(f.MustSubmit(f.Researcher, sel+"region = 'North East' AND imd_quintile = 3 GROUP BY sex", 0.1)); d != nil {
		t.Errorf("two changed predicates flagged: %+v", d)
	}
	// The same predicates in another order are a repeat, not a difference.
	again := f.MustSubmit(f.Researcher2, sel+"imd_quintile = 1 AND region = 'London' GROUP BY sex", 0.1)
	if d := differencing(again); d != nil && d.SimilarQueryID == two.ID {
		t.Errorf("the same predicate set flagged as differencing against itself: %+v", d)
	}
	// The resubmission is now that set's most recent query.
	mustDiffer(t, f.MustSubmit(f.Researcher, sel+"imd_quintile = 1 GROUP BY sex", 0.1), again, "removes the condition")
	// Another shape (grouped by region) with one predicate more is not
	// flagged.
	if d := differencing(f.MustSubmit(f.Researcher, "SELECT region, count(*) FROM patients WHERE imd_quintile = 4 AND ethnicity = 'Asian' GROUP BY region", 0.1)); d != nil {
		t.Errorf("a query of another shape flagged: %+v", d)
	}

	// Queries with more predicates than one lookup statement takes keys.
	var many []string
	for i := 1; i <= 8; i++ {
		many = append(many, fmt.Sprintf("date_of_birth <> DATE '1950-01-0%d'", i))
	}
	eight := f.MustSubmit(f.Researcher, sel+strings.Join(many, " AND ")+" GROUP BY sex", 0.1)
	nine := f.MustSubmit(f.Researcher, sel+strings.Join(append(many, "sex <> 'unknown'"), " AND ")+" GROUP BY sex", 0.1)
	mustDiffer(t, nine, eight, "adds the condition")
	many[0] = "date_of_birth <> DATE '1950-02-01'"
	mustDiffer(t, f.MustSubmit(f.Researcher, sel+strings.Join(append(many, "sex <> 'unknown'"), " AND ")+" GROUP BY sex", 0.1), nine, "changes the condition")

	// A long-lived project: the match lies behind many same-shape queries
	// with other predicates, and is still found.
	old := f.MustSubmit(f.Researcher, sel+"ethnicity = 'Black' AND imd_quintile = 5 GROUP BY sex", 0.1)
	for i := range 210 {
		f.MustSubmit(f.Researcher, fmt.Sprintf("%sdate_of_birth >= DATE '1950-01-01' AND date_of_birth < DATE '%d-01-01' GROUP BY sex", sel, 1960+i), 0.1)
	}
	mustDiffer(t, f.MustSubmit(f.Researcher, sel+"ethnicity = 'Black' GROUP BY sex", 0.1), old, "removes the condition")
}

// countingCompiler counts compilations and runs during, when set, while
// it compiles.
type countingCompiler struct {
	broker.Compiler
	n      atomic.Int64
	during func()
}

func (c *countingCompiler) Compile(ctx context.Context, cat *queries.Catalog, sql string, opts queries.Options) (*queries.Plan, error) {
	c.n.Add(1)
	if c.during != nil {
		c.during()
	}
	return c.Compiler.Compile(ctx, cat, sql, opts)
}

// testPlanCache checks the service compiles a text once per catalog content
// and epsilon, never caches refusals, and hands out plans no caller can
// change for the next.
func testPlanCache(t *testing.T, cfg Config) {
	cc := &countingCompiler{Compiler: MustParser(t)}
	c := cfg
	c.Compiler = cc
	f := NewFixture(t, c, cfg.Open(t), broker.Options{})
	want := int64(0)
	check := func(what string, compiled bool) {
		t.Helper()
		if compiled {
			want++
		}
		if got := cc.n.Load(); got != want {
			t.Fatalf("%s: %d compilations, want %d", what, got, want)
		}
	}
	first := f.MustSubmit(f.Researcher, DefaultSQL, 0.1)
	check("first submission", true)
	first.Accuracy[0].Column = "tampered"
	again := f.MustSubmit(f.Researcher2, DefaultSQL, 0.1)
	check("same text and epsilon", false)
	if again.Accuracy[0].Column == "tampered" || again.Rewritten != first.Rewritten || again.Cost != first.Cost {
		t.Errorf("cached plan differs or was changed through an earlier result: %+v", again.Accuracy)
	}
	again.Accuracy[0].Column = "tampered"
	third := f.MustSubmit(f.Researcher2, DefaultSQL, 0.1)
	check("same text and epsilon again", false)
	if third.Accuracy[0].Column == "tampered" {
		t.Errorf("a cached plan was changed through an earlier result")
	}
	if _, err := f.Service.CheckQuery(f.Researcher, broker.QuerySubmission{ProjectID: f.Project.ID, SQL: DefaultSQL, Epsilon: 0.1}); err != nil {
		t.Fatal(err)
	}
	check("check of the same text", false)
	f.MustSubmit(f.Researcher, DefaultSQL, 0.2)
	check("another epsilon", true)
	for range 2 {
		_, err := f.Service.SubmitQuery(f.Researcher, broker.QuerySubmission{ProjectID: f.Project.ID, Purpose: "test", SQL: "SELECT patient_id FROM patients"})
		MustCode(t, err, broker.EREFUSED)
		check("refusal", true)
	}
	// A changed catalog is compiled against afresh.
	cat := Catalog(t)
	cat.Policy.SmallCellThreshold++
	if err := f.Service.PublishCatalog(f.Agent, SiteID, "", cat); err != nil {
		t.Fatal(err)
	}
	f.MustSubmit(f.Researcher, DefaultSQL, 0.1)
	check("after the catalog changed", true)

	// The catalog changes while a query compiles: the plan is compiled again
	// against the catalog the storing transaction sees.
	republish := func() {
		cat.Policy.SmallCellThreshold++
		if err := f.Service.PublishCatalog(f.Agent, SiteID, "", cat); err != nil {
			t.Error(err)
		}
	}
	changes := 1
	cc.during = func() {
		if changes > 0 {
			changes--
			republish()
		}
	}
	q := f.MustSubmit(f.Researcher, DefaultSQL, 0.3)
	want++ // compiled for the catalog it started with, then for the new one
	check("catalog changed during the first compilation", true)
	got, err := f.Service.CheckQuery(f.Researcher, broker.QuerySubmission{ProjectID: f.Project.ID, SQL: DefaultSQL, Epsilon: 0.3})
	if err != nil {
		t.Fatal(err)
	}
	check("check against the current catalog", false)
	if got.Spec.Threshold != cat.Policy.SmallCellThreshold || got.Rewritten != q.Rewritten {
		t.Errorf("the submission's plan (threshold %d) is not the current catalog's (%d)", got.Spec.Threshold, cat.Policy.SmallCellThreshold)
	}
	// A catalog that changes during every compilation ends in a retryable
	// error, not a loop.
	cc.during = republish
	_, err = f.Service.SubmitQuery(f.Researcher, broker.QuerySubmission{ProjectID: f.Project.ID, Purpose: "test", SQL: DefaultSQL, Epsilon: 0.4})
	MustCode(t, err, broker.EUNAVAILABLE)
}

// testPredicateSetBackfill checks migration 2 on a database written before
// it: the predicate sets of existing queries are backfilled, so a new query
// is flagged against an old one.
func testPredicateSetBackfill(t *testing.T, cfg Config) {
	ctx := context.Background()
	store := cfg.Open(t)
	f := NewFixture(t, cfg, store, broker.Options{})
	const sel = "SELECT sex, count(*) FROM patients WHERE "
	f.MustSubmit(f.Researcher, sel+"region = 'London' AND imd_quintile = 1 GROUP BY sex", 0.1)
	latest := f.MustSubmit(f.Researcher, sel+"imd_quintile = 1 AND region = 'London' GROUP BY sex", 0.1)
	other := f.MustSubmit(f.Researcher, sel+"ethnicity = 'Asian' AND imd_quintile = 4 GROUP BY sex", 0.1)
	// Back to the schema before migration 2.
	for _, stmt := range []string{
		`DROP TABLE predicate_set_keys`,
		`DROP TABLE predicate_sets`,
		`DROP INDEX queries_ledger_cost`,
		`DELETE FROM schema_migrations WHERE version = 2`,
	} {
		if err := store.Exec(ctx, stmt); err != nil {
			t.Fatalf("%s: %v", stmt, err)
		}
	}
	f2 := NewFixture(t, cfg, cfg.Reopen(t, store), broker.Options{})
	// NewFixture made a new project; submit to the old one.
	q := f2.MustSubmitTo(f2.Researcher, f.Project.ID, sel+"region = 'London' GROUP BY sex", 0.1)
	mustDiffer(t, q, latest, "removes the condition")
	q = f2.MustSubmitTo(f2.Researcher, f.Project.ID, sel+"ethnicity = 'Asian' AND imd_quintile = 4 AND sex = 'male' GROUP BY sex", 0.1)
	mustDiffer(t, q, other, "adds the condition")
	if v := f2.MustVerify(); !v.OK {
		t.Errorf("audit chain after the migration: %+v", v)
	}
}

func testRegister(t *testing.T, f *Fixture) {
	a, tokA := f.QueryIn(broker.StatusReleased)
	_ = tokA
	f.QueryIn(broker.StatusWithheld)
	f.QueryIn(broker.StatusApproved)
	reg, err := f.Service.Register(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := []*broker.RegisterEntry{{
		ProjectID: f.Project.ID, Title: f.Project.Title, Organisation: f.Project.Organisation, Purpose: f.Project.Purpose,
		LawfulBasis: f.Project.LawfulBasis, StartsAt: f.Project.StartsAt, ExpiresAt: f.Project.ExpiresAt,
		Status: broker.ProjectActive, ReleasedQueries: 1, EpsilonSpent: 1,
	}}
	if diff := cmp.Diff(want, reg); diff != "" {
		t.Errorf("register (-want +got):\n%s", diff)
	}
	_ = a
}

// testTwoReplicas runs two services over two stores sharing one database,
// as two broker processes would: approvals never overspend and every job is
// leased exactly once.
func testTwoReplicas(t *testing.T, cfg Config) {
	s1, s2 := cfg.OpenPair(t)
	f := NewFixture(t, cfg, s1, broker.Options{})
	compiler := cfg.Compiler
	if compiler == nil {
		compiler = MustParser(t)
	}
	other := broker.NewService(s2, compiler, broker.Options{Now: f.Clock.Now})
	svcs := []*broker.Service{f.Service, other}

	const n, cost = 60, 0.25
	ids := make([]int64, n)
	for i := range ids {
		ids[i] = f.MustSubmit(f.Researcher, DefaultSQL, cost).ID
	}
	approved, refused := approveAll(t, svcs, f, ids)
	if approved != 40 || refused != 20 {
		t.Fatalf("approved %d, refused %d; want 40 and 20", approved, refused)
	}

	var mu sync.Mutex
	leased := map[int64]int{}
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			svc := svcs[w%2]
			for {
				l, err := svc.LeaseJob(f.Agent, SiteID, "")
				if err != nil {
					t.Errorf("lease: %v", err)
					return
				}
				if l == nil {
					return
				}
				mu.Lock()
				leased[l.QueryID]++
				mu.Unlock()
				if err := svc.CompleteJob(f.Agent, l.QueryID, l.Token, f.Result(cost)); err != nil {
					t.Errorf("complete %d: %v", l.QueryID, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if len(leased) != approved {
		t.Errorf("%d jobs leased, want %d", len(leased), approved)
	}
	for id, k := range leased {
		if k != 1 {
			t.Errorf("query %d leased %d times", id, k)
		}
	}
	if b := f.MustBudget(); !near(b.EpsilonSpent, ProjectEpsilon) || !near(b.EpsilonReserved, 0) {
		t.Errorf("budget = %+v, want all spent", b)
	}
	f.MustVerify()
}
