package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nhs-tre/tre/api/tlsreload"

	"github.com/nhs-tre/tre/api/auth"
	"github.com/nhs-tre/tre/api/metrics"
	"github.com/nhs-tre/tre/api/server"
	"github.com/nhs-tre/tre/api/web"
	"github.com/nhs-tre/tre/broker"
	"github.com/nhs-tre/tre/broker/postgres"
	"github.com/nhs-tre/tre/broker/sqlite"
	"github.com/nhs-tre/tre/broker/sqlstore"
	"github.com/nhs-tre/tre/cli"
	"github.com/nhs-tre/tre/dp"
	"github.com/nhs-tre/tre/job"
	"github.com/nhs-tre/tre/queries"
	"github.com/nhs-tre/tre/sandbox"
)

// ServeMain is `tre serve`: the broker.
type ServeMain struct {
	Config ServeConfig
	configured
	// cutDrain, when closed, ends the shutdown delay early (tests).
	cutDrain chan struct{}
}

func newServeMain(stdout, stderr io.Writer) cli.Command {
	return &ServeMain{Config: DefaultServeConfig(), configured: configured{name: "serve", stdout: stdout, stderr: stderr, getenv: os.Getenv}}
}

// ParseFlags reads the configuration from file, environment and flags.
func (m *ServeMain) ParseFlags(ctx context.Context, args []string) error {
	return m.parse(args, &m.Config)
}

// Run serves until ctx is cancelled, then shuts down gracefully.
func (m *ServeMain) Run(ctx context.Context) error {
	if m.printOnly {
		return m.print(&m.Config)
	}
	logger := newLogger(m.stderr, m.Config.LogLevel)
	b, err := startBroker(ctx, m.Config, logger, nil)
	if err != nil {
		return err
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-hup:
			if b.reloadTLS != nil {
				if err := b.reloadTLS(); err != nil {
					logger.Error("reload TLS certificate", "error", err)
				} else {
					logger.Info("TLS certificate reloaded")
				}
			}
		case err := <-b.done:
			b.Close()
			return err
		case <-ctx.Done():
			b.drain(m.Config.ShutdownDelay, m.cutDrain)
			return b.Close()
		}
	}
}

// Close releases nothing: Run owns the broker's lifetime.
func (m *ServeMain) Close() error { return nil }

// newLogger returns the JSON logger every long-running command uses.
func newLogger(w io.Writer, level string) *slog.Logger {
	var l slog.Level
	_ = l.UnmarshalText([]byte(level)) // validated by the config
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: l}))
}

// brokerRuntime is a running broker: store, service, HTTP listener.
type brokerRuntime struct {
	store     io.Closer
	parser    *queries.Parser
	svc       *broker.Service
	server    *http.Server
	stopAdmin func()
	metrics   *metrics.Registry
	listener  net.Listener
	dryRun    *dryRunner
	reloadTLS func() error
	stopFlush func()
	stopSweep func()
	url       string
	done      chan error
	logger    *slog.Logger
	// draining makes /readyz answer 503 (drain).
	draining atomic.Bool
}

// brokerExtras lets `tre demo` add to the broker without another code path.
type brokerExtras struct {
	// devUsers are offered on the web interface's dev sign-in page.
	devUsers []web.DemoUser
}

