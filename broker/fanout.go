package broker

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nhs-tre/tre/dp"
	"github.com/nhs-tre/tre/queries"
)

// Fan-out of federated queries (issue 21): an approved query over a
// dataset N > 1 sites hold has one job per site (query_jobs). Each site's
// agent leases only its own job, with the leases, heartbeats and retries
// of a single-site run; the query is running from the first lease, and
// once every site's partial result is in, the broker combines them and the
// query goes to the output check. A site's job that fails for good, or a
// deadline passed, fails the query as a whole (federatedFailure).

// federatedPlan refuses a plan of a query over a dataset held by sites
// sites that cannot be combined across them (dp.Spec.ValidateFederated),
// and sets its accuracy to the combined answer's.
func federatedPlan(dataset string, sites int, plan *queries.Plan) error {
	if err := plan.Spec.ValidateFederated(); err != nil {
		return Errorf(EREFUSED, "dataset %q is held by %d sites, and this query cannot be combined across them: %v", dataset, sites, err)
	}
	acc, err := plan.Spec.FederatedAccuracy(sites)
	if err != nil {
		return Errorf(EREFUSED, "dataset %q is held by %d sites, and the accuracy of this query's combined answer cannot be computed: %v", dataset, sites, err)
	}
	plan.Accuracy = acc
	return nil
}

// federate marks a submission over a dataset several sites hold as
// federated: what cannot be combined is refused, the accuracy quoted is
// the combined answer's, and the project's ledger factor is set.
func federate(rec *QueryRecord, pr *prepared, plan *queries.Plan) error {
	if pr.sites < 2 {
		return nil
	}
	if err := federatedPlan(rec.Query.Dataset, pr.sites, plan); err != nil {
		return err
	}
	rec.Query.Accuracy = plan.Accuracy
	if rec.Query.Accuracy == nil {
		rec.Query.Accuracy = []dp.Accuracy{}
	}
	markFederated(rec, pr)
	return nil
}

// markFederated records on rec how its query runs over the dataset pr's
// sites hold: the sites, whether the catalog declares their populations
// disjoint, the project's ledger factor and the Federation the query
// shows. A check (CheckQuery) describes its plan the same way.
func markFederated(rec *QueryRecord, pr *prepared) {
	rec.Sites = pr.sites
	rec.Disjoint = pr.cat.Federation != nil && pr.cat.Federation.DisjointPopulations
	rec.LedgerFactor = ledgerFactor(pr.sites, rec.Disjoint)
	rec.Query.Federation = FederationOf(rec)
}

// approveFederated creates a federated query's jobs in the approving
// transaction (the project is locked), reserving its cost in each site's
// ledger; it refuses when the sites holding the dataset are no longer as
// many as at submission, or when a site's ledger would be overspent.
// Returns the audit detail.
func (s *Service) approveFederated(ctx context.Context, tx Tx, rec *QueryRecord, p *Project, now time.Time) (string, error) {
	q := rec.Query
	holders, err := tx.FindCatalogHolders(ctx, q.Dataset, false)
	if err != nil {
		return "", err
	}
	if len(holders) != rec.Sites {
		return "", Errorf(ECONFLICT, "dataset %q is held by %d sites now, not the %d it was submitted over: its cost and accuracy no longer hold; the researcher must submit it again",
			q.Dataset, len(holders), rec.Sites)
	}
	ledgers, err := tx.FindSiteLedgers(ctx, p.ID)
	if err != nil {
		return "", err
	}
	limit := p.limit()
	for _, h := range holders {
		used := dp.Cost{}
		for _, l := range ledgers {
			if l.SiteID == h.SiteID {
				used = dp.Cost{Epsilon: l.EpsilonSpent + l.EpsilonReserved, Delta: l.DeltaSpent + l.DeltaReserved}
			}
		}
		if !q.Cost.Fits(used, limit) {
			return "", wrapf(ErrBudgetExhausted, "approving query %d would overspend site %q's ledger of project %d: it costs ε %s, δ %s there and ε %s, δ %s remain",
				q.ID, h.SiteID, p.ID, fmtFloat(q.Cost.Epsilon), fmtFloat(q.Cost.Delta),
				fmtFloat(max(limit.Epsilon-used.Epsilon, 0)), fmtFloat(max(limit.Delta-used.Delta, 0)))
		}
		j := &QueryJob{QueryID: q.ID, SiteID: h.SiteID, ProjectID: q.ProjectID, Status: JobPending, Ledger: LedgerReserved, UpdatedAt: now}
		if err := tx.PutJob(ctx, j); err != nil {
			return "", err
		}
	}
	rec.DeadlineAt = now.Add(s.fedDeadline)
	pc := projectCost(rec)
	return auditDetail("sites", strings.Join(holderIDs(holders), ","), "site_epsilon", fmtFloat(q.Cost.Epsilon),
		"project_epsilon", fmtFloat(pc.Epsilon), "project_delta", fmtFloat(pc.Delta),
		"disjoint_populations", strconv.FormatBool(rec.Disjoint), "deadline", rec.DeadlineAt.Format(time.RFC3339)), nil
}

