package web

import (
	"errors"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/nhs-tre/tre/api"
	"github.com/nhs-tre/tre/broker"
	"github.com/nhs-tre/tre/dp"
	"github.com/nhs-tre/tre/job"
	"github.com/nhs-tre/tre/queries"
)

// pathID parses the {id} path value; a malformed id is a 404.
func (h *Handler) pathID(w http.ResponseWriter, r *http.Request, s *session) (int64, bool) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id <= 0 {
		h.renderMessage(w, r, s, http.StatusNotFound, "Not found", "There is no such item.")
		return 0, false
	}
	return id, true
}

// projectsView is the researcher's project list.
type projectsView struct {
	Projects []*broker.Project
}

func (h *Handler) projects(w http.ResponseWriter, r *http.Request, s *session) {
	sub := s.user.Subject
	ps, _, err := h.svc.FindProjects(r.Context(), broker.ProjectFilter{Member: &sub, Limit: broker.MaxLimit})
	if err != nil {
		h.fail(w, r, s, err)
		return
	}
	h.render(w, r, http.StatusOK, "projects.html", newView(s, "My projects", "projects", projectsView{Projects: ps}))
}

// editorForm is what the researcher typed; it is re-rendered as typed.
type editorForm struct {
	ProjectID int64
	Dataset   string
	SQL       string
	Purpose   string
	Epsilon   string
}

// checkView is the outcome of checking a query.
type checkView struct {
	OK      bool
	Message string
	Plan    *broker.Checked
}

type editorView struct {
	Projects []*broker.Project
	Datasets []string
	// Catalogs describe the datasets of the caller's projects, for the
	// catalog beside the editor.
	Catalogs []*queries.Catalog
	Form     editorForm
	Check    *checkView
	// DryRun is the dry run's table as a researcher would receive it.
	DryRun *dp.ResearcherResult
	// AbsentCodes are the dry run's codes of the query's codelists that
	// the synthetic data never holds.
	AbsentCodes []job.AbsentCodes
	CanDry      bool
}

func (h *Handler) editorData(r *http.Request, s *session, f editorForm) (*editorView, error) {
	sub := s.user.Subject
	active := broker.ProjectActive
	ps, _, err := h.svc.FindProjects(r.Context(), broker.ProjectFilter{Member: &sub, Status: &active, Limit: broker.MaxLimit})
	if err != nil {
		return nil, err
	}
	ev := &editorView{Projects: ps, Form: f, CanDry: h.cfg.DryRunner != nil}
	for _, p := range ps {
		for _, d := range p.Datasets {
			if !slices.Contains(ev.Datasets, d) {
				ev.Datasets = append(ev.Datasets, d)
			}
		}
	}
	slices.Sort(ev.Datasets)
	if len(ev.Datasets) == 0 {
		return ev, nil
	}
	cats, err := h.svc.FindDatasets(r.Context())
	if err != nil {
		return nil, err
	}
	for _, c := range cats {
		if slices.Contains(ev.Datasets, c.Dataset) {
			ev.Catalogs = append(ev.Catalogs, c)
		}
	}
	slices.SortFunc(ev.Catalogs, func(a, b *queries.Catalog) int { return strings.Compare(a.Dataset, b.Dataset) })
	return ev, nil
}

