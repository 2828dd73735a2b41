package brokertest

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nhs-tre/tre/broker"
)

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
