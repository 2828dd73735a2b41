// Package web is tre's browser interface: server-rendered pages for
// researchers, reviewers, output checkers and admins, and the public
// transparency register. It owns browser sessions (an opaque cookie whose
// hash maps, in the broker's database, to a verified identity, so that every
// replica shares them), CSRF tokens, the security headers and
// the HTML templates and static assets embedded in the binary.
//
// web decides nothing about the domain: every action goes to the broker
// service with the caller in the context, and the broker refuses what a role
// or separation of duties forbids; hiding a button here is a courtesy, not a
// control. It must never render user-supplied text as trusted HTML, never
// run inline script or style, never log tokens or query results, and never
// show a caller the text of an internal error.
package web

import (
	"context"
	"embed"
	"io/fs"
	"log/slog"
	"net/http"
	"time"

	"github.com/nhs-tre/tre/api"
	"github.com/nhs-tre/tre/broker"
	"github.com/nhs-tre/tre/dp"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Service is the part of the broker domain the pages call: the operations
// they share with the JSON API (declared once in package api), four of
// their own and the session store. *broker.Service satisfies it. The
// caller travels in ctx (broker.NewContext).
type Service interface {
	api.Service
	SessionService

	// QueryAccess says what the caller may do with a query (which buttons
	// a page shows; the broker checks again on every action).
	QueryAccess(ctx context.Context, id int64) (*broker.Access, error)
	// FindOutput is the output as an output checker checks it.
	FindOutput(ctx context.Context, id int64) (*broker.Output, error)
	// ReleasedOutput is what a researcher may see of a released output.
	ReleasedOutput(ctx context.Context, id int64) (*broker.ReleasedResult, error)
	// QuerySpec is the protection spec a query compiles to, for staff and
	// the query's researchers: the pages show its grouping sets.
	QuerySpec(ctx context.Context, id int64) (*dp.Spec, error)
}

// Authenticator verifies a bearer token and returns the caller it names.
// *auth.Verifier satisfies it. Errors are shown to nobody but logged by
// reason only; the token itself is never logged.
type Authenticator interface {
	Verify(ctx context.Context, bearerToken string) (*broker.User, error)
}

// DemoUser is a signed-in identity offered on the dev sign-in page. Token is
// a real bearer token, verified like any other when the button is used.
type DemoUser struct {
	Name  string
	Role  broker.Role
	Token string
}

// Config configures the interface.
type Config struct {
	// Dev enables the sign-in page (pasted token or demo users). Without it
	// the interface relies on the OIDC reverse proxy forwarding a bearer
	// token on every request.
	Dev      bool
	DevUsers []DemoUser
	// CookieSecure sets the Secure attribute (and the __Host- cookie
	// prefix). Turn it off only for http://127.0.0.1 in dev.
	CookieSecure bool
	// Now is the clock for session expiry and agent health; time.Now when nil.
	Now func() time.Time
	// DryRunner, when set, enables "Dry run" in the query editor.
	DryRunner api.DryRunner
}

// Handler serves /ui/… and /register. It is safe for concurrent use.
type Handler struct {
	cfg      Config
	svc      Service
	auth     Authenticator
	logger   *slog.Logger
	now      func() time.Time
	sessions *sessionStore
	pages    *pages
	mux      *http.ServeMux
}

// Paths under which the lead mounts the handler (without stripping).
const (
	PathPrefix   = "/ui/"
	RegisterPath = "/register"
)

// New returns the interface's handler. Mount it at PathPrefix and
// RegisterPath without stripping the prefix.
func New(cfg Config, svc Service, auth Authenticator, logger *slog.Logger) *Handler {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	h := &Handler{
		cfg:      cfg,
		svc:      svc,
		auth:     auth,
		logger:   logger,
		now:      now,
		sessions: newSessionStore(now, svc),
		pages:    mustParsePages(),
	}
	h.routes()
	return h
}

func (h *Handler) routes() {
	m := http.NewServeMux()
	static, err := fs.Sub(staticFS, "static")
	if err != nil {
		panic("web: embedded static directory missing: " + err.Error())
	}
	m.Handle("GET /ui/static/", http.StripPrefix("/ui/static/", http.FileServerFS(static)))

	m.HandleFunc("GET /register", h.register)
	m.HandleFunc("GET /ui/codelists", h.public(h.codelists))
	m.HandleFunc("GET /ui/codelists/{org}/{slug}/{version}", h.public(h.codelist))
	m.HandleFunc("GET /ui/signin", h.signinPage)
	m.HandleFunc("POST /ui/signin", h.signin)

	user := func(f handlerFunc) http.HandlerFunc { return h.withUser(f) }
	m.HandleFunc("GET /ui/{$}", user(h.home))
	m.HandleFunc("POST /ui/signout", user(h.signout))

	m.HandleFunc("GET /ui/projects", user(h.projects))
	m.HandleFunc("GET /ui/editor", user(h.editor))
	m.HandleFunc("POST /ui/editor", user(h.editorPost))
	m.HandleFunc("POST /ui/editor/check", user(h.editorCheck))
	m.HandleFunc("GET /ui/queries", user(h.myQueries))
	m.HandleFunc("GET /ui/queries/{id}", user(h.query))
	m.HandleFunc("GET /ui/queries/{id}/result.csv", user(h.resultCSV))
	m.HandleFunc("GET /ui/queries/{id}/result.json", user(h.resultJSON))
	m.HandleFunc("POST /ui/queries/{id}/{action}", user(h.queryAction))

	m.HandleFunc("GET /ui/review", user(h.reviewQueue))
	m.HandleFunc("GET /ui/outputs", user(h.outputQueue))

	// The broker refuses non-admins on every admin call but not on the
	// listings the admin pages also use (projects, datasets), so the pages
	// themselves are admin-only.
	admin := func(f handlerFunc) http.HandlerFunc { return h.withUser(h.requireRole(broker.RoleAdmin, f)) }
	m.HandleFunc("GET /ui/admin", admin(h.admin))
	m.HandleFunc("POST /ui/admin/projects", admin(h.createProject))
	m.HandleFunc("POST /ui/admin/projects/{id}/{action}", admin(h.projectAction))
	m.HandleFunc("GET /ui/admin/sites", admin(h.sites))
	m.HandleFunc("POST /ui/admin/sites", admin(h.createSite))
	m.HandleFunc("GET /ui/admin/audit", admin(h.audit))
	m.HandleFunc("POST /ui/admin/audit/verify", admin(h.verifyAudit))

	m.HandleFunc("/", h.notFound)
	h.mux = m
}

// requireRole refuses callers without role with a 403 page.
func (h *Handler) requireRole(role broker.Role, f handlerFunc) handlerFunc {
	return func(w http.ResponseWriter, r *http.Request, s *session) {
		if !s.user.HasRole(role) {
			h.renderMessage(w, r, s, http.StatusForbidden, "Forbidden", "This page is for the "+roleLabel(role)+" role, which you do not hold.")
			return
		}
		f(w, r, s)
	}
}

// ServeHTTP sets the security headers on every response, then routes.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	hd := w.Header()
	hd.Set("Content-Security-Policy", "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("Referrer-Policy", "no-referrer")
	hd.Set("X-Frame-Options", "DENY")
	hd.Set("Cross-Origin-Opener-Policy", "same-origin")
	if h.cfg.CookieSecure {
		hd.Set("Strict-Transport-Security", "max-age=31536000")
	}
	if r.Method == http.MethodPost {
		// Bound form bodies: the largest legitimate form is a query editor.
		r.Body = http.MaxBytesReader(w, r.Body, maxFormBytes)
	}
	h.mux.ServeHTTP(w, r)
}

// maxFormBytes bounds a POSTed form.
const maxFormBytes = 256 << 10
