package broker

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"time"

	"github.com/nhs-tre/tre/dp"
	"github.com/nhs-tre/tre/job"
	"github.com/nhs-tre/tre/queries"
)

// newToken returns a random lease token and its hash.
func (s *Service) newToken() (token, hash string, err error) {
	b := make([]byte, 32)
	if _, err := io.ReadFull(s.rand, b); err != nil {
		return "", "", fmt.Errorf("lease token: %w", err)
	}
	token = hex.EncodeToString(b)
	return token, hashString(token), nil
}

// LeaseJob gives site the oldest approved job over one of its datasets, or a
// running job whose lease expired. It returns nil, nil when there is none.
// The first lease turns the budget reservation into a final charge.
//
// Every poll records the site as seen, with the agent's version when it
// reports one, whether or not there is a job.
func (s *Service) LeaseJob(ctx context.Context, siteID, version string) (*Lease, error) {
	u, err := s.agentCaller(ctx, "job.lease", siteObject(siteID), siteID)
	if err != nil {
		return nil, err
	}
	if err := validName("site id", siteID); err != nil {
		return nil, err
	}
	if err := validVersion(version); err != nil {
		return nil, err
	}
	token, tokenHash, err := s.newToken()
	if err != nil {
		return nil, err
	}
	now := s.clock()
	var lease *Lease
	err = s.update(ctx, u, func(tx Tx) error {
		if err := registeredSite(ctx, tx, u, "job.lease", siteObject(siteID), version, now); err != nil {
			return err
		}
		if _, err := s.failOverdue(ctx, tx, now); err != nil {
			return err
		}
		for {
			id, err := tx.NextLeasable(ctx, siteID, now)
			if err != nil {
				return err
			}
			if id == 0 {
				lease, err = s.leaseFederated(ctx, tx, u, siteID, token, tokenHash, now)
				return err
			}
			rec, err := tx.FindQuery(ctx, id)
			if err != nil {
				return err
			}
			q := rec.Query
			// A running job that still holds a lease token is leasable only
			// because that lease lapsed (a retryable failure clears it).
			lapsed := q.Status == StatusRunning && rec.LeaseTokenHash != ""
			if q.Status == StatusRunning && q.Attempts >= s.maxAttempts {
				// The last attempt's lease ran out: the run failed, and its
				// failure notice goes to the output check.
				rec.LeaseExpiresAt = time.Time{}
				rec.LeaseTokenHash = ""
				failure := Failure{Code: FailureLeaseExpired, Detail: "the last attempt's lease expired without a report from the site"}
				if err := s.failureNotice(ctx, tx, rec, failure, "broker", now); err != nil {
					return err
				}
				leaseLapsed(tx, lapsed)
				continue
			}
			q.Attempts++
			rec.LeaseTokenHash = tokenHash
			rec.LeaseSite = siteID
			rec.LeaseExpiresAt = now.Add(s.leaseTTL)
			charged := ""
			if rec.Ledger == LedgerReserved {
				rec.Ledger = LedgerCharged
				charged = fmtFloat(q.Cost.Epsilon)
			}
			detail := auditDetail("site", siteID, "attempt", strconv.Itoa(q.Attempts))
			if charged != "" {
				detail += " " + auditDetail("charged_epsilon", charged, "charged_delta", fmtFloat(q.Cost.Delta))
			}
			if err := move(ctx, tx, rec, StatusRunning, u.Subject, "", "job.lease", detail, now); err != nil {
				return err
			}
			leaseLapsed(tx, lapsed)
			lease = &Lease{
				Job:   jobOf(q),
				Token: token, SiteID: siteID, ExpiresAt: rec.LeaseExpiresAt, Attempt: q.Attempts, Delta: q.Cost.Delta,
			}
			return nil
		}
	})
	if err != nil {
		return nil, err
	}
	return lease, nil
}

// failureNotice ends a running query's run with a failure: the notice is
// stored as its output and the query moves to the output check, exactly as
// a result would. Researchers see the query awaiting output checking and,
// once a checker releases the notice, failed with FailedMessage.
func (s *Service) failureNotice(ctx context.Context, tx Tx, rec *QueryRecord, f Failure, actor string, now time.Time) error {
	q := rec.Query
	q.FailureCode, q.FailureDetail = f.Code, f.Detail
	if err := tx.PutOutput(ctx, &Output{QueryID: q.ID, Failure: &f, SiteID: rec.LeaseSite, CreatedAt: now}); err != nil {
		return err
	}
	return move(ctx, tx, rec, StatusAwaitingOutputCheck, actor, "run failed: "+f.Code, "job.fail",
		auditDetail("site", rec.LeaseSite, "code", f.Code, "attempts", strconv.Itoa(q.Attempts)), now)
}

