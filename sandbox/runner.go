package sandbox

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/nhs-tre/tre/dp"
	"github.com/nhs-tre/tre/internal/ctxtime"
	"github.com/nhs-tre/tre/job"
)

// sandboxVersion is reported in every disclosure report.
const sandboxVersion = "tre-sandbox/1"

// Runner starts one sandbox child per job and returns its protected result.
// It is safe for concurrent use; each Run has its own process.
type Runner struct {
	cfg Config

	mu sync.Mutex
	// noNamespaces is set once the kernel refused user+network namespaces,
	// so later jobs do not retry them.
	noNamespaces bool

	// now is the clock the racy-file rule reads and sleep how a job waits
	// for a data file to age out of it (snapshot.go).
	now   func() time.Time
	sleep func(ctx context.Context, d time.Duration) error

	snapMu sync.Mutex
	// snaps holds the release snapshot kept for the current version of the
	// data file (at most one), by version (snapshot.go).
	snaps map[fileIdentity]*snapshot
	// snapFill is the builder child in flight, if any; jobs wait for it
	// rather than start their own.
	snapFill chan struct{}
	// snapBuilds counts builder children (tests read it).
	snapBuilds int

	// exiting counts finished jobs whose killed child is still being
	// waited for, or whose job directory is still being removed (finish),
	// and children being started for the pool.
	exiting sync.WaitGroup

	poolMu sync.Mutex
	pool   poolState // pool.go
}

// Close kills the pool's idle children (no child joins it afterwards) and
// waits until the child of every finished job has exited and its job
// directory has been removed. Call it once no Run is in progress or will
// start; until it returns, a job's scratch files may still exist.
func (r *Runner) Close() error {
	r.closePool()
	r.exiting.Wait()
	// Kept snapshots stay for the next Runner; an empty directory goes.
	os.Remove(r.snapshotDir())
	return nil
}

// NewRunner checks cfg and returns a Runner.
func NewRunner(cfg Config) (*Runner, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg, err := cfg.absolute()
	if err != nil {
		return nil, err
	}
	if err := cfg.Catalog.Validate(); err != nil {
		return nil, fmt.Errorf("sandbox config: %w", err)
	}
	if err := checkDataFile(cfg.DataPath); err != nil {
		return nil, fmt.Errorf("sandbox config: %w", err)
	}
	if err := os.MkdirAll(cfg.ScratchDir, 0o700); err != nil {
		return nil, fmt.Errorf("sandbox config: scratch dir: %w", err)
	}
	return &Runner{cfg: cfg, now: time.Now, sleep: ctxtime.Sleep, snaps: make(map[fileIdentity]*snapshot),
		pool: poolState{filling: map[string]int{}, changed: make(chan struct{})}}, nil
}

// Prepare builds the release snapshot of the data file as it is now (or
// finds the one kept for it), so that the next job need not wait for it,
// and fills the pool of children (Config.PoolSize).
// The agent calls it before its first lease; a job on a newer version of
// the data builds that version's itself.
func (r *Runner) Prepare(ctx context.Context) error {
	snap, release, err := r.acquireSnapshot(ctx)
	if err != nil {
		return err
	}
	// With a pool, its children start now, ready for the first job.
	r.refill(callOptions{dataPath: snap.path, timeout: r.cfg.Timeout})
	release()
	return nil
}

// Run compiles and runs j in a fresh sandbox child and returns the
// protected result. Failures are *job.Error with a safe message; a
// cancelled ctx returns ctx.Err().
func (r *Runner) Run(ctx context.Context, j job.Job) (res *dp.Result, err error) {
	return r.run(ctx, &request{Job: j})
}

// RunPartial runs j, one site's part of a federated query (j.Partial set),
// as Run does, and returns its partial result: the noisy statistics of
// every group (dp.ProtectPartial), which the broker combines with the
// other sites'. The hardening, the release snapshot and the limits are
// Run's; a failure is an ordinary failure.
func (r *Runner) RunPartial(ctx context.Context, j job.Job) (*dp.Partial, error) {
	return r.runPartial(ctx, &request{Job: j})
}

// runPartial is run for a federated part: in, with the test hooks
// export_test.go may set, must have Partial set.
func (r *Runner) runPartial(ctx context.Context, in *request) (*dp.Partial, error) {
	if !in.Partial {
		return nil, job.Errorf(job.CodeInvalid, "the job is not a federated part")
	}
	resp, err := r.runResponse(ctx, in)
	if err != nil {
		return nil, err
	}
	return resp.Partial, nil
}

