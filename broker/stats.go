package broker

import (
	"context"
	"time"
)

// The operational figures below feed the operator's metrics listener: no
// patient data, no SQL, no names — counts, budgets by project id and agent
// health. They are not API calls and need no identity. Each reads only what
// its metric needs, since a scrape asks for all three.

// ProjectBudget is one active project's budget position.
type ProjectBudget struct {
	ProjectID     int64
	EpsilonBudget float64
	DeltaBudget   float64
	Budget
}

// allStatuses lists every query status, for complete queue-depth figures.
var allStatuses = []Status{
	StatusSubmitted, StatusRejected, StatusApproved, StatusCancelled, StatusRunning,
	StatusAwaitingOutputCheck, StatusReleased, StatusWithheld, StatusFailed,
}

// QueueDepth returns the number of queries in each status.
func (s *Service) QueueDepth(ctx context.Context) (map[Status]int, error) {
	depth := make(map[Status]int, len(allStatuses))
	err := s.store.View(ctx, func(tx Tx) error {
		for _, status := range allStatuses {
			status := status
			_, n, err := tx.FindQueries(ctx, QueryFilter{Status: &status, Limit: 1}, "")
			if err != nil {
				return err
			}
			depth[status] = n
		}
		return nil
	})
	return depth, err
}

// ActiveBudgets returns every active project's budget position.
func (s *Service) ActiveBudgets(ctx context.Context) ([]ProjectBudget, error) {
	var budgets []ProjectBudget
	active := ProjectActive
	err := s.store.View(ctx, func(tx Tx) error {
		budgets = budgets[:0]
		for offset := 0; ; {
			projects, total, err := tx.FindProjects(ctx, ProjectFilter{Status: &active, Offset: offset, Limit: 1000})
			if err != nil {
				return err
			}
			for _, p := range projects {
				budgets = append(budgets, ProjectBudget{ProjectID: p.ID, EpsilonBudget: p.EpsilonBudget, DeltaBudget: p.DeltaBudget, Budget: p.Budget})
			}
			offset += len(projects)
			if len(projects) == 0 || offset >= total {
				return nil
			}
		}
	})
	return budgets, err
}

// SitesLastSeen returns when each site's agent last called the broker.
func (s *Service) SitesLastSeen(ctx context.Context) (map[string]time.Time, error) {
	seen := map[string]time.Time{}
	err := s.store.View(ctx, func(tx Tx) error {
		sites, err := tx.FindSites(ctx)
		if err != nil {
			return err
		}
		for _, site := range sites {
			seen[site.ID] = site.LastSeen
		}
		return nil
	})
	return seen, err
}
