package web

import (
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nhs-tre/tre/broker"
)

// projectForm is the create-project form as typed.
type projectForm struct {
	Title, Organisation, Purpose, LawfulBasis, DSA string
	Members, Epsilon, Delta, Starts, Expires       string
	Datasets                                       []string
}

type adminView struct {
	Projects []*broker.Project
	Datasets []string
	Form     projectForm
}

func (h *Handler) adminData(r *http.Request, f projectForm) (*adminView, error) {
	ps, _, err := h.svc.FindProjects(r.Context(), broker.ProjectFilter{Limit: broker.MaxLimit})
	if err != nil {
		return nil, err
	}
	av := &adminView{Projects: ps, Form: f}
	cats, err := h.svc.FindDatasets(r.Context())
	if err != nil {
		return nil, err
	}
	for _, c := range cats {
		if !slices.Contains(av.Datasets, c.Dataset) {
			av.Datasets = append(av.Datasets, c.Dataset)
		}
	}
	slices.Sort(av.Datasets)
	return av, nil
}

func (h *Handler) admin(w http.ResponseWriter, r *http.Request, s *session) {
	f := projectForm{Epsilon: "10", Delta: "1e-6"}
	av, err := h.adminData(r, f)
	if err != nil {
		h.fail(w, r, s, err)
		return
	}
	v := newView(s, "Projects", "admin", av)
	v.Notice = map[string]string{
		"created":   "Project created.",
		"suspended": "Project suspended: no new queries, approvals or runs.",
		"resumed":   "Project resumed.",
	}[r.URL.Query().Get("done")]
	h.render(w, r, http.StatusOK, "admin.html", v)
}

// parseProject reads the create-project form; mistakes are named in words.
func parseProject(r *http.Request, now time.Time) (projectForm, *broker.Project, error) {
	pf := r.PostForm
	f := projectForm{
		Title:        strings.TrimSpace(pf.Get("title")),
		Organisation: strings.TrimSpace(pf.Get("organisation")),
		Purpose:      strings.TrimSpace(pf.Get("purpose")),
		LawfulBasis:  strings.TrimSpace(pf.Get("lawful_basis")),
		DSA:          strings.TrimSpace(pf.Get("data_sharing_agreement")),
		Members:      pf.Get("members"),
		Epsilon:      strings.TrimSpace(pf.Get("epsilon_budget")),
		Delta:        strings.TrimSpace(pf.Get("delta_budget")),
		Starts:       strings.TrimSpace(pf.Get("starts_at")),
		Expires:      strings.TrimSpace(pf.Get("expires_at")),
		Datasets:     pf["datasets"],
	}
	p := &broker.Project{
		Title: f.Title, Organisation: f.Organisation, Purpose: f.Purpose,
		LawfulBasis: f.LawfulBasis, DataSharingAgreement: f.DSA, Datasets: f.Datasets,
		Members: strings.FieldsFunc(f.Members, func(r rune) bool { return r == ',' || r == ' ' || r == '\n' || r == '\r' || r == '\t' }),
	}
	var err error
	if p.EpsilonBudget, err = strconv.ParseFloat(f.Epsilon, 64); err != nil {
		return f, nil, broker.Errorf(broker.EINVALID, "The ε budget must be a number, such as 10.")
	}
	if f.Delta == "" {
		f.Delta = "0"
	}
	if p.DeltaBudget, err = strconv.ParseFloat(f.Delta, 64); err != nil {
		return f, nil, broker.Errorf(broker.EINVALID, "The δ budget must be a number, such as 1e-6.")
	}
	p.StartsAt = now
	if f.Starts != "" {
		if p.StartsAt, err = time.Parse(time.DateOnly, f.Starts); err != nil {
			return f, nil, broker.Errorf(broker.EINVALID, "The start date must be a date (YYYY-MM-DD).")
		}
	}
	if p.ExpiresAt, err = time.Parse(time.DateOnly, f.Expires); err != nil {
		return f, nil, broker.Errorf(broker.EINVALID, "The expiry date must be a date (YYYY-MM-DD).")
	}
	return f, p, nil
}

func (h *Handler) createProject(w http.ResponseWriter, r *http.Request, s *session) {
	f, p, perr := parseProject(r, h.now())
	av, err := h.adminData(r, f)
	if err != nil {
		h.fail(w, r, s, err)
		return
	}
	v := newView(s, "Projects", "admin", av)
	if perr == nil {
		perr = h.svc.CreateProject(r.Context(), p)
	}
	if perr != nil {
		h.failOn(w, r, "admin.html", v, perr)
		return
	}
	h.logger.Info("web: project created", "project", p.ID, "subject", s.user.Subject)
	http.Redirect(w, r, "/ui/admin?done=created", http.StatusSeeOther)
}