// DryRun is Run for a dry run at the broker, whose data file is
// synthetic: it also returns, for each codelist of the job, the codes that
// occur in no code column of the data.
func (r *Runner) DryRun(ctx context.Context, j job.Job) (*dp.Result, []job.AbsentCodes, error) {
	req := &request{Job: j, DryRun: true}
	res, err := r.run(ctx, req)
	if err != nil {
		return nil, nil, err
	}
	return res, req.absent, nil
}

// run runs in, a job with the test hooks export_test.go may set, against
// the runner's catalog, and returns its protected result.
func (r *Runner) run(ctx context.Context, in *request) (*dp.Result, error) {
	if in.Partial {
		return nil, job.Errorf(job.CodeInvalid, "a federated part runs with RunPartial")
	}
	resp, err := r.runResponse(ctx, in)
	if err != nil {
		return nil, err
	}
	return resp.Result, nil
}

// runResponse runs in against the runner's catalog and returns the
// child's checked response: a Result, or for a federated part a Partial,
// with the sandbox report filled in.
func (r *Runner) runResponse(ctx context.Context, in *request) (_ *response, err error) {
	if r.cfg.Observe != nil {
		start := time.Now()
		defer func() {
			outcome := "ok"
			switch {
			case errors.Is(err, context.Canceled):
				outcome = "cancelled"
			case err != nil:
				outcome = job.Code(err)
			}
			r.cfg.Observe(outcome, time.Since(start))
		}()
	}
	req := *in
	req.Catalog = r.cfg.Catalog
	// The job's child reads the release snapshot, never the data file: no
	// opted-out patient is in it (snapshot.go).
	snap, release, err := r.acquireSnapshot(ctx)
	if err != nil {
		return nil, err
	}
	defer release()
	resp, hostLayers, err := r.call(ctx, &req, callOptions{dataPath: snap.path, timeout: r.cfg.Timeout}, nil)
	if err != nil {
		return nil, err
	}
	if req.Partial {
		return r.checkPartial(resp, snap.hash, hostLayers)
	}
	if resp.Result == nil || resp.Partial != nil {
		return nil, job.Errorf(job.CodeInternal, "the sandbox returned no result")
	}
	if !req.Raw && !req.Probe {
		if got := resp.Result.Report.OptOut; !got.Applied || got.SnapshotHash != snap.hash {
			return nil, job.Errorf(job.CodeInternal, "the sandbox reported another release snapshot than the one it was given")
		}
	}
	if len(resp.Result.Rows) > r.cfg.MaxRows {
		return nil, job.Errorf(job.CodeTooLarge, "the result has more than %d rows", r.cfg.MaxRows)
	}
	resp.Result.Report.Sandbox = r.sandboxReport(resp.Layers, hostLayers)
	in.absent = resp.Absent
	return resp, nil
}

// checkPartial checks a federated part's response as run checks a
// result's: a partial result and nothing else, read from the release
// snapshot it was given, within the row cap; and fills in its sandbox
// report.
func (r *Runner) checkPartial(resp *response, snapHash string, hostLayers []string) (*response, error) {
	part := resp.Partial
	if part == nil || resp.Result != nil {
		return nil, job.Errorf(job.CodeInternal, "the sandbox returned no partial result")
	}
	if got := part.OptOut; !got.Applied || got.SnapshotHash != snapHash {
		return nil, job.Errorf(job.CodeInternal, "the sandbox reported another release snapshot than the one it was given")
	}
	if len(part.Groups) > r.cfg.MaxRows {
		return nil, job.Errorf(job.CodeTooLarge, "the result has more than %d rows", r.cfg.MaxRows)
	}
	part.Sandbox = r.sandboxReport(resp.Layers, hostLayers)
	return resp, nil
}

// sandboxReport merges the layers the host and the child applied.
func (r *Runner) sandboxReport(child, host []string) dp.SandboxReport {
	layers := slices.Concat(host, child)
	sort.Strings(layers)
	layers = slices.Compact(layers)
	var missing []string
	for _, l := range requiredLayers() {
		if !slices.Contains(layers, l) {
			missing = append(missing, l)
		}
	}
	return dp.SandboxReport{Layers: layers, Missing: missing, Degraded: len(missing) > 0, Version: sandboxVersion}
}

// callOptions say which file a child opens and how long it may run.
type callOptions struct {
	// dataPath is the file the child opens read-only: a release snapshot
	// for a job, the site's data file for a builder child (build).
	dataPath string
	build    bool
	timeout  time.Duration
}

