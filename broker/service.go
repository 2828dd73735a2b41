package broker

import (
	"context"
	"crypto/rand"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nhs-tre/tre/queries"
)

// Compiler validates a researcher's SQL against a dataset catalog and plans
// its protected execution. *queries.Parser satisfies it.
type Compiler interface {
	Compile(ctx context.Context, cat *queries.Catalog, sql string, opts queries.Options) (*queries.Plan, error)
}

// Options configures a Service. Zero fields take the defaults below.
type Options struct {
	// Now is the clock; leases and expiry dates are judged by it.
	Now func() time.Time
	// LeaseTTL is how long a lease lasts without a heartbeat (default 2m).
	LeaseTTL time.Duration
	// MaxAttempts is how many leases a job gets before it fails (default 3).
	MaxAttempts int
	// FederationDeadline is how long after its approval a federated query
	// may take before it fails as a whole (default 30m).
	FederationDeadline time.Duration
	// Logger receives internal errors; nil discards them.
	Logger *slog.Logger
	// Rand is the source of lease tokens (default crypto/rand).
	Rand io.Reader
	// WriteTimeout bounds writes that must finish even when the caller's
	// request is cancelled, such as recording a failed authorisation.
	WriteTimeout time.Duration
	// OnTransition, when set, is told of every committed status change (for
	// metrics). It must not block.
	OnTransition func(Transition)
	// Granularity is how coarse researchers' view of time is (default
	// DefaultGranularity): a status change a researcher did not make
	// becomes visible to them only from the next multiple of it, and is
	// dated at that multiple (see researcher.go). Tests and demos may set
	// a shorter one.
	Granularity time.Duration
	// RunHold, when positive, delays what researchers see of a run's end
	// to no earlier than the run's start plus RunHold (rounded up to the
	// granularity): every run that ends within the hold — a fast result, a
	// time-out, a crash — shows the same duration. Set it to the sites'
	// job time limit to hide how long runs take entirely, at the cost of
	// that much latency for every result.
	RunHold time.Duration
	// AuthFailureWindow is how long failed authentications from one source
	// are aggregated into one audit entry (default 1m).
	AuthFailureWindow time.Duration
}

// Transition is one committed status change, as Options.OnTransition is
// told of it.
type Transition struct {
	From, To Status
	// InState is how long the query spent in From.
	InState time.Duration
	// FailureCode is the failure notice's code when a failed run moves to
	// the output check; empty otherwise.
	FailureCode string
	// LeaseExpired says the run's last lease lapsed without a report from
	// the site: the job is leased again, or its last attempt ends.
	LeaseExpired bool
}

// Defaults.
const (
	DefaultLeaseTTL    = 2 * time.Minute
	DefaultMaxAttempts = 3
	// DefaultFederationDeadline is Options.FederationDeadline's default.
	DefaultFederationDeadline = 30 * time.Minute
	DefaultWriteTimeout       = 10 * time.Second
	// MaxSQLBytes is the longest SQL text accepted.
	MaxSQLBytes = 64 << 10
)

// Service is the broker's domain: every rule about who may do what, the
// query state machine, the budget ledger, leases, risk flags and the audit
// chain. Stores only persist.
//
// Its methods live by noun: authz.go (who is calling, denials audited),
// project.go, site.go (registration and catalog publishing), catalog.go
// (the catalog and plan caches), submit.go (checking and submitting
// queries), query.go (reading them), review.go (cancel, approve, reject),
// output.go (the output check and released results), lease.go (site
// agents' jobs), audit.go and register.go; state.go is the state machine
// every transition goes through, duty.go the separation of duties and
// researcher.go what researchers see of time.
type Service struct {
	store        Store
	compiler     Compiler
	now          func() time.Time
	leaseTTL     time.Duration
	maxAttempts  int
	fedDeadline  time.Duration
	log          *slog.Logger
	rand         io.Reader
	writeTimeout time.Duration
	onTransition func(Transition)
	granularity  time.Duration
	runHold      time.Duration
	failures     *authFailures

	mu       sync.Mutex
	catalogs map[string]cachedCatalog // by dataset
	plans    map[planKey]*queries.Plan
	// bucketSweep is when TakeToken last deleted idle buckets.
	bucketSweep time.Time
	// buckets are the token buckets' states as TakeToken last stored them.
	buckets map[string]Bucket
}

// NewService returns a service over store using compiler for SQL.
func NewService(store Store, compiler Compiler, opts Options) *Service {
	s := &Service{
		store:        store,
		compiler:     compiler,
		now:          opts.Now,
		leaseTTL:     opts.LeaseTTL,
		maxAttempts:  opts.MaxAttempts,
		fedDeadline:  opts.FederationDeadline,
		log:          opts.Logger,
		rand:         opts.Rand,
		writeTimeout: opts.WriteTimeout,
		onTransition: opts.OnTransition,
		granularity:  opts.Granularity,
		runHold:      max(opts.RunHold, 0),
		catalogs:     map[string]cachedCatalog{},
		plans:        map[planKey]*queries.Plan{},
		buckets:      map[string]Bucket{},
		failures:     &authFailures{window: opts.AuthFailureWindow, bySource: map[string]*failureWindow{}},
	}
	if s.failures.window <= 0 {
		s.failures.window = DefaultAuthFailureWindow
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.leaseTTL <= 0 {
		s.leaseTTL = DefaultLeaseTTL
	}
	if s.maxAttempts <= 0 {
		s.maxAttempts = DefaultMaxAttempts
	}
	if s.fedDeadline <= 0 {
		s.fedDeadline = DefaultFederationDeadline
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.rand == nil {
		s.rand = rand.Reader
	}
	if s.writeTimeout <= 0 {
		s.writeTimeout = DefaultWriteTimeout
	}
	if s.granularity <= 0 {
		s.granularity = DefaultGranularity
	}
	return s
}

// clock returns the current time at the precision every store keeps.
func (s *Service) clock() time.Time {
	return s.now().UTC().Truncate(time.Microsecond)
}

// Ping checks the store is reachable.
func (s *Service) Ping(ctx context.Context) error { return s.store.Ping(ctx) }

// fmtFloat formats a float for messages and audit details, exactly.
func fmtFloat(f float64) string { return strconv.FormatFloat(f, 'g', -1, 64) }

// dedupe trims xs and drops blanks and repeats, keeping the first order.
func dedupe(xs []string) []string {
	out := make([]string, 0, len(xs))
	for _, x := range xs {
		x = strings.TrimSpace(x)
		if x != "" && !slices.Contains(out, x) {
			out = append(out, x)
		}
	}
	return out
}

// validName checks an identifier such as a site id or dataset name.
func validName(what, s string) error {
	if s == "" {
		return Errorf(EINVALID, "%s is required", what)
	}
	if len(s) > 128 {
		return Errorf(EINVALID, "%s is longer than 128 characters", what)
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return Errorf(EINVALID, "%s %q may contain only letters, digits, '-', '_' and '.'", what, s)
		}
	}
	return nil
}

// validCode checks a failure code: short lower-case words.
func validCode(code string) error {
	if code == "" || len(code) > 64 {
		return Errorf(EINVALID, "failure code must be 1 to 64 characters")
	}
	for _, r := range code {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '_' || r == '.') {
			return Errorf(EINVALID, "failure code %q may contain only a-z, 0-9, '_' and '.'", code)
		}
	}
	return nil
}
