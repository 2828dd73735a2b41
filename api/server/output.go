package server

import (
	"context"
	"fmt"
	"net/http"
	"strings"

	"github.com/gin-gonic/gin"

	"github.com/nhs-tre/tre/api"
	"github.com/nhs-tre/tre/broker"
	"github.com/nhs-tre/tre/dp"
)

func (s *Server) outputQueue(c *gin.Context) error {
	p, err := parsePage(c)
	if err != nil {
		return err
	}
	ctx, include, err := includeRewritten(c)
	if err != nil {
		return err
	}
	qs, err := s.svc.OutputQueue(ctx)
	if err != nil {
		return err
	}
	qs = withoutRewritten(include, qs)
	writeJSON(c, http.StatusOK, paginate(qs, p))
	return nil
}

// getOutput answers an output checker separation of duties lets check the
// query with the output as they check it (broker.Output: the full
// disclosure report or the failure notice), and a researcher of the project
// with what they may see of a released one (broker.ReleasedResult): the
// broker decides which.
func (s *Server) getOutput(c *gin.Context) error {
	id, err := pathID(c)
	if err != nil {
		return err
	}
	v, err := s.svc.ViewOutput(c.Request.Context(), id)
	if err != nil {
		return err
	}
	if v.Checker != nil {
		writeJSON(c, http.StatusOK, v.Checker)
	} else {
		writeJSON(c, http.StatusOK, v.Released)
	}
	return nil
}

func (s *Server) releaseQuery(c *gin.Context) error {
	var req api.CommentRequest
	if err := decodeOptional(c.Request, &req); err != nil {
		return err
	}
	return s.queryAction(c, func(ctx context.Context, id int64) (*broker.Query, error) {
		return s.svc.ReleaseQuery(ctx, id, req.Comment)
	})
}

func (s *Server) withholdQuery(c *gin.Context) error {
	var req api.ReasonRequest
	if err := decodeRequest(c.Request, &req); err != nil {
		return err
	}
	return s.queryAction(c, func(ctx context.Context, id int64) (*broker.Query, error) {
		return s.svc.WithholdQuery(ctx, id, req.Reason)
	})
}

func (s *Server) getResult(c *gin.Context) error {
	id, err := pathID(c)
	if err != nil {
		return err
	}
	format := c.DefaultQuery("format", "json")
	if format != "json" && format != "csv" {
		return broker.Errorf(broker.EINVALID, "format must be csv or json")
	}
	out, err := s.svc.DownloadResult(c.Request.Context(), id)
	if err != nil {
		return err
	}
	if format == "json" {
		rows := out.Result.Rows
		if rows == nil {
			rows = [][]dp.Cell{}
		}
		writeJSON(c, http.StatusOK, api.ResultResponse{QueryID: out.QueryID, ReleasedAt: out.ReleasedAt,
			Columns: out.Result.Columns, Rows: rows, Report: out.Result.Report})
		return nil
	}
	var buf strings.Builder
	if err := api.WriteResultCSV(&buf, out.Result); err != nil {
		return err
	}
	name := safeFilename(fmt.Sprintf("tre-query-%d.csv", id))
	c.Header("Content-Disposition", `attachment; filename="`+name+`"`)
	c.Data(http.StatusOK, "text/csv; charset=utf-8", []byte(buf.String()))
	return nil
}

// safeFilename keeps only characters that are harmless in a
// Content-Disposition filename on every platform.
func safeFilename(s string) string {
	var b strings.Builder
	for _, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_', r == '.':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	out := strings.Trim(b.String(), ".")
	if out == "" {
		return "result"
	}
	if len(out) > 100 {
		out = out[:100]
	}
	return out
}
