package api

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/nhs-tre/tre/broker"
)

// statusByCode is the one table mapping domain error codes to HTTP statuses.
var statusByCode = map[string]int{
	broker.EINVALID:      http.StatusBadRequest,
	broker.EREFUSED:      http.StatusUnprocessableEntity,
	broker.EUNAUTHORIZED: http.StatusUnauthorized,
	broker.EFORBIDDEN:    http.StatusForbidden,
	broker.ENOTFOUND:     http.StatusNotFound,
	broker.ECONFLICT:     http.StatusConflict,
	broker.EBUDGET:       http.StatusConflict,
	broker.ELIMIT:        http.StatusTooManyRequests,
	broker.EUNAVAILABLE:  http.StatusServiceUnavailable,
	broker.EINTERNAL:     http.StatusInternalServerError,
}

// codeByStatus rebuilds a code on the client side when a response carries
// none (e.g. a proxy's error page).
func codeByStatus(status int) string {
	switch status {
	case http.StatusBadRequest, http.StatusRequestEntityTooLarge, http.StatusUnsupportedMediaType:
		return broker.EINVALID
	case http.StatusUnprocessableEntity:
		return broker.EREFUSED
	case http.StatusUnauthorized:
		return broker.EUNAUTHORIZED
	case http.StatusForbidden:
		return broker.EFORBIDDEN
	case http.StatusNotFound, http.StatusMethodNotAllowed:
		return broker.ENOTFOUND
	case http.StatusConflict:
		return broker.ECONFLICT
	case http.StatusTooManyRequests:
		return broker.ELIMIT
	case http.StatusServiceUnavailable, http.StatusBadGateway, http.StatusGatewayTimeout:
		return broker.EUNAVAILABLE
	}
	return broker.EINTERNAL
}

// HTTPStatus returns the status for err: the table's entry for a
// *broker.Error, 500 for anything else.
func HTTPStatus(err error) int {
	var e *broker.Error
	if errors.As(err, &e) {
		if s, ok := statusByCode[e.Code]; ok {
			return s
		}
	}
	return http.StatusInternalServerError
}

// ErrorResponse is the JSON shape of every error response:
// {"error": {"code": …, "message": …}}.
type ErrorResponse struct {
	Error Error `json:"error"`
}

// Error is an error the HTTP API answers with, the one error type on both
// sides: the server raises it for refusals of its own with a status outside
// the domain table (413, 415, 405) and writes every error in its shape; the
// client returns it for every non-2xx answer, rebuilding the code from the
// status when the body is not the broker's (e.g. a proxy's error page).
type Error struct {
	Status  int    `json:"-"`       // HTTP status
	Code    string `json:"code"`    // domain code, e.g. "not_found"
	Message string `json:"message"` // safe message from the server
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s (HTTP %d %s)", e.Message, e.Status, e.Code)
}
