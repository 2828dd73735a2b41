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
	"path/filepath"
	"slices"
	"sync"

	"github.com/duckdb/duckdb-go/v2"
	"github.com/google/differential-privacy/go/v3/noise"
	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"

	"github.com/nhs-tre/tre/dp"
	"github.com/nhs-tre/tre/job"
	"github.com/nhs-tre/tre/queries"
)

const (
	envConfig   = "TRE_SANDBOX_CONFIG"
	envStage    = "TRE_SANDBOX_STAGE"
	envLandlock = "TRE_SANDBOX_LANDLOCK"
)

// childConfig is what the host tells the child at spawn time, through the
// environment, because Landlock and rlimits must be in place before the
// child accepts any job.
type childConfig struct {
	// DataPath is the file the child opens read-only: a release snapshot
	// for a job; for a builder child (Build), the site's data file, of
	// which it writes a release snapshot into JobDir (snapshot.go).
	DataPath string `json:"data_path"`
	Build    bool   `json:"build,omitempty"`
	JobDir   string `json:"job_dir"`
	// FileSizeLimit, when above the temp dir cap, is RLIMIT_FSIZE (a
	// builder child writes a copy of the data).
	FileSizeLimit int64 `json:"file_size_limit,omitempty"`
	// MemoryLimit is DuckDB's memory_limit: DuckDBMemoryLimit of the
	// job's.
	MemoryLimit        int64 `json:"memory_limit"`
	Threads            int   `json:"threads"`
	MaxExpressionDepth int   `json:"max_expression_depth"`
	TempDirMaxSize     int64 `json:"temp_dir_max_size"`
	CPUSeconds         int64 `json:"cpu_seconds"`
	AddressSpace       int64 `json:"address_space,omitempty"`
	MaxRows            int   `json:"max_rows"`
	AllowWeak          bool  `json:"allow_weak"`
	// ParentPID is the host process's pid: once the parent-death signal is
	// armed, a different parent means the host died first (the child was
	// reparented). Comparing with 1 instead would refuse every job of a
	// host that is itself pid 1, as tre is in a container without an init.
	ParentPID int `json:"parent_pid"`
	// TLS is the child's side of the job's mutual TLS (tls.go).
	TLS *childTLS `json:"tls"`
	// WarmBytes, for a pooled child, is the DuckDB memory it may fill
	// reading the data while it waits for its job (warm.go); 0: no warming.
	WarmBytes int64 `json:"warm_bytes,omitempty"`
	// Views are the runner's catalog's views (queries.ViewStatements): a
	// job child locks its data down with them before its job arrives, and
	// uses that lock-down for a job whose catalog gives the same views.
	Views []string `json:"views,omitempty"`
}

func (c *childConfig) tempDir() string { return filepath.Join(c.JobDir, "tmp") }

// ServeOptions configures the child entry point. The zero value is
// production; only the package's tests can enable the hooks.
type ServeOptions struct {
	// Test hooks, set only by export_test.go: runRaw executes SQL that
	// skipped the compiler, probe attempts forbidden operations, testNoise
	// makes the noise of the statistics a fixed offset.
	runRaw    func(ctx context.Context, ldb *lockedDB, query string, maxRows int) (*rawOutcome, error)
	probe     func(cc *childConfig) []probeOutcome
	testNoise func(offset float64) noise.Noise
}

