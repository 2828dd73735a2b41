package main

import (
	"errors"
	"fmt"
	"net"
	"time"
)

// ServeConfig configures `tre serve`, the broker.
type ServeConfig struct {
	DataDir     string `yaml:"data_dir" flag:"data-dir" usage:"directory for the SQLite store and the dev signing key"`
	Addr        string `yaml:"addr" flag:"addr" usage:"HTTP(S) listen address"`
	AdminAddr   string `yaml:"admin_addr" flag:"admin-addr" usage:"listen address for /metrics (empty: no metrics listener)"`
	DatabaseURL string `yaml:"database_url" flag:"database-url" usage:"PostgreSQL URL (empty: SQLite in --data-dir)" secret:"true"`
	Dev         bool   `yaml:"dev" flag:"dev" usage:"development mode: accept HS256 tokens signed with DIR/dev-signing.key"`

	Issuer          string   `yaml:"jwt_issuer" flag:"jwt-issuer" usage:"required iss claim"`
	Audience        string   `yaml:"jwt_audience" flag:"jwt-audience" usage:"required aud claim"`
	PublicKeyFiles  []string `yaml:"jwt_public_keys" flag:"jwt-public-key" usage:"PEM public key files (EdDSA, ES256, RS256), comma-separated"`
	JWKSFile        string   `yaml:"jwks_file" flag:"jwks-file" usage:"JWKS document file"`
	JWKSURL         string   `yaml:"jwks_url" flag:"jwks-url" usage:"JWKS document URL (refreshed)"`
	RolesClaim      string   `yaml:"roles_claim" flag:"roles-claim" usage:"path of the roles claim, e.g. realm_access.roles"`
	SiteClaim       string   `yaml:"site_claim" flag:"site-claim" usage:"path of the claim naming the site an agent token acts for"`
	SubmitPerMinute int      `yaml:"submit_per_minute" flag:"submit-per-minute" usage:"query submissions allowed per user per minute"`

	AuthFailureWindow time.Duration `yaml:"auth_failure_window" flag:"auth-failure-window" usage:"failed authentications from one address are recorded as one audit entry per window"`

	LeaseTTL    time.Duration `yaml:"lease_ttl" flag:"lease-ttl" usage:"how long a site agent's job lease lasts without a heartbeat"`
	MaxAttempts int           `yaml:"max_attempts" flag:"max-attempts" usage:"leases a run gets (after lost leases or crashes) before its failure goes to the output check"`
	// FederationDeadline is how long a federated query may take, from its
	// approval, before it fails as a whole (issue 21).
	FederationDeadline time.Duration `yaml:"federation_deadline" flag:"federation-deadline" usage:"how long after approval a query over a dataset several sites hold may run before it fails as a whole"`
	// TimeGranularity is how coarse researchers' view of time is: the
	// statuses of their queries change, and are dated, only at multiples
	// of it, so that they cannot time a run.
	TimeGranularity time.Duration `yaml:"researcher_time_granularity" flag:"researcher-time-granularity" usage:"researchers see status changes, and their times, only at multiples of this (hides how long runs take)"`
	// RunHold delays what researchers see of a run's end to at least this
	// long after its start: runs shorter than it all look alike.
	RunHold time.Duration `yaml:"researcher_run_hold" flag:"researcher-run-hold" usage:"researchers see a run end no sooner than this after it started (0: off; the sites' job_timeout hides run durations entirely)"`

	DryRunData    string `yaml:"dry_run_data" flag:"dry-run-data" usage:"synthetic DuckDB file answering dry runs (empty: dry runs off)"`
	DryRunCatalog string `yaml:"dry_run_catalog" flag:"dry-run-catalog" usage:"catalog of the dry-run data (default: DATA with .catalog.yaml)"`
	DryRunMax     int    `yaml:"dry_run_max" flag:"dry-run-max" usage:"dry runs (sandbox processes) at once on this broker; more are refused with 429"`
	DryRunPerUser int    `yaml:"dry_run_per_user" flag:"dry-run-per-user" usage:"dry runs one user may have running at once; more are refused with 429"`
	DryRunMemory  string `yaml:"dry_run_memory_limit" flag:"dry-run-memory-limit" usage:"memory limit of a dry run's sandbox (DuckDB gets a quarter less), e.g. 256MB"`
	DryRunTemp    string `yaml:"dry_run_temp_limit" flag:"dry-run-temp-limit" usage:"temporary disk a dry run's sandbox may spill to, e.g. 256MB"`

	TLSCert     string `yaml:"tls_cert" flag:"tls-cert" usage:"TLS certificate file (PEM)"`
	TLSKey      string `yaml:"tls_key" flag:"tls-key" usage:"TLS private key file (PEM)" secret:"true"`
	TLSClientCA string `yaml:"tls_client_ca" flag:"tls-client-ca" usage:"CA file: require client certificates (mutual TLS) signed by it"`
	BehindProxy bool   `yaml:"behind_tls_proxy" flag:"behind-tls-proxy" usage:"allow plain HTTP on a non-loopback address because a TLS-terminating proxy is in front"`
	LogLevel    string `yaml:"log_level" flag:"log-level" usage:"debug, info, warn or error"`

	ReadHeaderTimeout time.Duration `yaml:"read_header_timeout" flag:"read-header-timeout" usage:"time a client has to send its request headers"`
	ReadTimeout       time.Duration `yaml:"read_timeout" flag:"read-timeout" usage:"time a client has to send a whole request"`
	WriteTimeout      time.Duration `yaml:"write_timeout" flag:"write-timeout" usage:"time to write a response (result downloads included)"`
	// ShutdownDelay keeps a stopping broker serving, with /readyz
	// answering 503, so that a load balancer takes it out of rotation
	// before its listener closes (a rolling restart of replicas).
	ShutdownDelay time.Duration `yaml:"shutdown_delay" flag:"shutdown-delay" usage:"on SIGTERM, keep serving this long with /readyz answering 503 before closing, so a load balancer stops sending requests first (0: close at once)"`

	AllowWeakSBX bool `yaml:"allow_weak_sandbox" flag:"allow-weak-sandbox" usage:"run dry runs in a sandbox missing isolation layers (reported)"`

	// GCPercent is the Go garbage collector's target, as GOGC: the heap
	// may grow by this percentage of the live heap before a collection.
	// The broker's live heap is a few MB and every request allocates, so
	// at Go's default of 100 it collects every few hundred requests; 400
	// spends tens of MB to save about a fifth of a read's CPU
	// (BENCHMARKS.md, issue 24). A GOGC in the environment wins.
	GCPercent int `yaml:"gc_percent" flag:"gc-percent" usage:"Go garbage collector target, as GOGC (ignored when GOGC is set)"`
}

