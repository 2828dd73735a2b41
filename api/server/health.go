package server

import (
	"context"
	"net/http"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/nhs-tre/tre/api"
	"github.com/nhs-tre/tre/broker"
)

func (s *Server) healthz(c *gin.Context) error {
	writeJSON(c, http.StatusOK, map[string]string{"status": "ok"})
	return nil
}

func (s *Server) readyz(c *gin.Context) error {
	if s.cfg.Draining != nil && s.cfg.Draining.Load() {
		return broker.Errorf(broker.EUNAVAILABLE, "shutting down")
	}
	ctx, cancel := context.WithTimeout(c.Request.Context(), 3*time.Second)
	defer cancel()
	if err := s.svc.Ping(ctx); err != nil {
		s.logger.Warn("not ready", "request_id", c.GetString(keyRequestID), "err", err.Error())
		return broker.Errorf(broker.EUNAVAILABLE, "store unreachable")
	}
	writeJSON(c, http.StatusOK, map[string]string{"status": "ready"})
	return nil
}

func (s *Server) openapi(c *gin.Context) error {
	c.Data(http.StatusOK, "application/json; charset=utf-8", api.OpenAPI())
	return nil
}