// child is a started sandbox child that has completed the plugin handshake
// and is waiting for its one request: hardened (it hardens itself before it
// serves), its data opening or open. It is used for one call, then killed.
type child struct {
	pc     *plugin.Client
	cmd    *exec.Cmd
	cl     *client
	jobDir string
	// namespaces: started in new user and network namespaces.
	namespaces bool
	// opts is what the child was started for (its data file and limits).
	opts    callOptions
	started time.Time
	// warmBytes is the budget the child was given to warm (warm.go).
	warmBytes int64
	// release drops the pool's hold on the child's release snapshot (a
	// pooled child only; nil once handed out).
	release func()
}

// call runs one request in a child, a pooled one started earlier for the
// same file and limits when there is one (pool.go), else a new one, and
// returns its response and the layers the host applied around it. collect,
// when set, runs on a successful response while the job's directory still
// exists (the builder child leaves its snapshot there).
func (r *Runner) call(ctx context.Context, req *request, opts callOptions, collect func(resp *response, jobDir string) error) (*response, []string, error) {
	begun := time.Now()
	ch, err := r.takePooled(ctx, opts)
	if err != nil {
		return nil, nil, err
	}
	pooled := ch != nil
	if !pooled {
		if ch, err = r.startChild(opts, 0); err != nil {
			return nil, nil, err
		}
	}
	// One process per job: never reused, never left behind. A builder
	// child has exited before the build returns, so the jobs waiting for
	// its snapshot never run beside it (a site's cap on children holds).
	// The pool is refilled once the job's own child is gone.
	defer func() {
		r.finish(ch.pc, ch.cmd, ch.jobDir, opts.build)
		r.refill(opts)
	}()
	return r.runOn(ctx, ch, req, opts, collect, func() {
		if r.cfg.ObserveJobStart != nil && !opts.build {
			r.cfg.ObserveJobStart(time.Since(begun), pooled)
		}
	})
}

// startChild starts a child for opts in a new job directory and completes
// the plugin handshake with it; a pooled child warms up to warmBytes of
// the data while it waits (warm.go). On error nothing is left behind.
func (r *Runner) startChild(opts callOptions, warmBytes int64) (*child, error) {
	cfg := r.cfg
	jobDir, err := os.MkdirTemp(cfg.ScratchDir, "job-")
	if err != nil {
		return nil, fmt.Errorf("job dir: %w", err)
	}
	started := false
	defer func() {
		if !started { // otherwise finish removes it
			os.RemoveAll(jobDir)
		}
	}()
	if err := os.Mkdir(jobDir+"/tmp", 0o700); err != nil {
		return nil, fmt.Errorf("job dir: %w", err)
	}
	ccJSON, hostTLS, err := r.newChildConfig(opts, jobDir, warmBytes)
	if err != nil {
		return nil, err
	}

	r.mu.Lock()
	useNS := !r.noNamespaces
	r.mu.Unlock()
	if !useNS && !cfg.AllowWeak {
		return nil, job.Errorf(job.CodeUnavailable, "user and network namespaces are unavailable on this host")
	}
	pc, cmd, err := r.start(ccJSON, hostTLS, jobDir, warmBytes > 0, useNS)
	if err != nil && useNS && cmd.Process == nil {
		// The kernel (or container runtime) refused the namespaces.
		cfg.Logger.Warn("sandbox: user+network namespaces unavailable", "error", err)
		r.mu.Lock()
		r.noNamespaces = true
		r.mu.Unlock()
		if !cfg.AllowWeak {
			return nil, job.Errorf(job.CodeUnavailable, "user and network namespaces are unavailable on this host")
		}
		useNS = false
		pc, cmd, err = r.start(ccJSON, hostTLS, jobDir, warmBytes > 0, false)
	}
	if err != nil {
		if pc != nil {
			pc.Kill()
		}
		cfg.Logger.Error("sandbox: start failed", "error", err)
		return nil, job.Errorf(job.CodeCrashed, "the sandbox failed to start")
	}
	started = true
	ch := &child{pc: pc, cmd: cmd, jobDir: jobDir, namespaces: useNS, opts: opts, started: time.Now(), warmBytes: warmBytes}
	rpc, err := pc.Client()
	if err == nil {
		var raw any
		if raw, err = rpc.Dispense(pluginName); err == nil {
			ch.cl = raw.(*client)
		}
	}
	if err != nil {
		r.finish(pc, cmd, jobDir, false)
		return nil, job.Errorf(job.CodeCrashed, "the sandbox failed to start")
	}
	return ch, nil
}

