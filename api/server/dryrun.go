package server

import (
	"context"
	"sync"
	"time"

	"github.com/nhs-tre/tre/api"
	"github.com/nhs-tre/tre/broker"
	"github.com/nhs-tre/tre/dp"
	"github.com/nhs-tre/tre/job"
)

// Dry runs start a sandbox process on the broker host for each request:
// the broker's most expensive work, and one a researcher triggers at will.
// DryRunLimits caps how many run at once, in all and per user; a dry run
// beyond a cap is refused at once with 429 and a Retry-After, never queued,
// so a burst cannot pile up processes or hold connections open.

// DryRunLimits are the concurrency caps of dry runs.
type DryRunLimits struct {
	// Global is how many dry runs may run at once on this broker.
	Global int
	// PerUser is how many one subject may run at once.
	PerUser int
	// RetryAfter is the wait suggested to a refused caller (default 1s,
	// about one dry run).
	RetryAfter time.Duration
}

// LimitDryRuns returns a DryRunner that passes at most lim.Global
// concurrent dry runs, and lim.PerUser of any one caller, to r. The caller
// is the authenticated user in the context.
func LimitDryRuns(r api.DryRunner, lim DryRunLimits) api.DryRunner {
	if lim.RetryAfter <= 0 {
		lim.RetryAfter = time.Second
	}
	return &limitedDryRuns{next: r, lim: lim, byUser: map[string]int{}}
}

type limitedDryRuns struct {
	next api.DryRunner
	lim  DryRunLimits

	mu      sync.Mutex
	running int
	byUser  map[string]int
}

// limitError is a refusal for load, with the wait a client should leave
// before trying again (the Retry-After header).
type limitError struct {
	err   *broker.Error
	after time.Duration
}

func (e *limitError) Error() string { return e.err.Error() }
func (e *limitError) Unwrap() error { return e.err }

func (l *limitedDryRuns) DryRun(ctx context.Context, dataset, sql string, epsilon float64, codelists []job.Codelist) (*dp.Result, []job.AbsentCodes, error) {
	sub := ""
	if u := broker.UserFromContext(ctx); u != nil {
		sub = u.Subject
	}
	l.mu.Lock()
	switch {
	case l.byUser[sub] >= l.lim.PerUser:
		l.mu.Unlock()
		return nil, nil, &limitError{broker.Errorf(broker.ELIMIT, "you already have %d dry run(s) running, the most one person may: try again when it has finished", l.lim.PerUser), l.lim.RetryAfter}
	case l.running >= l.lim.Global:
		l.mu.Unlock()
		return nil, nil, &limitError{broker.Errorf(broker.ELIMIT, "the broker is running %d dry runs, as many as it allows at once: try again in a moment", l.lim.Global), l.lim.RetryAfter}
	}
	l.running++
	l.byUser[sub]++
	l.mu.Unlock()
	defer func() {
		l.mu.Lock()
		l.running--
		if l.byUser[sub]--; l.byUser[sub] <= 0 {
			delete(l.byUser, sub)
		}
		l.mu.Unlock()
	}()
	return l.next.DryRun(ctx, dataset, sql, epsilon, codelists)
}
