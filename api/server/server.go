// Package server serves tre's HTTP API (package api's contract) with gin:
// a route for every CONTRACT.md endpoint behind its coarse role gate,
// bearer-token authentication through api/auth, strict JSON decoding, rate
// limits on submissions and dry runs, and every error written in the one
// shape with the one status table. The handlers live in one file per noun
// (projects, queries, review, output, audit, catalog, leases, register, codelists,
// health).
//
// server decides nothing about the domain: who may do what to which query
// is the broker's call, made again behind every role check done here. It
// must never log tokens, request bodies or query results, never show a
// caller an internal error's text, and never answer a caller's mistake
// with a 500. With api/web it is the only code that serves HTTP to
// callers, and (STYLE.md) gin stays beneath api/.
package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/nhs-tre/tre/api"
	"github.com/nhs-tre/tre/api/auth"
	"github.com/nhs-tre/tre/api/metrics"
	"github.com/nhs-tre/tre/broker"
	"github.com/nhs-tre/tre/dp"
	"github.com/nhs-tre/tre/queries"
)

// Service is the part of the broker domain the JSON API calls: the
// operations it shares with the web pages (declared once in package api),
// the site agent's, and two of its own. *broker.Service satisfies it;
// tests of handlers alone may use a fake.
type Service interface {
	api.Service
	AgentService

	// ViewOutput answers GET /queries/{id}/output for a checker or a
	// researcher, the broker deciding which view.
	ViewOutput(ctx context.Context, id int64) (*broker.OutputView, error)
	// Ping answers /readyz.
	Ping(ctx context.Context) error
}

// AgentService is what a site agent calls: it publishes its catalog, leases
// approved jobs, keeps them alive and reports how they ended.
type AgentService interface {
	PublishCatalog(ctx context.Context, siteID, agentVersion string, cat *queries.Catalog) error
	LeaseJob(ctx context.Context, siteID, agentVersion string) (*broker.Lease, error)
	HeartbeatJob(ctx context.Context, id int64, token string) (*broker.Lease, error)
	CompleteJob(ctx context.Context, id int64, token string, res dp.Result) error
	// CompletePartial takes a site's part of a federated query.
	CompletePartial(ctx context.Context, id int64, token string, part *dp.Partial) error
	FailJob(ctx context.Context, id int64, token, code, message string) error
}

// Config is the HTTP layer's configuration. cmd builds it.
type Config struct {
	// Verifier checks bearer tokens. Required.
	Verifier *auth.Verifier
	// SubmitLimit limits query submissions and dry runs per subject.
	SubmitLimit RateLimit
	// DryRunner answers dry runs from synthetic data; nil disables them.
	DryRunner api.DryRunner
	// Now is the clock (rate limiting); time.Now when nil.
	Now func() time.Time
	// Metrics, when set, records every request's route, status and latency.
	Metrics *metrics.Registry
	// Draining, when set and true, makes /readyz answer 503 while every
	// other route is still served: the broker is shutting down and a load
	// balancer's health check should take it out of rotation before its
	// listener closes.
	Draining *atomic.Bool
}

// Server serves the broker's HTTP API.
type Server struct {
	cfg     Config
	svc     Service
	logger  *slog.Logger
	limiter *limiter
	engine  *gin.Engine
}

// NewServer builds the routes. It does not listen; serve Handler().
func NewServer(cfg Config, svc Service, logger *slog.Logger) *Server {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	s := &Server{cfg: cfg, svc: svc, logger: logger, limiter: newLimiter(cfg.SubmitLimit, cfg.Now)}
	gin.SetMode(gin.ReleaseMode)
	e := gin.New()
	e.HandleMethodNotAllowed = true
	e.RedirectTrailingSlash = false
	e.RedirectFixedPath = false
	e.Use(s.logRequests, gin.CustomRecoveryWithWriter(nil, s.recovered))
	if cfg.Metrics != nil {
		e.Use(s.observe)
	}
	e.NoRoute(func(c *gin.Context) {
		s.writeError(c, &api.Error{Status: http.StatusNotFound, Code: broker.ENOTFOUND, Message: "no such route"})
	})
	e.NoMethod(func(c *gin.Context) {
		s.writeError(c, &api.Error{Status: http.StatusMethodNotAllowed, Code: broker.EINVALID, Message: "method not allowed on this route"})
	})
	s.engine = e
	s.routes()
	return s
}

// Handler returns the HTTP handler.
func (s *Server) Handler() http.Handler { return s.engine }

