package api

import (
	"bytes"
	"context"
	"crypto/rand"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/nhs-tre/tre/api/metrics"
	"github.com/nhs-tre/tre/broker"
	"github.com/nhs-tre/tre/dp"
	"github.com/nhs-tre/tre/queries"
)

//go:embed openapi.json
var openAPIDoc []byte

// Page sizes for list endpoints.
const (
	DefaultPageLimit = 50
	MaxPageLimit     = 500
)

// Config is the HTTP layer's configuration. cmd builds it.
type Config struct {
	// Verifier checks bearer tokens. Required.
	Verifier *Verifier
	// SubmitLimit limits query submissions and dry runs per subject.
	SubmitLimit RateLimit
	// DryRunner answers dry runs from synthetic data; nil disables them.
	DryRunner DryRunner
	// Now is the clock (rate limiting); time.Now when nil.
	Now func() time.Time
	// Metrics, when set, records every request's route, status and latency.
	Metrics *metrics.Registry
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
		s.writeError(c, &httpError{http.StatusNotFound, broker.ENOTFOUND, "no such route"})
	})
	e.NoMethod(func(c *gin.Context) {
		s.writeError(c, &httpError{http.StatusMethodNotAllowed, broker.EINVALID, "method not allowed on this route"})
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

	v1.GET("/audit", r(broker.RoleAdmin), s.handle(s.listAudit))
	v1.GET("/audit/verify", r(broker.RoleAdmin), s.handle(s.verifyAudit))

	v1.PUT("/agent/catalog", r(broker.RoleAgent), s.handle(s.publishCatalog))
	v1.POST("/agent/lease", r(broker.RoleAgent), s.handle(s.leaseJob))
	v1.POST("/agent/jobs/:id/heartbeat", r(broker.RoleAgent), s.handle(s.heartbeatJob))
	v1.POST("/agent/jobs/:id/complete", r(broker.RoleAgent), s.handle(s.completeJob))
	v1.POST("/agent/jobs/:id/fail", r(broker.RoleAgent), s.handle(s.failJob))
}

// ---- plumbing ----

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
		route == "/api/v1/agent/jobs/:id/heartbeat" && status == http.StatusOK:
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
		writeJSON(c, http.StatusInternalServerError, errorBody{errorDetail{broker.EINTERNAL, "internal error"}})
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

// writeError writes err as the JSON error body. Anything that is not a
// domain or HTTP-layer error is logged with the request id and hidden.
func (s *Server) writeError(c *gin.Context, err error) {
	var he *httpError
	var be *broker.Error
	var status int
	var body errorDetail
	switch {
	case errors.As(err, &he):
		status, body = he.Status, errorDetail{he.Code, he.Message}
	case errors.As(err, &be) && be.Code != broker.EINTERNAL:
		status, body = HTTPStatus(be), errorDetail{be.Code, be.Message}
	default:
		status, body = http.StatusInternalServerError, errorDetail{broker.EINTERNAL, "internal error"}
		s.logger.Error("internal error", "request_id", c.GetString(keyRequestID), "route", c.FullPath(), "err", err.Error())
	}
	if status == http.StatusUnauthorized {
		c.Header("WWW-Authenticate", `Bearer realm="tre"`)
	}
	var le *limitError
	if errors.As(err, &le) {
		c.Header("Retry-After", strconv.Itoa(max(int(math.Ceil(le.after.Seconds())), 1)))
	}
	writeJSON(c, status, errorBody{body})
	c.Abort()
}

// jsonBuffers recycles response buffers: a query with its rewritten SQL is
// about 10 kB, allocated on every read otherwise. Buffers that grew past
// maxPooledBuffer (long lists) are left to the collector.
var jsonBuffers = sync.Pool{New: func() any { return new(bytes.Buffer) }}

const maxPooledBuffer = 64 << 10

func writeJSON(c *gin.Context, status int, v any) {
	buf := jsonBuffers.Get().(*bytes.Buffer)
	buf.Reset()
	defer func() {
		if buf.Cap() <= maxPooledBuffer {
			jsonBuffers.Put(buf)
		}
	}()
	// Encode writes what json.Marshal would, HTML-escaped, plus a newline.
	if err := json.NewEncoder(buf).Encode(v); err != nil {
		status = http.StatusInternalServerError
		buf.Reset()
		buf.WriteString(`{"error":{"code":"internal","message":"internal error"}}` + "\n")
	}
	// A declared length spares the chunked encoding net/http uses for bodies
	// larger than its buffer.
	c.Header("Content-Length", strconv.Itoa(buf.Len()))
	c.Data(status, "application/json; charset=utf-8", buf.Bytes())
}

// require authenticates the bearer token and checks that the caller holds
// one of roles. On success the caller travels in the request context.
func (s *Server) require(roles ...broker.Role) gin.HandlerFunc {
	return func(c *gin.Context) {
		action := c.Request.Method + " " + c.FullPath()
		raw, ok := bearerToken(c.Request)
		if !ok {
			s.writeError(c, broker.Errorf(broker.EUNAUTHORIZED, "missing bearer token"))
			return
		}
		u, err := s.cfg.Verifier.Verify(c.Request.Context(), raw)
		if err != nil {
			reason := "invalid token"
			var ae *authError
			if errors.As(err, &ae) {
				reason = ae.Reason
			}
			s.recordAuthFailure(c, "", action, reason)
			s.writeError(c, broker.Errorf(broker.EUNAUTHORIZED, "%s", reason))
			return
		}
		c.Set(keySubject, u.Subject)
		allowed := false
		for _, r := range roles {
			allowed = allowed || u.HasRole(r)
		}
		if !allowed {
			s.recordAuthFailure(c, u.Subject, action, "missing role")
			names := make([]string, len(roles))
			for i, r := range roles {
				names[i] = string(r)
			}
			s.writeError(c, broker.Errorf(broker.EFORBIDDEN, "this action needs one of the roles: %s", strings.Join(names, ", ")))
			return
		}
		c.Request = c.Request.WithContext(broker.NewContext(c.Request.Context(), u))
		c.Next()
	}
}

// recordAuthFailure counts a refused request against its source address
// (the connection's, never a forwarded header a client could forge); the
// broker aggregates them per source into the audit chain. It uses a
// detached context: a record due must be written even if the caller hangs
// up.
func (s *Server) recordAuthFailure(c *gin.Context, subject, action, reason string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(c.Request.Context()), 5*time.Second)
	defer cancel()
	s.svc.RecordAuthFailure(ctx, broker.AuthFailure{Source: c.RemoteIP(), Subject: subject, Action: action, Reason: reason})
}