// DefaultServeConfig returns the broker defaults.
func DefaultServeConfig() ServeConfig {
	return ServeConfig{
		Addr:               "127.0.0.1:8080",
		RolesClaim:         "roles",
		SiteClaim:          "site",
		SubmitPerMinute:    60,
		LeaseTTL:           2 * time.Minute,
		MaxAttempts:        3,
		FederationDeadline: 30 * time.Minute,
		TimeGranularity:    time.Minute,
		LogLevel:           "info",

		AuthFailureWindow: time.Minute,

		DryRunMax:     2,
		DryRunPerUser: 1,
		DryRunMemory:  "256MB",
		DryRunTemp:    "256MB",

		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       60 * time.Second,
		WriteTimeout:      5 * time.Minute,

		GCPercent: 400,
	}
}

// Validate reports the first problem with c.
func (c *ServeConfig) Validate() error {
	switch {
	case c.DataDir == "" && c.DatabaseURL == "":
		return errors.New("data_dir is required (or database_url for PostgreSQL)")
	case c.DataDir == "" && c.Dev:
		return errors.New("--dev needs --data-dir for the signing key")
	case c.Addr == "":
		return errors.New("addr is required")
	case !c.Dev && len(c.PublicKeyFiles) == 0 && c.JWKSFile == "" && c.JWKSURL == "":
		return errors.New("no token verification keys: set jwt_public_keys, jwks_file or jwks_url (or --dev for development)")
	case (c.TLSCert == "") != (c.TLSKey == ""):
		return errors.New("tls_cert and tls_key go together")
	case c.TLSClientCA != "" && c.TLSCert == "":
		return errors.New("tls_client_ca needs tls_cert and tls_key")
	case c.LeaseTTL < time.Second:
		return fmt.Errorf("lease_ttl %s is too short", c.LeaseTTL)
	case c.MaxAttempts < 1:
		return errors.New("max_attempts must be at least 1")
	case c.FederationDeadline < time.Second || c.FederationDeadline > 7*24*time.Hour:
		return fmt.Errorf("federation_deadline %s must be between 1s and 168h", c.FederationDeadline)
	case c.TimeGranularity < time.Millisecond || c.TimeGranularity > 24*time.Hour:
		return fmt.Errorf("researcher_time_granularity %s must be between 1ms and 24h", c.TimeGranularity)
	case c.RunHold < 0 || c.RunHold > 24*time.Hour:
		return fmt.Errorf("researcher_run_hold %s must be between 0 and 24h", c.RunHold)
	case c.SubmitPerMinute < 1:
		return errors.New("submit_per_minute must be at least 1")
	case c.DryRunMax < 1 || c.DryRunPerUser < 1:
		return errors.New("dry_run_max and dry_run_per_user must be at least 1")
	case c.DryRunPerUser > c.DryRunMax:
		return fmt.Errorf("dry_run_per_user %d is above dry_run_max %d", c.DryRunPerUser, c.DryRunMax)
	case c.AuthFailureWindow < time.Second:
		return fmt.Errorf("auth_failure_window %s is too short", c.AuthFailureWindow)
	case c.ShutdownDelay < 0 || c.ShutdownDelay > 5*time.Minute:
		return fmt.Errorf("shutdown_delay %s must be between 0 and 5m", c.ShutdownDelay)
	case c.GCPercent < 50 || c.GCPercent > 2000:
		return fmt.Errorf("gc_percent %d must be between 50 and 2000", c.GCPercent)
	case c.ReadHeaderTimeout <= 0 || c.ReadTimeout <= 0 || c.WriteTimeout <= 0:
		return errors.New("read_header_timeout, read_timeout and write_timeout must be positive: a client must not hold a connection forever")
	}
	for _, f := range []struct{ key, value string }{{"dry_run_memory_limit", c.DryRunMemory}, {"dry_run_temp_limit", c.DryRunTemp}} {
		if _, err := parseByteSize(f.value); err != nil {
			return fmt.Errorf("%s: %w", f.key, err)
		}
	}
	if c.TLSCert == "" && !c.BehindProxy && !isLoopback(c.Addr) {
		return fmt.Errorf("refusing plain HTTP on %s: set tls_cert and tls_key, or behind_tls_proxy if a TLS-terminating proxy is in front", c.Addr)
	}
	return validLogLevel(c.LogLevel)
}

