package web

import (
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/nhs-tre/tre/broker"
)

// handlerFunc is a page handler for a signed-in caller; r's context carries
// the caller (broker.NewContext).
type handlerFunc func(w http.ResponseWriter, r *http.Request, s *session)

// signinCookie holds the pre-session CSRF token of the sign-in form
// (double-submit): there is no session yet to bind it to.
const signinCookie = "tre_signin"

func (h *Handler) sessionCookieName() string {
	if h.cfg.CookieSecure {
		// __Host- makes the browser insist on Secure, Path=/ and no Domain.
		return "__Host-tre_session"
	}
	return "tre_session"
}

// forwardedToken returns the bearer token the OIDC proxy forwarded, if any.
func forwardedToken(r *http.Request) string {
	if a := r.Header.Get("Authorization"); a != "" {
		if scheme, tok, ok := strings.Cut(a, " "); ok && strings.EqualFold(scheme, "Bearer") {
			return strings.TrimSpace(tok)
		}
	}
	return strings.TrimSpace(r.Header.Get("X-Forwarded-Access-Token"))
}

// withUser resolves the caller from the forwarded token or the session
// cookie, checks the CSRF token of every POST, and puts the caller in the
// request context.
func (h *Handler) withUser(f handlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var sess *session
		cookieID := ""
		if c, err := r.Cookie(h.sessionCookieName()); err == nil {
			cookieID = c.Value
			if sess, err = h.sessions.get(r.Context(), c.Value); err != nil {
				h.sessionFailed(w, r, err)
				return
			}
		}
		if tok := forwardedToken(r); tok != "" && (sess == nil || sess.tokenHash != hashID(tok)) {
			// A new or different forwarded identity starts a new session;
			// a POST then fails the CSRF check below, as it must.
			u, err := h.auth.Verify(r.Context(), tok)
			if err != nil {
				h.logger.Info("web: forwarded token refused", "reason", err.Error())
				h.svc.RecordAuthFailure(r.Context(), broker.AuthFailure{Source: remoteIP(r), Action: "web.forwarded_token", Reason: err.Error()})
				h.renderMessage(w, r, nil, http.StatusUnauthorized, "Not signed in", "Your sign-in was not accepted. Sign in again through your organisation.")
				return
			}
			if err := h.sessions.delete(r.Context(), cookieID); err != nil {
				h.sessionFailed(w, r, err)
				return
			}
			id, created, err := h.sessions.create(r.Context(), u, tok, tokenExpiry(tok))
			if err != nil {
				h.sessionFailed(w, r, err)
				return
			}
			sess = created
			h.setSessionCookie(w, id, sess.expiresAt)
		}
		if sess == nil {
			if r.Method == http.MethodGet {
				http.Redirect(w, r, "/ui/signin", http.StatusSeeOther)
				return
			}
			h.renderMessage(w, r, nil, http.StatusForbidden, "Session expired", "Your session has expired or this form is stale. Sign in and try again.")
			return
		}
		if r.Method == http.MethodPost {
			if err := r.ParseForm(); err != nil {
				h.renderMessage(w, r, sess, http.StatusBadRequest, "Bad request", "The form could not be read.")
				return
			}
			if !sess.validCSRF(r.PostForm.Get("csrf")) {
				h.logger.Info("web: CSRF check failed", "path", r.URL.Path, "subject", sess.user.Subject)
				h.renderMessage(w, r, sess, http.StatusForbidden, "Form refused", "This form's security token is missing or does not match your session. Reload the page and try again.")
				return
			}
		}
		r = r.WithContext(broker.NewContext(r.Context(), sess.user))
		f(w, r, sess)
	}
}

func (h *Handler) setSessionCookie(w http.ResponseWriter, id string, expires time.Time) {
	http.SetCookie(w, &http.Cookie{
		Name:     h.sessionCookieName(),
		Value:    id,
		Path:     "/",
		Expires:  expires,
		HttpOnly: true,
		Secure:   h.cfg.CookieSecure,
		SameSite: http.SameSiteStrictMode,
	})
}

func (h *Handler) clearCookie(w http.ResponseWriter, name, path string) {
	http.SetCookie(w, &http.Cookie{
		Name: name, Value: "", Path: path, MaxAge: -1,
		HttpOnly: true, Secure: h.cfg.CookieSecure, SameSite: http.SameSiteStrictMode,
	})
}

// signinView is the sign-in page's data.
type signinView struct {
	Dev   bool
	Users []DemoUser
}