// bearerToken extracts the token from "Authorization: Bearer <token>".
func bearerToken(r *http.Request) (string, bool) {
	h := r.Header.Get("Authorization")
	scheme, tok, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	tok = strings.TrimSpace(tok)
	return tok, tok != ""
}

func pathID(c *gin.Context) (int64, error) {
	id, err := strconv.ParseInt(c.Param("id"), 10, 64)
	if err != nil || id <= 0 {
		return 0, broker.Errorf(broker.EINVALID, "id in the path must be a positive integer")
	}
	return id, nil
}

// page is the pagination of a list request.
type page struct{ Limit, Offset int }

func parsePage(c *gin.Context) (page, error) {
	p := page{Limit: DefaultPageLimit}
	if v, ok := c.GetQuery("limit"); ok {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return p, broker.Errorf(broker.EINVALID, "limit must be a positive integer")
		}
		p.Limit = min(n, MaxPageLimit)
	}
	if v, ok := c.GetQuery("offset"); ok {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return p, broker.Errorf(broker.EINVALID, "offset must be a non-negative integer")
		}
		p.Offset = n
	}
	return p, nil
}

// listResponse is every list endpoint's shape.
type listResponse[T any] struct {
	Items  []T `json:"items"`
	Total  int `json:"total"`
	Limit  int `json:"limit"`
	Offset int `json:"offset"`
}

