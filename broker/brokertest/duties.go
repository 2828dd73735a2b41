package brokertest

import (
	"context"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nhs-tre/tre/broker"
)

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
//
// It is long because most of it is the matrix itself, one row per case,
// which reads best whole.
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
