// Package sandbox owns everything at an NHS site that touches patient data:
// the go-plugin contract between the site agent and its sandbox child
// process, the OS hardening of that child (namespaces, rlimits,
// no_new_privs, seccomp, Landlock), the DuckDB lock-down, the release
// snapshot, and the execution of a compiled query and its DP protection.
// Runner runs one job.Job at a time per child; the agent that leases jobs
// from the broker is package site.
//
// sandbox must never let exact aggregates, per-patient rows or raw DuckDB
// error text (which can quote data values) leave the child process: only a
// dp.Result and a coded, safe *job.Error cross the process boundary. It
// never trusts SQL rewritten elsewhere: the child compiles the researcher's
// SQL itself against the site's own catalog. It never imports the broker,
// the api or the site packages: it never reaches the network.
package sandbox

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nhs-tre/tre/queries"
)

// Config is how one site runs sandboxes. Zero values take DefaultConfig's.
type Config struct {
	// DataPath is the site's DuckDB file, opened read-only.
	DataPath string
	// Catalog is the site's own catalog; the child compiles against it.
	Catalog *queries.Catalog
	// ScratchDir is a directory owned by the agent; each job gets a fresh
	// subdirectory (DuckDB temp files, the plugin socket) removed afterwards.
	ScratchDir string

	// MemoryLimit is the memory one job's child may hold, bytes. DuckDB's
	// memory_limit is less (DuckDBMemoryLimit): it bounds DuckDB's buffer
	// manager only, and the child holds more than that.
	MemoryLimit        int64
	Threads            int   // DuckDB threads
	MaxExpressionDepth int   // DuckDB max_expression_depth
	TempDirMaxSize     int64 // DuckDB max_temp_directory_size, bytes

	// Timeout bounds one job; KillGrace is how long after it the child is
	// killed with SIGKILL if DuckDB has not stopped at the interrupt.
	// SnapshotTimeout bounds building a release snapshot of the data file
	// (once per version of it, snapshot.go).
	Timeout         time.Duration
	KillGrace       time.Duration
	SnapshotTimeout time.Duration
	// MaxRows and MaxBytes cap the protected result that comes back.
	MaxRows  int
	MaxBytes int64
	// RSSLimit is the resident size at which the host kills the child
	// (a watchdog beside DuckDB's own memory_limit). 0: MemoryLimit + 512 MiB.
	RSSLimit int64

	// AllowWeak lets jobs run when an isolation layer is unavailable on this
	// kernel; every report then says Degraded. Operator flag
	// --allow-weak-sandbox.
	AllowWeak bool

	// Executable is the binary re-executed as the child; "" means
	// /proc/self/exe. Args are the arguments that make it serve the plugin
	// (production: ["__sandbox"]).
	Executable string
	Args       []string

	// PoolSize children are kept started ahead of the jobs, each used for
	// one job only (pool.go); 0 starts every job's child when the job
	// comes. PoolMaxIdleBytes caps the idle children's resident memory
	// (0: DefaultPoolMaxIdleBytes).
	PoolSize         int
	PoolMaxIdleBytes int64

	Logger *slog.Logger

	// Observe, when set, is told how each job ended ("ok" or the error
	// code) and how long its sandbox lived, for the site's metrics.
	Observe func(outcome string, d time.Duration)
	// ObserveJobStart, when set, is told how long a job waited from Run
	// until its request went to its child, and whether that child came
	// from the pool.
	ObserveJobStart func(d time.Duration, pooled bool)
	// ObserveChildPeak, when set, is told the peak resident size of each
	// child (the kernel's VmHWM: its own since its exec), read as its answer
	// or error arrives and before it is killed, and whether it was the
	// release snapshot's builder rather than a job's: how close the site's
	// children come to the memory limit and the RSS watchdog. Not called
	// for a child that had already exited (a killed one).
	ObserveChildPeak func(peak int64, builder bool)
}

// DefaultPoolMaxIdleBytes caps the resident memory of the idle pooled
// children unless PoolMaxIdleBytes says otherwise.
const DefaultPoolMaxIdleBytes = 1 << 30

// DefaultConfig returns the limits a site gets unless it says otherwise.
func DefaultConfig() Config {
	return Config{
		MemoryLimit:        2 << 30,
		Threads:            2,
		MaxExpressionDepth: 250,
		TempDirMaxSize:     4 << 30,
		Timeout:            5 * time.Minute,
		KillGrace:          5 * time.Second,
		SnapshotTimeout:    30 * time.Minute,
		MaxRows:            100_000,
		MaxBytes:           64 << 20,
		Args:               []string{"__sandbox"},
	}
}