func newList[T any](items []T, total int, p page) listResponse[T] {
	if items == nil {
		items = []T{}
	}
	return listResponse[T]{Items: items, Total: total, Limit: p.Limit, Offset: p.Offset}
}

// paginate slices an unpaged list the service returned whole.
func paginate[T any](all []T, p page) listResponse[T] {
	lo := min(p.Offset, len(all))
	hi := min(lo+p.Limit, len(all))
	return newList(all[lo:hi], len(all), p)
}

func queryInt64(c *gin.Context, name string) (*int64, error) {
	v, ok := c.GetQuery(name)
	if !ok {
		return nil, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return nil, broker.Errorf(broker.EINVALID, "%s must be a non-negative integer", name)
	}
	return &n, nil
}

func queryString(c *gin.Context, name string) *string {
	if v, ok := c.GetQuery(name); ok && v != "" {
		return &v
	}
	return nil
}

// ---- public routes ----

func (s *Server) healthz(c *gin.Context) error {
	writeJSON(c, http.StatusOK, map[string]string{"status": "ok"})
	return nil
}

func (s *Server) readyz(c *gin.Context) error {
	ctx, cancel := context.WithTimeout(c.Request.Context(), 3*time.Second)
	defer cancel()
	if err := s.svc.Ping(ctx); err != nil {
		s.logger.Warn("not ready", "request_id", c.GetString(keyRequestID), "err", err.Error())
		return broker.Errorf(broker.EUNAVAILABLE, "store unreachable")
	}
	writeJSON(c, http.StatusOK, map[string]string{"status": "ready"})
	return nil
}

func (s *Server) openapi(c *gin.Context) error {
	c.Data(http.StatusOK, "application/json; charset=utf-8", openAPIDoc)
	return nil
}

// RegisterResponse is the public register: a page of projects, and the
// audit chain's current head, which anyone may keep: `tre audit verify
// --expect-head HASH --expect-count N` detects entries removed after it.
type RegisterResponse struct {
	listResponse[*broker.RegisterEntry]
	AuditChain *broker.AuditHead `json:"audit_chain"`
}

func (s *Server) register(c *gin.Context) error {
	p, err := parsePage(c)
	if err != nil {
		return err
	}
	ctx := c.Request.Context()
	entries, err := s.svc.Register(ctx)
	if err != nil {
		return err
	}
	head, err := s.svc.AuditHead(ctx)
	if err != nil {
		return err
	}
	writeJSON(c, http.StatusOK, RegisterResponse{listResponse: paginate(entries, p), AuditChain: head})
	return nil
}

// ---- datasets, sites, projects ----

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

// SiteRequest is the body of POST /api/v1/sites.
type SiteRequest struct {
	ID           string `json:"id"`
	Name         string `json:"name"`
	Organisation string `json:"organisation"`
}