// siteJob locks and loads query id for a call by u's site: the site must
// be registered and the query leased to it. A lease token alone is not
// enough: a job leased by one site cannot be reported by another.
func siteJob(ctx context.Context, tx Tx, u *User, action string, id int64, now time.Time) (*QueryRecord, error) {
	if err := registeredSite(ctx, tx, u, action, queryObject(id), "", now); err != nil {
		return nil, err
	}
	rec, err := lockQuery(ctx, tx, id)
	if err != nil {
		return nil, err
	}
	if rec.LeaseSite != "" && rec.LeaseSite != u.Site {
		return nil, deny(action, queryObject(id), "query %d is not leased to site %q", id, u.Site)
	}
	return rec, nil
}

// holdsLease checks token against a running query's lease.
func holdsLease(rec *QueryRecord, token string) error {
	if rec.Query.Status != StatusRunning || rec.LeaseTokenHash == "" || hashString(token) != rec.LeaseTokenHash {
		return wrapf(ErrLeaseExpired, "the lease on query %d has expired or is held by another agent", rec.Query.ID)
	}
	return nil
}

// HeartbeatJob extends a lease. A lease that ran out may still be extended
// while no other agent has taken the job.
func (s *Service) HeartbeatJob(ctx context.Context, id int64, token string) (*Lease, error) {
	u, err := s.agentCaller(ctx, "job.heartbeat", queryObject(id), "")
	if err != nil {
		return nil, err
	}
	now := s.clock()
	var lease *Lease
	err = s.update(ctx, u, func(tx Tx) error {
		rec, err := siteJob(ctx, tx, u, "job.heartbeat", id, now)
		if err != nil {
			return err
		}
		if rec.Sites > 0 {
			lease, err = s.heartbeatFederated(ctx, tx, u, rec, token, now)
			return err
		}
		if err := holdsLease(rec, token); err != nil {
			return err
		}
		rec.LeaseExpiresAt = now.Add(s.leaseTTL)
		if err := tx.UpdateQuery(ctx, rec); err != nil {
			return err
		}
		q := rec.Query
		lease = &Lease{
			Job:   jobOf(q),
			Token: token, SiteID: rec.LeaseSite, ExpiresAt: rec.LeaseExpiresAt, Attempt: q.Attempts, Delta: q.Cost.Delta,
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return lease, nil
}

// CompleteJob stores a job's protected result and moves it to the output
// check. Completing again with the same token is a no-op success.
func (s *Service) CompleteJob(ctx context.Context, id int64, token string, res dp.Result) error {
	u, err := s.agentCaller(ctx, "job.complete", queryObject(id), "")
	if err != nil {
		return err
	}
	if err := validateResult(&res); err != nil {
		return err
	}
	spec, err := s.approvedSpec(ctx, u, id)
	if err != nil {
		return err
	}
	now := s.clock()
	return s.update(ctx, u, func(tx Tx) error {
		rec, err := siteJob(ctx, tx, u, "job.complete", id, now)
		if err != nil {
			return err
		}
		if rec.Sites > 0 {
			return Errorf(EINVALID, "query %d runs at %d sites: each reports its partial result (partial), not a result", id, rec.Sites)
		}
		q := rec.Query
		switch q.Status {
		case StatusAwaitingOutputCheck, StatusReleased, StatusWithheld:
			if rec.LeaseTokenHash != "" && hashString(token) == rec.LeaseTokenHash {
				return nil
			}
		}
		if q.Status != StatusRunning {
			if err := checkTransition(id, q.Status, StatusAwaitingOutputCheck); err != nil {
				return err
			}
		}
		if err := holdsLease(rec, token); err != nil {
			return err
		}
		if err := spec.CheckResult(&res); err != nil {
			return Errorf(EINVALID, "the result of query %d does not match the approved query: %v", id, err)
		}
		if err := tx.PutOutput(ctx, &Output{QueryID: id, Result: &res, SiteID: rec.LeaseSite, CreatedAt: now}); err != nil {
			return err
		}
		rec.LeaseExpiresAt = time.Time{}
		return move(ctx, tx, rec, StatusAwaitingOutputCheck, u.Subject, "", "job.complete",
			auditDetail("site", rec.LeaseSite, "rows", strconv.Itoa(len(res.Rows))), now)
	})
}

// approvedSpec compiles query id again, as the site does, to learn what
// its result must look like: the approved SQL at the approved ε over the
// dataset's catalog (the site compiles against the catalog it published).
// The compilation runs outside any transaction and comes from the plan
// cache after the first completion of a query.
func (s *Service) approvedSpec(ctx context.Context, u *User, id int64) (dp.Spec, error) {
	var q *Query
	var cat *queries.Catalog
	var hash string
	federated := false
	err := s.view(ctx, u, func(tx Tx) error {
		rec, err := tx.FindQuery(ctx, id)
		if err != nil {
			return err
		}
		q, federated = rec.Query, rec.Sites > 0
		cat, hash, err = s.catalog(ctx, tx, q.Dataset)
		return err
	})
	if err != nil {
		return dp.Spec{}, err
	}
	plan, err := s.compile(ctx, cat, hash, q.SQL, q.Cost.Epsilon, federated)
	var ref *queries.Refusal
	switch {
	case errors.As(err, &ref):
		return dp.Spec{}, Errorf(EINVALID, "query %d no longer compiles against dataset %q's catalog: its result cannot be checked", id, q.Dataset)
	case err != nil:
		return dp.Spec{}, s.compileError(err, q.ProjectID)
	}
	if c := plan.Spec.Cost(); !c.Same(q.Cost) {
		return dp.Spec{}, Errorf(EINVALID, "query %d costs ε %s, δ %s over dataset %q's current catalog, not the approved ε %s, δ %s: its result cannot be checked",
			id, fmtFloat(c.Epsilon), fmtFloat(c.Delta), q.Dataset, fmtFloat(q.Cost.Epsilon), fmtFloat(q.Cost.Delta))
	}
	return plan.Spec, nil
}

// validateResult checks a result's table is well formed.
func validateResult(res *dp.Result) error {
	if len(res.Columns) == 0 {
		return Errorf(EINVALID, "result has no columns")
	}
	for i, row := range res.Rows {
		if len(row) != len(res.Columns) {
			return Errorf(EINVALID, "result row %d has %d cells for %d columns", i, len(row), len(res.Columns))
		}
	}
	for _, x := range []float64{res.Report.Epsilon, res.Report.Delta} {
		if math.IsNaN(x) || math.IsInf(x, 0) || x < 0 {
			return Errorf(EINVALID, "result report has an invalid ε or δ")
		}
	}
	return nil
}

// retryableFailures are the failure codes that may say more about the
// site's host than about the query (a child killed from outside, a scratch
// disk that filled up): such a run is leased again, up to MaxAttempts. Any
// other code (refused, invalid, timeout, memory, too_large, unavailable, or
// one this broker does not know) would only fail again: it ends the run at
// once. Either way the researcher sees neither the attempts nor the code.
var retryableFailures = []string{"crashed", "internal"}

// FailJob records a failed run reported by the site agent. A retryable
// failure makes the job leasable again while it has had fewer than
// MaxAttempts leases; otherwise the failure notice goes to the output check
// (failureNotice).
func (s *Service) FailJob(ctx context.Context, id int64, token, code, message string) error {
	u, err := s.agentCaller(ctx, "job.fail", queryObject(id), "")
	if err != nil {
		return err
	}
	if err := validCode(code); err != nil {
		return err
	}
	if len(message) > 1000 {
		message = message[:1000]
	}
	now := s.clock()
	return s.update(ctx, u, func(tx Tx) error {
		rec, err := siteJob(ctx, tx, u, "job.fail", id, now)
		if err != nil {
			return err
		}
		if rec.Query.Status != StatusRunning {
			if err := checkTransition(id, rec.Query.Status, StatusAwaitingOutputCheck); err != nil {
				return err
			}
		}
		if rec.Sites > 0 {
			return s.failFederated(ctx, tx, u, rec, token, code, message, now)
		}
		if err := holdsLease(rec, token); err != nil {
			return err
		}
		q := rec.Query
		rec.LeaseExpiresAt = time.Time{}
		rec.LeaseTokenHash = ""
		if slices.Contains(retryableFailures, code) && q.Attempts < s.maxAttempts {
			// Back to leasable: running with no lease. The charge stays.
			return move(ctx, tx, rec, StatusRunning, u.Subject,
				fmt.Sprintf("attempt %d failed: %s", q.Attempts, code), "job.fail",
				auditDetail("site", rec.LeaseSite, "code", code, "attempt", strconv.Itoa(q.Attempts)), now)
		}
		return s.failureNotice(ctx, tx, rec, Failure{Code: code, Detail: message}, u.Subject, now)
	})
}

// jobOf is the job a site runs for q: what the reviewer approved, with the
// codelists it joins by name and hash (the agent fetches their codes).
func jobOf(q *Query) job.Job {
	j := job.Job{QueryID: q.ID, Dataset: q.Dataset, SQL: q.SQL, SQLHash: q.SQLHash, Epsilon: q.Cost.Epsilon}
	for _, c := range q.Codelists {
		j.Codelists = append(j.Codelists, job.Codelist{Name: c.Name, Hash: c.Hash})
	}
	return j
}
