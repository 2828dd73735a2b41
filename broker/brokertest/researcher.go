package brokertest

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nhs-tre/tre/broker"
)

// at sets the clock to minute:second past the fixture's start hour.
func (f *Fixture) at(minute, second int) {
	f.TB.Helper()
	want := time.Date(2026, 3, 2, 9, minute, second, 0, time.UTC)
	d := want.Sub(f.Clock.Now())
	if d < 0 {
		f.TB.Fatalf("clock would go back from %s to %s", f.Clock.Now(), want)
	}
	f.Clock.Advance(d)
}

func hm(minute, second int) time.Time { return time.Date(2026, 3, 2, 9, minute, second, 0, time.UTC) }

// fastAndSlowRuns runs two approved queries from 9:01:05: ok completes a
// second later; bad crashes, is leased again at 9:01:30 and times out at
// 9:<lastMinute>:50 (or :59 in minute 1).
func (f *Fixture) fastAndSlowRuns(ok, bad int64, lastMinute int) {
	f.TB.Helper()
	svc := f.Service
	f.at(1, 5)
	tok, badTok := f.MustLease(ok).Token, f.MustLease(bad).Token
	f.at(1, 6)
	if err := svc.CompleteJob(f.Agent, ok, tok, f.Result(0.5)); err != nil {
		f.TB.Fatal(err)
	}
	if err := svc.FailJob(f.Agent, bad, badTok, "crashed", "the sandbox exited"); err != nil {
		f.TB.Fatal(err)
	}
	f.at(1, 30)
	badTok = f.MustLease(bad).Token
	if lastMinute == 1 {
		f.at(1, 59)
	} else {
		f.at(lastMinute, 50)
	}
	if err := svc.FailJob(f.Agent, bad, badTok, "timeout", "the query ran past its time limit"); err != nil {
		f.TB.Fatal(err)
	}
}

// researcherView returns query id as researcher res1 sees it, checking
// that nothing checker-only is in it.
func researcherView(t *testing.T, f *Fixture, id int64) *broker.Query {
	t.Helper()
	q, err := f.Service.FindQueryByID(f.Researcher, id)
	if err != nil {
		t.Fatalf("researcher reads query %d: %v", id, err)
	}
	js, _ := json.Marshal(q)
	for _, secret := range []string{"attempts", "failure_code", "failure_detail", "crashed", "timeout", "attempt ", "time limit", "agent1", "broker"} {
		if strings.Contains(string(js), secret) {
			t.Errorf("query %d as the researcher sees it contains %q: %s", id, secret, js)
		}
	}
	return q
}

// visibleStatus lists the ids of res1's queries in status st as res1 sees
// them, and checks the total.
func visibleStatus(t *testing.T, f *Fixture, st broker.Status) []int64 {
	t.Helper()
	qs, n, err := f.Service.FindQueries(f.Researcher, broker.QueryFilter{Status: &st})
	if err != nil {
		t.Fatal(err)
	}
	if n != len(qs) {
		t.Errorf("list of %s: total %d for %d items", st, n, len(qs))
	}
	var ids []int64
	for _, q := range qs {
		if q.Status != st {
			t.Errorf("list of %s has query %d in %s", st, q.ID, q.Status)
		}
		ids = append(ids, q.ID)
	}
	return ids
}

