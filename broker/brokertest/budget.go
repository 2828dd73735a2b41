package brokertest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/nhs-tre/tre/broker"
)

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
