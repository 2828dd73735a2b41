package server

import (
	"net/http"

	"github.com/gin-gonic/gin"

	"github.com/nhs-tre/tre/api"
	"github.com/nhs-tre/tre/broker"
)

func (s *Server) createProject(c *gin.Context) error {
	var req api.ProjectRequest
	if err := decodeRequest(c.Request, &req); err != nil {
		return err
	}
	p := &broker.Project{
		Title: req.Title, Organisation: req.Organisation, Purpose: req.Purpose,
		LawfulBasis: req.LawfulBasis, DataSharingAgreement: req.DataSharingAgreement,
		Members: req.Members, Datasets: req.Datasets,
		EpsilonBudget: req.EpsilonBudget, DeltaBudget: req.DeltaBudget,
		StartsAt: req.StartsAt, ExpiresAt: req.ExpiresAt,
	}
	if err := s.svc.CreateProject(c.Request.Context(), p); err != nil {
		return err
	}
	writeJSON(c, http.StatusCreated, p)
	return nil
}

func (s *Server) listProjects(c *gin.Context) error {
	p, err := parsePage(c)
	if err != nil {
		return err
	}
	f := broker.ProjectFilter{Offset: p.Offset, Limit: p.Limit}
	if v := queryString(c, "status"); v != nil {
		st := broker.ProjectStatus(*v)
		if st != broker.ProjectActive && st != broker.ProjectSuspended {
			return broker.Errorf(broker.EINVALID, "status must be %q or %q", broker.ProjectActive, broker.ProjectSuspended)
		}
		f.Status = &st
	}
	projects, total, err := s.svc.FindProjects(c.Request.Context(), f)
	if err != nil {
		return err
	}
	writeJSON(c, http.StatusOK, newList(projects, total, p))
	return nil
}

func (s *Server) getProject(c *gin.Context) error {
	id, err := pathID(c)
	if err != nil {
		return err
	}
	p, err := s.svc.FindProjectByID(c.Request.Context(), id)
	if err != nil {
		return err
	}
	writeJSON(c, http.StatusOK, p)
	return nil
}

func (s *Server) updateProject(c *gin.Context) error {
	id, err := pathID(c)
	if err != nil {
		return err
	}
	var upd broker.ProjectUpdate
	if err := decodeRequest(c.Request, &upd); err != nil {
		return err
	}
	p, err := s.svc.UpdateProject(c.Request.Context(), id, upd)
	if err != nil {
		return err
	}
	writeJSON(c, http.StatusOK, p)
	return nil
}
