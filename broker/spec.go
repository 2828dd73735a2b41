package broker

import (
	"context"

	"github.com/nhs-tre/tre/dp"
)

// QuerySpec is the protection spec query id compiles to over its dataset's
// catalog at its approved cost, as the site compiles it: what a reviewer,
// output checker or admin reads of the query's shape that the query record
// does not hold (the grouping sets of a query with totals). It follows from
// the SQL and the catalog alone, never from data. The compilation comes
// from the plan cache after the first.
func (s *Service) QuerySpec(ctx context.Context, id int64) (*dp.Spec, error) {
	u, err := s.authorize(ctx, "query.view", queryObject(id), RoleReviewer, RoleOutputChecker, RoleAdmin)
	if err != nil {
		return nil, err
	}
	spec, err := s.approvedSpec(ctx, u, id)
	if err != nil {
		return nil, err
	}
	return &spec, nil
}
