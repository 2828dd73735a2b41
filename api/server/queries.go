package server

import (
	"context"
	"math"
	"net/http"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/nhs-tre/tre/api"
	"github.com/nhs-tre/tre/broker"
	"github.com/nhs-tre/tre/dp"
)

func submission(r api.QueryRequest) broker.QuerySubmission {
	return broker.QuerySubmission{ProjectID: r.ProjectID, Dataset: r.Dataset, SQL: r.SQL, Purpose: r.Purpose, Epsilon: r.Epsilon}
}

// rateLimit takes a submission token for the caller or answers 429.
func (s *Server) rateLimit(c *gin.Context) error {
	u := broker.UserFromContext(c.Request.Context())
	var ok bool
	var wait time.Duration
	if lim := s.cfg.SubmitLimit; lim.Shared != nil && lim.PerMinute > 0 {
		var err error
		if ok, wait, err = lim.Shared.TakeToken(c.Request.Context(), "submit:"+u.Subject, lim.PerMinute, int(lim.burst())); err != nil {
			return err
		}
	} else {
		ok, wait = s.limiter.allow(u.Subject)
	}
	if ok {
		return nil
	}
	secs := max(int(math.Ceil(wait.Seconds())), 1)
	return &limitError{broker.Errorf(broker.ELIMIT, "too many submissions: try again in %d s", secs), time.Duration(secs) * time.Second}
}

// queryRequest takes a submission token for the caller and decodes the body
// of a submission, a check or a dry run.
func (s *Server) queryRequest(c *gin.Context) (api.QueryRequest, error) {
	var req api.QueryRequest
	if err := s.rateLimit(c); err != nil {
		return req, err
	}
	return req, decodeRequest(c.Request, &req)
}

func (s *Server) submitQuery(c *gin.Context) error {
	req, err := s.queryRequest(c)
	if err != nil {
		return err
	}
	q, err := s.svc.SubmitQuery(c.Request.Context(), submission(req))
	if err != nil {
		return err
	}
	writeJSON(c, http.StatusCreated, withoutRewritten(false, []*broker.Query{q})[0])
	return nil
}

// checkQuery validates and plans a query as a submission would. It takes a
// submission token like a dry run: each check parses the SQL with DuckDB.
func (s *Server) checkQuery(c *gin.Context) error {
	req, err := s.queryRequest(c)
	if err != nil {
		return err
	}
	plan, err := s.svc.CheckQuery(c.Request.Context(), submission(req))
	if err != nil {
		return err
	}
	writeJSON(c, http.StatusOK, api.CheckResponse{Dataset: plan.Dataset, Cost: plan.Cost, Accuracy: plan.Accuracy, Rewritten: plan.Rewritten, Federation: plan.Federation})
	return nil
}

func (s *Server) dryRun(c *gin.Context) error {
	if s.cfg.DryRunner == nil {
		return broker.Errorf(broker.EUNAVAILABLE, "dry runs are not configured on this broker")
	}
	req, err := s.queryRequest(c)
	if err != nil {
		return err
	}
	ctx := c.Request.Context()
	plan, err := s.svc.CheckQuery(ctx, submission(req))
	if err != nil {
		return err
	}
	lists, err := api.DryRunCodelists(ctx, s.svc, plan.Codelists)
	if err != nil {
		return err
	}
	res, absent, err := s.cfg.DryRunner.DryRun(ctx, plan.Dataset, req.SQL, plan.Cost.Epsilon, lists)
	if err != nil {
		return err
	}
	res.Report.Synthetic = true
	view := res.ForResearcher()
	rows := view.Rows
	if rows == nil {
		rows = [][]dp.Cell{}
	}
	run := api.DryRunSynthetic
	if plan.Federation != nil {
		run = api.DryRunSyntheticSingleSite
	}
	writeJSON(c, http.StatusOK, api.DryRunResponse{
		Synthetic: true, Run: run, Dataset: plan.Dataset, Cost: plan.Cost, Accuracy: plan.Accuracy, Federation: plan.Federation,
		Columns: view.Columns, Rows: rows, Report: view.Report, AbsentCodes: absent,
	})
	return nil
}

// validStatus reports whether s is a query status.
func validStatus(s broker.Status) bool {
	switch s {
	case broker.StatusSubmitted, broker.StatusRejected, broker.StatusApproved, broker.StatusCancelled,
		broker.StatusRunning, broker.StatusAwaitingOutputCheck, broker.StatusReleased,
		broker.StatusWithheld, broker.StatusFailed:
		return true
	}
	return false
}

func (s *Server) listQueries(c *gin.Context) error {
	p, err := parsePage(c)
	if err != nil {
		return err
	}
	f := broker.QueryFilter{Offset: p.Offset, Limit: p.Limit, SubmittedBy: queryString(c, "submitted_by")}
	if v := queryString(c, "status"); v != nil {
		st := broker.Status(*v)
		if !validStatus(st) {
			return broker.Errorf(broker.EINVALID, "unknown status %q", safeMessage(*v))
		}
		f.Status = &st
	}
	if f.ProjectID, err = queryInt64(c, "project_id"); err != nil {
		return err
	}
	ctx, include, err := includeRewritten(c)
	if err != nil {
		return err
	}
	qs, total, err := s.svc.FindQueries(ctx, f)
	if err != nil {
		return err
	}
	qs = withoutRewritten(include, qs)
	writeJSON(c, http.StatusOK, newList(qs, total, p))
	return nil
}

// queryAction runs a state transition on the query named in the path and
// answers with the query, without its rewritten SQL (a GET with
// ?include=rewritten_sql has it).
func (s *Server) queryAction(c *gin.Context, do func(ctx context.Context, id int64) (*broker.Query, error)) error {
	id, err := pathID(c)
	if err != nil {
		return err
	}
	q, err := do(c.Request.Context(), id)
	if err != nil {
		return err
	}
	writeJSON(c, http.StatusOK, withoutRewritten(false, []*broker.Query{q})[0])
	return nil
}

// getQuery answers a query with its history; its rewritten SQL only when
// asked (?include=rewritten_sql).
func (s *Server) getQuery(c *gin.Context) error {
	id, err := pathID(c)
	if err != nil {
		return err
	}
	ctx, include, err := includeRewritten(c)
	if err != nil {
		return err
	}
	q, err := s.svc.FindQueryByID(ctx, id)
	if err != nil {
		return err
	}
	writeJSON(c, http.StatusOK, withoutRewritten(include, []*broker.Query{q})[0])
	return nil
}

func (s *Server) cancelQuery(c *gin.Context) error {
	if err := emptyOrJSON(c.Request); err != nil {
		return err
	}
	return s.queryAction(c, s.svc.CancelQuery)
}
