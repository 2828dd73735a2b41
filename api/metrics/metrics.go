// Package metrics owns tre's Prometheus instrumentation: HTTP latency and
// counts by route template, the query queue, time spent in each lifecycle
// state, job and sandbox outcomes, budget spent per project and when each
// site agent was last seen. Everything lives on a private
// prometheus.Registry, never the process-wide default, so two brokers in one
// test process do not collide.
//
// Metrics are readable by anyone who can reach the admin listener, so this
// package must never put a raw request path, a token, SQL, a project title or
// any data value into a label: labels are route templates, fixed status
// words, numeric project ids and operator-chosen site ids, and every label
// value passes through labelValue, which replaces anything outside a small
// character set.
package metrics

import (
	"context"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Budget is one project's privacy budget as the store holds it.
type Budget struct {
	ProjectID                  int64
	EpsilonSpent, EpsilonLimit float64
	DeltaSpent, DeltaLimit     float64
}

// Options supplies the state that is read from the store at scrape time.
// Reading it at scrape time, rather than counting in each process, keeps the
// figures identical on every broker replica. Any func may be nil.
type Options struct {
	// QueueDepth returns the number of queries in each status.
	QueueDepth func(ctx context.Context) (map[string]int, error)
	// Budgets returns every active project's budget.
	Budgets func(ctx context.Context) ([]Budget, error)
	// AgentsLastSeen returns when each site's agent last called the broker.
	AgentsLastSeen func(ctx context.Context) (map[string]time.Time, error)
	// GroupCommits returns this process's shared commits (SQLite group
	// commit) and the writes they held, since the store opened.
	GroupCommits func() (commits, writes int64)
	// ScrapeTimeout bounds each func above; 0 means 5s.
	ScrapeTimeout time.Duration
	// Logger receives scrape errors; nil discards them.
	Logger *slog.Logger
}

// Registry holds tre's metrics. The zero value is not usable; use New.
type Registry struct {
	reg *prometheus.Registry

	httpDuration *prometheus.HistogramVec
	httpRequests *prometheus.CounterVec

	stateDuration *prometheus.HistogramVec
	jobs          *prometheus.CounterVec

	sandboxStarts   prometheus.Counter
	sandboxKills    *prometheus.CounterVec
	sandboxDuration *prometheus.HistogramVec
	sandboxPeak     *prometheus.HistogramVec
}

// New returns a Registry with every tre metric and the Go runtime and
// process collectors registered.
func New(opts Options) *Registry {
	r := &Registry{
		reg: prometheus.NewRegistry(),
		httpDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "tre", Subsystem: "http", Name: "request_duration_seconds",
			Help:    "HTTP request latency by route template, method and status.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"route", "method", "status"}),
		httpRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "tre", Subsystem: "http", Name: "requests_total",
			Help: "HTTP requests by route template, method and status.",
		}, []string{"route", "method", "status"}),
		stateDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "tre", Subsystem: "query", Name: "state_duration_seconds",
			Help: "Time a query spent in a lifecycle state, observed when it leaves the state.",
			// From seconds (a job that runs at once) to a week (a review queue).
			Buckets: []float64{1, 10, 60, 300, 900, 3600, 4 * 3600, 24 * 3600, 3 * 24 * 3600, 7 * 24 * 3600},
		}, []string{"state"}),
		jobs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "tre", Subsystem: "jobs", Name: "total",
			Help: "Site jobs by outcome: leased, completed, failed (with the error code) or expired.",
		}, []string{"outcome", "code"}),
		sandboxStarts: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "tre", Subsystem: "sandbox", Name: "starts_total",
			Help: "Sandbox processes started.",
		}),
		sandboxKills: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "tre", Subsystem: "sandbox", Name: "kills_total",
			Help: "Sandbox processes killed, by reason (timeout, memory, cancelled, crashed).",
		}, []string{"reason"}),
		sandboxDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "tre", Subsystem: "sandbox", Name: "duration_seconds",
			Help:    "Sandbox run time from start to exit, by outcome.",
			Buckets: []float64{.1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600},
		}, []string{"outcome"}),
		sandboxPeak: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "tre", Subsystem: "sandbox", Name: "peak_resident_bytes",
			Help: "Peak resident memory of each sandbox process, read as its answer arrives, by child (job or builder); compare with the sandbox memory limit.",
			// 64 MiB to 8 GiB, doubling: a job's limit is 2 GiB by default.
			Buckets: prometheus.ExponentialBuckets(64<<20, 2, 8),
		}, []string{"child"}),
	}
	timeout := opts.ScrapeTimeout
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	r.reg.MustRegister(
		r.httpDuration, r.httpRequests, r.stateDuration, r.jobs,
		r.sandboxStarts, r.sandboxKills, r.sandboxDuration, r.sandboxPeak,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		newStoreCollector(opts, timeout, logger),
	)
	if g := opts.GroupCommits; g != nil {
		r.reg.MustRegister(
			prometheus.NewCounterFunc(prometheus.CounterOpts{
				Namespace: "tre", Subsystem: "store", Name: "group_commits_total",
				Help: "Commits shared by concurrent writes (SQLite group commit), in this process.",
			}, func() float64 { c, _ := g(); return float64(c) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{
				Namespace: "tre", Subsystem: "store", Name: "grouped_writes_total",
				Help: "Writes stored by shared commits (SQLite group commit), in this process.",
			}, func() float64 { _, w := g(); return float64(w) }),
		)
	}
	return r
}