// AgentConfig configures `tre agent`, the site agent.
type AgentConfig struct {
	Broker      string        `yaml:"broker" flag:"broker" usage:"broker base URL"`
	SiteID      string        `yaml:"site_id" flag:"site-id" usage:"this site's identifier"`
	TokenFile   string        `yaml:"token_file" flag:"token-file" usage:"file holding the agent's bearer token"`
	Data        string        `yaml:"data" flag:"data" usage:"the site's DuckDB data file (opened read-only)"`
	Catalog     string        `yaml:"catalog" flag:"catalog" usage:"the dataset catalog (YAML)"`
	ScratchDir  string        `yaml:"scratch_dir" flag:"scratch-dir" usage:"directory for per-job scratch space and the release snapshot of the data (default: one per data file under $XDG_CACHE_HOME/tre/agent)"`
	Parallelism int           `yaml:"parallelism" flag:"parallelism" usage:"jobs run at once"`
	MemoryLimit string        `yaml:"memory_limit" flag:"memory-limit" usage:"memory limit of a job's sandbox child (DuckDB gets it less a quarter, at most 384 MiB), e.g. 2GiB or 1500MB"`
	Threads     int           `yaml:"threads" flag:"threads" usage:"DuckDB threads per job"`
	Timeout     time.Duration `yaml:"job_timeout" flag:"job-timeout" usage:"per-job time limit"`
	Snapshot    time.Duration `yaml:"snapshot_timeout" flag:"snapshot-timeout" usage:"time limit for building the release snapshot of a data version (once per version, before its first job; about a minute per million patients on 2 cores)"`
	SandboxPool int           `yaml:"sandbox_pool" flag:"sandbox-pool" usage:"sandbox children started ahead of the jobs, each used for one job only (0: none; their idle memory is capped at 1 GiB in all)"`
	Poll        time.Duration `yaml:"poll_interval" flag:"poll-interval" usage:"how often to ask for work when idle"`
	Report      time.Duration `yaml:"report_timeout" flag:"report-timeout" usage:"how long a finished job's result is retried through a broker outage before it is dropped (the job's lease then runs out and the broker leases it again, or fails a federated query at its deadline)"`
	CAFile      string        `yaml:"ca_file" flag:"ca-file" usage:"CA bundle for the broker's certificate"`
	ClientCert  string        `yaml:"client_cert" flag:"client-cert" usage:"client certificate for mutual TLS"`
	ClientKey   string        `yaml:"client_key" flag:"client-key" usage:"client key for mutual TLS" secret:"true"`
	AllowWeak   bool          `yaml:"allow_weak_sandbox" flag:"allow-weak-sandbox" usage:"run even when an isolation layer is unavailable (reported in every disclosure report)"`
	LogLevel    string        `yaml:"log_level" flag:"log-level" usage:"debug, info, warn or error"`
	AdminAddr   string        `yaml:"admin_addr" flag:"admin-addr" usage:"loopback listen address for /metrics (sandbox starts, kills, durations); empty: none"`
}

