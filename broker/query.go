package broker

import (
	"context"
	"slices"
)

// canSeeQuery applies visibility: staff see every query, researchers only
// their projects'.
func canSeeQuery(ctx context.Context, tx Tx, u *User, q *Query) (bool, error) {
	if isStaff(u) {
		return true, nil
	}
	if !u.HasRole(RoleResearcher) {
		return false, nil
	}
	return tx.IsMember(ctx, q.ProjectID, u.Subject)
}

// visibleQuery loads query id for u, refusing (audited) a caller who may
// not see it.
func visibleQuery(ctx context.Context, tx Tx, u *User, id int64) (*Query, error) {
	rec, err := tx.FindQuery(ctx, id)
	if err != nil {
		return nil, err
	}
	if ok, err := canSeeQuery(ctx, tx, u, rec.Query); err != nil {
		return nil, err
	} else if !ok {
		return nil, deny("query.read", queryObject(id), "you may not see query %d", id)
	}
	return rec.Query, nil
}

// FindQueryByID returns a query with its history.
func (s *Service) FindQueryByID(ctx context.Context, id int64) (*Query, error) {
	u, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	// The frequent read (a researcher polling for a result) in one
	// statement: the query, its events and the caller's membership.
	rec, events, member, err := s.store.ReadQuery(ctx, id, u.Subject, WantsRewritten(ctx))
	if err != nil {
		return nil, err
	}
	q := rec.Query
	if !isStaff(u) && !(u.HasRole(RoleResearcher) && member) {
		return nil, s.settle(ctx, u, deny("query.read", queryObject(id), "you may not see query %d", id))
	}
	if q.Federation == nil {
		switch {
		case researcherSees(u) || member:
			return s.researcherQuery(q, events, s.cutoff(), true), nil
		case !slices.ContainsFunc(q.RiskFlags, func(f RiskFlag) bool { return f.SimilarQueryID != 0 }):
			q.History = events
			return q, nil
		}
	}
	// Staff outside the project see its risk flags' queries as they are
	// now (refreshFlags), and a federated query's sites: a transaction
	// over several rows.
	err = s.view(ctx, u, func(tx Tx) error {
		if q, err = visibleQuery(ctx, tx, u, id); err != nil {
			return err
		}
		if q.History, err = tx.FindEvents(ctx, id); err != nil {
			return err
		}
		researcher, err := researcherFor(ctx, tx, u, q.ProjectID)
		if err != nil {
			return err
		}
		if q.Federation != nil {
			jobs, err := tx.FindJobs(ctx, id)
			if err != nil {
				return err
			}
			q.Sites = querySites(jobs, !researcher)
		}
		if err := withRewritten(ctx, tx, []*Query{q}); err != nil {
			return err
		}
		if researcher {
			q = s.researcherQuery(q, q.History, s.cutoff(), true)
			return nil
		}
		return refreshFlags(ctx, tx, q)
	})
	if err != nil {
		return nil, err
	}
	return q, nil
}

// FindQueries lists queries, oldest first: staff see all, researchers their
// projects' queries.
func (s *Service) FindQueries(ctx context.Context, f QueryFilter) ([]*Query, int, error) {
	u, err := s.authorize(ctx, "query.list", "queries", RoleResearcher, RoleReviewer, RoleOutputChecker, RoleAdmin)
	if err != nil {
		return nil, 0, err
	}
	member := ""
	if !isStaff(u) {
		member = u.Subject
	}
	if f.Status != nil && !f.Status.Valid() {
		return nil, 0, Errorf(EINVALID, "unknown status %q", *f.Status)
	}
	f.Limit = pageLimit(f.Limit)
	var qs []*Query
	var n int
	err = s.store.View(ctx, func(tx Tx) error {
		if researcherSees(u) {
			if qs, n, err = s.findResearcherQueries(ctx, tx, f, member, s.cutoff()); err != nil {
				return err
			}
			return withRewritten(ctx, tx, qs)
		}
		if qs, n, err = tx.FindQueries(ctx, f, member); err != nil {
			return err
		}
		if qs, n, err = s.memberViews(ctx, tx, u, qs, n, f.Status, s.cutoff()); err != nil {
			return err
		}
		return withRewritten(ctx, tx, qs)
	})
	return qs, n, err
}

// ReviewQueue returns submitted queries, oldest first, for reviewers.
func (s *Service) ReviewQueue(ctx context.Context) ([]*Query, error) {
	u, err := s.authorize(ctx, "review.queue", "queries", RoleReviewer)
	if err != nil {
		return nil, err
	}
	return s.queue(ctx, u, StatusSubmitted)
}

// OutputQueue returns outputs (results and failure notices) awaiting an
// output check, oldest first.
func (s *Service) OutputQueue(ctx context.Context) ([]*Query, error) {
	u, err := s.authorize(ctx, "output.queue", "queries", RoleOutputChecker)
	if err != nil {
		return nil, err
	}
	return s.queue(ctx, u, StatusAwaitingOutputCheck)
}

// queue lists the queries in st, their risk flags showing the earlier
// queries' statuses as they are now; the caller's own projects' queries as
// their researchers see them (memberViews).
func (s *Service) queue(ctx context.Context, u *User, st Status) ([]*Query, error) {
	var qs []*Query
	err := s.store.View(ctx, func(tx Tx) error {
		var err error
		var n int
		if qs, n, err = tx.FindQueries(ctx, QueryFilter{Status: &st, Limit: MaxLimit}, ""); err != nil {
			return err
		}
		for _, q := range qs {
			if err := refreshFlags(ctx, tx, q); err != nil {
				return err
			}
		}
		if qs, _, err = s.memberViews(ctx, tx, u, qs, n, &st, s.cutoff()); err != nil {
			return err
		}
		return withRewritten(ctx, tx, qs)
	})
	return qs, err
}

// withRewritten sets the rewritten SQL of qs (in place: the service's own
// copies) when ctx asks for it (WithRewritten); the store reads queries
// without it.
func withRewritten(ctx context.Context, tx Tx, qs []*Query) error {
	if !WantsRewritten(ctx) || len(qs) == 0 {
		return nil
	}
	ids := make([]int64, len(qs))
	for i, q := range qs {
		ids[i] = q.ID
	}
	texts, err := tx.FindRewritten(ctx, ids)
	if err != nil {
		return err
	}
	for _, q := range qs {
		q.Rewritten = texts[q.ID]
	}
	return nil
}
