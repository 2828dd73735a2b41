// Package site is the site agent: the outbound process at an NHS site that
// publishes the site's catalog to the broker, leases approved jobs, runs each
// in a sandbox (through the Runner interface; cmd/tre wires sandbox.Runner),
// keeps the lease alive while it runs and reports the protected result or a
// coded failure. Client adapts the API client to the agent's Broker.
//
// site never opens patient data and links neither DuckDB (beyond the
// queries parser) nor gin: every call goes out from the site, none comes in.
// It never logs a lease token or a result's values, and it reports a failed
// job only by its code and safe message (package job).
package site

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/nhs-tre/tre/dp"
	"github.com/nhs-tre/tre/internal/ctxtime"
	"github.com/nhs-tre/tre/job"
	"github.com/nhs-tre/tre/queries"
)

// Broker is the agent's view of the broker: every call goes out from the
// site, none comes in. Client implements it over HTTP.
type Broker interface {
	// PublishCatalog sends the site's catalog (schema and policy, never rows).
	PublishCatalog(ctx context.Context, siteID string, cat *queries.Catalog) error
	// Lease returns the next approved job for the site and its lease token,
	// or nil, "", nil when there is none.
	Lease(ctx context.Context, siteID string) (j *job.Job, token string, err error)
	// Heartbeat extends the lease on the job queryID.
	Heartbeat(ctx context.Context, queryID int64, token string) error
	// Complete uploads the protected result. Completing a job twice with
	// the same token must be harmless.
	Complete(ctx context.Context, queryID int64, token string, result *dp.Result) error
	// CompletePartial uploads the partial result of a federated part
	// (job.Job.Partial), as Complete does a result.
	CompletePartial(ctx context.Context, queryID int64, token string, part *dp.Partial) error
	// Fail reports a safe error code and message.
	Fail(ctx context.Context, queryID int64, token, code, message string) error
	// Codelist returns the codes of the named codelist (public data).
	Codelist(ctx context.Context, name string) ([]job.CodelistCode, error)
}

// ErrLeaseLost is returned by a Broker when the job's lease is no longer
// this agent's (expired and re-leased, cancelled): the agent drops the job.
var ErrLeaseLost = errors.New("lease lost")

// ErrRefused is returned by a Broker when the broker refuses the agent
// itself rather than failing for a while: a token for another site or
// without one, a site no admin registered, a dataset another site
// publishes, an expired token. Retrying cannot help, so the agent stops and
// says why instead of retrying forever.
var ErrRefused = errors.New("refused by the broker")

// codeResultRefused is the failure an agent reports for a job whose result
// the broker refused.
const codeResultRefused = "result_refused"

// Runner runs one job and returns its protected result, or an error whose
// job.Code and job.Message are all the broker is told; RunPartial runs one
// site's part of a federated query (job.Job.Partial) and returns its
// partial result. *sandbox.Runner implements it.
type Runner interface {
	Run(ctx context.Context, j job.Job) (*dp.Result, error)
	RunPartial(ctx context.Context, j job.Job) (*dp.Partial, error)
}

// preparer is a Runner that can get ready for jobs before the first
// (*sandbox.Runner builds the release snapshot).
type preparer interface {
	Prepare(ctx context.Context) error
}

// Config configures the site agent loop.
type Config struct {
	SiteID  string
	Catalog *queries.Catalog
	Broker  Broker
	Runner  Runner
	// Parallelism is how many jobs run at once (default 1).
	Parallelism int
	// PollInterval is the wait after an empty lease (default 2s).
	PollInterval time.Duration
	// HeartbeatInterval is how often a running job's lease is extended
	// (default 10s).
	HeartbeatInterval time.Duration
	// MinBackoff and MaxBackoff bound the exponential backoff, with jitter,
	// after a broker error (defaults 500ms and 1m).
	MinBackoff, MaxBackoff time.Duration
	// ReportTimeout bounds Complete and Fail, which run on a context
	// detached from shutdown so a finished result is not thrown away.
	ReportTimeout time.Duration
	Logger        *slog.Logger
	Now           func() time.Time
	// Sleep waits for d or until ctx ends; tests inject a fast one.
	Sleep func(ctx context.Context, d time.Duration) error
}

