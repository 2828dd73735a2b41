package server

import (
	"net/http"

	"github.com/gin-gonic/gin"

	"github.com/nhs-tre/tre/broker"
)

func (s *Server) listAudit(c *gin.Context) error {
	p, err := parsePage(c)
	if err != nil {
		return err
	}
	f := broker.AuditFilter{Offset: p.Offset, Limit: p.Limit,
		Actor: queryString(c, "actor"), Action: queryString(c, "action"), Object: queryString(c, "object")}
	if f.AfterSeq, err = queryInt64(c, "after_seq"); err != nil {
		return err
	}
	entries, total, err := s.svc.FindAuditEntries(c.Request.Context(), f)
	if err != nil {
		return err
	}
	writeJSON(c, http.StatusOK, newList(entries, total, p))
	return nil
}

func (s *Server) verifyAudit(c *gin.Context) error {
	v, err := s.svc.VerifyAudit(c.Request.Context())
	if err != nil {
		return err
	}
	writeJSON(c, http.StatusOK, v)
	return nil
}
