package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"
	"unicode/utf8"

	"github.com/nhs-tre/tre/api"
	"github.com/nhs-tre/tre/broker"
)

// maxBodyBytes bounds every JSON request body. A catalog is the largest
// thing anyone sends and is far smaller.
const maxBodyBytes = 1 << 20

// decodeRequest reads r's JSON body into v strictly: the content type must
// be JSON, the body at most maxBodyBytes of valid UTF-8 holding exactly one
// JSON object whose fields v knows, with the right types.
func decodeRequest(r *http.Request, v any) error {
	return decodeRequestMax(r, v, maxBodyBytes)
}

// decodeRequestMax is decodeRequest for a route whose bodies may be up to
// limit bytes (a codelist's CSV).
func decodeRequestMax(r *http.Request, v any, limit int) error {
	if ct := r.Header.Get("Content-Type"); ct != "" {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || mt != "application/json" {
			return &api.Error{Status: http.StatusUnsupportedMediaType, Code: broker.EINVALID, Message: "request body must be application/json"}
		}
	} else {
		return &api.Error{Status: http.StatusUnsupportedMediaType, Code: broker.EINVALID, Message: "request body must be application/json (set Content-Type)"}
	}
	data, err := io.ReadAll(io.LimitReader(r.Body, int64(limit)+1))
	if err != nil {
		return broker.Errorf(broker.EINVALID, "could not read the request body")
	}
	if len(data) > limit {
		return &api.Error{Status: http.StatusRequestEntityTooLarge, Code: broker.EINVALID, Message: fmt.Sprintf("request body larger than %d bytes", limit)}
	}
	return decodeJSON(data, v)
}

// decodeJSON is the strict decoder behind decodeRequest, separate so it can
// be fuzzed without HTTP.
func decodeJSON(data []byte, v any) error {
	if !utf8.Valid(data) {
		// encoding/json would silently replace bad bytes with U+FFFD and we
		// would store text the caller never sent.
		return broker.Errorf(broker.EINVALID, "request body is not valid UTF-8")
	}
	trimmed := bytes.TrimLeft(data, " \t\r\n")
	if len(trimmed) == 0 {
		return broker.Errorf(broker.EINVALID, "request body is empty: expected a JSON object")
	}
	if trimmed[0] != '{' {
		return broker.Errorf(broker.EINVALID, "request body must be a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return decodeError(err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return broker.Errorf(broker.EINVALID, "unexpected data after the JSON object")
	}
	return nil
}

// decodeError names what was wrong with the body without echoing values.
func decodeError(err error) error {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		return broker.Errorf(broker.EINVALID, "malformed JSON at byte %d", syn.Offset)
	case errors.As(err, &typ):
		field := typ.Field
		if field == "" {
			field = "(body)"
		}
		return broker.Errorf(broker.EINVALID, "field %q must be %s, not %s", field, typ.Type.String(), typ.Value)
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return broker.Errorf(broker.EINVALID, "truncated JSON body")
	}
	// encoding/json has no typed error for DisallowUnknownFields.
	if name, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		return broker.Errorf(broker.EINVALID, "unknown field %s", safeMessage(name))
	}
	// Errors from UnmarshalJSON methods (e.g. time.Time) are about format.
	return broker.Errorf(broker.EINVALID, "invalid JSON body: %s", safeMessage(err.Error()))
}

// safeMessage bounds a decoder message so a huge or odd value cannot be
// reflected back at length.
func safeMessage(s string) string {
	const max = 200
	if len(s) > max {
		s = s[:max] + "…"
	}
	if !utf8.ValidString(s) {
		return "invalid value"
	}
	return s
}

// emptyOrJSON accepts a bodiless action POST, or an empty JSON object.
func emptyOrJSON(r *http.Request) error {
	var v struct{}
	return decodeOptional(r, &v)
}

// decodeOptional is decodeRequest for bodies whose fields are all optional:
// a POST without a body (curl -X POST) leaves v as it is.
func decodeOptional(r *http.Request, v any) error {
	if r.ContentLength == 0 {
		return nil
	}
	return decodeRequest(r, v)
}