// testResearcherView: a researcher sees the lifecycle at the last minute
// boundary, with coarse times and without anything that depends on how the
// run went. Two queries run at the same minutes, one completing at once,
// the other crashing, retried and timing out, look the same to the
// researcher until an output checker decides.
//
// It is one story on one clock, read top to bottom: each phase (approval,
// runs, release, cancel) checks what the researcher sees at and between
// minute boundaries of the queries the phases before it made, so it stays
// one function.
func testResearcherView(t *testing.T, f *Fixture) {
	svc := f.Service
	f.at(0, 10)
	ok := f.MustSubmit(f.Researcher, DefaultSQL, 0.5)
	bad := f.MustSubmit(f.Researcher, DefaultSQL, 0.5)
	if !ok.SubmittedAt.Equal(hm(0, 10)) || !ok.UpdatedAt.Equal(hm(0, 10)) {
		t.Errorf("own submission dated %s / %s, want the exact time", ok.SubmittedAt, ok.UpdatedAt)
	}
	f.at(0, 20)
	f.MustApprove(ok.ID)
	f.MustApprove(bad.ID)
	if got := researcherView(t, f, ok.ID); got.Status != broker.StatusSubmitted || got.ApprovedBy != "" || len(got.History) != 1 {
		t.Fatalf("approval seen before the boundary: %+v", got)
	}
	if ids := visibleStatus(t, f, broker.StatusSubmitted); !cmp.Equal(ids, []int64{ok.ID, bad.ID}) {
		t.Errorf("submitted list = %v, want both", ids)
	}
	if ids := visibleStatus(t, f, broker.StatusApproved); len(ids) != 0 {
		t.Errorf("approved list = %v before the boundary", ids)
	}

	f.at(1, 0)
	if got := researcherView(t, f, ok.ID); got.Status != broker.StatusApproved || got.ApprovedBy != "rev1" || !got.UpdatedAt.Equal(hm(1, 0)) {
		t.Fatalf("at the boundary: %s by %q at %s", got.Status, got.ApprovedBy, got.UpdatedAt)
	}

	f.fastAndSlowRuns(ok.ID, bad.ID, 1)
	if got := f.MustQuery(bad.ID); got.Status != broker.StatusAwaitingOutputCheck || got.Attempts != 2 {
		t.Fatalf("staff see %s after %d attempts", got.Status, got.Attempts)
	}
	for _, id := range []int64{ok.ID, bad.ID} {
		if got := researcherView(t, f, id); got.Status != broker.StatusApproved {
			t.Errorf("query %d: researcher sees %s before the boundary", id, got.Status)
		}
	}
	if ids := visibleStatus(t, f, broker.StatusApproved); !cmp.Equal(ids, []int64{ok.ID, bad.ID}) {
		t.Errorf("approved list = %v, want both", ids)
	}
	if ids := visibleStatus(t, f, broker.StatusAwaitingOutputCheck); len(ids) != 0 {
		t.Errorf("awaiting list = %v before the boundary", ids)
	}
	// The budget: charged for staff, still reserved for the researcher and
	// the public until the runs' start is visible.
	if b := f.MustBudget(); !near(b.EpsilonSpent, 1) || !near(b.EpsilonReserved, 0) {
		t.Errorf("staff budget = %+v", b)
	}
	p, err := svc.FindProjectByID(f.Researcher, f.Project.ID)
	if err != nil || p.Budget.EpsilonSpent != 0 || p.Budget.EpsilonReserved != 1 {
		t.Errorf("researcher's budget before the boundary = %+v, %v", p.Budget, err)
	}
	ps, _, err := svc.FindProjects(f.Researcher, broker.ProjectFilter{})
	if err != nil || len(ps) != 1 || ps[0].Budget != p.Budget {
		t.Errorf("researcher's project list = %+v, %v", ps, err)
	}
	reg, err := svc.Register(f.Admin)
	if err != nil || len(reg) != 1 || reg[0].EpsilonSpent != 0 {
		t.Errorf("register before the boundary = %+v, %v", reg, err)
	}

	f.at(2, 0)
	seenOK, seenBad := researcherView(t, f, ok.ID), researcherView(t, f, bad.ID)
	want := []broker.Event{
		{To: broker.StatusSubmitted, Actor: "res1", At: hm(0, 10)},
		{From: broker.StatusSubmitted, To: broker.StatusApproved, Actor: "rev1", Comment: "ok", At: hm(1, 0)},
		{From: broker.StatusApproved, To: broker.StatusRunning, Actor: broker.SiteActor, At: hm(2, 0)},
		{From: broker.StatusRunning, To: broker.StatusAwaitingOutputCheck, Actor: broker.SiteActor, At: hm(2, 0)},
	}
	if diff := cmp.Diff(want, seenOK.History); diff != "" {
		t.Errorf("history of the completed run (-want +got):\n%s", diff)
	}
	seenBad.ID, seenBad.RiskFlags = seenOK.ID, seenOK.RiskFlags // the second is flagged as a repeat of the first
	if diff := cmp.Diff(seenOK, seenBad); diff != "" {
		t.Errorf("the failed run looks different to the researcher (-completed +failed):\n%s", diff)
	}
	lOK, _, _ := svc.FindQueries(f.Researcher, broker.QueryFilter{})
	for _, q := range lOK {
		if q.Status != broker.StatusAwaitingOutputCheck || !q.UpdatedAt.Equal(hm(2, 0)) || q.Attempts != 0 || q.FailureCode != "" {
			t.Errorf("listed query %d: %s at %s, %d attempts, %q", q.ID, q.Status, q.UpdatedAt, q.Attempts, q.FailureCode)
		}
	}
	if b := researcherBudget(t, f); !near(b.EpsilonSpent, 1) || b.EpsilonReserved != 0 {
		t.Errorf("researcher's budget after the boundary = %+v", b)
	}
	if reg, _ := svc.Register(f.Admin); !near(reg[0].EpsilonSpent, 1) {
		t.Errorf("register after the boundary = %+v", reg[0])
	}
	// Outputs are the checker's: a failure notice is not a result.
	_, err = svc.DownloadResult(f.Researcher, bad.ID)
	MustCode(t, err, broker.EFORBIDDEN)

	// The checker releases both: a released result, and a failed query
	// with the generic message, at the next boundary.
	f.at(2, 30)
	if _, err := svc.ReleaseQuery(f.Checker, ok.ID, "safe"); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.ReleaseQuery(f.Checker, bad.ID, "timed out at 299 s"); err != nil {
		t.Fatal(err)
	}
	if got := researcherView(t, f, bad.ID); got.Status != broker.StatusAwaitingOutputCheck {
		t.Errorf("release seen before the boundary: %s", got.Status)
	}
	f.at(3, 0)
	got := researcherView(t, f, bad.ID)
	last := got.History[len(got.History)-1]
	wantLast := broker.Event{From: broker.StatusAwaitingOutputCheck, To: broker.StatusFailed, Actor: "chk1", Comment: broker.FailedMessage, At: hm(3, 0)}
	if got.Status != broker.StatusFailed || last != wantLast {
		t.Errorf("released failure notice: %s, last event %+v", got.Status, last)
	}
	if ids := visibleStatus(t, f, broker.StatusFailed); !cmp.Equal(ids, []int64{bad.ID}) {
		t.Errorf("failed list = %v", ids)
	}

	// Cancelling is the researcher's own act: seen at once, at its time.
	// Once a reviewer has decided — even if the researcher cannot see it
	// yet — a cancel is refused in words that say nothing of what happened.
	c := f.MustSubmit(f.Researcher, DefaultSQL, 0.5)
	approved := f.MustSubmit(f.Researcher, DefaultSQL, 0.5)
	f.at(3, 20)
	f.MustApprove(approved.ID)
	f.MustLease(approved.ID)
	f.at(3, 40)
	_, err = svc.CancelQuery(f.Researcher, approved.ID)
	MustCode(t, err, broker.ECONFLICT)
	if msg := broker.ErrorMessage(err); strings.Contains(msg, "approved") || strings.Contains(msg, "running") {
		t.Errorf("a refused cancel names the status: %q", msg)
	}
	cancelled, err := svc.CancelQuery(f.Researcher, c.ID)
	if err != nil {
		t.Fatal(err)
	}
	if cancelled.Status != broker.StatusCancelled || !cancelled.UpdatedAt.Equal(hm(3, 40)) {
		t.Fatalf("cancel as the researcher sees it: %s at %s", cancelled.Status, cancelled.UpdatedAt)
	}
	for i, e := range cancelled.History {
		if e.At.After(hm(3, 40)) || (i > 0 && e.At.Before(cancelled.History[i-1].At)) {
			t.Errorf("cancelled query's history goes out of order: %+v", cancelled.History)
		}
	}
	if ids := visibleStatus(t, f, broker.StatusCancelled); !cmp.Equal(ids, []int64{c.ID}) {
		t.Errorf("cancelled list = %v", ids)
	}

	// Staff see exact times and everything.
	staff := f.MustQuery(bad.ID)
	if staff.Attempts != 2 || staff.FailureCode != "timeout" || !staff.UpdatedAt.Equal(hm(2, 30)) {
		t.Errorf("staff view: %d attempts, %q, updated %s", staff.Attempts, staff.FailureCode, staff.UpdatedAt)
	}
}

