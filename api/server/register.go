package server

import (
	"net/http"

	"github.com/gin-gonic/gin"

	"github.com/nhs-tre/tre/api"
)

func (s *Server) register(c *gin.Context) error {
	p, err := parsePage(c)
	if err != nil {
		return err
	}
	ctx := c.Request.Context()
	entries, err := s.svc.Register(ctx)
	if err != nil {
		return err
	}
	head, err := s.svc.AuditHead(ctx)
	if err != nil {
		return err
	}
	writeJSON(c, http.StatusOK, api.RegisterList{List: paginate(entries, p), AuditChain: head})
	return nil
}
