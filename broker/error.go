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