// siteJobOf returns site's job among jobs, or a denial.
func siteJobOf(jobs []*QueryJob, site, action string, id int64) (*QueryJob, error) {
	for _, j := range jobs {
		if j.SiteID == site {
			return j, nil
		}
	}
	return nil, deny(action, queryObject(id), "query %d has no part at site %q", id, site)
}

// holdsJobLease checks token against a running job's lease.
func holdsJobLease(rec *QueryRecord, j *QueryJob, token string) error {
	if rec.Query.Status != StatusRunning || j.Status != JobRunning || j.LeaseTokenHash == "" || hashString(token) != j.LeaseTokenHash {
		return wrapf(ErrLeaseExpired, "the lease on query %d at site %q has expired or is held by another agent", rec.Query.ID, j.SiteID)
	}
	return nil
}

// maxOverduePerPoll bounds how many overdue federated queries one lease
// poll, or one transaction of a sweep, fails.
const maxOverduePerPoll = 10

// failOverdue fails the federated queries whose deadline passed (each
// in its own lock, in id order) and returns how many it found: every
// lease poll of every site runs it, so a query whose site went silent
// still ends while another site polls, and SweepOverdue runs it when no
// site polls at all.
func (s *Service) failOverdue(ctx context.Context, tx Tx, now time.Time) (int, error) {
	ids, err := tx.FindOverdue(ctx, now, maxOverduePerPoll)
	if err != nil {
		return 0, err
	}
	for _, id := range ids {
		rec, err := lockQuery(ctx, tx, id)
		if err != nil {
			return 0, err
		}
		if rec.Query.Status != StatusApproved && rec.Query.Status != StatusRunning {
			continue // another replica's sweep or poll failed it first
		}
		jobs, err := tx.FindJobs(ctx, id)
		if err != nil {
			return 0, err
		}
		f := Failure{Code: FailureFederationDeadline, Detail: "not every site reported before the federation deadline"}
		if err := s.federatedFailure(ctx, tx, rec, jobs, f, "broker", now); err != nil {
			return 0, err
		}
	}
	return len(ids), nil
}

// SweepOverdue fails every federated query whose deadline has passed, as
// a lease poll would, maxOverduePerPoll queries per transaction: with
// every site's agent down no poll comes, so `tre serve` runs it
// periodically (FederationSweepEvery). Each query fails once whichever
// replica's sweep or poll gets to it first. It returns how many overdue
// queries it found.
func (s *Service) SweepOverdue(ctx context.Context) (int, error) {
	total := 0
	for {
		now := s.clock()
		n := 0
		err := s.update(ctx, nil, func(tx Tx) error {
			var err error
			n, err = s.failOverdue(ctx, tx, now)
			return err
		})
		if err != nil {
			return total, err
		}
		total += n
		if n < maxOverduePerPoll {
			return total, nil
		}
	}
}

// FederationSweepEvery is how often `tre serve` runs SweepOverdue for a
// federation deadline: a tenth of it, between 1s and 1m, so a query
// whose sites are all down fails at most that long after its deadline.
func FederationSweepEvery(deadline time.Duration) time.Duration {
	return min(max(deadline/10, time.Second), time.Minute)
}

// leaseFederated leases site the oldest federated job it may run, or
// returns nil.
func (s *Service) leaseFederated(ctx context.Context, tx Tx, u *User, siteID, token, tokenHash string, now time.Time) (*Lease, error) {
	for {
		id, err := tx.NextLeasableJob(ctx, siteID, now)
		if err != nil || id == 0 {
			return nil, err
		}
		rec, err := tx.FindQuery(ctx, id)
		if err != nil {
			return nil, err
		}
		jobs, err := tx.FindJobs(ctx, id)
		if err != nil {
			return nil, err
		}
		j, err := siteJobOf(jobs, siteID, "job.lease", id)
		if err != nil {
			return nil, err
		}
		if j.Status == JobRunning && j.Attempts >= s.maxAttempts {
			// The site's last attempt's lease ran out: its part failed,
			// and with it the query.
			j.Status, j.LeaseTokenHash, j.LeaseExpiresAt = JobFailed, "", time.Time{}
			j.FailureCode, j.FailureDetail = FailureLeaseExpired, "the last attempt's lease expired without a report from the site"
			f := Failure{Code: FailureFederationSite, Detail: fmt.Sprintf("site %q: %s", siteID, j.FailureDetail)}
			if err := s.federatedFailure(ctx, tx, rec, jobs, f, "broker", now); err != nil {
				return nil, err
			}
			continue
		}
		return s.takeJob(ctx, tx, u, rec, j, token, tokenHash, now)
	}
}