// withDefaults fills zero fields from DefaultConfig.
func (c Config) withDefaults() Config {
	d := DefaultConfig()
	if c.MemoryLimit == 0 {
		c.MemoryLimit = d.MemoryLimit
	}
	if c.Threads == 0 {
		c.Threads = d.Threads
	}
	if c.MaxExpressionDepth == 0 {
		c.MaxExpressionDepth = d.MaxExpressionDepth
	}
	if c.TempDirMaxSize == 0 {
		c.TempDirMaxSize = d.TempDirMaxSize
	}
	if c.Timeout == 0 {
		c.Timeout = d.Timeout
	}
	if c.KillGrace == 0 {
		c.KillGrace = d.KillGrace
	}
	if c.SnapshotTimeout == 0 {
		c.SnapshotTimeout = d.SnapshotTimeout
	}
	if c.MaxRows == 0 {
		c.MaxRows = d.MaxRows
	}
	if c.MaxBytes == 0 {
		c.MaxBytes = d.MaxBytes
	}
	if c.PoolMaxIdleBytes == 0 {
		c.PoolMaxIdleBytes = DefaultPoolMaxIdleBytes
	}
	if c.RSSLimit == 0 {
		c.RSSLimit = c.MemoryLimit + 512<<20
	}
	if c.Executable == "" {
		c.Executable = "/proc/self/exe"
	}
	if c.Args == nil {
		c.Args = d.Args
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// duckdbReserve caps the part of a job's memory limit kept outside
// DuckDB's memory_limit (DuckDBMemoryLimit).
const duckdbReserve = 384 << 20

// DuckDBMemoryLimit is the memory_limit a child's DuckDB gets out of a job
// memory limit. DuckDB's limit bounds the blocks of its buffer manager;
// the child also holds memory it does not count: the binary's pages and
// the Go runtime (~60-100 MB), and what DuckDB's allocator (jemalloc) keeps
// of freed blocks until it returns them to the kernel, up to a few hundred
// MB while a query spills at 10M patients (BENCHMARKS.md, "10M run P").
// A quarter of the limit, at most duckdbReserve, is kept for them, so the
// child's resident size stays near the job's limit.
func DuckDBMemoryLimit(limit int64) int64 {
	return limit - min(limit/4, duckdbReserve)
}

// Validate reports the first problem with c, naming the field.
func (c Config) Validate() error {
	switch {
	case c.DataPath == "":
		return errors.New("sandbox config: data path is required")
	case c.Catalog == nil:
		return errors.New("sandbox config: catalog is required")
	case c.ScratchDir == "":
		return errors.New("sandbox config: scratch dir is required")
	case c.MemoryLimit < 16<<20:
		return fmt.Errorf("sandbox config: memory limit %d is below 16 MiB", c.MemoryLimit)
	case c.Threads < 1 || c.Threads > 256:
		return fmt.Errorf("sandbox config: threads %d out of range 1..256", c.Threads)
	case c.MaxExpressionDepth < 10:
		return fmt.Errorf("sandbox config: max expression depth %d is below 10", c.MaxExpressionDepth)
	case c.TempDirMaxSize < 0:
		return errors.New("sandbox config: temp dir max size is negative")
	case c.Timeout <= 0 || c.KillGrace <= 0 || c.SnapshotTimeout <= 0:
		return errors.New("sandbox config: timeout, snapshot timeout and kill grace must be positive")
	case c.MaxRows < 1 || c.MaxBytes < 1024:
		return errors.New("sandbox config: max rows must be ≥ 1 and max bytes ≥ 1024")
	case c.PoolSize < 0 || c.PoolSize > 64 || c.PoolMaxIdleBytes < 0:
		return fmt.Errorf("sandbox config: pool size %d out of range 0..64, or a negative pool memory cap", c.PoolSize)
	}
	return nil
}

// Layer names reported in dp.Report.Sandbox.Layers. Stored values never
// change.
const (
	LayerCleanEnv       = "clean_env"
	LayerPdeathsig      = "pdeathsig"
	LayerUserNamespace  = "user_namespace"
	LayerNetNamespace   = "network_namespace"
	LayerNoNewPrivs     = "no_new_privs"
	LayerNotDumpable    = "not_dumpable"
	LayerRlimits        = "rlimits"
	LayerSeccomp        = "seccomp"
	LayerLandlock       = "landlock"
	LayerDuckDBLockdown = "duckdb_lockdown"
	LayerRSSWatchdog    = "rss_watchdog"
)

// requiredLayers are the layers a run must have unless AllowWeak is set.
func requiredLayers() []string {
	return []string{
		LayerCleanEnv, LayerPdeathsig, LayerUserNamespace, LayerNetNamespace,
		LayerNoNewPrivs, LayerNotDumpable, LayerRlimits, LayerSeccomp,
		LayerLandlock, LayerDuckDBLockdown, LayerRSSWatchdog,
	}
}
