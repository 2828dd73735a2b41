package broker

import (
	"context"

	"github.com/nhs-tre/tre/dp"
)

// QuerySpec is the protection spec query id compiles to over its dataset's
// catalog at its approved cost, as the site compiles it: what a reviewer,
// output checker, admin or a researcher of the query's project reads of the
// query's shape that the query record does not hold (the grouping sets of
// a query with totals). It follows from the SQL and the catalog alone,
// never from data. The compilation comes from the plan cache after the
// first.
func (s *Service) QuerySpec(ctx context.Context, id int64) (*dp.Spec, error) {
	u, err := s.authorize(ctx, "query.view", queryObject(id), RoleReviewer, RoleOutputChecker, RoleAdmin, RoleResearcher)
	if err != nil {
		return nil, err
	}
	if !isStaff(u) {
		if err := s.view(ctx, u, func(tx Tx) error {
			_, err := visibleQuery(ctx, tx, u, id)
			return err
		}); err != nil {
			return nil, err
		}
	}
	spec, err := s.approvedSpec(ctx, u, id)
	if err != nil {
		return nil, err
	}
	return &spec, nil
}
