package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/nhs-tre/tre/api"
	"github.com/nhs-tre/tre/api/metrics"
	"github.com/nhs-tre/tre/cli"
	"github.com/nhs-tre/tre/job"
	"github.com/nhs-tre/tre/queries"
	"github.com/nhs-tre/tre/sandbox"
	"github.com/nhs-tre/tre/site"
)

// AgentMain is `tre agent`: the site agent on NHS premises.
type AgentMain struct {
	Config AgentConfig
	configured
}

func newAgentMain(stdout, stderr io.Writer) cli.Command {
	return &AgentMain{Config: DefaultAgentConfig(), configured: configured{name: "agent", stdout: stdout, stderr: stderr, getenv: os.Getenv}}
}

// ParseFlags reads the configuration from file, environment and flags.
func (m *AgentMain) ParseFlags(ctx context.Context, args []string) error {
	return m.parse(args, &m.Config)
}

// Run runs the agent until ctx is cancelled (SIGTERM, Ctrl-C).
func (m *AgentMain) Run(ctx context.Context) error {
	if m.printOnly {
		return m.print(&m.Config)
	}
	logger := newLogger(m.stderr, m.Config.LogLevel)
	var reg *metrics.Registry
	if m.Config.AdminAddr != "" {
		reg = metrics.New(metrics.Options{Logger: logger})
		stop, err := serveMetrics(m.Config.AdminAddr, reg, logger)
		if err != nil {
			return err
		}
		defer stop()
	}
	a, cleanup, err := newSiteAgent(m.Config, logger, reg)
	if err != nil {
		return err
	}
	defer cleanup()
	return a.Run(ctx)
}

// Close releases nothing: Run owns the agent's lifetime.
func (m *AgentMain) Close() error { return nil }

// newSiteAgent builds the agent from its configuration: the catalog, the
// sandbox runner and the HTTP client to the broker.
func newSiteAgent(cfg AgentConfig, logger *slog.Logger, reg *metrics.Registry) (*site.Agent, func(), error) {
	token, err := site.ReadTokenFile(cfg.TokenFile)
	if err != nil {
		return nil, nil, err
	}
	cat, err := queries.LoadCatalog(cfg.Catalog)
	if err != nil {
		return nil, nil, err
	}
	mem, err := parseByteSize(cfg.MemoryLimit)
	if err != nil {
		return nil, nil, fmt.Errorf("memory_limit: %w", err)
	}
	scratch := cfg.ScratchDir
	if scratch == "" {
		if scratch, err = defaultScratchDir(os.Getenv, "agent", cfg.Data); err != nil {
			return nil, nil, err
		}
	}
	if err := os.MkdirAll(scratch, 0o700); err != nil {
		return nil, nil, fmt.Errorf("scratch directory: %w", err)
	}
	hc, err := site.HTTPClient(cfg.CAFile, cfg.ClientCert, cfg.ClientKey)
	if err != nil {
		return nil, nil, err
	}

	sc := sandbox.DefaultConfig()
	sc.DataPath = cfg.Data
	sc.Catalog = cat
	sc.ScratchDir = scratch
	sc.MemoryLimit = mem
	sc.Threads = cfg.Threads
	sc.Timeout = cfg.Timeout
	sc.SnapshotTimeout = cfg.Snapshot
	sc.PoolSize = cfg.SandboxPool
	sc.AllowWeak = cfg.AllowWeak
	sc.Logger = logger
	if reg != nil {
		observeSandboxes(&sc, reg)
	}
	runner, err := sandbox.NewRunner(sc)
	if err != nil {
		return nil, nil, err
	}
	cleanup := func() { runner.Close() }
	a, err := site.NewAgent(site.Config{
		SiteID:        cfg.SiteID,
		Catalog:       cat,
		Broker:        &site.Client{API: &api.Client{BaseURL: cfg.Broker, Token: token, HTTPClient: hc, AgentVersion: buildVersion()}},
		Runner:        runner,
		Parallelism:   cfg.Parallelism,
		PollInterval:  cfg.Poll,
		ReportTimeout: cfg.Report,
		Logger:        logger,
	})
	if err != nil {
		cleanup()
		return nil, nil, err
	}
	return a, cleanup, nil
}

// parseByteSize parses sizes like 512MB, 2GB, 1GiB or a plain byte count.
func parseByteSize(s string) (int64, error) {
	t := strings.ToUpper(strings.TrimSpace(s))
	units := []struct {
		suffix string
		mult   int64
	}{{"GIB", 1 << 30}, {"MIB", 1 << 20}, {"KIB", 1 << 10}, {"GB", 1e9}, {"MB", 1e6}, {"KB", 1e3}, {"B", 1}}
	mult := int64(1)
	for _, u := range units {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSpace(strings.TrimSuffix(t, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.ParseFloat(t, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("%q is not a size like 512MB or 2GB", s)
	}
	return int64(n * float64(mult)), nil
}

// observeSandboxes records sc's sandbox processes in reg: starts, run
// times by outcome, kills for time or memory, and each child's peak
// memory (a job's or the release snapshot builder's). The site agent's
// runner and the broker's dry-run runner both.
func observeSandboxes(sc *sandbox.Config, reg *metrics.Registry) {
	sc.Observe = func(outcome string, d time.Duration) {
		reg.SandboxStarted()
		reg.ObserveSandbox(outcome, d)
		switch outcome {
		case job.CodeTimeout, job.CodeMemory:
			reg.SandboxKilled(outcome)
		}
	}
	sc.ObserveChildPeak = reg.ObserveSandboxPeak
}
