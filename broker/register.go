package broker

import (
	"context"
	"slices"
	"strings"
)

// Register returns the public transparency register. Anyone may read it.
// Like a researcher, the public sees a run's charge only once the run's
// start is visible (researcher.go): the ε spent moves when a job is leased,
// which depends on how long the jobs before it ran.
func (s *Service) Register(ctx context.Context) ([]*RegisterEntry, error) {
	var out []*RegisterEntry
	err := s.store.View(ctx, func(tx Tx) error {
		var err error
		if out, err = tx.Register(ctx); err != nil {
			return err
		}
		if err := registerCodelists(ctx, tx, out); err != nil {
			return err
		}
		started, err := s.startedAfter(ctx, tx, nil, s.cutoff())
		if err != nil {
			return err
		}
		for _, q := range started {
			for _, e := range out {
				if e.ProjectID == q.ProjectID {
					e.EpsilonSpent, _ = shift(e.EpsilonSpent, 0, ledgerCost(q).Epsilon)
				}
			}
		}
		return nil
	})
	return out, err
}

// registerCodelists sets on each entry the codelists its project's
// released queries used, by name and hash: anyone can see what a code list
// in a released result meant.
func registerCodelists(ctx context.Context, tx Tx, entries []*RegisterEntry) error {
	uses, err := tx.FindCodelistUses(ctx, "")
	if err != nil {
		return err
	}
	byProject := make(map[int64]*RegisterEntry, len(entries))
	for _, e := range entries {
		byProject[e.ProjectID] = e
	}
	for _, u := range uses {
		e := byProject[u.ProjectID]
		ref := CodelistRef{Name: u.Codelist, Hash: u.Hash}
		if e != nil && u.Status == StatusReleased && !slices.Contains(e.Codelists, ref) {
			e.Codelists = append(e.Codelists, ref)
		}
	}
	for _, e := range entries {
		slices.SortFunc(e.Codelists, func(a, b CodelistRef) int { return strings.Compare(a.Name, b.Name) })
	}
	return nil
}
