package broker

import (
	"errors"
	"fmt"
)

// Application error codes. The api package maps each to one HTTP status.
const (
	EINVALID      = "invalid"      // malformed input (400)
	EREFUSED      = "refused"      // well-formed SQL tre will not run (422)
	EUNAUTHORIZED = "unauthorized" // no valid identity (401)
	EFORBIDDEN    = "forbidden"    // identity lacks role or membership (403)
	ENOTFOUND     = "not_found"    // (404)
	ECONFLICT     = "conflict"     // illegal state transition, stale lease (409)
	EBUDGET       = "budget"       // approval would overspend (409)
	ELIMIT        = "rate_limited" // too many requests (429)
	EUNAVAILABLE  = "unavailable"  // a dependency is down (503)
	EINTERNAL     = "internal"     // anything else (500, message hidden)
)

// Error is the application error: a code callers branch on and a message that
// is safe to show to the caller. Anything that is not an *Error is internal.
type Error struct {
	Code    string
	Message string

	// cause is the sentinel this error specialises, so callers can branch
	// with errors.Is(err, ErrLeaseExpired) while the message stays specific.
	cause error
}

// Unwrap returns the sentinel this error specialises, if any.
func (e *Error) Unwrap() error { return e.cause }

// Sentinels callers branch on with errors.Is. The service returns errors that
// wrap them with a specific message.
var (
	ErrLeaseExpired      = &Error{Code: ECONFLICT, Message: "the job lease has expired or is held by another agent"}
	ErrBudgetExhausted   = &Error{Code: EBUDGET, Message: "the project's privacy budget would be overspent"}
	ErrIllegalTransition = &Error{Code: ECONFLICT, Message: "illegal query status transition"}
)

// wrapf returns an *Error with sentinel's code and a specific message that
// still matches the sentinel under errors.Is.
func wrapf(sentinel *Error, format string, args ...any) *Error {
	return &Error{Code: sentinel.Code, Message: fmt.Sprintf(format, args...), cause: sentinel}
}

func (e *Error) Error() string {
	return fmt.Sprintf("tre error: code=%s message=%s", e.Code, e.Message)
}

// Errorf returns an *Error with the given code and formatted message.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// ErrorCode returns the code of the first *Error in err's chain, EINTERNAL for
// any other non-nil error and "" for nil.
func ErrorCode(err error) string {
	var e *Error
	if err == nil {
		return ""
	} else if errors.As(err, &e) {
		return e.Code
	}
	return EINTERNAL
}

// ErrorMessage returns the safe message of the first *Error in err's chain,
// or "internal error".
func ErrorMessage(err error) string {
	var e *Error
	if err == nil {
		return ""
	} else if errors.As(err, &e) {
		return e.Message
	}
	return "internal error"
}
