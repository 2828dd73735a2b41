package broker

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