// startBroker opens the store, builds the service and the HTTP server, and
// starts listening. Start-up order: store (migrations), parser, verifier,
// listener — so /readyz is true only once the store is reachable. It stays
// one function (141 lines) because that order is the point: split, the
// order would be spread over helpers that each assume the one before.
func startBroker(ctx context.Context, cfg ServeConfig, logger *slog.Logger, extras *brokerExtras) (*brokerRuntime, error) {
	b := &brokerRuntime{done: make(chan error, 1), logger: logger}
	tuneGC(cfg.GCPercent, os.LookupEnv)
	ok := false
	defer func() {
		if !ok {
			b.Close()
		}
	}()

	var store broker.Store
	if cfg.DatabaseURL != "" {
		s, err := postgres.Open(ctx, cfg.DatabaseURL)
		if err != nil {
			return nil, fmt.Errorf("open PostgreSQL store: %w", err)
		}
		store, b.store = s, s
	} else {
		if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
			return nil, fmt.Errorf("create data directory: %w", err)
		}
		s, err := sqlite.Open(ctx, filepath.Join(cfg.DataDir, sqlite.DefaultFilename))
		if err != nil {
			return nil, fmt.Errorf("open SQLite store: %w", err)
		}
		store, b.store = s, s
	}
	parser, err := queries.NewParser()
	if err != nil {
		return nil, fmt.Errorf("start the SQL parser: %w", err)
	}
	b.parser = parser
	mopts := metrics.Options{
		QueueDepth:     b.queueDepth,
		Budgets:        b.budgets,
		AgentsLastSeen: b.agentsLastSeen,
		Logger:         logger,
	}
	if g, ok := store.(interface{ GroupStats() sqlstore.GroupStats }); ok && cfg.DatabaseURL == "" {
		mopts.GroupCommits = func() (int64, int64) { st := g.GroupStats(); return st.Groups, st.Units }
	}
	b.metrics = metrics.New(mopts)
	b.svc = broker.NewService(store, parser, broker.Options{
		LeaseTTL:           cfg.LeaseTTL,
		FederationDeadline: cfg.FederationDeadline,
		MaxAttempts:        cfg.MaxAttempts,
		Granularity:        cfg.TimeGranularity,
		RunHold:            cfg.RunHold,
		Logger:             logger,
		OnTransition:       b.observeTransition,
		AuthFailureWindow:  cfg.AuthFailureWindow,
	})
	b.startFailureFlush(cfg.AuthFailureWindow / 4)
	b.startDeadlineSweep(ctx, broker.FederationSweepEvery(cfg.FederationDeadline))

	authCfg := auth.AuthConfig{
		PublicKeyFiles: cfg.PublicKeyFiles,
		JWKS:           firstNonEmpty(cfg.JWKSFile, cfg.JWKSURL),
		Issuer:         cfg.Issuer,
		Audience:       cfg.Audience,
		RolesClaim:     cfg.RolesClaim,
		SiteClaim:      cfg.SiteClaim,
	}
	if cfg.Dev {
		key, err := auth.LoadOrCreateDevKey(cfg.DataDir)
		if err != nil {
			return nil, err
		}
		authCfg.DevKey = key
	}
	verifier, err := auth.NewVerifier(ctx, authCfg)
	if err != nil {
		return nil, err
	}

	apiCfg := server.Config{
		Verifier:    verifier,
		SubmitLimit: server.RateLimit{PerMinute: float64(cfg.SubmitPerMinute), Burst: cfg.SubmitPerMinute},
		Metrics:     b.metrics,
		Draining:    &b.draining,
	}
	if cfg.DatabaseURL != "" {
		// Replicas on one PostgreSQL database share the buckets, so the
		// limit holds per user across all of them (issue 25).
		apiCfg.SubmitLimit.Shared = b.svc
	}
	webCfg := web.Config{Dev: cfg.Dev, CookieSecure: cfg.TLSCert != "" || cfg.BehindProxy}
	if extras != nil {
		webCfg.DevUsers = extras.devUsers
	}
	if cfg.DryRunData != "" {
		dr, err := newDryRunner(cfg, logger, b.metrics)
		if err != nil {
			return nil, err
		}
		b.dryRun = dr
		// One set of caps for the API and the web editor.
		limited := server.LimitDryRuns(dr, server.DryRunLimits{Global: cfg.DryRunMax, PerUser: cfg.DryRunPerUser})
		apiCfg.DryRunner = limited
		webCfg.DryRunner = limited
	}
	handler := rootHandler(server.NewServer(apiCfg, b.svc, logger).Handler(), web.New(webCfg, b.svc, verifier, logger))

	b.server = &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: cfg.ReadHeaderTimeout,
		ReadTimeout:       cfg.ReadTimeout,
		WriteTimeout:      cfg.WriteTimeout,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", cfg.Addr, err)
	}
	scheme := "http"
	if cfg.TLSCert != "" {
		tlsCfg, reload, err := tlsreload.New(cfg.TLSCert, cfg.TLSKey, cfg.TLSClientCA, logger)
		if err != nil {
			ln.Close()
			return nil, err
		}
		b.reloadTLS = reload
		ln = tls.NewListener(ln, tlsCfg)
		scheme = "https"
	}
	b.listener = ln
	b.url = scheme + "://" + ln.Addr().String()
	go func() {
		err := b.server.Serve(ln)
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		b.done <- err
	}()
	if cfg.AdminAddr != "" {
		if err := b.startAdmin(cfg.AdminAddr); err != nil {
			return nil, err
		}
	}
	logger.Info("broker listening", "url", b.url, "store", storeKind(cfg), "dev", cfg.Dev, "dry_runs", b.dryRun != nil)
	ok = true
	return b, nil
}

// rootHandler routes the web interface's paths to it and everything else to
// the JSON API; "/" sends a browser to the interface.
func rootHandler(apiHandler, webHandler http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle(web.PathPrefix, webHandler)
	mux.Handle(web.RegisterPath, webHandler)
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, web.PathPrefix, http.StatusSeeOther)
	})
	mux.Handle("/", apiHandler)
	return mux
}

// startAdmin serves /metrics on the operator's listener, apart from the API.
func (b *brokerRuntime) startAdmin(addr string) error {
	stop, err := serveMetrics(addr, b.metrics, b.logger)
	if err != nil {
		return err
	}
	b.stopAdmin = stop
	return nil
}