// Serve is the sandbox child process: `tre __sandbox` calls it and exits
// with its return value. It hardens the process, then serves exactly the
// plugin's one RPC until the host kills it.
func Serve(opts ServeOptions) int {
	var cc childConfig
	if err := json.Unmarshal([]byte(os.Getenv(envConfig)), &cc); err != nil {
		fmt.Fprintln(os.Stderr, "tre sandbox: this is an internal subcommand started by the site agent")
		return 2
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	if os.Getenv(envStage) != "2" {
		err := stage1(&cc)
		log.Error("sandbox stage 1", "error", err)
		return 1
	}
	layers, err := hardenProcess(&cc)
	if err != nil {
		log.Error("sandbox hardening", "error", err)
		return 1
	}
	// Without its TLS material the child does not serve: the socket is
	// never open to a caller that cannot prove it is the host.
	tlsConfig, err := cc.TLS.serverConfig()
	if err != nil {
		log.Error("sandbox TLS", "error", err)
		return 1
	}
	srv := &server{cc: &cc, layers: layers, log: log, opts: opts}
	if !cc.Build {
		srv.openEarly()
	}
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig: handshake(),
		Plugins:         plugin.PluginSet{pluginName: &grpcPlugin{server: srv}},
		GRPCServer:      srv.grpcServer,
		TLSProvider:     func() (*tls.Config, error) { return tlsConfig, nil },
		Logger:          hclog.New(&hclog.LoggerOptions{Output: io.Discard, Level: hclog.Off}),
	})
	return 0
}

// server runs jobs in the child.
type server struct {
	cc     *childConfig
	layers []string
	log    *slog.Logger
	opts   ServeOptions

	// policyOnce stacks the job's seccomp policy (loadJobPolicy) once the
	// plugin's listener exists; policyErr refuses every job if it failed.
	policyOnce sync.Once
	policyErr  error

	mu sync.Mutex
	// early delivers the data opened while the handshake completed
	// (openEarly), to the first job only; stopWarm interrupts a pooled
	// child's warming when the job arrives.
	early    chan openResult
	stopWarm context.CancelFunc
}

type openResult struct {
	ldb *lockedDB
	// locked: ldb is locked down with the child's configured views.
	locked bool
	err    error
}

// openEarly starts opening the data file (openData: read-only, external
// access off) in the background and locks it down with the runner's views
// (childConfig.Views), so that DuckDB's start overlaps the plugin handshake
// and the host's dial, or for a pooled child the wait for its job, instead
// of following them. The process is already hardened; no job is known yet.
// The lock-down serves a job whose catalog gives the same views (open);
// warming (a pooled child) runs after it, on the locked-down connection.
func (s *server) openEarly() {
	ch := make(chan openResult, 1)
	ctx, cancel := context.WithCancel(context.Background())
	s.early, s.stopWarm = ch, cancel
	go func() {
		ldb, err := openData(context.Background(), s.cc)
		locked := false
		if err == nil && len(s.cc.Views) > 0 {
			if err = ldb.lockDown(context.Background(), s.cc, s.cc.Views); err != nil {
				ldb.Close()
				ldb = nil
			}
			locked = err == nil
		}
		if err == nil && s.cc.WarmBytes > 0 {
			outcome := "ok\n"
			if werr := ldb.warm(ctx, s.cc.WarmBytes); werr != nil {
				// A cold buffer pool is slower, never wrong. DuckDB's
				// errors by class only, as everywhere in the child.
				var de *duckdb.Error
				if errors.As(werr, &de) {
					s.log.Warn("sandbox: warming stopped", "duckdb_error", safeTypeName(de.Type))
				} else {
					s.log.Warn("sandbox: warming stopped", "error", werr)
				}
				outcome = "stopped\n"
			}
			_ = os.WriteFile(filepath.Join(s.cc.JobDir, warmMarker), []byte(outcome), 0o600)
		}
		ch <- openResult{ldb: ldb, locked: locked, err: err}
	}()
}

