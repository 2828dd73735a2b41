package broker

import "context"

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
		started, err := s.startedAfter(ctx, tx, nil, s.cutoff())
		if err != nil {
			return err
		}
		for _, q := range started {
			for _, e := range out {
				if e.ProjectID == q.ProjectID {
					e.EpsilonSpent, _ = shift(e.EpsilonSpent, 0, q.Cost.Epsilon)
				}
			}
		}
		return nil
	})
	return out, err
}
