package server

import (
	"net/http"

	"github.com/gin-gonic/gin"

	"github.com/nhs-tre/tre/api"
	"github.com/nhs-tre/tre/broker"
)

// maxCodelistBodyBytes bounds an upload's body: the largest CSV the broker
// takes, escaped in JSON (at most doubled), with room for the other fields.
const maxCodelistBodyBytes = 2*broker.MaxCodelistCSVBytes + 64<<10

func (s *Server) uploadCodelist(c *gin.Context) error {
	var req api.CodelistRequest
	if err := decodeRequestMax(c.Request, &req, maxCodelistBodyBytes); err != nil {
		return err
	}
	cl, err := s.svc.CreateCodelist(c.Request.Context(), broker.CodelistUpload{Name: req.Name, Description: req.Description, CSV: req.CSV})
	if err != nil {
		return err
	}
	writeJSON(c, http.StatusCreated, cl)
	return nil
}

func (s *Server) listCodelists(c *gin.Context) error {
	p, err := parsePage(c)
	if err != nil {
		return err
	}
	all, err := s.svc.FindCodelists(c.Request.Context())
	if err != nil {
		return err
	}
	writeJSON(c, http.StatusOK, paginate(all, p))
	return nil
}

func (s *Server) getCodelist(c *gin.Context) error {
	name := c.Param("org") + "/" + c.Param("slug") + "/" + c.Param("version")
	cl, err := s.svc.FindCodelist(c.Request.Context(), name)
	if err != nil {
		return err
	}
	writeJSON(c, http.StatusOK, cl)
	return nil
}