// DefaultAgentConfig returns the agent defaults.
func DefaultAgentConfig() AgentConfig {
	return AgentConfig{
		Parallelism: 1,
		MemoryLimit: "2GiB",
		Threads:     2,
		Timeout:     5 * time.Minute,
		Snapshot:    30 * time.Minute,
		SandboxPool: 1,
		Poll:        2 * time.Second,
		Report:      30 * time.Second,
		LogLevel:    "info",
	}
}

// Validate reports the first problem with c.
func (c *AgentConfig) Validate() error {
	switch {
	case c.Broker == "":
		return errors.New("broker is required")
	case c.SiteID == "":
		return errors.New("site_id is required")
	case c.TokenFile == "":
		return errors.New("token_file is required")
	case c.Data == "":
		return errors.New("data is required")
	case c.Catalog == "":
		return errors.New("catalog is required")
	case c.Parallelism < 1:
		return errors.New("parallelism must be at least 1")
	case c.Threads < 1:
		return errors.New("threads must be at least 1")
	case c.SandboxPool < 0 || c.SandboxPool > 64:
		return fmt.Errorf("sandbox_pool %d: want 0 to 64", c.SandboxPool)
	case c.Timeout < time.Second:
		return fmt.Errorf("job_timeout %s is too short", c.Timeout)
	case c.Snapshot < time.Minute:
		return fmt.Errorf("snapshot_timeout %s is too short (building a snapshot reads the whole data file)", c.Snapshot)
	case c.Poll <= 0:
		return errors.New("poll_interval must be positive")
	case c.Report < time.Second:
		return fmt.Errorf("report_timeout %s is too short", c.Report)
	case (c.ClientCert == "") != (c.ClientKey == ""):
		return errors.New("client_cert and client_key go together")
	case c.AdminAddr != "" && !isLoopback(c.AdminAddr):
		return fmt.Errorf("admin_addr %s: the agent listens on loopback only (nothing at the site may be reachable from outside)", c.AdminAddr)
	}
	return validLogLevel(c.LogLevel)
}

func validLogLevel(s string) error {
	switch s {
	case "debug", "info", "warn", "error":
		return nil
	}
	return fmt.Errorf("log_level %q: want debug, info, warn or error", s)
}

// isLoopback reports whether addr (host:port) listens only on loopback.
func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
