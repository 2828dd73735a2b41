package web

import (
	"net/http"
	"slices"
	"time"

	"github.com/nhs-tre/tre/api"
	"github.com/nhs-tre/tre/broker"
)

// homeView is the signed-in home page: for each role the caller holds,
// what needs their attention now.
type homeView struct {
	Researcher *researcherHome
	Reviewer   *queueHome
	Checker    *queueHome
	Admin      *adminHome
}

// researcherHome is a researcher's projects and queries by what they need.
type researcherHome struct {
	Projects []*broker.Project
	// Ready are released results; Ended queries that will not be
	// released (rejected, withheld, failed, cancelled), whose reason the
	// researcher should read; Waiting the ones still on their way.
	Ready, Ended, Waiting []*broker.Query
}

// queueHome is a reviewer's or output checker's queue at a glance.
type queueHome struct {
	Total   int
	Flagged int
	Oldest  *broker.Query
	Waiting string // how long the oldest has waited
	First   []*broker.Query
}

// adminHome is what an admin should look at: sites not online, projects
// ending soon, suspended projects.
type adminHome struct {
	Sites     []siteView
	Expiring  []*broker.Project
	Suspended []*broker.Project
	Projects  int
}

// homeList bounds each list on the home page; the full lists are a click
// away.
const homeList = 5

// expiringWithin is how far ahead the admin home warns of project expiry.
const expiringWithin = 30 * 24 * time.Hour

func (h *Handler) home(w http.ResponseWriter, r *http.Request, s *session) {
	u := s.user
	hv := &homeView{}
	var err error
	if u.HasRole(broker.RoleResearcher) {
		if hv.Researcher, err = h.researcherHome(r, s); err != nil {
			h.fail(w, r, s, err)
			return
		}
	}
	if u.HasRole(broker.RoleReviewer) {
		qs, err := h.svc.ReviewQueue(r.Context())
		if err != nil {
			h.fail(w, r, s, err)
			return
		}
		hv.Reviewer = h.queueHome(qs)
	}
	if u.HasRole(broker.RoleOutputChecker) {
		qs, err := h.svc.OutputQueue(r.Context())
		if err != nil {
			h.fail(w, r, s, err)
			return
		}
		hv.Checker = h.queueHome(qs)
	}
	if u.HasRole(broker.RoleAdmin) {
		if hv.Admin, err = h.adminHome(r); err != nil {
			h.fail(w, r, s, err)
			return
		}
	}
	if hv.Researcher == nil && hv.Reviewer == nil && hv.Checker == nil && hv.Admin == nil {
		h.renderMessage(w, r, s, http.StatusForbidden, "No access", "Your account has no role that uses this interface.")
		return
	}
	h.render(w, r, http.StatusOK, "home.html", newView(s, "Home", "home", hv))
}

func (h *Handler) researcherHome(r *http.Request, s *session) (*researcherHome, error) {
	sub := s.user.Subject
	active := broker.ProjectActive
	ps, _, err := h.svc.FindProjects(r.Context(), broker.ProjectFilter{Member: &sub, Status: &active, Limit: broker.MaxLimit})
	if err != nil {
		return nil, err
	}
	qs, _, err := h.svc.FindQueries(r.Context(), broker.QueryFilter{SubmittedBy: &sub, Limit: broker.MaxLimit})
	if err != nil {
		return nil, err
	}
	slices.SortFunc(qs, func(a, b *broker.Query) int { return b.UpdatedAt.Compare(a.UpdatedAt) })
	rh := &researcherHome{Projects: ps}
	for _, q := range qs {
		switch q.Status {
		case broker.StatusReleased:
			rh.Ready = appendShort(rh.Ready, q)
		case broker.StatusRejected, broker.StatusWithheld, broker.StatusFailed, broker.StatusCancelled:
			rh.Ended = appendShort(rh.Ended, q)
		default:
			rh.Waiting = appendShort(rh.Waiting, q)
		}
	}
	return rh, nil
}

func appendShort(qs []*broker.Query, q *broker.Query) []*broker.Query {
	if len(qs) >= homeList {
		return qs
	}
	return append(qs, q)
}

// queueHome summarises a queue, oldest first.
func (h *Handler) queueHome(qs []*broker.Query) *queueHome {
	qh := &queueHome{Total: len(qs)}
	for _, q := range qs {
		if len(q.RiskFlags) > 0 {
			qh.Flagged++
		}
	}
	if len(qs) > 0 {
		qh.Oldest = qs[0]
		qh.Waiting = fmtDuration(h.now().Sub(qs[0].UpdatedAt))
	}
	qh.First = qs[:min(len(qs), homeList)]
	return qh
}

func (h *Handler) adminHome(r *http.Request) (*adminHome, error) {
	sv, err := h.sitesData(r, siteForm{})
	if err != nil {
		return nil, err
	}
	ah := &adminHome{}
	for _, site := range sv.Sites {
		if site.Kind != "good" {
			ah.Sites = append(ah.Sites, site)
		}
	}
	ps, total, err := h.svc.FindProjects(r.Context(), broker.ProjectFilter{Limit: broker.MaxLimit})
	if err != nil {
		return nil, err
	}
	ah.Projects = total
	now := h.now()
	for _, p := range ps {
		switch {
		case p.Status == broker.ProjectSuspended:
			ah.Suspended = append(ah.Suspended, p)
		case p.ExpiresAt.After(now) && p.ExpiresAt.Sub(now) < expiringWithin:
			ah.Expiring = append(ah.Expiring, p)
		}
	}
	return ah, nil
}

// fmtDuration says how long something has waited, to the unit that
// matters: "45 seconds", "1 minute", "3 hours", "2 days".
func fmtDuration(d time.Duration) string {
	switch {
	case d < time.Minute:
		return api.Plural(int(d/time.Second), "second", "seconds")
	case d < time.Hour:
		return api.Plural(int(d/time.Minute), "minute", "minutes")
	case d < 48*time.Hour:
		return api.Plural(int(d/time.Hour), "hour", "hours")
	}
	return api.Plural(int(d/(24*time.Hour)), "day", "days")
}
