package brokertest

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nhs-tre/tre/broker"
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
	t.Run("RepeatPrefersReleased", func(t *testing.T) { testRepeatPrefersReleased(t, fresh(t, broker.Options{})) })
	t.Run("PlanCache", func(t *testing.T) { testPlanCache(t, cfg) })
	t.Run("RewrittenApart", func(t *testing.T) { testRewrittenApart(t, fresh(t, broker.Options{})) })
	t.Run("ReadQueryView", func(t *testing.T) { testReadQueryView(t, fresh(t, broker.Options{})) })
	if cfg.Reopen != nil {
		t.Run("PredicateSetBackfill", func(t *testing.T) { testPredicateSetBackfill(t, cfg) })
		t.Run("RewrittenUpgrade", func(t *testing.T) { testRewrittenUpgrade(t, cfg) })
	}
	t.Run("Register", func(t *testing.T) { testRegister(t, fresh(t, broker.Options{})) })
	t.Run("FederatedCatalogs", func(t *testing.T) { testFederatedCatalogs(t, fresh(t, broker.Options{})) })
	t.Run("Federation", func(t *testing.T) { testFederation(t, fresh(t, broker.Options{})) })
	t.Run("FederationMonths", func(t *testing.T) { testFederationMonths(t, fresh(t, broker.Options{})) })
	t.Run("FederationDisjoint", func(t *testing.T) { testFederationDisjoint(t, fresh(t, broker.Options{})) })
	t.Run("FederationConcurrentApprovals", func(t *testing.T) { testFederationConcurrentApprovals(t, fresh(t, broker.Options{})) })
	t.Run("FederationFailure", func(t *testing.T) { testFederationFailure(t, fresh(t, broker.Options{})) })
	t.Run("FederationDeadline", func(t *testing.T) {
		testFederationDeadline(t, fresh(t, broker.Options{FederationDeadline: 10 * time.Minute}))
	})
	t.Run("FederationSweep", func(t *testing.T) {
		testFederationSweep(t, fresh(t, broker.Options{FederationDeadline: 10 * time.Minute}))
	})
	t.Run("FederationRefundInvisible", func(t *testing.T) {
		testFederationRefundInvisible(t, func(t *testing.T) *Fixture {
			return fresh(t, broker.Options{FederationDeadline: 10 * time.Minute})
		})
	})
	t.Run("SingleSiteBeforeFederation", func(t *testing.T) { testSingleSiteBeforeFederation(t, fresh(t, broker.Options{})) })
	t.Run("Codelists", func(t *testing.T) { testCodelists(t, fresh(t, broker.Options{})) })
	t.Run("SwapBucket", func(t *testing.T) { testSwapBucket(t, cfg.Open(t)) })
	if cfg.OpenPair != nil {
		t.Run("TwoReplicas", func(t *testing.T) { testTwoReplicas(t, cfg) })
		t.Run("Sessions", func(t *testing.T) { testSessions(t, cfg) })
		t.Run("SessionBounds", func(t *testing.T) { testSessionBounds(t, cfg) })
		t.Run("CatalogAcrossReplicas", func(t *testing.T) { testCatalogAcrossReplicas(t, cfg) })
		t.Run("SharedRateLimit", func(t *testing.T) { testSharedRateLimit(t, cfg) })
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