// runOn sends req to ch, watching its memory and time, and returns its
// response and the host's layers; sent is called as the request goes.
func (r *Runner) runOn(ctx context.Context, ch *child, req *request, opts callOptions, collect func(resp *response, jobDir string) error, sent func()) (*response, []string, error) {
	cfg := r.cfg
	hostLayers := []string{LayerCleanEnv, LayerPdeathsig}
	if ch.namespaces {
		hostLayers = append(hostLayers, LayerUserNamespace, LayerNetNamespace)
	}
	cmd := ch.cmd
	jobCtx, cancel := context.WithTimeout(ctx, opts.timeout)
	defer cancel()
	var killedFor killReasonBox
	stopWatch := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		killedFor.set(r.watch(cmd.Process.Pid, cmd.Process, opts.timeout, stopWatch))
	}()
	if _, err := rssBytes(cmd.Process.Pid); err == nil {
		hostLayers = append(hostLayers, LayerRSSWatchdog)
	}
	sent()
	resp, err := ch.cl.call(jobCtx, req, cfg.MaxBytes)
	close(stopWatch)
	wg.Wait()
	if cfg.ObserveChildPeak != nil {
		// Still alive (finish kills it): its high-water mark is the
		// whole job's.
		if peak, perr := peakRSSBytes(cmd.Process.Pid); perr == nil {
			cfg.ObserveChildPeak(peak, opts.build)
		}
	}
	if err != nil {
		switch reason := killedFor.get(); {
		case reason == killMemory:
			return nil, nil, job.Errorf(job.CodeMemory, "the query ran out of memory")
		case reason == killTimeout:
			return nil, nil, job.Errorf(job.CodeTimeout, "the query ran past its time limit")
		case ctx.Err() != nil:
			return nil, nil, ctx.Err()
		case jobCtx.Err() != nil, status.Code(err) == codes.DeadlineExceeded:
			// The child's gRPC server enforces the same deadline and may
			// report it a moment before the host's own timer fires.
			return nil, nil, job.Errorf(job.CodeTimeout, "the query ran past its time limit")
		}
		var se *job.Error
		if errors.As(err, &se) {
			return nil, nil, se
		}
		cfg.Logger.Warn("sandbox: transport failure", "error", err)
		return nil, nil, job.Errorf(job.CodeCrashed, "the sandbox stopped unexpectedly")
	}
	if collect != nil {
		if err := collect(resp, ch.jobDir); err != nil {
			return nil, nil, err
		}
	}
	return resp, hostLayers, nil
}

// newChildConfig is the configuration a new child for one call reads, as
// JSON, and the host's side of that call's mutual TLS.
func (r *Runner) newChildConfig(opts callOptions, jobDir string, warmBytes int64) ([]byte, *tls.Config, error) {
	cfg := r.cfg
	cc := childConfig{
		DataPath:           opts.dataPath,
		Build:              opts.build,
		JobDir:             jobDir,
		MemoryLimit:        DuckDBMemoryLimit(cfg.MemoryLimit),
		Threads:            cfg.Threads,
		MaxExpressionDepth: cfg.MaxExpressionDepth,
		TempDirMaxSize:     cfg.TempDirMaxSize,
		CPUSeconds:         int64((opts.timeout+cfg.KillGrace).Seconds())*int64(cfg.Threads) + 10,
		MaxRows:            cfg.MaxRows,
		AllowWeak:          cfg.AllowWeak,
		ParentPID:          os.Getpid(),
		WarmBytes:          warmBytes,
	}
	if opts.build {
		// The snapshot is written into the job dir: allow a file twice
		// the data's size (it holds less: no forbidden column, no
		// opted-out patient).
		if st, err := os.Stat(opts.dataPath); err == nil {
			cc.FileSizeLimit = max(cfg.TempDirMaxSize, 2*st.Size()+64<<20)
		}
	} else if views, err := viewStatements(cfg.Catalog); err == nil {
		// A job child locks its data down with these while it waits (a
		// fresh child while the handshake completes, a pooled one before
		// it warms): every job of this runner has its catalog. A catalog
		// without views fails the job in the child, as before.
		cc.Views = views
	}
	// The real clock, not r.now: crypto/tls checks validity against it.
	hostTLS, childTLS, err := newJobTLS(time.Now())
	if err != nil {
		return nil, nil, fmt.Errorf("job TLS: %w", err)
	}
	cc.TLS = childTLS
	ccJSON, err := json.Marshal(cc)
	if err != nil {
		return nil, nil, err
	}
	return ccJSON, hostTLS, nil
}

