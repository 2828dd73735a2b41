package server

import (
	"context"
	"net/http"

	"github.com/gin-gonic/gin"

	"github.com/nhs-tre/tre/api"
	"github.com/nhs-tre/tre/broker"
)

func (s *Server) reviewQueue(c *gin.Context) error {
	p, err := parsePage(c)
	if err != nil {
		return err
	}
	ctx, include, err := includeRewritten(c)
	if err != nil {
		return err
	}
	qs, err := s.svc.ReviewQueue(ctx)
	if err != nil {
		return err
	}
	qs = withoutRewritten(include, qs)
	list := paginate(qs, p)
	items := make([]api.QueueItem, len(list.Items))
	budgets := map[int64]*broker.Budget{}
	for i, q := range list.Items {
		b, ok := budgets[q.ProjectID]
		if !ok {
			proj, err := s.svc.FindProjectByID(ctx, q.ProjectID)
			if err != nil {
				return err
			}
			b = &proj.Budget
			budgets[q.ProjectID] = b
		}
		items[i] = api.QueueItem{Query: q, ProjectBudget: b}
	}
	writeJSON(c, http.StatusOK, api.List[api.QueueItem]{Items: items, Total: list.Total, Limit: p.Limit, Offset: p.Offset})
	return nil
}

func (s *Server) approveQuery(c *gin.Context) error {
	var req api.CommentRequest
	if err := decodeOptional(c.Request, &req); err != nil {
		return err
	}
	return s.queryAction(c, func(ctx context.Context, id int64) (*broker.Query, error) {
		return s.svc.ApproveQuery(ctx, id, req.Comment)
	})
}

func (s *Server) rejectQuery(c *gin.Context) error {
	var req api.ReasonRequest
	if err := decodeRequest(c.Request, &req); err != nil {
		return err
	}
	return s.queryAction(c, func(ctx context.Context, id int64) (*broker.Query, error) {
		return s.svc.RejectQuery(ctx, id, req.Reason)
	})
}