func (h *Handler) projectAction(w http.ResponseWriter, r *http.Request, s *session) {
	id, ok := h.pathID(w, r, s)
	if !ok {
		return
	}
	var st broker.ProjectStatus
	var done string
	switch r.PathValue("action") {
	case "suspend":
		st, done = broker.ProjectSuspended, "suspended"
	case "resume":
		st, done = broker.ProjectActive, "resumed"
	default:
		h.notFound(w, r)
		return
	}
	if _, err := h.svc.UpdateProject(r.Context(), id, broker.ProjectUpdate{Status: &st}); err != nil {
		av, aerr := h.adminData(r, projectForm{Epsilon: "10", Delta: "1e-6"})
		if aerr != nil {
			h.fail(w, r, s, err)
			return
		}
		h.failOn(w, r, "admin.html", newView(s, "Projects", "admin", av), err)
		return
	}
	h.logger.Info("web: project status changed", "project", id, "status", string(st), "subject", s.user.Subject)
	http.Redirect(w, r, "/ui/admin?done="+done, http.StatusSeeOther)
}

// Agent health thresholds: agents poll for work every few seconds, so a
// minute of silence is worth a look and a quarter of an hour is an outage.
const (
	agentLate    = time.Minute
	agentOffline = 15 * time.Minute
)

type siteView struct {
	Site   *broker.Site
	Health string // "online", "late", "offline", "never seen", "not registered"
	Kind   string // good, wait, bad: styling only; Health carries the meaning
	Ago    string
}

// sitesView is the sites page: every site's health and the registration
// form as typed.
type sitesView struct {
	Sites []siteView
	// Datasets lists every published dataset with the sites holding it
	// (several for a federated dataset), by name.
	Datasets []datasetSites
	Form     siteForm
}

type datasetSites struct {
	Name  string
	Sites []string
}

type siteForm struct{ ID, Name, Organisation string }

func (h *Handler) sitesData(r *http.Request, f siteForm) (*sitesView, error) {
	ss, err := h.svc.FindSites(r.Context())
	if err != nil {
		return nil, err
	}
	now := h.now()
	sv := &sitesView{Form: f}
	for _, site := range ss {
		v := siteView{Site: site}
		age := now.Sub(site.LastSeen)
		switch {
		case !site.Registered:
			v.Health, v.Kind = "not registered", "bad"
		case site.LastSeen.IsZero():
			v.Health, v.Kind = "never seen", "bad"
		case age < agentLate:
			v.Health, v.Kind = "online", "good"
		case age < agentOffline:
			v.Health, v.Kind = "late", "wait"
		default:
			v.Health, v.Kind = "offline", "bad"
		}
		if !site.LastSeen.IsZero() {
			v.Ago = age.Round(time.Second).String() + " ago"
		}
		sv.Sites = append(sv.Sites, v)
	}
	sv.Datasets = holders(ss)
	return sv, nil
}

func (h *Handler) sites(w http.ResponseWriter, r *http.Request, s *session) {
	sv, err := h.sitesData(r, siteForm{})
	if err != nil {
		h.fail(w, r, s, err)
		return
	}
	v := newView(s, "Sites and agents", "sites", sv)
	if r.URL.Query().Get("done") == "registered" {
		v.Notice = "Site registered. Its agent may now publish its catalog and run jobs, with a token whose site claim names it."
	}
	h.render(w, r, http.StatusOK, "sites.html", v)
}

func (h *Handler) createSite(w http.ResponseWriter, r *http.Request, s *session) {
	pf := r.PostForm
	f := siteForm{ID: strings.TrimSpace(pf.Get("id")), Name: strings.TrimSpace(pf.Get("name")), Organisation: strings.TrimSpace(pf.Get("organisation"))}
	err := h.svc.CreateSite(r.Context(), &broker.Site{ID: f.ID, Name: f.Name, Organisation: f.Organisation})
	if err != nil {
		sv, serr := h.sitesData(r, f)
		if serr != nil {
			h.fail(w, r, s, serr)
			return
		}
		h.failOn(w, r, "sites.html", newView(s, "Sites and agents", "sites", sv), err)
		return
	}
	h.logger.Info("web: site registered", "site", f.ID, "subject", s.user.Subject)
	http.Redirect(w, r, "/ui/admin/sites?done=registered", http.StatusSeeOther)
}

