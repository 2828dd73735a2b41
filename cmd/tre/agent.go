package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/nhs-tre/tre/api"
	"github.com/nhs-tre/tre/api/metrics"
	"github.com/nhs-tre/tre/broker"
	"github.com/nhs-tre/tre/dp"
	"github.com/nhs-tre/tre/queries"
	"github.com/nhs-tre/tre/sandbox"
)

// AgentMain is `tre agent`: the site agent on NHS premises.
type AgentMain struct {
	Config AgentConfig
	configured
}

func newAgentMain(stdout, stderr io.Writer) command {
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
func newSiteAgent(cfg AgentConfig, logger *slog.Logger, reg *metrics.Registry) (*sandbox.Agent, func(), error) {
	token, err := readTokenFile(cfg.TokenFile)
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
	hc, err := brokerHTTPClient(cfg)
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
	sc.AllowWeak = cfg.AllowWeak
	sc.Logger = logger
	if reg != nil {
		sc.Observe = func(outcome string, d time.Duration) {
			reg.SandboxStarted()
			reg.ObserveSandbox(outcome, d)
			switch outcome {
			case sandbox.CodeTimeout, sandbox.CodeMemory:
				reg.SandboxKilled(outcome)
			}
		}
	}
	runner, err := sandbox.NewRunner(sc)
	if err != nil {
		return nil, nil, err
	}
	cleanup := func() { runner.Close() }
	a, err := sandbox.NewAgent(sandbox.AgentConfig{
		SiteID:       cfg.SiteID,
		Catalog:      cat,
		Broker:       &agentBroker{client: &api.Client{BaseURL: cfg.Broker, Token: token, HTTPClient: hc, AgentVersion: buildVersion()}},
		Runner:       runner,
		Parallelism:  cfg.Parallelism,
		PollInterval: cfg.Poll,
		Logger:       logger,
	})
	if err != nil {
		cleanup()
		return nil, nil, err
	}
	return a, cleanup, nil
}

// brokerHTTPClient trusts cfg.CAFile (if set) and presents the client
// certificate for mutual TLS (if set).
func brokerHTTPClient(cfg AgentConfig) (*http.Client, error) {
	if cfg.CAFile == "" && cfg.ClientCert == "" {
		return &http.Client{Timeout: 60 * time.Second}, nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("ca_file %s holds no PEM certificates", cfg.CAFile)
		}
		tc.RootCAs = pool
	}
	if cfg.ClientCert != "" {
		cert, err := tls.LoadX509KeyPair(cfg.ClientCert, cfg.ClientKey)
		if err != nil {
			return nil, fmt.Errorf("client certificate: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = tc
	return &http.Client{Timeout: 60 * time.Second, Transport: tr}, nil
}

// readTokenFile reads a bearer token, refusing files others can read.
func readTokenFile(path string) (string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("token file: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return "", fmt.Errorf("token file %s is readable by other users (mode %v): chmod 600 it", path, fi.Mode().Perm())
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("token file: %w", err)
	}
	token := strings.TrimSpace(string(data))
	if token == "" {
		return "", fmt.Errorf("token file %s is empty", path)
	}
	return token, nil
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

// agentBroker adapts the HTTP client to the interface the site agent uses.
// The sandbox package never imports the broker or the API: this is the only
// place the two meet.
type agentBroker struct{ client *api.Client }

func (b *agentBroker) PublishCatalog(ctx context.Context, siteID string, cat *queries.Catalog) error {
	return refusal(b.client.PublishCatalog(ctx, siteID, cat))
}

func (b *agentBroker) Lease(ctx context.Context, siteID string) (*sandbox.LeasedJob, error) {
	l, err := b.client.Lease(ctx, siteID)
	if err != nil || l == nil {
		return nil, refusal(err)
	}
	return &sandbox.LeasedJob{
		QueryID:   strconv.FormatInt(l.QueryID, 10),
		Token:     l.Token,
		SQL:       l.SQL,
		SQLHash:   l.SQLHash,
		Dataset:   l.Dataset,
		Epsilon:   l.Epsilon,
		Delta:     l.Delta,
		ExpiresAt: l.ExpiresAt,
	}, nil
}

func (b *agentBroker) Heartbeat(ctx context.Context, job *sandbox.LeasedJob) (time.Time, error) {
	id, err := strconv.ParseInt(job.QueryID, 10, 64)
	if err != nil {
		return time.Time{}, err
	}
	l, err := b.client.Heartbeat(ctx, id, job.Token)
	if err != nil {
		return time.Time{}, leaseError(err)
	}
	return l.ExpiresAt, nil
}

func (b *agentBroker) Complete(ctx context.Context, job *sandbox.LeasedJob, res *dp.Result) error {
	id, err := strconv.ParseInt(job.QueryID, 10, 64)
	if err != nil {
		return err
	}
	return leaseError(b.client.Complete(ctx, id, job.Token, *res))
}

func (b *agentBroker) Fail(ctx context.Context, job *sandbox.LeasedJob, code, message string) error {
	id, err := strconv.ParseInt(job.QueryID, 10, 64)
	if err != nil {
		return err
	}
	return leaseError(b.client.Fail(ctx, id, job.Token, code, message))
}

// leaseError turns the broker's "this lease is not yours any more" (409)
// into the sentinel the agent branches on, and its other refusals into
// sandbox.ErrRefused.
func leaseError(err error) error {
	var ae *api.Error
	if errors.As(err, &ae) && ae.Code == broker.ECONFLICT {
		return fmt.Errorf("%w: %s", sandbox.ErrLeaseLost, ae.Message)
	}
	return refusal(err)
}

// refusal marks the broker's answers that retrying cannot change — a 4xx
// other than a timeout or a rate limit: a token for another site or none,
// an unregistered site, a dataset another site publishes, an expired token
// — as sandbox.ErrRefused, so the agent stops with the broker's reason
// instead of retrying forever. Outages (5xx, network errors) are returned
// as they are and retried.
func refusal(err error) error {
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Status < 400 || ae.Status > 499 ||
		ae.Status == http.StatusRequestTimeout || ae.Status == http.StatusTooManyRequests {
		return err
	}
	return fmt.Errorf("%w (HTTP %d): %s", sandbox.ErrRefused, ae.Status, ae.Message)
}