func (h *Handler) signinPage(w http.ResponseWriter, r *http.Request) {
	csrf := ""
	if h.cfg.Dev {
		csrf = randomToken()
		http.SetCookie(w, &http.Cookie{
			Name: signinCookie, Value: csrf, Path: "/ui/signin", MaxAge: 1800,
			HttpOnly: true, Secure: h.cfg.CookieSecure, SameSite: http.SameSiteStrictMode,
		})
	}
	h.render(w, r, http.StatusOK, "signin.html", &view{
		Title: "Sign in", CSRF: csrf,
		Data: signinView{Dev: h.cfg.Dev, Users: h.cfg.DevUsers},
	})
}

func (h *Handler) signin(w http.ResponseWriter, r *http.Request) {
	if !h.cfg.Dev {
		h.notFound(w, r)
		return
	}
	if err := r.ParseForm(); err != nil {
		h.renderMessage(w, r, nil, http.StatusBadRequest, "Bad request", "The form could not be read.")
		return
	}
	c, err := r.Cookie(signinCookie)
	if err != nil || c.Value == "" || !(&session{csrf: c.Value}).validCSRF(r.PostForm.Get("csrf")) {
		h.renderMessage(w, r, nil, http.StatusForbidden, "Form refused", "This sign-in form is stale or its security token does not match. Reload the sign-in page and try again.")
		return
	}
	tok := strings.TrimSpace(r.PostForm.Get("token"))
	if d := r.PostForm.Get("demo"); d != "" {
		i, err := strconv.Atoi(d)
		if err != nil || i < 0 || i >= len(h.cfg.DevUsers) {
			h.renderMessage(w, r, nil, http.StatusBadRequest, "Bad request", "There is no such demo user.")
			return
		}
		tok = h.cfg.DevUsers[i].Token
	}
	tok = strings.TrimPrefix(tok, "Bearer ")
	u, err := h.auth.Verify(r.Context(), tok)
	if err != nil {
		h.logger.Info("web: sign-in refused", "reason", err.Error())
		h.svc.RecordAuthFailure(r.Context(), broker.AuthFailure{Source: remoteIP(r), Action: "web.signin", Reason: err.Error()})
		h.signinFailed(w, r)
		return
	}
	if old, err := r.Cookie(h.sessionCookieName()); err == nil {
		if err := h.sessions.delete(r.Context(), old.Value); err != nil {
			h.sessionFailed(w, r, err)
			return
		}
	}
	id, sess, err := h.sessions.create(r.Context(), u, tok, tokenExpiry(tok))
	if err != nil {
		h.sessionFailed(w, r, err)
		return
	}
	h.setSessionCookie(w, id, sess.expiresAt)
	h.clearCookie(w, signinCookie, "/ui/signin")
	h.logger.Info("web: signed in", "subject", u.Subject)
	http.Redirect(w, r, "/ui/", http.StatusSeeOther)
}

func (h *Handler) signinFailed(w http.ResponseWriter, r *http.Request) {
	csrf := randomToken()
	http.SetCookie(w, &http.Cookie{
		Name: signinCookie, Value: csrf, Path: "/ui/signin", MaxAge: 1800,
		HttpOnly: true, Secure: h.cfg.CookieSecure, SameSite: http.SameSiteStrictMode,
	})
	h.render(w, r, http.StatusUnauthorized, "signin.html", &view{
		Title: "Sign in", CSRF: csrf,
		Error: "That token was not accepted: it may be expired, malformed or signed by an unknown key.",
		Data:  signinView{Dev: true, Users: h.cfg.DevUsers},
	})
}

func (h *Handler) signout(w http.ResponseWriter, r *http.Request, s *session) {
	if c, err := r.Cookie(h.sessionCookieName()); err == nil {
		// Deleted from the database: no replica accepts the cookie again.
		if err := h.sessions.delete(r.Context(), c.Value); err != nil {
			h.sessionFailed(w, r, err)
			return
		}
	}
	h.clearCookie(w, h.sessionCookieName(), "/")
	http.Redirect(w, r, "/ui/signin", http.StatusSeeOther)
}

// sessionFailed answers a request whose session could not be read or
// written (the database is unreachable): a 503 page, the cause logged
// without the session id.
func (h *Handler) sessionFailed(w http.ResponseWriter, r *http.Request, err error) {
	h.logger.Error("web: session store", "path", r.URL.Path, "err", err)
	h.renderMessage(w, r, nil, http.StatusServiceUnavailable, "Service unavailable", "Your session could not be checked just now. Try again in a moment.")
}

// remoteIP is the address of the connection a request came in on, never a
// forwarded header a client could forge.
func remoteIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}