// serveMetrics serves reg at /metrics on addr until the returned func is
// called.
func serveMetrics(addr string, reg *metrics.Registry, logger *slog.Logger) (func(), error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on admin address %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", reg.Handler())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			logger.Error("admin listener", "error", err)
		}
	}()
	logger.Info("metrics listening", "addr", ln.Addr().String())
	return func() { srv.Close() }, nil
}

// observeTransition feeds committed status changes to the metrics.
func (b *brokerRuntime) observeTransition(t broker.Transition) {
	if t.From != "" {
		b.metrics.ObserveStateDuration(string(t.From), t.InState)
	}
	switch {
	case t.LeaseExpired:
		// The job is leased again, or its last attempt ends: counted once,
		// as the lapse it is, not as a lease or a failure.
		b.metrics.JobExpired()
	case t.To == broker.StatusRunning && t.From == broker.StatusApproved:
		b.metrics.JobLeased()
	case t.To == broker.StatusAwaitingOutputCheck && t.FailureCode != "":
		b.metrics.JobFailed(t.FailureCode)
	case t.To == broker.StatusAwaitingOutputCheck:
		b.metrics.JobCompleted()
	}
}

// queueDepth, budgets and agentsLastSeen feed the metrics at scrape time.
func (b *brokerRuntime) queueDepth(ctx context.Context) (map[string]int, error) {
	depth, err := b.svc.QueueDepth(ctx)
	if err != nil {
		return nil, err
	}
	out := make(map[string]int, len(depth))
	for k, v := range depth {
		out[string(k)] = v
	}
	return out, nil
}

func (b *brokerRuntime) budgets(ctx context.Context) ([]metrics.Budget, error) {
	budgets, err := b.svc.ActiveBudgets(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]metrics.Budget, 0, len(budgets))
	for _, p := range budgets {
		out = append(out, metrics.Budget{ProjectID: p.ProjectID, EpsilonSpent: p.EpsilonSpent, EpsilonLimit: p.EpsilonBudget, DeltaSpent: p.DeltaSpent, DeltaLimit: p.DeltaBudget})
	}
	return out, nil
}

func (b *brokerRuntime) agentsLastSeen(ctx context.Context) (map[string]time.Time, error) {
	return b.svc.SitesLastSeen(ctx)
}

// periodically runs fn every interval until ctx ends or the returned stop
// is called; stop returns once fn has returned.
func periodically(ctx context.Context, every time.Duration, fn func(context.Context)) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				fn(ctx)
			}
		}
	}()
	return func() {
		cancel()
		<-done
	}
}

// startFailureFlush writes the aggregated authentication failures whose
// window ended, every interval, until stopFlush, which also writes the rest.
func (b *brokerRuntime) startFailureFlush(every time.Duration) {
	stop := periodically(context.Background(), every, func(ctx context.Context) { b.svc.FlushAuthFailures(ctx, false) })
	b.stopFlush = func() {
		stop()
		b.svc.FlushAuthFailures(context.Background(), true)
	}
}

// startDeadlineSweep fails the federated queries whose deadline passed,
// every interval, until ctx (the server's) ends or stopSweep: lease polls
// fail them too, but with every site's agent down none comes.
func (b *brokerRuntime) startDeadlineSweep(ctx context.Context, every time.Duration) {
	b.stopSweep = periodically(ctx, every, func(ctx context.Context) {
		if n, err := b.svc.SweepOverdue(ctx); err != nil && ctx.Err() == nil {
			b.logger.Error("fail overdue federated queries", "error", err)
		} else if n > 0 {
			b.logger.Info("failed overdue federated queries", "count", n)
		}
	})
}

// drain makes /readyz answer 503 and goes on serving for delay, so that a
// load balancer checking it stops sending requests here before Close
// closes the listener: a rolling restart of replicas fails no request.
func (b *brokerRuntime) drain(delay time.Duration, cut <-chan struct{}) {
	if delay <= 0 {
		return
	}
	b.draining.Store(true)
	b.logger.Info("shutting down: not ready, still serving", "for", delay.String())
	select {
	case <-time.After(delay):
	case <-b.done: // the server stopped by itself
	case <-cut:
	}
}

// URL is the broker's base URL.
func (b *brokerRuntime) URL() string { return b.url }

// Close stops accepting requests, lets in-flight ones finish (up to 30 s),
// then closes the store.
func (b *brokerRuntime) Close() error {
	var errs []error
	if b.server != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		errs = append(errs, b.server.Shutdown(ctx))
		cancel()
		b.server = nil
	}
	if b.stopAdmin != nil {
		b.stopAdmin()
		b.stopAdmin = nil
	}
	if b.stopSweep != nil {
		b.stopSweep()
		b.stopSweep = nil
	}
	if b.stopFlush != nil {
		b.stopFlush() // no request is left to count: record what was
		b.stopFlush = nil
	}
	if b.dryRun != nil {
		errs = append(errs, b.dryRun.Close())
		b.dryRun = nil
	}
	if b.parser != nil {
		errs = append(errs, b.parser.Close())
		b.parser = nil
	}
	if b.store != nil {
		errs = append(errs, b.store.Close())
		b.store = nil
	}
	return errors.Join(errs...)
}

