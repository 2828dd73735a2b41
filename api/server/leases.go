package server

import (
	"context"
	"net/http"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/nhs-tre/tre/api"
	"github.com/nhs-tre/tre/broker"
	"github.com/nhs-tre/tre/dp"
)

func (s *Server) leaseJob(c *gin.Context) error {
	var req api.LeaseRequest
	if err := decodeRequest(c.Request, &req); err != nil {
		return err
	}
	l, err := s.svc.LeaseJob(c.Request.Context(), req.SiteID, req.AgentVersion)
	if err != nil {
		return err
	}
	if l == nil {
		c.Status(http.StatusNoContent)
		return nil
	}
	writeJSON(c, http.StatusOK, l)
	return nil
}

func (s *Server) heartbeatJob(c *gin.Context) error {
	id, err := pathID(c)
	if err != nil {
		return err
	}
	var req api.HeartbeatRequest
	if err := decodeRequest(c.Request, &req); err != nil {
		return err
	}
	l, err := s.svc.HeartbeatJob(c.Request.Context(), id, req.Token)
	if err != nil {
		return err
	}
	writeJSON(c, http.StatusOK, l)
	return nil
}

func (s *Server) completeJob(c *gin.Context) error {
	id, err := pathID(c)
	if err != nil {
		return err
	}
	var req api.CompleteRequest
	// A federated part with quantiles carries every node of its trees
	// (dp.MaxPartialBytes); everything else is far smaller.
	if err := decodeRequestMax(c.Request, &req, dp.MaxPartialBytes); err != nil {
		return err
	}
	if (req.Result == nil) == (req.Partial == nil) {
		return broker.Errorf(broker.EINVALID, "exactly one of result and partial is required")
	}
	// Storing a result must finish even if the agent's connection drops.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(c.Request.Context()), 30*time.Second)
	defer cancel()
	if req.Partial != nil {
		err = s.svc.CompletePartial(ctx, id, req.Token, req.Partial)
	} else {
		err = s.svc.CompleteJob(ctx, id, req.Token, *req.Result)
	}
	if err != nil {
		return err
	}
	c.Status(http.StatusNoContent)
	return nil
}

func (s *Server) failJob(c *gin.Context) error {
	id, err := pathID(c)
	if err != nil {
		return err
	}
	var req api.FailRequest
	if err := decodeRequest(c.Request, &req); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(c.Request.Context()), 30*time.Second)
	defer cancel()
	if err := s.svc.FailJob(ctx, id, req.Token, req.Code, req.Message); err != nil {
		return err
	}
	c.Status(http.StatusNoContent)
	return nil
}
