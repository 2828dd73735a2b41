package broker

import (
	"context"
	"strings"

	"github.com/nhs-tre/tre/dp"
)

// CancelQuery withdraws a query before a reviewer decides on it. Only its
// submitter may.
//
// An approved query cannot be cancelled: whether a cancel came before or
// after the site leased the job would tell the researcher when the job
// started, to the instant, and that depends on how long the jobs before it
// ran (researcher.go hides it otherwise). The refusal says the same whatever
// has happened since the submission.
func (s *Service) CancelQuery(ctx context.Context, id int64) (*Query, error) {
	u, err := s.authorize(ctx, "query.cancel", queryObject(id), RoleResearcher)
	if err != nil {
		return nil, err
	}
	now := s.clock()
	q, err := s.decide(ctx, u, id, func(tx Tx, rec *QueryRecord) error {
		if rec.Query.SubmittedBy != u.Subject {
			return deny("query.cancel", queryObject(id), "only the submitter may cancel query %d", id)
		}
		if rec.Query.Status != StatusSubmitted {
			return wrapf(ErrIllegalTransition, "query %d cannot be cancelled: a query can be cancelled only until a reviewer decides on it", id)
		}
		return move(ctx, tx, rec, StatusCancelled, u.Subject, "", "query.cancel", "", now)
	})
	if err != nil {
		return nil, err
	}
	// Only the submitter cancels: a researcher of the project.
	return s.researcherQuery(q, q.History, s.cutoff(), true), nil
}

// ApproveQuery approves a submitted query and reserves its cost in the
// project's budget in the same transaction. A reviewer cannot approve their
// own query; approval that would overspend is refused.
func (s *Service) ApproveQuery(ctx context.Context, id int64, comment string) (*Query, error) {
	u, err := s.authorize(ctx, "query.approve", queryObject(id), RoleReviewer)
	if err != nil {
		return nil, err
	}
	now := s.clock()
	return s.decide(ctx, u, id, func(tx Tx, rec *QueryRecord) error {
		q := rec.Query
		if err := checkTransition(id, q.Status, StatusApproved); err != nil {
			return err
		}
		member, err := tx.IsMember(ctx, q.ProjectID, u.Subject)
		if err != nil {
			return err
		}
		if err := reviewDuty(u, q, member, "query.approve"); err != nil {
			return err
		}
		if err := tx.LockProject(ctx, q.ProjectID); err != nil {
			return err
		}
		p, err := tx.FindProject(ctx, q.ProjectID)
		if err != nil {
			return err
		}
		if err := usable(p, now); err != nil {
			return err
		}
		// A federated query costs the project its ledger factor times its
		// cost (federation.go); a single-site query its cost.
		cost := projectCost(rec)
		if used, limit := p.used(), p.limit(); !cost.Fits(used, limit) {
			if !dp.Within(used.Epsilon, cost.Epsilon, limit.Epsilon) {
				return wrapf(ErrBudgetExhausted, "approving query %d would overspend project %d: it costs ε %s and ε %s remains",
					id, p.ID, fmtFloat(cost.Epsilon), fmtFloat(p.Budget.EpsilonRemaining))
			}
			return wrapf(ErrBudgetExhausted, "approving query %d would overspend project %d: it costs δ %s and δ %s remains",
				id, p.ID, fmtFloat(cost.Delta), fmtFloat(p.Budget.DeltaRemaining))
		}
		detail := auditDetail("reserved_epsilon", fmtFloat(cost.Epsilon), "reserved_delta", fmtFloat(cost.Delta))
		if rec.Sites > 0 {
			fed, err := s.approveFederated(ctx, tx, rec, p, now)
			if err != nil {
				return err
			}
			detail += " " + fed
		}
		rec.Ledger = LedgerReserved
		q.ApprovedBy = u.Subject
		return move(ctx, tx, rec, StatusApproved, u.Subject, comment, "query.approve", detail, now)
	})
}

// RejectQuery rejects a submitted query with a reason.
func (s *Service) RejectQuery(ctx context.Context, id int64, reason string) (*Query, error) {
	u, err := s.authorize(ctx, "query.reject", queryObject(id), RoleReviewer)
	if err != nil {
		return nil, err
	}
	if strings.TrimSpace(reason) == "" {
		return nil, Errorf(EINVALID, "a reason is required to reject a query")
	}
	now := s.clock()
	return s.decide(ctx, u, id, func(tx Tx, rec *QueryRecord) error {
		if err := checkTransition(id, rec.Query.Status, StatusRejected); err != nil {
			return err
		}
		member, err := tx.IsMember(ctx, rec.Query.ProjectID, u.Subject)
		if err != nil {
			return err
		}
		if err := reviewDuty(u, rec.Query, member, "query.reject"); err != nil {
			return err
		}
		return move(ctx, tx, rec, StatusRejected, u.Subject, reason, "query.reject", "", now)
	})
}