func (s *Server) createSite(c *gin.Context) error {
	var req SiteRequest
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

// ProjectRequest is the body of POST /api/v1/projects.
type ProjectRequest struct {
	Title                string    `json:"title"`
	Organisation         string    `json:"organisation"`
	Purpose              string    `json:"purpose"`
	LawfulBasis          string    `json:"lawful_basis"`
	DataSharingAgreement string    `json:"data_sharing_agreement,omitempty"`
	Members              []string  `json:"members"`
	Datasets             []string  `json:"datasets"`
	EpsilonBudget        float64   `json:"epsilon_budget"`
	DeltaBudget          float64   `json:"delta_budget"`
	StartsAt             time.Time `json:"starts_at,omitzero"`
	ExpiresAt            time.Time `json:"expires_at"`
}

func (s *Server) createProject(c *gin.Context) error {
	var req ProjectRequest
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

// ---- queries ----

// QueryRequest is the body of POST /api/v1/queries and /queries/dry-run.
type QueryRequest struct {
	ProjectID int64   `json:"project_id"`
	Dataset   string  `json:"dataset,omitempty"`
	SQL       string  `json:"sql"`
	Purpose   string  `json:"purpose"`
	Epsilon   float64 `json:"epsilon,omitempty"`
}

func (r QueryRequest) submission() broker.QuerySubmission {
	return broker.QuerySubmission{ProjectID: r.ProjectID, Dataset: r.Dataset, SQL: r.SQL, Purpose: r.Purpose, Epsilon: r.Epsilon}
}

// rateLimit takes a submission token for the caller or answers 429.
func (s *Server) rateLimit(c *gin.Context) error {
	u := broker.UserFromContext(c.Request.Context())
	ok, wait := s.limiter.allow(u.Subject)
	if ok {
		return nil
	}
	secs := max(int(math.Ceil(wait.Seconds())), 1)
	return &limitError{broker.Errorf(broker.ELIMIT, "too many submissions: try again in %d s", secs), time.Duration(secs) * time.Second}
}

// queryRequest takes a submission token for the caller and decodes the body
// of a submission, a check or a dry run.
func (s *Server) queryRequest(c *gin.Context) (QueryRequest, error) {
	var req QueryRequest
	if err := s.rateLimit(c); err != nil {
		return req, err
	}
	return req, decodeRequest(c.Request, &req)
}

func (s *Server) submitQuery(c *gin.Context) error {
	req, err := s.queryRequest(c)
	if err != nil {
		return err
	}
	q, err := s.svc.SubmitQuery(c.Request.Context(), req.submission())
	if err != nil {
		return err
	}
	writeJSON(c, http.StatusCreated, q)
	return nil
}

// CheckResponse is the answer to a check: how the query would be run, what
// it would cost and how accurate it would be, from the same validation and
// plan as a submission, with nothing stored or run.
type CheckResponse struct {
	Dataset   string        `json:"dataset"`
	Cost      dp.Cost       `json:"cost"`
	Accuracy  []dp.Accuracy `json:"accuracy"`
	Rewritten string        `json:"rewritten_sql"`
}

// checkQuery validates and plans a query as a submission would. It takes a
// submission token like a dry run: each check parses the SQL with DuckDB.
func (s *Server) checkQuery(c *gin.Context) error {
	req, err := s.queryRequest(c)
	if err != nil {
		return err
	}
	plan, err := s.svc.CheckQuery(c.Request.Context(), req.submission())
	if err != nil {
		return err
	}
	writeJSON(c, http.StatusOK, CheckResponse{Dataset: plan.Dataset, Cost: plan.Cost, Accuracy: plan.Accuracy, Rewritten: plan.Rewritten})
	return nil
}

// DryRunResponse is the answer to a dry run: a protected table computed from
// synthetic data, never from patient records, shown as a researcher would
// receive it from a real run (the researcher's part of the report).
type DryRunResponse struct {
	Synthetic bool                `json:"synthetic"`
	Dataset   string              `json:"dataset"`
	Cost      dp.Cost             `json:"cost"`
	Accuracy  []dp.Accuracy       `json:"accuracy"`
	Columns   []dp.Column         `json:"columns"`
	Rows      [][]dp.Cell         `json:"rows"`
	Report    dp.ResearcherReport `json:"report"`
}

func (s *Server) dryRun(c *gin.Context) error {
	if s.cfg.DryRunner == nil {
		return broker.Errorf(broker.EUNAVAILABLE, "dry runs are not configured on this broker")
	}
	req, err := s.queryRequest(c)
	if err != nil {
		return err
	}
	ctx := c.Request.Context()
	plan, err := s.svc.CheckQuery(ctx, req.submission())
	if err != nil {
		return err
	}
	res, err := s.cfg.DryRunner.DryRun(ctx, plan.Dataset, req.SQL, plan.Cost.Epsilon)
	if err != nil {
		return err
	}
	res.Report.Synthetic = true
	view := res.ForResearcher()
	rows := view.Rows
	if rows == nil {
		rows = [][]dp.Cell{}
	}
	writeJSON(c, http.StatusOK, DryRunResponse{
		Synthetic: true, Dataset: plan.Dataset, Cost: plan.Cost, Accuracy: plan.Accuracy,
		Columns: view.Columns, Rows: rows, Report: view.Report,
	})
	return nil
}

// validStatus reports whether s is a query status.
func validStatus(s broker.Status) bool {
	switch s {
	case broker.StatusSubmitted, broker.StatusRejected, broker.StatusApproved, broker.StatusCancelled,
		broker.StatusRunning, broker.StatusAwaitingOutputCheck, broker.StatusReleased,
		broker.StatusWithheld, broker.StatusFailed:
		return true
	}
	return false
}

func (s *Server) listQueries(c *gin.Context) error {
	p, err := parsePage(c)
	if err != nil {
		return err
	}
	f := broker.QueryFilter{Offset: p.Offset, Limit: p.Limit, SubmittedBy: queryString(c, "submitted_by")}
	if v := queryString(c, "status"); v != nil {
		st := broker.Status(*v)
		if !validStatus(st) {
			return broker.Errorf(broker.EINVALID, "unknown status %q", safeMessage(*v))
		}
		f.Status = &st
	}
	if f.ProjectID, err = queryInt64(c, "project_id"); err != nil {
		return err
	}
	qs, total, err := s.svc.FindQueries(c.Request.Context(), f)
	if err != nil {
		return err
	}
	writeJSON(c, http.StatusOK, newList(qs, total, p))
	return nil
}

// queryAction runs a state transition on the query named in the path.
func (s *Server) queryAction(c *gin.Context, do func(ctx context.Context, id int64) (*broker.Query, error)) error {
	id, err := pathID(c)
	if err != nil {
		return err
	}
	q, err := do(c.Request.Context(), id)
	if err != nil {
		return err
	}
	writeJSON(c, http.StatusOK, q)
	return nil
}

func (s *Server) getQuery(c *gin.Context) error {
	return s.queryAction(c, s.svc.FindQueryByID)
}

func (s *Server) cancelQuery(c *gin.Context) error {
	if err := emptyOrJSON(c.Request); err != nil {
		return err
	}
	return s.queryAction(c, s.svc.CancelQuery)
}

// emptyOrJSON accepts a bodiless action POST, or an empty JSON object.
func emptyOrJSON(r *http.Request) error {
	var v struct{}
	return decodeOptional(r, &v)
}

// decodeOptional is decodeRequest for bodies whose fields are all optional:
// a POST without a body (curl -X POST) leaves v as it is.
func decodeOptional(r *http.Request, v any) error {
	if r.ContentLength == 0 {
		return nil
	}
	return decodeRequest(r, v)
}

// CommentRequest is the body of approve and release.
type CommentRequest struct {
	Comment string `json:"comment"`
}

// ReasonRequest is the body of reject and withhold.
type ReasonRequest struct {
	Reason string `json:"reason"`
}

func (s *Server) approveQuery(c *gin.Context) error {
	var req CommentRequest
	if err := decodeOptional(c.Request, &req); err != nil {
		return err
	}
	return s.queryAction(c, func(ctx context.Context, id int64) (*broker.Query, error) {
		return s.svc.ApproveQuery(ctx, id, req.Comment)
	})
}

func (s *Server) rejectQuery(c *gin.Context) error {
	var req ReasonRequest
	if err := decodeRequest(c.Request, &req); err != nil {
		return err
	}
	return s.queryAction(c, func(ctx context.Context, id int64) (*broker.Query, error) {
		return s.svc.RejectQuery(ctx, id, req.Reason)
	})
}

func (s *Server) releaseQuery(c *gin.Context) error {
	var req CommentRequest
	if err := decodeOptional(c.Request, &req); err != nil {
		return err
	}
	return s.queryAction(c, func(ctx context.Context, id int64) (*broker.Query, error) {
		return s.svc.ReleaseQuery(ctx, id, req.Comment)
	})
}

func (s *Server) withholdQuery(c *gin.Context) error {
	var req ReasonRequest
	if err := decodeRequest(c.Request, &req); err != nil {
		return err
	}
	return s.queryAction(c, func(ctx context.Context, id int64) (*broker.Query, error) {
		return s.svc.WithholdQuery(ctx, id, req.Reason)
	})
}

// QueueItem is a query in the review queue with its project's budget, so
// a reviewer sees what approving would leave.
type QueueItem struct {
	*broker.Query
	ProjectBudget *broker.Budget `json:"project_budget,omitempty"`
}

func (s *Server) reviewQueue(c *gin.Context) error {
	p, err := parsePage(c)
	if err != nil {
		return err
	}
	ctx := c.Request.Context()
	qs, err := s.svc.ReviewQueue(ctx)
	if err != nil {
		return err
	}
	list := paginate(qs, p)
	items := make([]QueueItem, len(list.Items))
	budgets := map[int64]*broker.Budget{}
	for i, q := range list.Items {
		b, ok := budgets[q.ProjectID]
		if !ok {
			proj, err := s.svc.FindProjectByID(ctx, q.ProjectID)
			if err != nil {
				return err
			}
			b = &proj.Budget
			budgets[q.ProjectID] = b
		}
		items[i] = QueueItem{Query: q, ProjectBudget: b}
	}
	writeJSON(c, http.StatusOK, listResponse[QueueItem]{Items: items, Total: list.Total, Limit: p.Limit, Offset: p.Offset})
	return nil
}

func (s *Server) outputQueue(c *gin.Context) error {
	p, err := parsePage(c)
	if err != nil {
		return err
	}
	qs, err := s.svc.OutputQueue(c.Request.Context())
	if err != nil {
		return err
	}
	writeJSON(c, http.StatusOK, paginate(qs, p))
	return nil
}

// getOutput answers an output checker separation of duties lets check the
// query with the output as they check it (broker.Output: the full
// disclosure report or the failure notice), and a researcher of the project
// with what they may see of a released one (broker.ReleasedResult): the
// broker decides which.
func (s *Server) getOutput(c *gin.Context) error {
	id, err := pathID(c)
	if err != nil {
		return err
	}
	v, err := s.svc.ViewOutput(c.Request.Context(), id)
	if err != nil {
		return err
	}
	if v.Checker != nil {
		writeJSON(c, http.StatusOK, v.Checker)
	} else {
		writeJSON(c, http.StatusOK, v.Released)
	}
	return nil
}

// ResultResponse is a released table as JSON: what a researcher may see of
// it (dp.ResearcherResult), never the checker's full report.
type ResultResponse struct {
	QueryID    int64               `json:"query_id"`
	ReleasedAt time.Time           `json:"released_at"`
	Columns    []dp.Column         `json:"columns"`
	Rows       [][]dp.Cell         `json:"rows"`
	Report     dp.ResearcherReport `json:"report"`
}

func (s *Server) getResult(c *gin.Context) error {
	id, err := pathID(c)
	if err != nil {
		return err
	}
	format := c.DefaultQuery("format", "json")
	if format != "json" && format != "csv" {
		return broker.Errorf(broker.EINVALID, "format must be csv or json")
	}
	out, err := s.svc.DownloadResult(c.Request.Context(), id)
	if err != nil {
		return err
	}
	if format == "json" {
		rows := out.Result.Rows
		if rows == nil {
			rows = [][]dp.Cell{}
		}
		writeJSON(c, http.StatusOK, ResultResponse{QueryID: out.QueryID, ReleasedAt: out.ReleasedAt,
			Columns: out.Result.Columns, Rows: rows, Report: out.Result.Report})
		return nil
	}
	var buf strings.Builder
	if err := WriteResultCSV(&buf, out.Result); err != nil {
		return err
	}
	name := safeFilename(fmt.Sprintf("tre-query-%d.csv", id))
	c.Header("Content-Disposition", `attachment; filename="`+name+`"`)
	c.Data(http.StatusOK, "text/csv; charset=utf-8", []byte(buf.String()))
	return nil
}

// ---- audit ----

func (s *Server) listAudit(c *gin.Context) error {
	p, err := parsePage(c)
	if err != nil {
		return err
	}
	f := broker.AuditFilter{Offset: p.Offset, Limit: p.Limit,
		Actor: queryString(c, "actor"), Action: queryString(c, "action"), Object: queryString(c, "object")}
	if f.AfterSeq, err = queryInt64(c, "after_seq"); err != nil {
		return err
	}
	entries, total, err := s.svc.FindAuditEntries(c.Request.Context(), f)
	if err != nil {
		return err
	}
	writeJSON(c, http.StatusOK, newList(entries, total, p))
	return nil
}

func (s *Server) verifyAudit(c *gin.Context) error {
	v, err := s.svc.VerifyAudit(c.Request.Context())
	if err != nil {
		return err
	}
	writeJSON(c, http.StatusOK, v)
	return nil
}

// ---- site agent ----

// CatalogRequest is the body of PUT /api/v1/agent/catalog. SiteID must be
// the site the agent's token names; AgentVersion is shown on the sites page.
type CatalogRequest struct {
	SiteID       string           `json:"site_id"`
	AgentVersion string           `json:"agent_version,omitempty"`
	Catalog      *queries.Catalog `json:"catalog"`
}

// LeaseRequest is the body of POST /api/v1/agent/lease: the agent's poll.
type LeaseRequest struct {
	SiteID       string `json:"site_id"`
	AgentVersion string `json:"agent_version,omitempty"`
}

// HeartbeatRequest is the body of a job heartbeat.
type HeartbeatRequest struct {
	Token string `json:"token"`
}

// CompleteRequest is the body of a job completion.
type CompleteRequest struct {
	Token  string     `json:"token"`
	Result *dp.Result `json:"result"`
}

// FailRequest is the body of a job failure.
type FailRequest struct {
	Token   string `json:"token"`
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (s *Server) publishCatalog(c *gin.Context) error {
	var req CatalogRequest
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

func (s *Server) leaseJob(c *gin.Context) error {
	var req LeaseRequest
	if err := decodeRequest(c.Request, &req); err != nil {
		return err
	}
	l, err := s.svc.LeaseJob(c.Request.Context(), req.SiteID, req.AgentVersion)
	if err != nil {
		return err
	}
	if l == nil {
		c.Status(http.StatusNoContent)
		return nil
	}
	writeJSON(c, http.StatusOK, l)
	return nil
}

func (s *Server) heartbeatJob(c *gin.Context) error {
	id, err := pathID(c)
	if err != nil {
		return err
	}
	var req HeartbeatRequest
	if err := decodeRequest(c.Request, &req); err != nil {
		return err
	}
	l, err := s.svc.HeartbeatJob(c.Request.Context(), id, req.Token)
	if err != nil {
		return err
	}
	writeJSON(c, http.StatusOK, l)
	return nil
}

func (s *Server) completeJob(c *gin.Context) error {
	id, err := pathID(c)
	if err != nil {
		return err
	}
	var req CompleteRequest
	if err := decodeRequest(c.Request, &req); err != nil {
		return err
	}
	if req.Result == nil {
		return broker.Errorf(broker.EINVALID, "result is required")
	}
	// Storing a result must finish even if the agent's connection drops.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(c.Request.Context()), 30*time.Second)
	defer cancel()
	if err := s.svc.CompleteJob(ctx, id, req.Token, *req.Result); err != nil {
		return err
	}
	c.Status(http.StatusNoContent)
	return nil
}

func (s *Server) failJob(c *gin.Context) error {
	id, err := pathID(c)
	if err != nil {
		return err
	}
	var req FailRequest
	if err := decodeRequest(c.Request, &req); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(c.Request.Context()), 30*time.Second)
	defer cancel()
	if err := s.svc.FailJob(ctx, id, req.Token, req.Code, req.Message); err != nil {
		return err
	}
	c.Status(http.StatusNoContent)
	return nil
}
