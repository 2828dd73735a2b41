package server

import (
	"net/http"

	"github.com/gin-gonic/gin"

	"github.com/nhs-tre/tre/api"
	"github.com/nhs-tre/tre/broker"
)

func (s *Server) listDatasets(c *gin.Context) error {
	p, err := parsePage(c)
	if err != nil {
		return err
	}
	cats, err := s.svc.FindDatasets(c.Request.Context())
	if err != nil {
		return err
	}
	writeJSON(c, http.StatusOK, paginate(cats, p))
	return nil
}

func (s *Server) listSites(c *gin.Context) error {
	p, err := parsePage(c)
	if err != nil {
		return err
	}
	sites, err := s.svc.FindSites(c.Request.Context())
	if err != nil {
		return err
	}
	writeJSON(c, http.StatusOK, paginate(sites, p))
	return nil
}

func (s *Server) createSite(c *gin.Context) error {
	var req api.SiteRequest
	if err := decodeRequest(c.Request, &req); err != nil {
		return err
	}
	site := &broker.Site{ID: req.ID, Name: req.Name, Organisation: req.Organisation}
	if err := s.svc.CreateSite(c.Request.Context(), site); err != nil {
		return err
	}
	writeJSON(c, http.StatusCreated, site)
	return nil
}

func (s *Server) publishCatalog(c *gin.Context) error {
	var req api.CatalogRequest
	if err := decodeRequest(c.Request, &req); err != nil {
		return err
	}
	if req.Catalog == nil {
		return broker.Errorf(broker.EINVALID, "catalog is required")
	}
	if err := s.svc.PublishCatalog(c.Request.Context(), req.SiteID, req.AgentVersion, req.Catalog); err != nil {
		return err
	}
	c.Status(http.StatusNoContent)
	return nil
}