// Handler serves the metrics in the Prometheus exposition format. A failing
// store func does not fail the scrape: its tre_metrics_source_up is 0.
func (r *Registry) Handler() http.Handler {
	return promhttp.HandlerFor(r.reg, promhttp.HandlerOpts{
		Registry:      r.reg,
		ErrorHandling: promhttp.ContinueOnError,
	})
}

// Gatherer exposes the registry for tests and for pushing elsewhere.
func (r *Registry) Gatherer() prometheus.Gatherer { return r.reg }

// ObserveHTTP records one request under the route template the router
// matched (e.g. /api/v1/queries/:id), never the raw path, which can hold
// ids or anything a caller typed; "" (no route matched) is recorded as
// "unmatched". The HTTP server calls it from its router's middleware, so
// this package needs no router of its own.
func (r *Registry) ObserveHTTP(route, method string, status int, d time.Duration) {
	if route == "" {
		route = "unmatched"
	}
	labels := prometheus.Labels{
		"route":  routeLabel(route),
		"method": methodLabel(method),
		"status": strconv.Itoa(status),
	}
	r.httpDuration.With(labels).Observe(d.Seconds())
	r.httpRequests.With(labels).Inc()
}

// ObserveStateDuration records that a query spent d in state before a
// transition out of it. Call it from the code that performs transitions,
// with the state being left (e.g. "submitted" when a reviewer approves).
func (r *Registry) ObserveStateDuration(state string, d time.Duration) {
	r.stateDuration.WithLabelValues(labelValue(state)).Observe(d.Seconds())
}

// JobLeased counts a job handed to a site agent.
func (r *Registry) JobLeased() { r.jobs.WithLabelValues("leased", "").Inc() }

// JobCompleted counts a job whose protected result was stored.
func (r *Registry) JobCompleted() { r.jobs.WithLabelValues("completed", "").Inc() }

// JobFailed counts a job the agent reported as failed; code is the error
// code it sent (e.g. "timeout"), never its message.
func (r *Registry) JobFailed(code string) { r.jobs.WithLabelValues("failed", labelValue(code)).Inc() }

// JobExpired counts a lease that lapsed without a heartbeat.
func (r *Registry) JobExpired() { r.jobs.WithLabelValues("expired", "").Inc() }

// SandboxStarted counts a sandbox process start.
func (r *Registry) SandboxStarted() { r.sandboxStarts.Inc() }

// SandboxKilled counts a sandbox the agent killed; reason is a fixed word
// such as "timeout", "memory", "cancelled" or "crashed".
func (r *Registry) SandboxKilled(reason string) {
	r.sandboxKills.WithLabelValues(labelValue(reason)).Inc()
}

// ObserveSandboxPeak records a sandbox process's peak resident memory: a
// job's, or the release snapshot builder's when builder is set.
func (r *Registry) ObserveSandboxPeak(bytes int64, builder bool) {
	child := "job"
	if builder {
		child = "builder"
	}
	r.sandboxPeak.WithLabelValues(child).Observe(float64(bytes))
}

// ObserveSandbox records a sandbox run's duration; outcome is "ok",
// "failed" or "killed".
func (r *Registry) ObserveSandbox(outcome string, d time.Duration) {
	r.sandboxDuration.WithLabelValues(labelValue(outcome)).Observe(d.Seconds())
}

// storeCollector reads queue depth, budgets and agents' last contact from
// the store on every scrape.
type storeCollector struct {
	opts    Options
	timeout time.Duration
	logger  *slog.Logger

	queue, budgetSpent, budgetLimit, lastSeen, sourceUp *prometheus.Desc
}

