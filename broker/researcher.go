package broker

import (
	"context"
	"slices"
	"strconv"
	"time"

	"github.com/nhs-tre/tre/dp"
)

// What a researcher sees of the lifecycle.
//
// Everything that happens to a query after its submission is a decision by
// staff or a step of the run at the site, and the run's steps depend on the
// data: how long it takes, whether it fails and how, how often it is tried.
// A researcher therefore sees the broker as it stood at the last boundary
// of the granularity (Options.Granularity, default one minute) before now:
//
//   - a status change becomes visible only from the next boundary after it
//     happened, and its time is shown as that boundary (updated_at too);
//   - with a run hold (Options.RunHold), a run's end becomes visible no
//     earlier than the boundary after its start plus the hold, so that
//     runs shorter than the hold all look alike;
//   - the researcher's own acts (submitting, cancelling) are shown at once,
//     at their exact time;
//   - re-leases and retried attempts are not shown, nor how many attempts a
//     run took; the run's steps are shown as made by SiteActor, without
//     comments; a released failure notice is shown as failed with
//     FailedMessage;
//   - no failure code or detail is ever shown;
//   - a project's budget shows a run's charge as spent only once the run's
//     start is visible (as reserved until then).
//
// Staff see exact times and everything else, except of the queries and
// projects of projects they are members of: there they are researchers
// (separation of duties is by person), and see what researchers see.

// DefaultGranularity is how coarse a researcher's view of time is.
const DefaultGranularity = time.Minute

// SiteActor is who a researcher sees making the run's status changes
// (leasing the job, storing its output or failure notice), whichever agent
// or broker process made them.
const SiteActor = "site"

// researcherSees reports whether u gets the researcher's view of every
// query and project: anyone without a staff role.
func researcherSees(u *User) bool { return !isStaff(u) }

// researcherOf reports whether u gets the researcher's view of project p's
// queries and budget: without a staff role, or as one of its members.
func researcherOf(u *User, p *Project) bool {
	return researcherSees(u) || slices.Contains(p.Members, u.Subject)
}

// researcherFor is researcherOf for the project with id projectID.
func researcherFor(ctx context.Context, tx Tx, u *User, projectID int64) (bool, error) {
	if researcherSees(u) {
		return true, nil
	}
	return tx.IsMember(ctx, projectID, u.Subject)
}

// memberViews gives a staff caller the researcher's view of the listed
// queries of projects they are members of. A query whose status as they see
// it is not the one filtered for is left out of the page (and the total):
// unlike a researcher's list, it is not looked for among the others.
func (s *Service) memberViews(ctx context.Context, tx Tx, u *User, qs []*Query, total int, status *Status, cutoff time.Time) ([]*Query, int, error) {
	member := map[int64]bool{}
	out := qs[:0]
	for _, q := range qs {
		m, ok := member[q.ProjectID]
		if !ok {
			var err error
			if m, err = tx.IsMember(ctx, q.ProjectID, u.Subject); err != nil {
				return nil, 0, err
			}
			member[q.ProjectID] = m
		}
		if m {
			views, err := s.researcherQueries(ctx, tx, []*Query{q}, cutoff)
			if err != nil {
				return nil, 0, err
			}
			if q = views[0]; status != nil && q.Status != *status {
				total--
				continue
			}
		}
		out = append(out, q)
	}
	return out, total, nil
}

// cutoff is the instant a researcher's view stands at: the last boundary of
// the granularity at or before now.
func (s *Service) cutoff() time.Time { return s.clock().Truncate(s.granularity) }

// ceilTo returns the first multiple of g at or after t.
func ceilTo(t time.Time, g time.Duration) time.Time {
	c := t.Truncate(g)
	if c.Before(t) {
		c = c.Add(g)
	}
	return c
}

// ownStatus reports whether a researcher reaches st by their own act, which
// they see at once and at its exact time.
func ownStatus(st Status) bool { return st == StatusSubmitted || st == StatusCancelled }

