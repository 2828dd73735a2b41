// Package job is the contract between a site's agent and its sandbox: the
// one Job type, as the broker leased it and as the sandbox runs it, and the
// coded errors a run ends with. The agent (package site) builds a Job from a
// lease and hands it to a Runner (sandbox.Runner); the sandbox's failures
// come back as *Error, whose code and message are all the broker ever hears
// of a failed run.
//
// job holds types only: it must never import the sandbox, the broker, the
// API or a database driver, so that both sides of the agent–sandbox
// boundary can share it without linking each other.
package job

import (
	"errors"
	"fmt"
)

// Job is one approved query for a site to run: what the reviewer approved,
// byte for byte. The JSON names are those of the lease on the wire.
type Job struct {
	QueryID int64  `json:"query_id"`
	Dataset string `json:"dataset"`
	SQL     string `json:"sql"`
	// SQLHash is the hex SHA-256 of SQL as the researcher submitted it
	// (queries.SQLHash); the agent and the sandbox child refuse a job whose
	// SQL does not match.
	SQLHash string  `json:"sql_hash"`
	Epsilon float64 `json:"epsilon"`
	// Codelists are the codelists the query joins (table codelists): on
	// the lease by name and hash; filled with their codes by the agent.
	Codelists []Codelist `json:"codelists,omitempty"`
	// Partial marks one site's part of a federated query (issue 21): the
	// sandbox compiles the SQL as federated (queries.Options.Federated)
	// and returns a dp.Partial (noisy statistics only, no suppression or
	// rounding) instead of a dp.Result; the broker combines the sites'
	// parts (dp.Combine). Everything else about the run is the same.
	Partial bool `json:"partial,omitempty"`
}

// Error codes that cross the process boundary and reach the broker. Stored
// values never change.
const (
	CodeRefused     = "refused"     // the SQL is not an accepted query
	CodeInvalid     = "invalid"     // the job is malformed (hash mismatch, bad ε)
	CodeTimeout     = "timeout"     // the job ran past its time limit
	CodeMemory      = "memory"      // the job ran out of memory
	CodeTooLarge    = "too_large"   // the result exceeded the row or byte cap
	CodeCrashed     = "crashed"     // the child died without answering
	CodeUnavailable = "unavailable" // a required isolation layer is missing
	CodeInternal    = "internal"    // anything else; the detail stays in the site log
)

// Error is a failure with a code and a message that is safe to send to the
// broker and show to a researcher. The sandbox rebuilds it on the host from
// the code and message the child sent; nothing else of the child's error
// survives.
type Error struct {
	Code    string
	Message string
}

func (e *Error) Error() string { return fmt.Sprintf("sandbox: %s: %s", e.Code, e.Message) }

// Errorf returns an *Error with the given code and formatted message.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// Code returns the code of the first *Error in err's chain, CodeInternal
// for any other non-nil error and "" for nil.
func Code(err error) string {
	var e *Error
	switch {
	case err == nil:
		return ""
	case errors.As(err, &e):
		return e.Code
	}
	return CodeInternal
}

// Message returns the safe message of the first *Error in err's chain, or
// "internal error".
func Message(err error) string {
	var e *Error
	switch {
	case err == nil:
		return ""
	case errors.As(err, &e):
		return e.Message
	}
	return "internal error"
}