func researcherBudget(t *testing.T, f *Fixture) broker.Budget {
	t.Helper()
	p, err := f.Service.FindProjectByID(f.Researcher, f.Project.ID)
	if err != nil {
		t.Fatal(err)
	}
	return p.Budget
}

// testMemberStaffView: staff who are members of a project see its queries
// and budget as its researchers do — no failure codes or attempts, coarse
// times — in single reads, lists and queues alike.
func testMemberStaffView(t *testing.T, f *Fixture) {
	svc := f.Service
	f.at(0, 10)
	q := f.MustSubmit(f.Researcher, DefaultSQL, 0.5)
	f.MustApprove(q.ID)
	if err := svc.FailJob(f.Agent, q.ID, f.MustLease(q.ID).Token, "timeout", "the query ran past its time limit"); err != nil {
		t.Fatal(err)
	}
	// dual2 (researcher and output checker) and dual1 (researcher and
	// reviewer) are members of the fixture's project: until the boundary
	// they see the query submitted, as its researchers do.
	for name, ctx := range map[string]context.Context{"researcher+checker": f.ResearchCheck, "researcher+reviewer": f.ResearchReview} {
		got, err := svc.FindQueryByID(ctx, q.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got.FailureCode != "" || got.FailureDetail != "" || got.Attempts != 0 || got.Status != broker.StatusSubmitted {
			t.Errorf("%s reads their project's failed run: %s, %q %q, %d attempts", name, got.Status, got.FailureCode, got.FailureDetail, got.Attempts)
		}
		list, n, err := svc.FindQueries(ctx, broker.QueryFilter{})
		if err != nil || n != 1 || list[0].FailureCode != "" || list[0].Status != broker.StatusSubmitted {
			t.Errorf("%s lists their project's queries: %+v (%d), %v", name, list, n, err)
		}
		if p, err := svc.FindProjectByID(ctx, f.Project.ID); err != nil || p.Budget.EpsilonSpent != 0 || p.Budget.EpsilonReserved != 0.5 {
			t.Errorf("%s reads their project's budget: %+v, %v", name, p, err)
		}
	}
	if queue, err := svc.OutputQueue(f.ResearchCheck); err != nil || len(queue) != 0 {
		t.Errorf("researcher+checker's output queue before the boundary = %+v, %v", queue, err)
	}
	f.at(1, 0)
	queue, err := svc.OutputQueue(f.ResearchCheck)
	if err != nil || len(queue) != 1 || queue[0].FailureCode != "" || queue[0].Status != broker.StatusAwaitingOutputCheck {
		t.Errorf("researcher+checker's output queue = %+v, %v", queue, err)
	}
	// An independent checker sees the notice.
	if queue, err := svc.OutputQueue(f.Checker); err != nil || len(queue) != 1 || queue[0].FailureCode != "timeout" {
		t.Errorf("checker's output queue = %+v, %v", queue, err)
	}
}

// testRunHold: with a run hold of five minutes, a run that completes in a
// second and one that crashes, is retried and times out after nearly five
// minutes show the same history, statuses and times to the researcher.
func testRunHold(t *testing.T, f *Fixture) {
	svc := f.Service
	f.at(0, 10)
	ok := f.MustSubmit(f.Researcher, DefaultSQL, 0.5)
	bad := f.MustSubmit(f.Researcher, DefaultSQL, 0.5)
	f.at(0, 20)
	f.MustApprove(ok.ID)
	f.MustApprove(bad.ID)
	f.fastAndSlowRuns(ok.ID, bad.ID, 5)
	same := func(when string, want broker.Status) {
		t.Helper()
		a, b := researcherView(t, f, ok.ID), researcherView(t, f, bad.ID)
		if a.Status != want {
			t.Errorf("%s: the researcher sees %s, want %s", when, a.Status, want)
		}
		b.ID, b.RiskFlags = a.ID, a.RiskFlags
		if diff := cmp.Diff(a, b); diff != "" {
			t.Errorf("%s: the runs look different (-fast +slow):\n%s", when, diff)
		}
		if ids := visibleStatus(t, f, want); !cmp.Equal(ids, []int64{ok.ID, bad.ID}) {
			t.Errorf("%s: list of %s = %v", when, want, ids)
		}
	}
	same("at 5:50", broker.StatusRunning)
	f.at(6, 59)
	same("at 6:59", broker.StatusRunning) // 1:05 + 5m, rounded up to 7:00
	f.at(7, 0)
	same("at 7:00", broker.StatusAwaitingOutputCheck)
	if got := researcherView(t, f, ok.ID); !got.UpdatedAt.Equal(hm(7, 0)) {
		t.Errorf("the run's end dated %s, want 7:00", got.UpdatedAt)
	}
	// A release right away shows after the run's end, never before it.
	f.at(7, 10)
	if _, err := svc.ReleaseQuery(f.Checker, ok.ID, "safe"); err != nil {
		t.Fatal(err)
	}
	f.at(8, 0)
	out, err := svc.DownloadResult(f.Researcher, ok.ID)
	if err != nil || !out.ReleasedAt.Equal(hm(8, 0)) {
		t.Errorf("download = %+v, %v; want released at 8:00", out, err)
	}
	// Staff see the real times.
	if got := f.MustQuery(ok.ID); !got.History[len(got.History)-2].At.Equal(hm(1, 6)) {
		t.Errorf("staff see the completion at %s", got.History[len(got.History)-2].At)
	}
}