func newStoreCollector(opts Options, timeout time.Duration, logger *slog.Logger) *storeCollector {
	return &storeCollector{
		opts: opts, timeout: timeout, logger: logger,
		queue: prometheus.NewDesc("tre_queries",
			"Queries in each lifecycle status.", []string{"status"}, nil),
		budgetSpent: prometheus.NewDesc("tre_project_budget_spent",
			"Privacy budget spent or reserved by a project, by project id and parameter (epsilon, delta).",
			[]string{"project", "parameter"}, nil),
		budgetLimit: prometheus.NewDesc("tre_project_budget_limit",
			"Privacy budget granted to a project, by project id and parameter (epsilon, delta).",
			[]string{"project", "parameter"}, nil),
		lastSeen: prometheus.NewDesc("tre_agent_last_seen_timestamp_seconds",
			"Unix time a site's agent last called the broker.", []string{"site"}, nil),
		sourceUp: prometheus.NewDesc("tre_metrics_source_up",
			"1 if the store answered the scrape for this source, 0 if it failed.", []string{"source"}, nil),
	}
}

func (s *storeCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- s.queue
	ch <- s.budgetSpent
	ch <- s.budgetLimit
	ch <- s.lastSeen
	ch <- s.sourceUp
}

func (s *storeCollector) Collect(ch chan<- prometheus.Metric) {
	// Collect has no context; the timeout keeps a slow store from hanging
	// the scrape.
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	up := func(source string, err error) {
		v := 1.0
		if err != nil {
			v = 0
			s.logger.Warn("metrics: store read failed", "source", source, "err", err)
		}
		ch <- prometheus.MustNewConstMetric(s.sourceUp, prometheus.GaugeValue, v, source)
	}
	if f := s.opts.QueueDepth; f != nil {
		depth, err := f(ctx)
		for status, n := range depth {
			ch <- prometheus.MustNewConstMetric(s.queue, prometheus.GaugeValue, float64(n), labelValue(status))
		}
		up("queue", err)
	}
	if f := s.opts.Budgets; f != nil {
		budgets, err := f(ctx)
		for _, b := range budgets {
			id := strconv.FormatInt(b.ProjectID, 10)
			ch <- prometheus.MustNewConstMetric(s.budgetSpent, prometheus.GaugeValue, b.EpsilonSpent, id, "epsilon")
			ch <- prometheus.MustNewConstMetric(s.budgetSpent, prometheus.GaugeValue, b.DeltaSpent, id, "delta")
			ch <- prometheus.MustNewConstMetric(s.budgetLimit, prometheus.GaugeValue, b.EpsilonLimit, id, "epsilon")
			ch <- prometheus.MustNewConstMetric(s.budgetLimit, prometheus.GaugeValue, b.DeltaLimit, id, "delta")
		}
		up("budgets", err)
	}
	if f := s.opts.AgentsLastSeen; f != nil {
		seen, err := f(ctx)
		for site, at := range seen {
			if at.IsZero() {
				continue
			}
			ch <- prometheus.MustNewConstMetric(s.lastSeen, prometheus.GaugeValue,
				float64(at.UnixMilli())/1000, labelValue(site))
		}
		up("agents", err)
	}
}

// maxLabel bounds a label value: a longer one is not an identifier we chose.
const maxLabel = 64

// labelValue passes identifiers made of letters, digits and ._- through and
// replaces anything else with "invalid", so nothing a caller typed (SQL,
// a token, free text) can reach a label.
func labelValue(s string) string {
	if len(s) > maxLabel {
		return "invalid"
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.'
		if !ok {
			return "invalid"
		}
	}
	return s
}

// routeLabel accepts gin route templates: path segments of identifier
// characters, optionally starting with : or * for parameters.
func routeLabel(route string) string {
	if route == "unmatched" {
		return route
	}
	if len(route) > 128 || len(route) == 0 || route[0] != '/' {
		return "invalid"
	}
	for i := 0; i < len(route); i++ {
		c := route[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			c == '_' || c == '-' || c == '.' || c == '/' || c == ':' || c == '*'
		if !ok {
			return "invalid"
		}
	}
	return route
}

// methodLabel keeps the label set small: unknown methods are "other".
func methodLabel(m string) string {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut,
		http.MethodPatch, http.MethodDelete, http.MethodOptions:
		return m
	}
	return "other"
}