// open returns the job's locked-down data: the early-opened database for
// the first job, a fresh one otherwise.
func (s *server) open(ctx context.Context, views []string) (*lockedDB, error) {
	s.mu.Lock()
	early := s.early
	s.early = nil
	s.mu.Unlock()
	if s.stopWarm != nil {
		s.stopWarm()
	}
	if early == nil {
		return openLocked(ctx, s.cc, views)
	}
	var o openResult
	select {
	case o = <-early:
	case <-ctx.Done():
		go func() {
			if o := <-early; o.ldb != nil {
				o.ldb.Close()
			}
		}()
		return nil, ctx.Err()
	}
	if o.err != nil {
		return nil, o.err
	}
	if s.cc.WarmBytes > 0 {
		// The job frees memory as in a fresh child (warm.go): a pooled
		// one was started with decay off to keep its warm pages.
		if err := setAllocatorDecay(duckdbDecayMS); err != nil {
			s.log.Warn("sandbox: allocator decay", "error", err)
		}
	}
	switch {
	case o.locked && slices.Equal(views, s.cc.Views):
		// Locked down with these views while the child waited.
	case o.locked:
		// Another catalog than the runner's: never views of two catalogs
		// on one connection; a fresh database for this one.
		o.ldb.Close()
		return openLocked(ctx, s.cc, views)
	default:
		if err := o.ldb.lockDown(ctx, s.cc, views); err != nil {
			o.ldb.Close()
			return nil, err
		}
	}
	return o.ldb, nil
}

func (s *server) run(ctx context.Context, in []byte, send func(frame) error) error {
	resp, ldb, err := s.handle(ctx, in)
	if ldb != nil {
		// Closing DuckDB frees its buffer pool and joins its threads: 4-17
		// ms at 1M patients that the answer need not wait for. The host
		// kills the process once it has the answer; nothing is written.
		defer ldb.Close()
	}
	if err != nil {
		e := s.safe(ctx, err)
		return send(frame{Error: &wireError{Code: e.Code, Message: e.Message}})
	}
	return sendResponse(resp, send)
}

// safe turns any error into a coded one; the original goes to the site log
// (the child's stderr, which the agent logs locally) and nowhere else. A
// DuckDB error is logged by class only: its message can quote data values
// ("Could not convert string '…' to INT32"), and patient values are never
// logged, not even on site.
func (s *server) safe(ctx context.Context, err error) *job.Error {
	var e *job.Error
	if errors.As(err, &e) {
		return e
	}
	e = classify(ctx, err)
	var de *duckdb.Error
	if errors.As(err, &de) {
		s.log.Warn("sandbox job failed", "code", e.Code, "duckdb_error", safeTypeName(de.Type))
		return e
	}
	s.log.Warn("sandbox job failed", "code", e.Code, "error", err)
	return e
}

// handle runs one job. It also returns the DuckDB database it opened, if
// any, for run to close once the response has been sent.
func (s *server) handle(ctx context.Context, in []byte) (*response, *lockedDB, error) {
	var req request
	if err := json.Unmarshal(in, &req); err != nil {
		return nil, nil, job.Errorf(job.CodeInvalid, "malformed job")
	}
	if (req.Raw && s.opts.runRaw == nil) || (req.Probe && s.opts.probe == nil) || (req.TestNoise != 0 && s.opts.testNoise == nil) {
		return nil, nil, job.Errorf(job.CodeRefused, "test hooks are not available in this build")
	}
	if queries.SQLHash(req.SQL) != req.SQLHash {
		return nil, nil, job.Errorf(job.CodeInvalid, "the SQL does not match its hash")
	}
	if req.Catalog == nil {
		return nil, nil, job.Errorf(job.CodeInvalid, "the job has no catalog")
	}
	s.loadJobPolicy()
	if s.policyErr != nil {
		return nil, nil, fmt.Errorf("job seccomp policy: %w", s.policyErr)
	}
	if s.cc.Build {
		return s.handleBuild(ctx, &req)
	}
	views, err := viewStatements(req.Catalog)
	if err != nil {
		return nil, nil, err
	}
	ldb, err := s.open(ctx, views)
	if err != nil {
		if ctx.Err() != nil {
			return nil, nil, err
		}
		// Opening and locking down the site's own file runs none of the
		// researcher's SQL, so a failure here is the site's (a leftover WAL,
		// a damaged or replaced file), not a refusal of the query. The
		// detail goes to the site log, by class only.
		s.safe(ctx, err)
		return nil, nil, job.Errorf(job.CodeUnavailable, "the site's data could not be opened")
	}
	resp, err := s.runJob(ctx, &req, ldb)
	return resp, ldb, err
}

