package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime/pprof"
	"strings"
	"time"

	"github.com/nhs-tre/tre/api/auth"
	"github.com/nhs-tre/tre/bench"
	"github.com/nhs-tre/tre/broker"
	"github.com/nhs-tre/tre/broker/sqlstore"
	"github.com/nhs-tre/tre/cli"
	"github.com/nhs-tre/tre/sandbox"
)

// BenchMain is `tre bench`: the flags of package bench's harness, and the
// broker its API phases drive, started as `tre serve --dev` starts one.
type BenchMain struct {
	stdout, stderr io.Writer
	cfg            bench.Config
	cpuProfile     string
}

func newBenchMain(stdout, stderr io.Writer) cli.Command {
	return &BenchMain{stdout: stdout, stderr: stderr, cfg: bench.DefaultConfig()}
}

// ParseFlags reads the benchmark's size and repetition flags.
func (m *BenchMain) ParseFlags(ctx context.Context, args []string) error {
	c := &m.cfg
	fs := cli.NewFlagSet("bench", m.stderr)
	fs.IntVar(&c.Patients, "patients", 0, "patients to generate (required unless --data)")
	fs.StringVar(&c.Data, "data", "", "reuse this DuckDB file written by tre synth instead of generating one")
	fs.StringVar(&c.Catalog, "catalog", "", "catalog of --data (default: DATA with .catalog.yaml)")
	fs.StringVar(&c.Postgres, "postgres", "", "PostgreSQL URL: also load the rows with COPY into a fresh schema and run the aggregates there, and benchmark the broker on PostgreSQL (the schemas are dropped afterwards)")
	fs.StringVar(&c.Out, "out", "", "also write the Markdown report to this file")
	fs.IntVar(&c.Reps, "reps", c.Reps, "measured repetitions of each query")
	fs.IntVar(&c.Warmup, "warmup", c.Warmup, "unmeasured warm-up runs of each query")
	fs.IntVar(&c.Starts, "starts", c.Starts, "sandbox starts to time")
	fs.IntVar(&c.Submissions, "submissions", c.Submissions, "query submissions to send to each broker store")
	fs.IntVar(&c.Reads, "reads", c.Reads, "query reads to send to each broker store")
	fs.IntVar(&c.Clients, "clients", c.Clients, "concurrent API clients of the load generator")
	fs.IntVar(&c.Replicas, "replicas", c.Replicas, "with --postgres, also measure this many brokers on one PostgreSQL database, the clients spread over them")
	fs.DurationVar(&c.LoadCap, "load-time-cap", c.LoadCap, "time cap of each API load phase")
	fs.Int64Var(&c.Seed, "seed", c.Seed, "synth seed")
	fs.DurationVar(&c.PoolIdle, "pool-idle", 0, "wait this long after the pool's child has warmed before each pooled run, as a job arriving after a pause (0: run at once)")
	fs.DurationVar(&c.SnapshotTimeout, "snapshot-timeout", sandbox.DefaultConfig().SnapshotTimeout, "time limit for building the release snapshot of the data (about a minute per million patients on 2 cores; raise it above ~20M)")
	memLimit := fs.String("memory-limit", "", "each sandbox child's memory limit, as a site's memory_limit (e.g. 1GB; DuckDB gets it less a quarter, at most 384 MiB, and so do the raw and warm runs); default 2 GiB, the sandbox's")
	fs.BoolVar(&c.AllowWeak, "allow-weak-sandbox", false, "run sandboxes even if an isolation layer is unavailable (reported)")
	fs.BoolVar(&c.Keep, "keep", false, "keep the generated data directory")
	fs.BoolVar(&c.APIOnly, "api-only", false, "run only the broker API phases (needs --data or --catalog for the dataset's catalog; no synth, queries or sandbox)")
	fs.StringVar(&m.cpuProfile, "cpuprofile", "", "write a Go CPU profile of this process (broker, load generator, in-process queries; not the sandbox children) to this file, for go tool pprof")
	projects := fs.String("api-projects", "shared", "the API clients submit to one shared project (shared) or each to its own (per-client)")
	fs.IntVar(&c.Federated, "federated", 0, "instead of the other phases, measure the typical queries federated over this many sites (2-8; issue 21): each site's own protected run, then the query through a real broker and one sandbox per site over the same data, with the broker's combine and store timed")
	fs.StringVar(&c.Explain, "explain", "", "instead of benchmarking, print DuckDB's EXPLAIN ANALYZE of the raw and the rewritten SQL of this typical query (\"all\": every one)")
	fs.Usage = func() {
		fmt.Fprintln(m.stderr, "Usage: tre bench --patients N [--data FILE] [--postgres URL] [--out report.md] [--reps R] [--warmup W]")
		fmt.Fprintln(m.stderr)
		fmt.Fprintln(m.stderr, "Measures the typical research queries raw (DuckDB) vs protected (sandbox, cold and warm),")
		fmt.Fprintln(m.stderr, "PostgreSQL, sandbox start, broker API throughput and synth, and prints a Markdown report.")
		fmt.Fprintln(m.stderr)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := cli.NoArgs(fs); err != nil {
		return err
	}
	if *projects != "shared" && *projects != "per-client" {
		return fmt.Errorf("--api-projects %q: want shared or per-client", *projects)
	}
	c.PerClient = *projects == "per-client"
	if *memLimit != "" {
		n, err := parseByteSize(*memLimit)
		if err != nil {
			return fmt.Errorf("--memory-limit: %w", err)
		}
		if n < 64<<20 {
			return fmt.Errorf("--memory-limit %s: below 64 MiB, no job can run", *memLimit)
		}
		c.MemoryLimit = n
	}
	c.Command = "tre bench " + strings.Join(args, " ")
	c.Stdout, c.Stderr, c.Terminal = m.stdout, m.stderr, isTerminal(m.stderr)
	c.Now = time.Now
	c.StartBroker = startBenchBroker
	return c.Validate()
}

// Run runs the benchmark, under the CPU profiler with --cpuprofile.
func (m *BenchMain) Run(ctx context.Context) error {
	if m.cpuProfile == "" {
		return bench.Run(ctx, m.cfg)
	}
	f, err := os.Create(m.cpuProfile)
	if err != nil {
		return fmt.Errorf("cpu profile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return fmt.Errorf("cpu profile: %w", err)
	}
	runErr := bench.Run(ctx, m.cfg)
	pprof.StopCPUProfile()
	if err := f.Close(); err != nil && runErr == nil {
		runErr = fmt.Errorf("cpu profile: %w", err)
	}
	return runErr
}

// Close releases nothing: bench.Run removes its temporary directory itself.
func (m *BenchMain) Close() error { return nil }

// benchBroker is a broker started with the `tre serve --dev` wiring for the
// benchmark's API phases.
type benchBroker struct {
	*brokerRuntime
	key []byte
}

// startBenchBroker starts a development broker on loopback, its files in
// dir and its tables in databaseURL (SQLite in dir when "").
func startBenchBroker(ctx context.Context, dir, databaseURL string) (bench.Broker, error) {
	cfg := DefaultServeConfig()
	cfg.DataDir = dir
	cfg.DatabaseURL = databaseURL
	cfg.Addr = "127.0.0.1:0"
	cfg.Dev = true
	cfg.LogLevel = "error"
	// The per-user submission limit would measure the limiter, not the
	// broker; it stays on the path with a rate no benchmark reaches.
	cfg.SubmitPerMinute = 1 << 30
	b, err := startBroker(ctx, cfg, slog.New(slog.DiscardHandler), nil)
	if err != nil {
		return nil, err
	}
	key, err := auth.LoadOrCreateDevKey(cfg.DataDir)
	if err != nil {
		b.Close()
		return nil, err
	}
	return &benchBroker{brokerRuntime: b, key: key}, nil
}

func (b *benchBroker) Token(subject string, role broker.Role, site string) (string, error) {
	if (role == broker.RoleAgent) != (site != "") {
		return "", errors.New("an agent's token, and only an agent's, names a site")
	}
	return auth.MintDevToken(b.key, auth.DevClaims{Subject: subject, Name: subject, Org: "Benchmark", Roles: []broker.Role{role}, Site: site, TTL: 2 * time.Hour})
}

// GroupCommits reads the store's group commit counters (the SQL stores
// have them).
func (b *benchBroker) GroupCommits() (groups, writes int64, ok bool) {
	g, ok := b.store.(interface{ GroupStats() sqlstore.GroupStats })
	if !ok {
		return 0, 0, false
	}
	s := g.GroupStats()
	return s.Groups, s.Units, true
}