// Agent leases jobs from the broker and runs them in sandboxes.
type Agent struct {
	cfg Config

	// codelists caches the codelists fetched for jobs by name and hash
	// (codelists never change), at most maxCachedCodelists.
	mu        sync.Mutex
	codelists map[[2]string]job.Codelist
}

// maxCachedCodelists bounds the agent's codelist cache.
const maxCachedCodelists = 64

// NewAgent checks cfg and fills defaults.
func NewAgent(cfg Config) (*Agent, error) {
	switch {
	case cfg.SiteID == "":
		return nil, errors.New("agent: site id is required")
	case cfg.Catalog == nil:
		return nil, errors.New("agent: catalog is required")
	case cfg.Broker == nil || cfg.Runner == nil:
		return nil, errors.New("agent: broker and runner are required")
	case cfg.Parallelism < 0:
		return nil, errors.New("agent: parallelism must be ≥ 1")
	}
	if cfg.Parallelism == 0 {
		cfg.Parallelism = 1
	}
	if cfg.PollInterval == 0 {
		cfg.PollInterval = 2 * time.Second
	}
	if cfg.HeartbeatInterval == 0 {
		cfg.HeartbeatInterval = 10 * time.Second
	}
	if cfg.MinBackoff == 0 {
		cfg.MinBackoff = 500 * time.Millisecond
	}
	if cfg.MaxBackoff == 0 {
		cfg.MaxBackoff = time.Minute
	}
	if cfg.ReportTimeout == 0 {
		cfg.ReportTimeout = 30 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Sleep == nil {
		cfg.Sleep = ctxtime.Sleep
	}
	return &Agent{cfg: cfg, codelists: map[[2]string]job.Codelist{}}, nil
}

// Run publishes the catalog, then leases and runs jobs until ctx ends.
// Shutdown: no new lease is taken; a running job is abandoned (its sandbox
// is killed) and its lease left to expire so the broker re-leases it.
// Run returns nil on shutdown, and an error wrapping ErrRefused when the
// broker refuses the agent (its catalog or its polls).
func (a *Agent) Run(ctx context.Context) error {
	if err := a.retry(ctx, "publish catalog", func() error {
		return a.cfg.Broker.PublishCatalog(ctx, a.cfg.SiteID, a.cfg.Catalog)
	}); errors.Is(err, ErrRefused) {
		return fmt.Errorf("site %s: publish catalog %q: %w", a.cfg.SiteID, a.cfg.Catalog.Dataset, err)
	} else if err != nil {
		return nil // ctx ended before the broker came back
	}
	a.cfg.Logger.Info("agent: catalog published", "site", a.cfg.SiteID, "dataset", a.cfg.Catalog.Dataset)
	if p, ok := a.cfg.Runner.(preparer); ok {
		// The release snapshot before the first lease, not inside it. A
		// failure is the site's to fix; every job then reports it.
		if err := p.Prepare(ctx); err != nil && ctx.Err() == nil {
			a.cfg.Logger.Error("agent: release snapshot", "code", job.Code(err), "error", job.Message(err))
		}
	}
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	var wg sync.WaitGroup
	var once sync.Once
	var refused error
	for i := range a.cfg.Parallelism {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := a.worker(ctx, i); err != nil {
				once.Do(func() { refused = err; stop() })
			}
		}()
	}
	wg.Wait()
	return refused
}