// handleBuild runs a builder child's one job: the release snapshot of the
// data file (snapshot.go).
func (s *server) handleBuild(ctx context.Context, req *request) (*response, *lockedDB, error) {
	if req.Raw || req.Probe || req.SQL != "" {
		return nil, nil, job.Errorf(job.CodeInvalid, "a snapshot builder runs no query")
	}
	// It runs no researcher SQL, so DuckDB's lock-down is not among the
	// layers it needs; the OS layers are.
	layers := slices.Clone(s.layers)
	if missing := missingChildLayers(append(slices.Clone(layers), LayerDuckDBLockdown)); len(missing) > 0 && !s.cc.AllowWeak {
		return nil, nil, job.Errorf(job.CodeUnavailable, "isolation layers unavailable: %v", missing)
	}
	built, err := s.build(ctx, req.Catalog)
	if err != nil {
		return nil, nil, err
	}
	return &response{Layers: layers, Snapshot: built}, nil, nil
}

// runJob runs req on the open, locked-down release snapshot.
func (s *server) runJob(ctx context.Context, req *request, ldb *lockedDB) (*response, error) {
	layers := append(slices.Clone(s.layers), LayerDuckDBLockdown)
	if missing := missingChildLayers(layers); len(missing) > 0 && !s.cc.AllowWeak {
		return nil, job.Errorf(job.CodeUnavailable, "isolation layers unavailable: %v", missing)
	}
	resp := &response{Layers: layers}
	switch {
	case req.Probe:
		resp.Probes = s.opts.probe(s.cc)
	case req.Raw:
		out, err := s.opts.runRaw(ctx, ldb, req.SQL, s.cc.MaxRows)
		if err != nil {
			return nil, err
		}
		resp.Raw = out
	default:
		// The snapshot's opt-out hash, read before any of the query runs:
		// the report names the opt-out list of the file this job read.
		hash, err := readSnapshotHash(ctx, ldb)
		if err != nil {
			s.safe(ctx, err)
			return nil, job.Errorf(job.CodeUnavailable, "the site's release snapshot could not be read")
		}
		var nz noise.Noise
		if req.TestNoise != 0 {
			nz = s.opts.testNoise(req.TestNoise)
		}
		res, part, err := execute(ctx, ldb, req, s.cc, nz)
		if err != nil {
			return nil, err
		}
		optOut := dp.OptOutReport{Applied: true, Table: req.Catalog.Policy.OptOutTable, SnapshotHash: hash}
		if part != nil {
			part.OptOut = optOut
			resp.Partial = part
		} else {
			res.Report.OptOut = optOut
			resp.Result = res
		}
		if req.DryRun {
			if resp.Absent, err = absentCodes(ctx, ldb, req.Catalog); err != nil {
				return nil, err
			}
		}
	}
	return resp, nil
}

// missingChildLayers lists the layers the child itself must have applied.
func missingChildLayers(have []string) []string {
	var missing []string
	for _, l := range []string{LayerNoNewPrivs, LayerNotDumpable, LayerRlimits, LayerSeccomp, LayerLandlock, LayerDuckDBLockdown} {
		if !slices.Contains(have, l) {
			missing = append(missing, l)
		}
	}
	return missing
}

// maxJobBytes caps the job message the child accepts: a job carries its
// codelists' codes (up to 100,000 codes each), well past gRPC's default
// 4 MiB.
const maxJobBytes = 64 << 20

// loadJobPolicy stacks the job's seccomp policy, once.
func (s *server) loadJobPolicy() {
	s.policyOnce.Do(func() { s.policyErr = loadJobPolicy() })
}

// grpcServer is plugin.DefaultGRPCServer accepting jobs up to maxJobBytes.
// go-plugin calls it once its listener exists and before it serves, the
// first moment the job's seccomp policy (no new sockets) can go on: from
// then on, not on the job's critical path. handle checks it took.
func (s *server) grpcServer(opts []grpc.ServerOption) *grpc.Server {
	s.loadJobPolicy()
	return plugin.DefaultGRPCServer(append(opts, grpc.MaxRecvMsgSize(maxJobBytes)))
}