// takeJob leases job j of rec to its site: the site's reservation becomes
// a charge, and the query is running from its first lease at any site.
func (s *Service) takeJob(ctx context.Context, tx Tx, u *User, rec *QueryRecord, j *QueryJob, token, tokenHash string, now time.Time) (*Lease, error) {
	q := rec.Query
	j.Attempts++
	j.Status, j.LeaseTokenHash, j.LeaseExpiresAt, j.UpdatedAt = JobRunning, tokenHash, now.Add(s.leaseTTL), now
	detail := auditDetail("site", j.SiteID, "attempt", strconv.Itoa(j.Attempts))
	if j.Ledger == LedgerReserved {
		j.Ledger = LedgerCharged
		detail += " " + auditDetail("site_charged_epsilon", fmtFloat(q.Cost.Epsilon), "site_charged_delta", fmtFloat(q.Cost.Delta))
	}
	if err := tx.UpdateJob(ctx, j); err != nil {
		return nil, err
	}
	q.Attempts++
	if rec.Ledger == LedgerReserved {
		rec.Ledger = LedgerCharged
		pc := projectCost(rec)
		detail += " " + auditDetail("charged_epsilon", fmtFloat(pc.Epsilon), "charged_delta", fmtFloat(pc.Delta))
	}
	var err error
	if q.Status == StatusApproved {
		err = move(ctx, tx, rec, StatusRunning, u.Subject, "", "job.lease", detail, now)
	} else {
		q.UpdatedAt = now
		if err = tx.UpdateQuery(ctx, rec); err == nil {
			err = appendAudit(ctx, tx, now, u.Subject, "job.lease", queryObject(q.ID), detail)
		}
	}
	if err != nil {
		return nil, err
	}
	jb := jobOf(q)
	jb.Partial = true
	return &Lease{Job: jb, Token: token, SiteID: j.SiteID, ExpiresAt: j.LeaseExpiresAt, Attempt: j.Attempts, Delta: q.Cost.Delta}, nil
}

// heartbeatFederated extends u's site's lease on its part of rec.
func (s *Service) heartbeatFederated(ctx context.Context, tx Tx, u *User, rec *QueryRecord, token string, now time.Time) (*Lease, error) {
	jobs, err := tx.FindJobs(ctx, rec.Query.ID)
	if err != nil {
		return nil, err
	}
	j, err := siteJobOf(jobs, u.Site, "job.heartbeat", rec.Query.ID)
	if err != nil {
		return nil, err
	}
	if err := holdsJobLease(rec, j, token); err != nil {
		return nil, err
	}
	j.LeaseExpiresAt = now.Add(s.leaseTTL)
	if err := tx.UpdateJob(ctx, j); err != nil {
		return nil, err
	}
	jb := jobOf(rec.Query)
	jb.Partial = true
	return &Lease{Job: jb, Token: token, SiteID: j.SiteID, ExpiresAt: j.LeaseExpiresAt, Attempt: j.Attempts, Delta: rec.Query.Cost.Delta}, nil
}

