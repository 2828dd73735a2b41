package broker

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Failed authentications (a missing, malformed, forged or expired token, or
// a valid token without the role a route needs) are aggregated per source
// address before they reach the audit chain: each source gets at most one
// auth.failure entry per window, with the number of failures and what they
// were. Every request is still refused; only the record is aggregated, so
// junk requests cannot flood the chain or compete for its single writer.

// Defaults of the aggregation.
const (
	DefaultAuthFailureWindow = time.Minute
	// maxFailureSources bounds the sources held at once; failures from
	// further sources in the same windows are counted under "other".
	maxFailureSources = 10_000
	// maxFailureValues bounds the distinct reasons, actions and subjects
	// an entry lists.
	maxFailureValues = 5
	otherSource      = "other"
)

// AuthFailure is one refused request.
type AuthFailure struct {
	// Source is the client's address as the HTTP server saw it.
	Source string
	// Subject is the token's subject when it named one, else "".
	Subject string
	// Action is the route or page refused; Reason why, safe to show.
	Action, Reason string
}

// failureWindow is one source's failures since start.
type failureWindow struct {
	start, last                time.Time
	count                      int
	reasons, actions, subjects []string
}

func addValue(list []string, v string) []string {
	if v == "" || len(list) >= maxFailureValues || slices.Contains(list, v) {
		return list
	}
	return append(list, v)
}

// authFailures holds the open windows.
type authFailures struct {
	mu       sync.Mutex
	window   time.Duration
	bySource map[string]*failureWindow
}

// closedWindow is a window ready for the audit chain.
type closedWindow struct {
	source string
	w      *failureWindow
}

// add counts f at now and returns the source's previous window if it had
// ended.
func (a *authFailures) add(f AuthFailure, now time.Time) []closedWindow {
	a.mu.Lock()
	defer a.mu.Unlock()
	src := f.Source
	if src == "" {
		src = "unknown"
	}
	var done []closedWindow
	w := a.bySource[src]
	if w != nil && !now.Before(w.start.Add(a.window)) {
		done = append(done, closedWindow{src, w})
		w = nil
	}
	if w == nil {
		if len(a.bySource) >= maxFailureSources {
			src = otherSource
			w = a.bySource[src]
		}
		if w == nil {
			w = &failureWindow{start: now}
			a.bySource[src] = w
		}
	}
	w.count++
	w.last = now
	w.reasons = addValue(w.reasons, f.Reason)
	w.actions = addValue(w.actions, f.Action)
	w.subjects = addValue(w.subjects, f.Subject)
	return done
}

// due removes and returns the windows that ended before now, or every
// window when all is true.
func (a *authFailures) due(now time.Time, all bool) []closedWindow {
	a.mu.Lock()
	defer a.mu.Unlock()
	var done []closedWindow
	for src, w := range a.bySource {
		if all || !now.Before(w.start.Add(a.window)) {
			done = append(done, closedWindow{src, w})
			delete(a.bySource, src)
		}
	}
	slices.SortFunc(done, func(x, y closedWindow) int { return x.w.start.Compare(y.w.start) })
	return done
}

// RecordAuthFailure counts a refused request against its source. The
// source's aggregate reaches the audit chain when its window ends: on the
// source's next failure after that, or at the next FlushAuthFailures.
func (s *Service) RecordAuthFailure(ctx context.Context, f AuthFailure) {
	s.writeFailures(ctx, s.failures.add(f, s.clock()))
}

// FlushAuthFailures writes the aggregates whose window has ended, or every
// aggregate when all is true (at shutdown). The broker's runtime calls it
// periodically, so that a source that stops still gets its entry.
func (s *Service) FlushAuthFailures(ctx context.Context, all bool) {
	s.writeFailures(ctx, s.failures.due(s.clock(), all))
}

// writeFailures appends one auth.failure entry per closed window.
func (s *Service) writeFailures(ctx context.Context, done []closedWindow) {
	for _, c := range done {
		w := c.w
		actor := "anonymous"
		if len(w.subjects) == 1 {
			actor = w.subjects[0]
		}
		s.recordAudit(ctx, actor, "auth.failure", "source/"+c.source, auditDetail(
			"count", strconv.Itoa(w.count),
			"first", w.start.Format(time.RFC3339Nano), "last", w.last.Format(time.RFC3339Nano),
			"reasons", strings.Join(w.reasons, "; "), "actions", strings.Join(w.actions, "; "),
			"subjects", strings.Join(w.subjects, ", ")))
	}
}
