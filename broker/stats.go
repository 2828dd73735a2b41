package broker

import (
	"context"
	"time"
)

// Stats is the operational state the metrics endpoint reports: no patient
// data, no SQL, no names — counts, budgets by project id and agent health.
type Stats struct {
	QueueDepth map[Status]int
	Budgets    []ProjectBudget
	SitesSeen  map[string]time.Time
}

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

// Stats reads the operational figures in one read transaction. It is for the
// operator's metrics listener, not for API callers, and needs no identity.
func (s *Service) Stats(ctx context.Context) (*Stats, error) {
	st := &Stats{QueueDepth: map[Status]int{}, SitesSeen: map[string]time.Time{}}
	err := s.store.View(ctx, func(tx Tx) error {
		for _, status := range allStatuses {
			status := status
			_, n, err := tx.FindQueries(ctx, QueryFilter{Status: &status, Limit: 1}, "")
			if err != nil {
				return err
			}
			st.QueueDepth[status] = n
		}
		active := ProjectActive
		for offset := 0; ; {
			projects, total, err := tx.FindProjects(ctx, ProjectFilter{Status: &active, Offset: offset, Limit: 1000})
			if err != nil {
				return err
			}
			for _, p := range projects {
				st.Budgets = append(st.Budgets, ProjectBudget{ProjectID: p.ID, EpsilonBudget: p.EpsilonBudget, DeltaBudget: p.DeltaBudget, Budget: p.Budget})
			}
			offset += len(projects)
			if len(projects) == 0 || offset >= total {
				break
			}
		}
		sites, err := tx.FindSites(ctx)
		if err != nil {
			return err
		}
		for _, site := range sites {
			st.SitesSeen[site.ID] = site.LastSeen
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return st, nil
}