// retry calls f until it succeeds, ctx ends or the broker refuses the agent
// (ErrRefused), backing off exponentially with full jitter.
func (a *Agent) retry(ctx context.Context, what string, f func() error) error {
	backoff := a.cfg.MinBackoff
	for {
		err := f()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if errors.Is(err, ErrRefused) {
			a.cfg.Logger.Error("agent: the broker refused this agent; not retrying", "call", what, "error", err)
			return err
		}
		a.cfg.Logger.Warn("agent: broker call failed; backing off", "call", what, "error", err, "backoff", backoff)
		if err := a.cfg.Sleep(ctx, jitter(backoff)); err != nil {
			return err
		}
		backoff = min(backoff*2, a.cfg.MaxBackoff)
	}
}

// jitter returns a duration in [d/2, d).
func jitter(d time.Duration) time.Duration {
	if d <= 1 {
		return d
	}
	return d/2 + rand.N(d/2)
}

// worker leases and runs jobs until ctx ends (nil) or the broker refuses
// the agent's polls (an error wrapping ErrRefused).
func (a *Agent) worker(ctx context.Context, n int) error {
	log := a.cfg.Logger.With("worker", n)
	for ctx.Err() == nil {
		var j *job.Job
		var token string
		err := a.retry(ctx, "lease", func() error {
			var err error
			j, token, err = a.cfg.Broker.Lease(ctx, a.cfg.SiteID)
			return err
		})
		if errors.Is(err, ErrRefused) {
			return fmt.Errorf("site %s: lease: %w", a.cfg.SiteID, err)
		} else if err != nil {
			return nil
		}
		if j == nil {
			if a.cfg.Sleep(ctx, a.cfg.PollInterval) != nil {
				return nil
			}
			continue
		}
		a.handle(ctx, log, *j, token)
	}
	return nil
}

// handle runs one leased job and reports its outcome.
func (a *Agent) handle(ctx context.Context, log *slog.Logger, j job.Job, token string) {
	log = log.With("query", j.QueryID)
	if j.Dataset != "" && j.Dataset != a.cfg.Catalog.Dataset {
		a.report(ctx, log, j.QueryID, token, outcome{}, job.Errorf(job.CodeInvalid, "this site does not hold dataset %q", j.Dataset))
		return
	}
	if queries.SQLHash(j.SQL) != j.SQLHash {
		a.report(ctx, log, j.QueryID, token, outcome{}, job.Errorf(job.CodeInvalid, "the SQL does not match its hash"))
		return
	}
	if err := a.fetchCodelists(ctx, j.Codelists); err != nil {
		if ctx.Err() == nil {
			a.report(ctx, log, j.QueryID, token, outcome{}, err)
		}
		return
	}
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	var lost bool
	var hbWG sync.WaitGroup
	hbWG.Add(1)
	go func() {
		defer hbWG.Done()
		lost = a.heartbeat(runCtx, log, j.QueryID, token, cancel)
	}()
	log.Info("agent: running job")
	var out outcome
	var err error
	if j.Partial {
		out.part, err = a.cfg.Runner.RunPartial(runCtx, j)
	} else {
		out.res, err = a.cfg.Runner.Run(runCtx, j)
	}
	cancel()
	hbWG.Wait()
	switch {
	case lost:
		log.Warn("agent: lease lost; dropping job")
		return
	case ctx.Err() != nil:
		log.Info("agent: shutting down; job abandoned to lease expiry")
		return
	}
	a.report(ctx, log, j.QueryID, token, out, err)
}

// outcome is a successful run's answer: a result, or a federated part's
// partial result.
type outcome struct {
	res  *dp.Result
	part *dp.Partial
}

// complete uploads out.
func (a *Agent) complete(ctx context.Context, queryID int64, token string, out outcome) error {
	if out.part != nil {
		return a.cfg.Broker.CompletePartial(ctx, queryID, token, out.part)
	}
	return a.cfg.Broker.Complete(ctx, queryID, token, out.res)
}

// groups is the number of groups out holds, for the log.
func (o outcome) groups() int {
	if o.part != nil {
		return len(o.part.Groups)
	}
	return len(o.res.Rows)
}