// CompletePartial stores a site's protected partial result of a federated
// query; once every site's is in, the broker combines them (dp.Combine)
// and the combined table goes to the output check. Completing again with
// the same token is a no-op success.
func (s *Service) CompletePartial(ctx context.Context, id int64, token string, part *dp.Partial) error {
	u, err := s.agentCaller(ctx, "job.complete", queryObject(id), "")
	if err != nil {
		return err
	}
	if part == nil {
		return Errorf(EINVALID, "partial is required")
	}
	spec, err := s.approvedSpec(ctx, u, id)
	if err != nil {
		return err
	}
	body, err := json.Marshal(part)
	if err != nil {
		return Errorf(EINVALID, "the partial result of query %d cannot be encoded: %v", id, err)
	}
	if err := spec.CheckPartial(part); err != nil {
		return Errorf(EINVALID, "the partial result of query %d does not match the approved query: %v", id, err)
	}
	now := s.clock()
	return s.update(ctx, u, func(tx Tx) error {
		rec, err := siteJob(ctx, tx, u, "job.complete", id, now)
		if err != nil {
			return err
		}
		if rec.Sites == 0 {
			return Errorf(EINVALID, "query %d is not federated: its site reports a result, not a partial", id)
		}
		jobs, err := tx.FindJobs(ctx, id)
		if err != nil {
			return err
		}
		j, err := siteJobOf(jobs, u.Site, "job.complete", id)
		if err != nil {
			return err
		}
		if j.Status == JobDone && hashString(token) == j.LeaseTokenHash {
			return nil
		}
		if err := holdsJobLease(rec, j, token); err != nil {
			return err
		}
		j.Status, j.Partial, j.LeaseExpiresAt, j.UpdatedAt = JobDone, body, time.Time{}, now
		if err := tx.UpdateJob(ctx, j); err != nil {
			return err
		}
		if err := appendAudit(ctx, tx, now, u.Subject, "job.partial", queryObject(id),
			auditDetail("site", j.SiteID, "attempt", strconv.Itoa(j.Attempts))); err != nil {
			return err
		}
		return s.combineIfComplete(ctx, tx, rec, jobs, spec, u.Subject, now)
	})
}

// combineIfComplete combines a federated query's partial results once
// every site's is in, and moves the query to the output check.
func (s *Service) combineIfComplete(ctx context.Context, tx Tx, rec *QueryRecord, jobs []*QueryJob, spec dp.Spec, actor string, now time.Time) error {
	parts := make([]*dp.Partial, 0, len(jobs))
	for _, j := range jobs {
		if j.Status != JobDone {
			return nil
		}
		p := new(dp.Partial)
		if err := json.Unmarshal(j.Partial, p); err != nil {
			return fmt.Errorf("decode stored partial of query %d at site %q: %w", j.QueryID, j.SiteID, err)
		}
		parts = append(parts, p)
	}
	res, err := dp.Combine(spec, parts)
	if err != nil {
		s.log.Error("combine federated query", "query", rec.Query.ID, "err", err)
		f := Failure{Code: FailureFederationCombine, Detail: "the sites' partial results could not be combined"}
		return s.federatedFailure(ctx, tx, rec, jobs, f, actor, now)
	}
	if err := validateResult(res); err != nil {
		return err
	}
	sites := make([]string, len(jobs))
	for i, j := range jobs {
		sites[i] = j.SiteID
	}
	if err := tx.PutOutput(ctx, &Output{QueryID: rec.Query.ID, Result: res, SiteID: strings.Join(sites, ","), CreatedAt: now}); err != nil {
		return err
	}
	return move(ctx, tx, rec, StatusAwaitingOutputCheck, actor, "", "job.combine",
		auditDetail("sites", strings.Join(sites, ","), "rows", strconv.Itoa(len(res.Rows))), now)
}

// failFederated records a site's failed run of its part of rec: a
// retryable failure makes the part leasable again while the site has had
// fewer than MaxAttempts leases; otherwise the query fails as a whole.
func (s *Service) failFederated(ctx context.Context, tx Tx, u *User, rec *QueryRecord, token, code, message string, now time.Time) error {
	id := rec.Query.ID
	jobs, err := tx.FindJobs(ctx, id)
	if err != nil {
		return err
	}
	j, err := siteJobOf(jobs, u.Site, "job.fail", id)
	if err != nil {
		return err
	}
	if err := holdsJobLease(rec, j, token); err != nil {
		return err
	}
	j.LeaseTokenHash, j.LeaseExpiresAt, j.UpdatedAt = "", time.Time{}, now
	if slices.Contains(retryableFailures, code) && j.Attempts < s.maxAttempts {
		if err := tx.UpdateJob(ctx, j); err != nil {
			return err
		}
		return appendAudit(ctx, tx, now, u.Subject, "job.fail", queryObject(id),
			auditDetail("site", j.SiteID, "code", code, "attempt", strconv.Itoa(j.Attempts)))
	}
	j.Status, j.FailureCode, j.FailureDetail = JobFailed, code, message
	f := Failure{Code: FailureFederationSite, Detail: fmt.Sprintf("site %q failed: %s", j.SiteID, code)}
	return s.federatedFailure(ctx, tx, rec, jobs, f, u.Subject, now)
}