// researcherHistory returns the events a researcher sees at cutoff, dated
// as they see them: an event becomes visible at the first multiple of g at
// or after it — and a run's end (leaving running) no earlier than hold
// after the run's start — and never before the event before it; those
// visible at cutoff are shown, and any event followed by one of the
// researcher's own acts, which are shown at once at their exact times.
func researcherHistory(events []Event, cutoff time.Time, g, hold time.Duration) []Event {
	visible := make([]time.Time, len(events))
	var start, prev time.Time
	for i, e := range events {
		at := e.At
		if !ownStatus(e.To) {
			at = ceilTo(e.At, g)
			if hold > 0 && e.From == StatusRunning && e.To != StatusRunning && !start.IsZero() {
				at = later(at, ceilTo(start.Add(hold), g))
			}
			at = later(at, prev)
		}
		if e.To == StatusRunning && start.IsZero() {
			start = e.At
		}
		visible[i], prev = at, at
	}
	last := -1
	for i, e := range events {
		if ownStatus(e.To) || !visible[i].After(cutoff) {
			last = i
		}
	}
	out := make([]Event, 0, last+1)
	for i, e := range events[:last+1] {
		if e.From == StatusRunning && e.To == StatusRunning {
			continue // a re-lease or a retried attempt
		}
		v := e
		v.At = visible[i]
		switch e.To {
		case StatusRunning, StatusAwaitingOutputCheck:
			v.Actor, v.Comment = SiteActor, ""
		case StatusFailed:
			v.Comment = FailedMessage
		}
		out = append(out, v)
	}
	// A decision shown only because an own act followed it within the same
	// interval is dated no later than that act.
	for i := len(out) - 2; i >= 0; i-- {
		if out[i].At.After(out[i+1].At) {
			out[i].At = out[i+1].At
		}
	}
	return out
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// researcherQuery returns a copy of q as a researcher sees it at cutoff,
// given q's whole history. The copy has the visible history only when
// withHistory is set.
func (s *Service) researcherQuery(q *Query, events []Event, cutoff time.Time, withHistory bool) *Query {
	v := *q
	v.Attempts, v.FailureCode, v.FailureDetail = 0, "", ""
	v.Federation = researcherFederation(q.Federation)
	v.RiskFlags = researcherFlags(q.RiskFlags)
	h := researcherHistory(events, cutoff, s.granularity, s.runHold)
	if len(h) == 0 { // every query has its submission event; be safe anyway
		h = []Event{{To: StatusSubmitted, Actor: q.SubmittedBy, At: q.SubmittedAt}}
	}
	last := h[len(h)-1]
	v.Status, v.UpdatedAt = last.To, last.At
	if !slices.ContainsFunc(h, func(e Event) bool { return e.To == StatusApproved }) {
		v.ApprovedBy = ""
	}
	v.History = nil
	if withHistory {
		v.History = h
	}
	return &v
}

// needsHistory reports whether a query's researcher view cannot be read off
// its row: it changed after the cutoff (the change may not be visible yet),
// it is running (its updated_at may be a hidden re-lease's), or, with a run
// hold, its run has ended (it is dated from the run's start).
func (s *Service) needsHistory(q *Query, cutoff time.Time) bool {
	switch q.Status {
	case StatusRunning:
		return true
	case StatusAwaitingOutputCheck, StatusReleased, StatusWithheld, StatusFailed:
		if s.runHold > 0 {
			return true
		}
	}
	return q.UpdatedAt.After(cutoff) && !ownStatus(q.Status)
}

// researcherQueries turns listed queries (without history) into the
// researcher's view, reading the history of those that need it.
func (s *Service) researcherQueries(ctx context.Context, tx Tx, qs []*Query, cutoff time.Time) ([]*Query, error) {
	out := make([]*Query, len(qs))
	for i, q := range qs {
		if s.needsHistory(q, cutoff) {
			events, err := tx.FindEvents(ctx, q.ID)
			if err != nil {
				return nil, err
			}
			out[i] = s.researcherQuery(q, events, cutoff, false)
			continue
		}
		v := *q
		v.Attempts, v.FailureCode, v.FailureDetail, v.History = 0, "", "", nil
		v.Federation = researcherFederation(q.Federation)
		if !ownStatus(q.Status) {
			v.UpdatedAt = ceilTo(q.UpdatedAt, s.granularity)
		}
		out[i] = &v
	}
	return out, nil
}

// findResearcherQueries lists queries for a researcher (member) as they see
// them at cutoff. A status filter selects by the status the researcher
// sees: the queries whose stored status is that status and whose change to
// it is visible, and the recently changed ones that still look like it.
func (s *Service) findResearcherQueries(ctx context.Context, tx Tx, f QueryFilter, member string, cutoff time.Time) ([]*Query, int, error) {
	if f.Status != nil {
		// Changes at or before settled are visible at cutoff, whatever
		// the run hold.
		settled := cutoff.Add(-s.runHold)
		recent := f
		recent.Status, recent.Offset, recent.Limit = nil, 0, MaxLimit
		recent.UpdatedAfter = &settled
		changed, _, err := tx.FindQueries(ctx, recent, member)
		if err != nil {
			return nil, 0, err
		}
		views, err := s.researcherQueries(ctx, tx, changed, cutoff)
		if err != nil {
			return nil, 0, err
		}
		for _, v := range views {
			if v.Status == *f.Status {
				f.OrIDs = append(f.OrIDs, v.ID)
			}
		}
		if !ownStatus(*f.Status) {
			f.UpdatedBefore = &settled
		}
	}
	qs, n, err := tx.FindQueries(ctx, f, member)
	if err != nil {
		return nil, 0, err
	}
	qs, err = s.researcherQueries(ctx, tx, qs, cutoff)
	return qs, n, err
}

// researcherBudget moves to reserved the charges of runs whose start a
// researcher cannot see yet at cutoff: when a job is leased depends on how
// long the jobs before it ran.
func (s *Service) researcherBudget(ctx context.Context, tx Tx, p *Project, cutoff time.Time) error {
	started, err := s.startedAfter(ctx, tx, &p.ID, cutoff)
	if err != nil {
		return err
	}
	for _, q := range started {
		b := &p.Budget
		b.EpsilonSpent, b.EpsilonReserved = shift(b.EpsilonSpent, b.EpsilonReserved, ledgerCost(q).Epsilon)
		b.DeltaSpent, b.DeltaReserved = shift(b.DeltaSpent, b.DeltaReserved, ledgerCost(q).Delta)
	}
	return nil
}

// shift moves x from a to b, rounding away the float error of undoing a sum
// so that the figures read as if the store had summed without x.
func shift(a, b, x float64) (float64, float64) {
	round := func(v float64) float64 {
		r, _ := strconv.ParseFloat(strconv.FormatFloat(v, 'g', 12, 64), 64)
		return max(r, 0)
	}
	return round(a - x), round(b + x)
}

// startedAfter returns the queries (of project, when not nil) whose run
// started, and so whose budget was charged, after cutoff.
func (s *Service) startedAfter(ctx context.Context, tx Tx, project *int64, cutoff time.Time) ([]*Query, error) {
	recent, _, err := tx.FindQueries(ctx, QueryFilter{ProjectID: project, UpdatedAfter: &cutoff, Limit: MaxLimit}, "")
	if err != nil {
		return nil, err
	}
	var out []*Query
	for _, q := range recent {
		switch q.Status {
		case StatusRunning, StatusAwaitingOutputCheck, StatusReleased, StatusWithheld, StatusFailed:
		default:
			continue
		}
		events, err := tx.FindEvents(ctx, q.ID)
		if err != nil {
			return nil, err
		}
		if i := slices.IndexFunc(events, func(e Event) bool { return e.To == StatusRunning }); i >= 0 && events[i].At.After(cutoff) {
			out = append(out, q)
		}
	}
	return out, nil
}

// researcherFederation is a federated query's federation as a researcher
// sees it: without the deadline, which dates the approval to the instant
// (researchers see it only at the granularity), and with the project's
// cost as quoted at submission (which a failure never refunds:
// federatedFailure).
func researcherFederation(f *Federation) *Federation {
	if f == nil {
		return nil
	}
	v := *f
	v.Deadline = time.Time{}
	n := float64(v.Sites)
	if v.DisjointPopulations {
		n = 1
	}
	v.ProjectCost = dp.Cost{Epsilon: v.SiteCost.Epsilon * n, Delta: v.SiteCost.Delta * n}
	return &v
}
