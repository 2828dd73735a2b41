package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"math"
	"net/http"
	"strconv"
	"sync"

	"github.com/gin-gonic/gin"

	"github.com/nhs-tre/tre/api"
	"github.com/nhs-tre/tre/broker"
)

// writeError writes err as the JSON error body. Anything that is not a
// domain or HTTP-layer error is logged with the request id and hidden.
func (s *Server) writeError(c *gin.Context, err error) {
	var ae *api.Error
	var be *broker.Error
	var status int
	var body api.Error
	switch {
	case errors.As(err, &ae):
		status, body = ae.Status, api.Error{Code: ae.Code, Message: ae.Message}
	case errors.As(err, &be) && be.Code != broker.EINTERNAL:
		status, body = api.HTTPStatus(be), api.Error{Code: be.Code, Message: be.Message}
	default:
		status, body = http.StatusInternalServerError, api.Error{Code: broker.EINTERNAL, Message: "internal error"}
		s.logger.Error("internal error", "request_id", c.GetString(keyRequestID), "route", c.FullPath(), "err", err.Error())
	}
	if status == http.StatusUnauthorized {
		c.Header("WWW-Authenticate", `Bearer realm="tre"`)
	}
	var le *limitError
	if errors.As(err, &le) {
		c.Header("Retry-After", strconv.Itoa(max(int(math.Ceil(le.after.Seconds())), 1)))
	}
	writeJSON(c, status, api.ErrorResponse{Error: body})
	c.Abort()
}

// jsonBuffers recycles response buffers: a query with its rewritten SQL is
// about 10 kB, allocated on every read otherwise. Buffers that grew past
// maxPooledBuffer (long lists) are left to the collector.
var jsonBuffers = sync.Pool{New: func() any { return new(bytes.Buffer) }}

const maxPooledBuffer = 64 << 10

func writeJSON(c *gin.Context, status int, v any) {
	buf := jsonBuffers.Get().(*bytes.Buffer)
	buf.Reset()
	defer func() {
		if buf.Cap() <= maxPooledBuffer {
			jsonBuffers.Put(buf)
		}
	}()
	// Encode writes what json.Marshal would, HTML-escaped, plus a newline.
	if err := json.NewEncoder(buf).Encode(v); err != nil {
		status = http.StatusInternalServerError
		buf.Reset()
		buf.WriteString(`{"error":{"code":"internal","message":"internal error"}}` + "\n")
	}
	// A declared length spares the chunked encoding net/http uses for bodies
	// larger than its buffer.
	c.Header("Content-Length", strconv.Itoa(buf.Len()))
	c.Data(status, "application/json; charset=utf-8", buf.Bytes())
}