// heartbeat extends the lease until ctx ends. It cancels the job and
// returns true if the broker says the lease is gone.
func (a *Agent) heartbeat(ctx context.Context, log *slog.Logger, queryID int64, token string, cancel func()) bool {
	for {
		if a.cfg.Sleep(ctx, a.cfg.HeartbeatInterval) != nil {
			return false
		}
		err := a.cfg.Broker.Heartbeat(ctx, queryID, token)
		switch {
		case errors.Is(err, ErrLeaseLost), errors.Is(err, ErrRefused):
			cancel()
			return true
		case err != nil:
			// A broker outage: keep running, the lease may still be ours.
			log.Warn("agent: heartbeat failed", "error", err)
		}
	}
}

// report completes or fails the job on a context detached from shutdown,
// retrying through broker outages until ReportTimeout.
func (a *Agent) report(ctx context.Context, log *slog.Logger, queryID int64, token string, out outcome, runErr error) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), a.cfg.ReportTimeout)
	defer cancel()
	var err error
	if runErr == nil {
		var lost error
		err = a.retry(rctx, "complete", func() error {
			err := a.complete(rctx, queryID, token, out)
			if errors.Is(err, ErrLeaseLost) {
				lost = err // re-leased, or the query ended without it: nothing to do
				return nil
			}
			return err
		})
		switch {
		case err == nil && lost != nil:
			// A late upload (the site was cut off past its lease, or a
			// federated query's deadline): the broker keeps what it had.
			log.Warn("agent: the broker no longer holds this job's lease; result dropped", "error", lost)
		case err == nil:
			log.Info("agent: job completed", "groups", out.groups(), "partial", out.part != nil)
		}
		if errors.Is(err, ErrRefused) {
			// The broker will not take this result (it does not match what
			// was approved): report the run as failed rather than leave the
			// lease to expire and the job to run again.
			log.Error("agent: the broker refused the job's result; reporting the job as failed", "error", err)
			runErr = job.Errorf(codeResultRefused, "the broker refused the protected result")
		}
	}
	if runErr != nil {
		code, msg := job.Code(runErr), job.Message(runErr)
		if code == job.CodeInternal {
			log.Error("agent: job failed", "error", runErr)
		}
		err = a.retry(rctx, "fail", func() error {
			err := a.cfg.Broker.Fail(rctx, queryID, token, code, msg)
			if errors.Is(err, ErrLeaseLost) {
				return nil
			}
			return err
		})
		if err == nil {
			log.Info("agent: job failed", "code", code)
		}
	}
	if err != nil {
		log.Error("agent: could not report job; the lease will expire and the broker re-lease it", "error", fmt.Sprint(err))
	}
}

// fetchCodelists fills in the codes of the codelists a job names (the
// lease carries names and hashes only), each checked against its hash:
// codes that do not match what the reviewer approved fail the job. Broker
// outages are retried; a codelist the broker refuses fails the job.
func (a *Agent) fetchCodelists(ctx context.Context, lists []job.Codelist) error {
	for i := range lists {
		name := lists[i].Name
		key := [2]string{name, lists[i].Hash}
		a.mu.Lock()
		cached, ok := a.codelists[key]
		a.mu.Unlock()
		if ok {
			lists[i] = cached
			continue
		}
		var codes []job.CodelistCode
		err := a.retry(ctx, "codelist", func() error {
			var err error
			codes, err = a.cfg.Broker.Codelist(ctx, name)
			return err
		})
		if errors.Is(err, ErrRefused) {
			return job.Errorf(job.CodeInvalid, "codelist %s could not be fetched from the broker", name)
		} else if err != nil {
			return err
		}
		lists[i].Codes = codes
		if err := lists[i].Verify(); err != nil {
			return err
		}
		a.mu.Lock()
		if len(a.codelists) >= maxCachedCodelists {
			clear(a.codelists)
		}
		a.codelists[key] = lists[i]
		a.mu.Unlock()
	}
	return nil
}
