package broker

import (
	"context"
	"time"
)

// nextStatuses is the query state machine of CONTRACT.md: the statuses
// from may move to. running→running is a re-lease after an expired lease or
// a retryable failed attempt. Every run ends in awaiting_output_check, with
// a result or with a failure notice: a failed run is an output like any
// other. Releasing a result makes the query released, releasing a failure
// notice makes it failed; either may be withheld. The other statuses are
// final.
func nextStatuses(from Status) []Status {
	switch from {
	case StatusSubmitted:
		return []Status{StatusApproved, StatusRejected, StatusCancelled}
	case StatusApproved:
		// Not cancelled: see CancelQuery.
		return []Status{StatusRunning}
	case StatusRunning:
		return []Status{StatusRunning, StatusAwaitingOutputCheck}
	case StatusAwaitingOutputCheck:
		return []Status{StatusReleased, StatusWithheld, StatusFailed}
	}
	return nil
}

// Statuses lists every query status in lifecycle order.
func Statuses() []Status {
	return []Status{
		StatusSubmitted, StatusApproved, StatusRejected, StatusCancelled, StatusRunning,
		StatusAwaitingOutputCheck, StatusReleased, StatusWithheld, StatusFailed,
	}
}

// Valid reports whether s is a known status.
func (s Status) Valid() bool {
	for _, x := range Statuses() {
		if s == x {
			return true
		}
	}
	return false
}

// CanTransition reports whether the state machine allows from → to.
func CanTransition(from, to Status) bool {
	for _, x := range nextStatuses(from) {
		if x == to {
			return true
		}
	}
	return false
}

// checkTransition returns a conflict naming both states when from → to is
// not allowed.
func checkTransition(id int64, from, to Status) error {
	if CanTransition(from, to) {
		return nil
	}
	return wrapf(ErrIllegalTransition, "query %d is %s and cannot become %s", id, from, to)
}

// lockQuery locks and loads a query for a state change.
func lockQuery(ctx context.Context, tx Tx, id int64) (*QueryRecord, error) {
	if err := tx.LockQuery(ctx, id); err != nil {
		return nil, err
	}
	return tx.FindQuery(ctx, id)
}

// move changes a query's status, records the event and appends the audit
// entry: the last write of the transaction.
func move(ctx context.Context, tx Tx, rec *QueryRecord, to Status, actor, comment, action, detail string, at time.Time) error {
	q := rec.Query
	from := q.Status
	if err := checkTransition(q.ID, from, to); err != nil {
		return err
	}
	if o, ok := tx.(*observedTx); ok {
		t := Transition{From: from, To: to, InState: at.Sub(q.UpdatedAt)}
		if from == StatusRunning && to == StatusAwaitingOutputCheck {
			t.FailureCode = q.FailureCode
		}
		o.transitions = append(o.transitions, t)
	}
	q.Status = to
	q.UpdatedAt = at
	q.Federation = FederationOf(rec)
	if err := tx.UpdateQuery(ctx, rec); err != nil {
		return err
	}
	if err := tx.AddEvent(ctx, q.ID, Event{From: from, To: to, Actor: actor, Comment: comment, At: at}); err != nil {
		return err
	}
	d := auditDetail("from", string(from), "to", string(to))
	if comment != "" {
		d += " " + auditDetail("comment", comment)
	}
	if detail != "" {
		d += " " + detail
	}
	return appendAudit(ctx, tx, at, actor, action, queryObject(q.ID), d)
}

// decide runs a decision on query id in one transaction and returns the
// query with its history.
func (s *Service) decide(ctx context.Context, u *User, id int64, fn func(tx Tx, rec *QueryRecord) error) (*Query, error) {
	var q *Query
	err := s.update(ctx, u, func(tx Tx) error {
		rec, err := lockQuery(ctx, tx, id)
		if err != nil {
			return err
		}
		if err := fn(tx, rec); err != nil {
			return err
		}
		q = rec.Query
		q.History, err = tx.FindEvents(ctx, id)
		return err
	})
	if err != nil {
		return nil, err
	}
	return q, nil
}