func storeKind(cfg ServeConfig) string {
	if cfg.DatabaseURL != "" {
		return "postgres"
	}
	return "sqlite"
}

func firstNonEmpty(s ...string) string {
	for _, x := range s {
		if x != "" {
			return x
		}
	}
	return ""
}

// dryRunner answers dry runs from synthetic data through the same sandbox
// process the site agent uses, so a dry run exercises the real pipeline.
type dryRunner struct {
	runner  *sandbox.Runner
	dataset string
	scratch string
}

func newDryRunner(cfg ServeConfig, logger *slog.Logger, reg *metrics.Registry) (*dryRunner, error) {
	catPath := cfg.DryRunCatalog
	if catPath == "" {
		catPath = strings.TrimSuffix(cfg.DryRunData, filepath.Ext(cfg.DryRunData)) + ".catalog.yaml"
	}
	cat, err := queries.LoadCatalog(catPath)
	if err != nil {
		return nil, fmt.Errorf("dry-run catalog: %w", err)
	}
	mem, err := parseByteSize(cfg.DryRunMemory)
	if err != nil {
		return nil, fmt.Errorf("dry_run_memory_limit: %w", err)
	}
	temp, err := parseByteSize(cfg.DryRunTemp)
	if err != nil {
		return nil, fmt.Errorf("dry_run_temp_limit: %w", err)
	}
	scratch, err := os.MkdirTemp("", "tre-dryrun-")
	if err != nil {
		return nil, fmt.Errorf("dry-run scratch directory: %w", err)
	}
	sc := sandbox.DefaultConfig()
	sc.DataPath = cfg.DryRunData
	sc.Catalog = cat
	sc.ScratchDir = scratch
	// Small: dry runs read synthetic data of a few thousand patients, and
	// dry_run_max of them may run at once beside the broker.
	sc.MemoryLimit = mem
	sc.TempDirMaxSize = temp
	sc.RSSLimit = mem + 256<<20
	sc.Threads = 1
	sc.Timeout = 30 * time.Second
	sc.AllowWeak = cfg.AllowWeakSBX
	sc.Logger = logger
	observeSandboxes(&sc, reg)
	r, err := sandbox.NewRunner(sc)
	if err != nil {
		os.RemoveAll(scratch)
		return nil, fmt.Errorf("dry-run sandbox: %w", err)
	}
	return &dryRunner{runner: r, dataset: cat.Dataset, scratch: scratch}, nil
}

// DryRun runs sql over the synthetic data. Sandbox errors become broker
// errors with the sandbox's safe message.
func (d *dryRunner) DryRun(ctx context.Context, dataset, sql string, epsilon float64, codelists []job.Codelist) (*dp.Result, []job.AbsentCodes, error) {
	if dataset != d.dataset {
		return nil, nil, broker.Errorf(broker.EUNAVAILABLE, "dry runs are available for dataset %q only", d.dataset)
	}
	res, absent, err := d.runner.DryRun(ctx, job.Job{SQL: sql, SQLHash: queries.SQLHash(sql), Epsilon: epsilon, Codelists: codelists})
	if err != nil {
		return nil, nil, sandboxToBrokerError(err)
	}
	return res, absent, nil
}

// Close waits for the dry runs' sandbox children to exit, then removes the
// scratch directory.
func (d *dryRunner) Close() error {
	d.runner.Close()
	return os.RemoveAll(d.scratch)
}

// sandboxToBrokerError maps a sandbox failure to the API's error codes: the
// sandbox's messages are already safe to show.
func sandboxToBrokerError(err error) error {
	code := job.Code(err)
	msg := job.Message(err)
	switch code {
	case job.CodeRefused:
		return broker.Errorf(broker.EREFUSED, "%s", msg)
	case job.CodeTimeout, job.CodeMemory, job.CodeTooLarge:
		return broker.Errorf(broker.EUNAVAILABLE, "dry run stopped: %s", msg)
	}
	return fmt.Errorf("dry run: %w", err)
}

// tuneGC sets the Go garbage collector's target for the process the broker
// runs in to percent (ServeConfig.GCPercent), unless GOGC is set in the
// environment: the operator's own choice wins. It returns the target set,
// or -1 when it left Go's alone.
func tuneGC(percent int, lookupEnv func(string) (string, bool)) int {
	if _, set := lookupEnv("GOGC"); set {
		return -1
	}
	debug.SetGCPercent(percent)
	return percent
}