// routes registers every route behind its coarse role gate. The broker checks
// membership, separation of duties and state again behind these gates.
func (s *Server) routes() {
	e := s.engine
	r := func(roles ...broker.Role) gin.HandlerFunc { return s.require(roles...) }
	anyRole := []broker.Role{broker.RoleResearcher, broker.RoleReviewer, broker.RoleOutputChecker, broker.RoleAdmin, broker.RoleAgent}
	staffOrUser := []broker.Role{broker.RoleResearcher, broker.RoleReviewer, broker.RoleOutputChecker, broker.RoleAdmin}
	e.GET("/healthz", s.handle(s.healthz))
	e.GET("/readyz", s.handle(s.readyz))
	e.GET("/api/v1/openapi.json", s.handle(s.openapi))
	e.GET("/public/register", s.handle(s.register))

	v1 := e.Group("/api/v1")
	v1.GET("/datasets", r(anyRole...), s.handle(s.listDatasets))
	v1.GET("/sites", r(broker.RoleAdmin), s.handle(s.listSites))
	v1.POST("/sites", r(broker.RoleAdmin), s.handle(s.createSite))

	v1.POST("/projects", r(broker.RoleAdmin), s.handle(s.createProject))
	v1.GET("/projects", r(broker.RoleAdmin, broker.RoleReviewer, broker.RoleResearcher), s.handle(s.listProjects))
	v1.GET("/projects/:id", r(broker.RoleAdmin, broker.RoleReviewer, broker.RoleResearcher), s.handle(s.getProject))
	v1.PATCH("/projects/:id", r(broker.RoleAdmin), s.handle(s.updateProject))

	v1.POST("/queries", r(broker.RoleResearcher), s.handle(s.submitQuery))
	v1.POST("/queries/check", r(broker.RoleResearcher), s.handle(s.checkQuery))
	v1.POST("/queries/dry-run", r(broker.RoleResearcher), s.handle(s.dryRun))
	v1.GET("/queries", r(staffOrUser...), s.handle(s.listQueries))
	v1.GET("/queries/:id", r(staffOrUser...), s.handle(s.getQuery))
	v1.POST("/queries/:id/cancel", r(broker.RoleResearcher), s.handle(s.cancelQuery))
	v1.GET("/review/queue", r(broker.RoleReviewer), s.handle(s.reviewQueue))
	v1.POST("/queries/:id/approve", r(broker.RoleReviewer), s.handle(s.approveQuery))
	v1.POST("/queries/:id/reject", r(broker.RoleReviewer), s.handle(s.rejectQuery))
	v1.GET("/outputs/queue", r(broker.RoleOutputChecker), s.handle(s.outputQueue))
	v1.GET("/queries/:id/output", r(broker.RoleOutputChecker, broker.RoleResearcher), s.handle(s.getOutput))
	v1.POST("/queries/:id/release", r(broker.RoleOutputChecker), s.handle(s.releaseQuery))
	v1.POST("/queries/:id/withhold", r(broker.RoleOutputChecker), s.handle(s.withholdQuery))
	v1.GET("/queries/:id/result", r(broker.RoleResearcher), s.handle(s.getResult))

	v1.POST("/codelists", r(broker.RoleAdmin, broker.RoleReviewer, broker.RoleResearcher), s.handle(s.uploadCodelist))
	v1.GET("/codelists", r(anyRole...), s.handle(s.listCodelists))
	v1.GET("/codelists/:org/:slug/:version", r(anyRole...), s.handle(s.getCodelist))

	v1.GET("/audit", r(broker.RoleAdmin), s.handle(s.listAudit))
	v1.GET("/audit/verify", r(broker.RoleAdmin), s.handle(s.verifyAudit))

	v1.PUT("/agent/catalog", r(broker.RoleAgent), s.handle(s.publishCatalog))
	v1.POST("/agent/lease", r(broker.RoleAgent), s.handle(s.leaseJob))
	v1.POST("/agent/jobs/:id/heartbeat", r(broker.RoleAgent), s.handle(s.heartbeatJob))
	v1.POST("/agent/jobs/:id/complete", r(broker.RoleAgent), s.handle(s.completeJob))
	v1.POST("/agent/jobs/:id/fail", r(broker.RoleAgent), s.handle(s.failJob))
}

// Context keys the middleware shares with the request log.
const (
	keyRequestID = "tre.request_id"
	keySubject   = "tre.sub"
)

// logRequests gives every request an id and logs one line per request:
// never the token, the body, the query string or the response body.
func (s *Server) logRequests(c *gin.Context) {
	var b [8]byte
	_, _ = rand.Read(b[:])
	id := hex.EncodeToString(b[:])
	c.Set(keyRequestID, id)
	h := c.Writer.Header()
	h.Set("X-Request-Id", id)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	start := s.cfg.Now()
	c.Next()
	route := c.FullPath()
	if route == "" {
		route = "(unmatched)"
	}
	s.logger.LogAttrs(c.Request.Context(), requestLevel(route, c.Writer.Status()), "request",
		slog.String("request_id", id),
		slog.String("method", c.Request.Method),
		slog.String("route", route),
		slog.Int("status", c.Writer.Status()),
		slog.Int("bytes", c.Writer.Size()),
		slog.String("sub", c.GetString(keySubject)),
		slog.Duration("duration", s.cfg.Now().Sub(start)),
	)
}

// requestLevel is the level a request is logged at: a site agent's empty
// lease polls and accepted heartbeats, which every agent sends every few
// seconds, at debug; everything else (a job leased included) at info.
func requestLevel(route string, status int) slog.Level {
	switch {
	case route == "/api/v1/agent/lease" && status == http.StatusNoContent,
		route == "/api/v1/agent/jobs/:id/heartbeat" && status == http.StatusOK,
		// Container and load-balancer probes: every few seconds, forever.
		(route == "/healthz" || route == "/readyz") && status == http.StatusOK:
		return slog.LevelDebug
	}
	return slog.LevelInfo
}

// observe records every request's latency and status in the metrics under
// the route template gin matched (c.FullPath()), never the raw path.
func (s *Server) observe(c *gin.Context) {
	start := time.Now()
	c.Next()
	s.cfg.Metrics.ObserveHTTP(c.FullPath(), c.Request.Method, c.Writer.Status(), time.Since(start))
}

func (s *Server) recovered(c *gin.Context, v any) {
	s.logger.Error("panic in handler", "request_id", c.GetString(keyRequestID), "route", c.FullPath(), "panic", fmt.Sprint(v))
	if !c.Writer.Written() {
		writeJSON(c, http.StatusInternalServerError, api.ErrorResponse{Error: api.Error{Code: broker.EINTERNAL, Message: "internal error"}})
	}
	c.Abort()
}

// handle adapts a handler that returns an error to gin.
func (s *Server) handle(h func(*gin.Context) error) gin.HandlerFunc {
	return func(c *gin.Context) {
		if err := h(c); err != nil {
			s.writeError(c, err)
		}
	}
}