// sqlString is s as a SQL string literal, for the catalog's insert
// buttons.
func sqlString(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

func (h *Handler) editor(w http.ResponseWriter, r *http.Request, s *session) {
	f := editorForm{}
	if p, err := strconv.ParseInt(r.URL.Query().Get("project"), 10, 64); err == nil {
		f.ProjectID = p
	}
	ev, err := h.editorData(r, s, f)
	if err != nil {
		h.fail(w, r, s, err)
		return
	}
	h.render(w, r, http.StatusOK, "editor.html", newView(s, "New query", "editor", ev))
}

// parseEditor reads the editor form. Bad numbers are reported in words.
func parseEditor(r *http.Request) (editorForm, broker.QuerySubmission, error) {
	f := editorForm{
		Dataset: strings.TrimSpace(r.PostForm.Get("dataset")),
		SQL:     r.PostForm.Get("sql"),
		Purpose: strings.TrimSpace(r.PostForm.Get("purpose")),
		Epsilon: strings.TrimSpace(r.PostForm.Get("epsilon")),
	}
	sub := broker.QuerySubmission{Dataset: f.Dataset, SQL: f.SQL, Purpose: f.Purpose}
	p, err := strconv.ParseInt(r.PostForm.Get("project_id"), 10, 64)
	if err != nil || p <= 0 {
		return f, sub, broker.Errorf(broker.EINVALID, "Choose a project.")
	}
	f.ProjectID, sub.ProjectID = p, p
	if f.Epsilon != "" {
		e, err := strconv.ParseFloat(f.Epsilon, 64)
		if err != nil || e <= 0 || e != e {
			return f, sub, broker.Errorf(broker.EINVALID, "ε must be a positive number, such as 0.5, or left empty for the dataset's default.")
		}
		sub.Epsilon = e
	}
	if strings.TrimSpace(f.SQL) == "" {
		return f, sub, broker.Errorf(broker.EINVALID, "Write a SQL query.")
	}
	return f, sub, nil
}

// check runs CheckQuery and turns a refusal into a message for the page.
func (h *Handler) check(r *http.Request, sub broker.QuerySubmission) (*checkView, error) {
	plan, err := h.svc.CheckQuery(r.Context(), sub)
	if err == nil {
		return &checkView{OK: true, Plan: plan}, nil
	}
	var be *broker.Error
	if errors.As(err, &be) && (be.Code == broker.EREFUSED || be.Code == broker.EINVALID) {
		return &checkView{Message: be.Message}, nil
	}
	return nil, err
}

func (h *Handler) editorPost(w http.ResponseWriter, r *http.Request, s *session) {
	f, sub, perr := parseEditor(r)
	ev, err := h.editorData(r, s, f)
	if err != nil {
		h.fail(w, r, s, err)
		return
	}
	v := newView(s, "New query", "editor", ev)
	if perr != nil {
		v.Error = broker.ErrorMessage(perr)
		h.render(w, r, http.StatusUnprocessableEntity, "editor.html", v)
		return
	}
	switch r.PostForm.Get("action") {
	case "check":
		ev.Check, err = h.check(r, sub)
		if err != nil {
			h.failOn(w, r, "editor.html", v, err)
			return
		}
		h.render(w, r, http.StatusOK, "editor.html", v)
	case "dryrun":
		if h.cfg.DryRunner == nil {
			v.Error = "Dry runs are not available on this broker."
			h.render(w, r, http.StatusNotFound, "editor.html", v)
			return
		}
		ev.Check, err = h.check(r, sub)
		if err != nil {
			h.failOn(w, r, "editor.html", v, err)
			return
		}
		if !ev.Check.OK {
			h.render(w, r, http.StatusUnprocessableEntity, "editor.html", v)
			return
		}
		lists, err := api.DryRunCodelists(r.Context(), h.svc, ev.Check.Plan.Codelists)
		if err != nil {
			h.failOn(w, r, "editor.html", v, err)
			return
		}
		res, absent, err := h.cfg.DryRunner.DryRun(r.Context(), ev.Check.Plan.Dataset, sub.SQL, ev.Check.Plan.Cost.Epsilon, lists)
		if err != nil {
			h.failOn(w, r, "editor.html", v, err)
			return
		}
		res.Report.Synthetic = true
		ev.DryRun = res.ForResearcher()
		ev.AbsentCodes = absent
		h.render(w, r, http.StatusOK, "editor.html", v)
	case "submit":
		q, err := h.svc.SubmitQuery(r.Context(), sub)
		if err != nil {
			h.failOn(w, r, "editor.html", v, err)
			return
		}
		h.logger.Info("web: query submitted", "query", q.ID, "subject", s.user.Subject)
		http.Redirect(w, r, "/ui/queries/"+strconv.FormatInt(q.ID, 10)+"?done=submitted", http.StatusSeeOther)
	default:
		v.Error = "Choose Check, Dry run or Submit."
		h.render(w, r, http.StatusBadRequest, "editor.html", v)
	}
}

// editorCheck answers the editor's live validation (static/app.js) with the
// check-result fragment only.
func (h *Handler) editorCheck(w http.ResponseWriter, r *http.Request, s *session) {
	_, sub, perr := parseEditor(r)
	cv, status := &checkView{}, http.StatusOK
	if perr != nil {
		cv.Message = broker.ErrorMessage(perr)
	} else {
		var err error
		if cv, err = h.check(r, sub); err != nil {
			var msg string
			status, msg = h.errStatus(r, err)
			cv = &checkView{Message: msg}
		}
	}
	h.renderFragment(w, r, status, "editor.html", "checkResult", cv)
}

// failOn re-renders a page with err's safe message and status.
func (h *Handler) failOn(w http.ResponseWriter, r *http.Request, name string, v *view, err error) {
	status, msg := h.errStatus(r, err)
	v.Error = msg
	h.render(w, r, status, name, v)
}

type myQueriesView struct {
	Queries []*broker.Query
	Total   int
}

func (h *Handler) myQueries(w http.ResponseWriter, r *http.Request, s *session) {
	sub := s.user.Subject
	qs, total, err := h.svc.FindQueries(r.Context(), broker.QueryFilter{SubmittedBy: &sub, Limit: 200})
	if err != nil {
		h.fail(w, r, s, err)
		return
	}
	slices.SortFunc(qs, func(a, b *broker.Query) int { return b.SubmittedAt.Compare(a.SubmittedAt) })
	h.render(w, r, http.StatusOK, "queries.html", newView(s, "My queries", "queries", myQueriesView{Queries: qs, Total: total}))
}