// auditPage is how many entries one page of the audit log shows.
const auditPage = 50

// auditView is one page of the audit log, newest first, with the filters
// as typed and links to the neighbouring pages.
type auditView struct {
	Actor, Action, Object string
	Entries               []*broker.AuditEntry
	Total                 int
	Page, Pages           int
	// First and Last number the entries shown, counted from the newest.
	First, Last  int
	Newer, Older string
	Verification *broker.AuditVerification
}

func (h *Handler) auditData(r *http.Request, actor, action, object string, page int) (*auditView, error) {
	av := &auditView{Actor: actor, Action: action, Object: object}
	f := broker.AuditFilter{Limit: 1}
	if actor != "" {
		f.Actor = &av.Actor
	}
	if action != "" {
		f.Action = &av.Action
	}
	if object != "" {
		f.Object = &av.Object
	}
	// The store lists entries oldest first: count them, then read the
	// page counted from the newest.
	_, total, err := h.svc.FindAuditEntries(r.Context(), f)
	if err != nil {
		return nil, err
	}
	av.Total, av.Pages = total, max(1, (total+auditPage-1)/auditPage)
	av.Page = min(max(page, 1), av.Pages)
	f.Offset, f.Limit = total-av.Page*auditPage, auditPage
	if f.Offset < 0 {
		f.Limit += f.Offset
		f.Offset = 0
	}
	if total > 0 {
		es, _, err := h.svc.FindAuditEntries(r.Context(), f)
		if err != nil {
			return nil, err
		}
		slices.Reverse(es)
		av.Entries = es
		av.First, av.Last = (av.Page-1)*auditPage+1, (av.Page-1)*auditPage+len(es)
	}
	link := func(p int) string {
		q := url.Values{}
		for k, v := range map[string]string{"actor": actor, "action": action, "object": object} {
			if v != "" {
				q.Set(k, v)
			}
		}
		if p > 1 {
			q.Set("page", strconv.Itoa(p))
		}
		if len(q) == 0 {
			return "/ui/admin/audit"
		}
		return "/ui/admin/audit?" + q.Encode()
	}
	if av.Page > 1 {
		av.Newer = link(av.Page - 1)
	}
	if av.Page < av.Pages {
		av.Older = link(av.Page + 1)
	}
	return av, nil
}

func (h *Handler) audit(w http.ResponseWriter, r *http.Request, s *session) {
	q := r.URL.Query()
	page, _ := strconv.Atoi(q.Get("page"))
	av, err := h.auditData(r, strings.TrimSpace(q.Get("actor")), strings.TrimSpace(q.Get("action")), strings.TrimSpace(q.Get("object")), page)
	if err != nil {
		h.fail(w, r, s, err)
		return
	}
	h.render(w, r, http.StatusOK, "audit.html", newView(s, "Audit log", "audit", av))
}

func (h *Handler) verifyAudit(w http.ResponseWriter, r *http.Request, s *session) {
	ver, err := h.svc.VerifyAudit(r.Context())
	if err != nil {
		h.fail(w, r, s, err)
		return
	}
	av, err := h.auditData(r, "", "", "", 1)
	if err != nil {
		h.fail(w, r, s, err)
		return
	}
	av.Verification = ver
	h.render(w, r, http.StatusOK, "audit.html", newView(s, "Audit log", "audit", av))
}

type registerView struct {
	Projects   []*broker.RegisterEntry
	AuditChain *broker.AuditHead
}

// register is the public transparency register: no sign-in, no session.
func (h *Handler) register(w http.ResponseWriter, r *http.Request) {
	es, err := h.svc.Register(r.Context())
	var head *broker.AuditHead
	if err == nil {
		head, err = h.svc.AuditHead(r.Context())
	}
	if err != nil {
		status, msg := h.errStatus(r, err)
		h.renderMessage(w, r, nil, status, http.StatusText(status), msg)
		return
	}
	h.render(w, r, http.StatusOK, "register.html", &view{Title: "Public register of projects", Active: "register", Data: registerView{Projects: es, AuditChain: head}})
}

// holders groups the sites' datasets by dataset, by name.
func holders(ss []*broker.Site) []datasetSites {
	by := map[string][]string{}
	for _, site := range ss {
		for _, d := range site.Datasets {
			by[d] = append(by[d], site.ID)
		}
	}
	out := make([]datasetSites, 0, len(by))
	for d, sites := range by {
		out = append(out, datasetSites{Name: d, Sites: sites})
	}
	slices.SortFunc(out, func(a, b datasetSites) int { return strings.Compare(a.Name, b.Name) })
	return out
}