// federatedFailure fails a federated query as a whole: its failure notice,
// listing each site's state, goes to the output check like any failed
// run's (the researcher sees only FailedMessage once it is released); no
// site's part is ever released.
//
// Sites that never ran are refunded in their own ledgers (their
// reservation freed) in this transaction; sites that ran stay charged.
// The project's ledger is not refunded at all: its charge, the project
// cost approved (LedgerFactor unchanged), becomes final here if no site
// had started. Which sites started or failed before the query failed can
// depend on the data (a site's run crashing on its rows, a slow part
// holding the next job back), and the project's ledger is what the
// researcher sees (their project's budget, the register) and what
// decides whether their next query can be approved; a refund there would
// tell them. The site ledgers are staff-only, and never refuse an
// approval the project's ledger allows: each is at most the project's
// (every federated query charges the project at least its site cost)
// and both have the project's limit.
func (s *Service) federatedFailure(ctx context.Context, tx Tx, rec *QueryRecord, jobs []*QueryJob, f Failure, actor string, now time.Time) error {
	var states, refunded, charged []string
	for _, j := range jobs {
		if j.Status == JobPending || j.Status == JobRunning {
			if j.Status == JobRunning {
				j.FailureCode = "abandoned"
			}
			j.Status = JobFailed
		}
		if j.Ledger == LedgerReserved {
			j.Ledger = LedgerFreed
			refunded = append(refunded, j.SiteID)
		} else if j.Ledger == LedgerCharged {
			charged = append(charged, j.SiteID)
		}
		j.LeaseTokenHash, j.LeaseExpiresAt, j.UpdatedAt = "", time.Time{}, now
		if err := tx.UpdateJob(ctx, j); err != nil {
			return err
		}
		states = append(states, siteState(j))
	}
	projectCharge := ""
	if rec.Ledger == LedgerReserved {
		rec.Ledger = LedgerCharged
		pc := projectCost(rec)
		projectCharge = " " + auditDetail("charged_epsilon", fmtFloat(pc.Epsilon), "charged_delta", fmtFloat(pc.Delta))
	}
	f.Detail += "; sites: " + strings.Join(states, "; ")
	q := rec.Query
	q.FailureCode, q.FailureDetail = f.Code, f.Detail
	rec.LeaseSite = ""
	if q.Status == StatusApproved {
		// No site ever started: the query runs nowhere.
		if err := move(ctx, tx, rec, StatusRunning, actor, "no site started before the federation deadline", "job.fail", "", now); err != nil {
			return err
		}
	}
	if err := tx.PutOutput(ctx, &Output{QueryID: q.ID, Failure: &f, CreatedAt: now}); err != nil {
		return err
	}
	return move(ctx, tx, rec, StatusAwaitingOutputCheck, actor, "run failed: "+f.Code, "job.fail",
		auditDetail("code", f.Code, "charged_sites", strings.Join(charged, ","), "refunded_sites", strings.Join(refunded, ","))+projectCharge, now)
}

// siteState is a site's part as a failure notice lists it.
func siteState(j *QueryJob) string {
	st := fmt.Sprintf("%s %s after %d attempt(s)", j.SiteID, j.Status, j.Attempts)
	switch {
	case j.Partial != nil:
		st = fmt.Sprintf("%s reported after %d attempt(s)", j.SiteID, j.Attempts)
	case j.FailureCode != "":
		st += " (" + j.FailureCode + ")"
	}
	if j.Ledger == LedgerFreed {
		st += ", refunded"
	}
	return st
}

// siteOutputs are a federated query's sites as the output checker sees
// them, each with the disclosure report of its partial result.
func siteOutputs(jobs []*QueryJob) []SiteOutput {
	out := make([]SiteOutput, len(jobs))
	for i, j := range jobs {
		o := SiteOutput{SiteID: j.SiteID, Status: j.Status, Attempts: j.Attempts}
		if j.FailureCode != "" {
			o.Failure = &Failure{Code: j.FailureCode, Detail: j.FailureDetail}
		}
		var p dp.Partial
		if j.Partial != nil && json.Unmarshal(j.Partial, &p) == nil {
			o.Report = &SiteReport{RowsDroppedByBounding: p.RowsDroppedByBounding, OptOut: p.OptOut, Sandbox: p.Sandbox, Synthetic: p.Synthetic}
		}
		out[i] = o
	}
	return out
}

// querySites are a federated query's sites as its reader sees them: staff
// with each part's status and attempts, researchers the sites only.
func querySites(jobs []*QueryJob, staff bool) []QuerySite {
	out := make([]QuerySite, len(jobs))
	for i, j := range jobs {
		out[i] = QuerySite{SiteID: j.SiteID}
		if staff {
			out[i].Status, out[i].Attempts = j.Status, j.Attempts
		}
	}
	return out
}