// start launches the child: /proc/self/exe (or the configured binary) with
// an environment holding only what go-plugin and the child need (and, for
// a pooled child, its allocator's options), killed if the agent dies, in
// new user and network namespaces when asked. The connection is mutually
// authenticated with the job's TLS (tls.go), not go-plugin's AutoMTLS.
func (r *Runner) start(ccJSON []byte, hostTLS *tls.Config, jobDir string, pooled, namespaces bool) (*plugin.Client, *exec.Cmd, error) {
	cfg := r.cfg
	cmd := exec.Command(cfg.Executable, cfg.Args...)
	// The whole environment: the child's config, where go-plugin's server
	// puts its socket and HOME (DuckDB looks there), all inside the job
	// directory Landlock allows.
	cmd.Env = []string{envConfig + "=" + string(ccJSON), plugin.EnvUnixSocketDir + "=" + jobDir, "HOME=" + jobDir}
	if pooled && haveAllocatorControl {
		// Keep the warm join's memory for the job (warm.go).
		cmd.Env = append(cmd.Env, keepFreedEnv)
	}
	cmd.Dir = jobDir
	attr := &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if namespaces {
		attr.Cloneflags = syscall.CLONE_NEWUSER | syscall.CLONE_NEWNET
		// An unprivileged uid inside: execve into stage 2 drops every
		// capability the new namespace granted.
		attr.UidMappings = []syscall.SysProcIDMap{{ContainerID: 1000, HostID: os.Getuid(), Size: 1}}
		attr.GidMappings = []syscall.SysProcIDMap{{ContainerID: 1000, HostID: os.Getgid(), Size: 1}}
		attr.GidMappingsEnableSetgroups = false
	}
	cmd.SysProcAttr = attr
	pc := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  handshake(),
		Plugins:          plugin.PluginSet{pluginName: &grpcPlugin{}},
		Cmd:              cmd,
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		TLSConfig:        hostTLS,
		SkipHostEnv:      true,
		GRPCDialOptions: []grpc.DialOption{
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxRecvMsg)),
		},
		UnixSocketConfig: &plugin.UnixSocketConfig{TempDir: jobDir},
		StartTimeout:     15 * time.Second,
		Logger:           hclog.New(&hclog.LoggerOptions{Output: io.Discard, Level: hclog.Off}),
		Stderr:           &logWriter{log: cfg.Logger},
	})
	_, err := pc.Start()
	return pc, cmd, err
}

// finish ends a job's child: SIGKILL at once, so that it runs nothing
// more once the job returns. Waiting for it to exit (the kernel freeing its
// memory: 3-12 ms at 1M patients, up to ~80 ms at 10M) and then removing
// its job directory happen in the background, off the job's latency, or
// now when wait is set; the directory goes only after the exit, when
// nothing can write into it any more. Close waits for both.
func (r *Runner) finish(pc *plugin.Client, cmd *exec.Cmd, jobDir string, wait bool) {
	cmd.Process.Kill()
	r.exiting.Add(1)
	reap := func() {
		defer r.exiting.Done()
		pc.Kill()
		os.RemoveAll(jobDir)
	}
	if wait {
		reap()
		return
	}
	go reap()
}

type killReason int

const (
	killNone killReason = iota
	killTimeout
	killMemory
)

type killReasonBox struct {
	mu sync.Mutex
	v  killReason
}

// The reason is read after the watcher has stopped; the mutex keeps the
// race detector honest.
func (k *killReasonBox) set(v killReason) { k.mu.Lock(); k.v = v; k.mu.Unlock() }
func (k *killReasonBox) get() killReason  { k.mu.Lock(); defer k.mu.Unlock(); return k.v }

// watch kills the child with SIGKILL when its resident size passes the RSS
// limit or when the job outlives Timeout plus KillGrace (DuckDB ignored the
// interrupt). It returns why it killed, or killNone once stop closes.
func (r *Runner) watch(pid int, p *os.Process, timeout time.Duration, stop <-chan struct{}) killReason {
	deadline := time.NewTimer(timeout + r.cfg.KillGrace)
	defer deadline.Stop()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-stop:
			return killNone
		case <-deadline.C:
			p.Kill()
			return killTimeout
		case <-tick.C:
			if rss, err := rssBytes(pid); err == nil && rss > r.cfg.RSSLimit {
				r.cfg.Logger.Warn("sandbox: killed for memory", "rss", rss, "limit", r.cfg.RSSLimit)
				p.Kill()
				return killMemory
			}
		}
	}
}

// logWriter puts the child's stderr (which may quote DuckDB errors and so
// data values) into the site's own log, never anywhere else. go-plugin
// hands it one line per Write.
type logWriter struct{ log *slog.Logger }

func (w *logWriter) Write(p []byte) (int, error) {
	if line := strings.TrimSpace(string(p)); line != "" {
		w.log.Warn("sandbox child", "line", line)
	}
	return len(p), nil
}
