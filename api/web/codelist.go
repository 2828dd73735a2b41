package web

import (
	"net/http"

	"github.com/nhs-tre/tre/broker"
)

// Codelists are public (they hold no patient data): their pages, like the
// register, need no sign-in, and show who used a codelist only through
// released queries.

// codelistsView is the list of codelists.
type codelistsView struct {
	Codelists []*broker.Codelist
}

// public serves a page anyone may read: signed in (a session cookie that
// still holds), the caller is in the context and the view; otherwise not.
// A session the store cannot read is treated as none.
func (h *Handler) public(f func(w http.ResponseWriter, r *http.Request, s *session, v *view)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		v := &view{Active: "codelists"}
		var sess *session
		if c, err := r.Cookie(h.sessionCookieName()); err == nil {
			if sess, err = h.sessions.get(r.Context(), c.Value); err != nil {
				sess = nil
			}
		}
		if sess != nil {
			r = r.WithContext(broker.NewContext(r.Context(), sess.user))
			v = newView(sess, "", "codelists", nil)
		}
		f(w, r, sess, v)
	}
}

func (h *Handler) codelists(w http.ResponseWriter, r *http.Request, s *session, v *view) {
	cls, err := h.svc.FindCodelists(r.Context())
	if err != nil {
		status, msg := h.errStatus(r, err)
		h.renderMessage(w, r, s, status, http.StatusText(status), msg)
		return
	}
	v.Title, v.Data = "Codelists", codelistsView{Codelists: cls}
	h.render(w, r, http.StatusOK, "codelists.html", v)
}

func (h *Handler) codelist(w http.ResponseWriter, r *http.Request, s *session, v *view) {
	name := r.PathValue("org") + "/" + r.PathValue("slug") + "/" + r.PathValue("version")
	cl, err := h.svc.FindCodelist(r.Context(), name)
	if err != nil {
		status, msg := h.errStatus(r, err)
		h.renderMessage(w, r, s, status, http.StatusText(status), msg)
		return
	}
	v.Title, v.Data = "Codelist "+cl.Name, cl
	h.render(w, r, http.StatusOK, "codelist.html", v)
}

// queryCodelists returns the codelists a query uses, each as the list of
// codelists has it (number of codes, first terms), in the query's order.
func (h *Handler) queryCodelists(r *http.Request, q *broker.Query) ([]*broker.Codelist, error) {
	if len(q.Codelists) == 0 {
		return nil, nil
	}
	all, err := h.svc.FindCodelists(r.Context())
	if err != nil {
		return nil, err
	}
	var out []*broker.Codelist
	for _, ref := range q.Codelists {
		for _, c := range all {
			if c.Name == ref.Name {
				out = append(out, c)
			}
		}
	}
	return out, nil
}
