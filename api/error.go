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

// errorBody is the JSON shape of every error response.
type errorBody struct {
	Error errorDetail `json:"error"`
}

type errorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// httpError is an error the HTTP layer itself raises with a status outside
// the domain table (413, 415, 405).
type httpError struct {
	Status  int
	Code    string
	Message string
}

func (e *httpError) Error() string { return e.Message }

// Error is an API error as the Go client sees it.
type Error struct {
	Status  int    // HTTP status
	Code    string // domain code, e.g. "not_found"
	Message string // safe message from the server
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s (HTTP %d %s)", e.Message, e.Status, e.Code)
}
