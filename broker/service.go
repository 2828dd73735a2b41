package broker

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nhs-tre/tre/dp"
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
	DefaultLeaseTTL     = 2 * time.Minute
	DefaultMaxAttempts  = 3
	DefaultWriteTimeout = 10 * time.Second
	// MaxSQLBytes is the longest SQL text accepted.
	MaxSQLBytes = 64 << 10
	// budgetTolerance is the relative float tolerance of budget checks.
	budgetTolerance = 1e-9
)

// Service is the broker's domain: every rule about who may do what, the
// query state machine, the budget ledger, leases, risk flags and the audit
// chain. Stores only persist.
type Service struct {
	store        Store
	compiler     Compiler
	now          func() time.Time
	leaseTTL     time.Duration
	maxAttempts  int
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
}

// planKey identifies a compilation: Compile is a function of the catalog's
// content, the SQL text and the options, of which the broker sets only
// epsilon (no seed, no unique tables).
type planKey struct {
	catalogHash string
	sql         string
	epsilon     float64
}

// Plan cache bounds: texts longer than maxCachedPlanSQL are compiled every
// time; when maxCachedPlans are held an arbitrary one is dropped. A plan is
// a few times its SQL's size (rewritten and normalised texts), so the cache
// holds at most a few MB.
const (
	maxCachedPlans   = 256
	maxCachedPlanSQL = 8 << 10
)

type cachedCatalog struct {
	hash string
	cat  *queries.Catalog
}

// NewService returns a service over store using compiler for SQL.
func NewService(store Store, compiler Compiler, opts Options) *Service {
	s := &Service{
		store:        store,
		compiler:     compiler,
		now:          opts.Now,
		leaseTTL:     opts.LeaseTTL,
		maxAttempts:  opts.MaxAttempts,
		log:          opts.Logger,
		rand:         opts.Rand,
		writeTimeout: opts.WriteTimeout,
		onTransition: opts.OnTransition,
		granularity:  opts.Granularity,
		runHold:      max(opts.RunHold, 0),
		catalogs:     map[string]cachedCatalog{},
		plans:        map[planKey]*queries.Plan{},
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

// ---- identity and authorisation ----

// denial is a refused authorisation found inside a transaction; it is
// recorded in the audit chain after the transaction rolls back.
type denial struct {
	err            *Error
	action, object string
}

func (d *denial) Error() string { return d.err.Error() }
func (d *denial) Unwrap() error { return d.err }

func deny(action, object, format string, args ...any) error {
	return &denial{err: Errorf(EFORBIDDEN, format, args...), action: action, object: object}
}

// caller returns the authenticated user or EUNAUTHORIZED.
func caller(ctx context.Context) (*User, error) {
	u := UserFromContext(ctx)
	if u == nil || u.Subject == "" {
		return nil, Errorf(EUNAUTHORIZED, "authentication required")
	}
	return u, nil
}

// settle records a denial in the audit chain and turns it into its *Error.
func (s *Service) settle(ctx context.Context, u *User, err error) error {
	var d *denial
	if !errors.As(err, &d) {
		return err
	}
	subject := "anonymous"
	if u != nil {
		subject = u.Subject
	}
	s.recordAudit(ctx, subject, "authz.denied", d.object, auditDetail("action", d.action, "reason", d.err.Message))
	return d.err
}

// recordAudit appends one entry in its own transaction with a detached
// context: it must be written even if the request was cancelled.
func (s *Service) recordAudit(ctx context.Context, actor, action, object, detail string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.writeTimeout)
	defer cancel()
	err := s.store.Update(ctx, func(tx Tx) error {
		return appendAudit(ctx, tx, s.clock(), actor, action, object, detail)
	})
	if err != nil {
		s.log.Error("record audit entry", "action", action, "object", object, "err", err)
	}
}

// authorize returns the caller if they hold one of roles; otherwise the
// refusal is audited.
func (s *Service) authorize(ctx context.Context, action, object string, roles ...Role) (*User, error) {
	u, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	for _, r := range roles {
		if u.HasRole(r) {
			return u, nil
		}
	}
	names := make([]string, len(roles))
	for i, r := range roles {
		names[i] = string(r)
	}
	return nil, s.settle(ctx, u, deny(action, object, "%s requires the role %s", action, strings.Join(names, " or ")))
}

// update runs fn in a write transaction and settles denials.
func (s *Service) update(ctx context.Context, u *User, fn func(Tx) error) error {
	return s.write(ctx, u, s.store.Update, fn)
}

// updateGrouped is update for writes that may share a transaction and its
// commit with concurrent ones (Store.UpdateGrouped).
func (s *Service) updateGrouped(ctx context.Context, u *User, fn func(Tx) error) error {
	return s.write(ctx, u, s.store.UpdateGrouped, fn)
}

func (s *Service) write(ctx context.Context, u *User, run func(context.Context, func(Tx) error) error, fn func(Tx) error) error {
	if s.onTransition == nil {
		return s.settle(ctx, u, run(ctx, fn))
	}
	var last *observedTx // the attempt that committed, if any
	err := run(ctx, func(tx Tx) error {
		last = &observedTx{Tx: tx}
		return fn(last)
	})
	if err == nil && last != nil {
		for _, t := range last.transitions {
			s.onTransition(t)
		}
	}
	return s.settle(ctx, u, err)
}

// observedTx remembers the status changes made in one transaction attempt so
// they are reported only once it commits.
type observedTx struct {
	Tx
	transitions []Transition
}

// leaseLapsed marks the transition just recorded in tx as the end of a
// lease that lapsed, when lapsed is true.
func leaseLapsed(tx Tx, lapsed bool) {
	if o, ok := tx.(*observedTx); ok && lapsed && len(o.transitions) > 0 {
		o.transitions[len(o.transitions)-1].LeaseExpired = true
	}
}

// view runs fn in a read transaction and settles denials.
func (s *Service) view(ctx context.Context, u *User, fn func(Tx) error) error {
	return s.settle(ctx, u, s.store.View(ctx, fn))
}

func isStaff(u *User) bool {
	return u.HasRole(RoleReviewer) || u.HasRole(RoleOutputChecker) || u.HasRole(RoleAdmin)
}

func projectObject(id int64) string { return "project/" + strconv.FormatInt(id, 10) }
func queryObject(id int64) string   { return "query/" + strconv.FormatInt(id, 10) }

// ---- catalogs and sites ----

// siteObject is a site's audit object.
func siteObject(id string) string { return "site/" + id }

// agentCaller authorises an agent call made for siteID ("" when the call
// names no site, such as a heartbeat): the caller must hold the agent role
// and carry a site claim naming siteID. Whether that site is registered is
// checked inside the call's transaction (registeredSite).
func (s *Service) agentCaller(ctx context.Context, action, object, siteID string) (*User, error) {
	u, err := s.authorize(ctx, action, object, RoleAgent)
	if err != nil {
		return nil, err
	}
	switch {
	case u.Site == "":
		return nil, s.settle(ctx, u, deny(action, object, "this agent token names no site: an agent token must carry the site it acts for"))
	case siteID != "" && siteID != u.Site:
		return nil, s.settle(ctx, u, deny(action, object, "this agent token acts for site %q, not %q", u.Site, siteID))
	}
	return u, nil
}

// registeredSite refuses an agent whose site an admin has not registered
// and records that the agent called (its health), with the version it
// reported if any.
func registeredSite(ctx context.Context, tx Tx, u *User, action, object, version string, now time.Time) error {
	site, err := tx.FindSite(ctx, u.Site)
	if ErrorCode(err) == ENOTFOUND || err == nil && !site.Registered {
		return deny(action, object, "site %q is not registered: an admin must register it (tre site add) before its agent may act", u.Site)
	} else if err != nil {
		return err
	}
	return tx.TouchSite(ctx, u.Site, now, version)
}

// validVersion checks an agent's reported version: short printable text.
func validVersion(v string) error {
	if len(v) > 100 {
		return Errorf(EINVALID, "agent version is longer than 100 characters")
	}
	for _, r := range v {
		if r < 0x20 || r > 0x7e {
			return Errorf(EINVALID, "agent version may contain only printable ASCII")
		}
	}
	return nil
}

// CreateSite registers an NHS site so that its agent may act. Admins only.
// A site an agent announced before registration existed is registered in
// place; a registered site cannot be registered again.
func (s *Service) CreateSite(ctx context.Context, site *Site) error {
	u, err := s.authorize(ctx, "site.create", "sites", RoleAdmin)
	if err != nil {
		return err
	}
	if site == nil {
		return Errorf(EINVALID, "site is required")
	}
	site.Name, site.Organisation = strings.TrimSpace(site.Name), strings.TrimSpace(site.Organisation)
	if err := validName("site id", site.ID); err != nil {
		return err
	}
	for _, f := range []struct{ name, value string }{{"name", site.Name}, {"organisation", site.Organisation}} {
		switch {
		case f.value == "":
			return Errorf(EINVALID, "site %s is required", f.name)
		case len(f.value) > 200:
			return Errorf(EINVALID, "site %s is longer than 200 characters", f.name)
		}
	}
	now := s.clock()
	return s.update(ctx, u, func(tx Tx) error {
		old, err := tx.FindSite(ctx, site.ID)
		switch {
		case ErrorCode(err) == ENOTFOUND:
			old = &Site{}
		case err != nil:
			return err
		case old.Registered:
			return Errorf(ECONFLICT, "site %q is already registered", site.ID)
		}
		site.Registered, site.RegisteredBy, site.RegisteredAt = true, u.Subject, now
		site.LastSeen, site.Version, site.Datasets = old.LastSeen, old.Version, []string{}
		if err := tx.CreateSite(ctx, site); err != nil {
			return err
		}
		return appendAudit(ctx, tx, now, u.Subject, "site.create", siteObject(site.ID),
			auditDetail("name", site.Name, "organisation", site.Organisation))
	})
}

// PublishCatalog stores the catalog a site agent publishes for its own
// registered site. A dataset belongs to the site that first published it.
func (s *Service) PublishCatalog(ctx context.Context, siteID, version string, cat *queries.Catalog) error {
	u, err := s.agentCaller(ctx, "catalog.publish", siteObject(siteID), siteID)
	if err != nil {
		return err
	}
	if err := validName("site id", siteID); err != nil {
		return err
	}
	if err := validVersion(version); err != nil {
		return err
	}
	if cat == nil {
		return Errorf(EINVALID, "catalog is required")
	}
	if err := cat.Validate(); err != nil {
		return Errorf(EINVALID, "catalog %q is not valid: %v", cat.Dataset, err)
	}
	if err := validName("dataset", cat.Dataset); err != nil {
		return err
	}
	body, err := json.Marshal(cat)
	if err != nil {
		return fmt.Errorf("encode catalog: %w", err)
	}
	hash := hashString(string(body))
	now := s.clock()
	return s.update(ctx, u, func(tx Tx) error {
		if err := registeredSite(ctx, tx, u, "catalog.publish", siteObject(siteID), version, now); err != nil {
			return err
		}
		owner, _, _, err := tx.FindCatalog(ctx, cat.Dataset, false)
		switch {
		case ErrorCode(err) == ENOTFOUND:
		case err != nil:
			return err
		case owner != siteID:
			return Errorf(ECONFLICT, "dataset %q is already published by site %q", cat.Dataset, owner)
		}
		if err := tx.PutCatalog(ctx, siteID, cat.Dataset, hash, body, now); err != nil {
			return err
		}
		return appendAudit(ctx, tx, now, u.Subject, "catalog.publish", "dataset/"+cat.Dataset,
			auditDetail("site", siteID, "catalog_sha256", hash))
	})
}

// FindDatasets returns every published catalog.
func (s *Service) FindDatasets(ctx context.Context) ([]*queries.Catalog, error) {
	if _, err := caller(ctx); err != nil {
		return nil, err
	}
	var bodies [][]byte
	if err := s.store.View(ctx, func(tx Tx) error {
		var err error
		bodies, err = tx.FindCatalogs(ctx)
		return err
	}); err != nil {
		return nil, err
	}
	out := make([]*queries.Catalog, 0, len(bodies))
	for _, b := range bodies {
		var c queries.Catalog
		if err := json.Unmarshal(b, &c); err != nil {
			return nil, fmt.Errorf("decode stored catalog: %w", err)
		}
		out = append(out, &c)
	}
	return out, nil
}

// FindSites returns every site with its agent's health. Admins only.
func (s *Service) FindSites(ctx context.Context) ([]*Site, error) {
	u, err := s.authorize(ctx, "sites.list", "sites", RoleAdmin)
	if err != nil {
		return nil, err
	}
	var sites []*Site
	err = s.view(ctx, u, func(tx Tx) error {
		sites, err = tx.FindSites(ctx)
		return err
	})
	return sites, err
}

// catalog returns the parsed catalog of dataset and its content hash,
// cached by that hash so submissions do not decode it each time.
func (s *Service) catalog(ctx context.Context, tx Tx, dataset string) (*queries.Catalog, string, error) {
	_, hash, _, err := tx.FindCatalog(ctx, dataset, false)
	if ErrorCode(err) == ENOTFOUND {
		return nil, "", Errorf(EINVALID, "dataset %q has not been published by any site", dataset)
	} else if err != nil {
		return nil, "", err
	}
	s.mu.Lock()
	c, ok := s.catalogs[dataset]
	s.mu.Unlock()
	if ok && c.hash == hash {
		return c.cat, hash, nil
	}
	_, hash, body, err := tx.FindCatalog(ctx, dataset, true)
	if err != nil {
		return nil, "", err
	}
	cat := new(queries.Catalog)
	if err := json.Unmarshal(body, cat); err != nil {
		return nil, "", fmt.Errorf("decode stored catalog %q: %w", dataset, err)
	}
	s.mu.Lock()
	s.catalogs[dataset] = cachedCatalog{hash: hash, cat: cat}
	s.mu.Unlock()
	return cat, hash, nil
}

// compile compiles sql against cat, reusing the plan of an identical
// earlier compilation (same catalog content, text and epsilon). Refusals and
// errors are not cached. Callers get their own copy of the plan's slices.
func (s *Service) compile(ctx context.Context, cat *queries.Catalog, catalogHash, sql string, epsilon float64) (*queries.Plan, error) {
	if plan := s.cachedPlan(catalogHash, sql, epsilon); plan != nil {
		return plan, nil
	}
	key := planKey{catalogHash: catalogHash, sql: sql, epsilon: epsilon}
	plan, err := s.compiler.Compile(ctx, cat, sql, queries.Options{Epsilon: epsilon})
	if err != nil {
		return nil, err
	}
	if len(sql) <= maxCachedPlanSQL {
		s.mu.Lock()
		if len(s.plans) >= maxCachedPlans {
			for k := range s.plans { // map order: an arbitrary victim
				delete(s.plans, k)
				break
			}
		}
		s.plans[key] = clonePlan(plan)
		s.mu.Unlock()
	}
	return plan, nil
}

// cachedPlan returns a copy of the cached plan of sql over the catalog with
// the given hash at epsilon, or nil.
func (s *Service) cachedPlan(catalogHash, sql string, epsilon float64) *queries.Plan {
	s.mu.Lock()
	plan, ok := s.plans[planKey{catalogHash: catalogHash, sql: sql, epsilon: epsilon}]
	s.mu.Unlock()
	if !ok {
		return nil
	}
	return clonePlan(plan)
}

// clonePlan copies a plan deep enough that changing the copy's slices
// leaves the original alone.
func clonePlan(p *queries.Plan) *queries.Plan {
	c := *p
	c.Accuracy = slices.Clone(p.Accuracy)
	c.Predicates = slices.Clone(p.Predicates)
	c.Spec.Groups = slices.Clone(p.Spec.Groups)
	c.Spec.Aggregates = slices.Clone(p.Spec.Aggregates)
	return &c
}

// ---- projects ----

// CreateProject creates a safe project. Admins only.
func (s *Service) CreateProject(ctx context.Context, p *Project) error {
	u, err := s.authorize(ctx, "project.create", "projects", RoleAdmin)
	if err != nil {
		return err
	}
	if p == nil {
		return Errorf(EINVALID, "project is required")
	}
	now := s.clock()
	if p.StartsAt.IsZero() {
		p.StartsAt = now
	}
	p.StartsAt = p.StartsAt.UTC().Truncate(time.Microsecond)
	p.ExpiresAt = p.ExpiresAt.UTC().Truncate(time.Microsecond)
	if p.Status == "" {
		p.Status = ProjectActive
	}
	p.Members = dedupe(p.Members)
	p.Datasets = dedupe(p.Datasets)
	if err := validateProject(p); err != nil {
		return err
	}
	if err := projectDuty(u, "project.create", "projects", p.Members); err != nil {
		return s.settle(ctx, u, err)
	}
	p.CreatedBy = u.Subject
	p.CreatedAt = now
	p.Budget = Budget{EpsilonRemaining: p.EpsilonBudget, DeltaRemaining: p.DeltaBudget}
	return s.update(ctx, u, func(tx Tx) error {
		if err := tx.CreateProject(ctx, p); err != nil {
			return err
		}
		return appendAudit(ctx, tx, now, u.Subject, "project.create", projectObject(p.ID),
			auditDetail("title", p.Title, "epsilon_budget", fmtFloat(p.EpsilonBudget), "delta_budget", fmtFloat(p.DeltaBudget),
				"members", strings.Join(p.Members, ","), "datasets", strings.Join(p.Datasets, ",")))
	})
}

func validateProject(p *Project) error {
	for _, f := range []struct{ name, value string }{
		{"title", p.Title}, {"organisation", p.Organisation}, {"purpose", p.Purpose}, {"lawful_basis", p.LawfulBasis},
	} {
		if strings.TrimSpace(f.value) == "" {
			return Errorf(EINVALID, "project %s is required", f.name)
		}
	}
	if len(p.Members) == 0 {
		return Errorf(EINVALID, "project members are required")
	}
	for _, m := range p.Members {
		if strings.TrimSpace(m) == "" {
			return Errorf(EINVALID, "project members must be non-empty subjects")
		}
	}
	if len(p.Datasets) == 0 {
		return Errorf(EINVALID, "project datasets are required")
	}
	for _, d := range p.Datasets {
		if err := validName("dataset", d); err != nil {
			return err
		}
	}
	if math.IsNaN(p.EpsilonBudget) || math.IsInf(p.EpsilonBudget, 0) || p.EpsilonBudget <= 0 {
		return Errorf(EINVALID, "project epsilon_budget must be a positive number")
	}
	if math.IsNaN(p.DeltaBudget) || math.IsInf(p.DeltaBudget, 0) || p.DeltaBudget < 0 || p.DeltaBudget >= 1 {
		return Errorf(EINVALID, "project delta_budget must be at least 0 and below 1")
	}
	if p.ExpiresAt.IsZero() {
		return Errorf(EINVALID, "project expires_at is required")
	}
	if !p.ExpiresAt.After(p.StartsAt) {
		return Errorf(EINVALID, "project expires_at must be after starts_at")
	}
	switch p.Status {
	case ProjectActive, ProjectSuspended:
	default:
		return Errorf(EINVALID, "project status must be %q or %q", ProjectActive, ProjectSuspended)
	}
	return nil
}

// usable refuses work on a project that is suspended, not started or
// expired.
func usable(p *Project, now time.Time) error {
	switch {
	case p.Status != ProjectActive:
		return Errorf(EFORBIDDEN, "project %d is %s: queries are refused", p.ID, p.Status)
	case now.Before(p.StartsAt):
		return Errorf(EFORBIDDEN, "project %d starts on %s: queries are refused until then", p.ID, p.StartsAt.Format(time.RFC3339))
	case !now.Before(p.ExpiresAt):
		return Errorf(EFORBIDDEN, "project %d expired on %s: queries are refused", p.ID, p.ExpiresAt.Format(time.RFC3339))
	}
	return nil
}

// FindProjectByID returns a project with its budget position. Admins and
// reviewers see every project, researchers only their own.
func (s *Service) FindProjectByID(ctx context.Context, id int64) (*Project, error) {
	u, err := s.authorize(ctx, "project.read", projectObject(id), RoleAdmin, RoleReviewer, RoleResearcher)
	if err != nil {
		return nil, err
	}
	var p *Project
	err = s.view(ctx, u, func(tx Tx) error {
		p, err = tx.FindProject(ctx, id)
		if err != nil {
			return err
		}
		if !u.HasRole(RoleAdmin) && !u.HasRole(RoleReviewer) && !slices.Contains(p.Members, u.Subject) {
			return deny("project.read", projectObject(id), "you are not a member of project %d", id)
		}
		if researcherOf(u, p) {
			return s.researcherBudget(ctx, tx, p, s.cutoff())
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return p, nil
}

// FindProjects lists projects; researchers see only those they belong to.
func (s *Service) FindProjects(ctx context.Context, f ProjectFilter) ([]*Project, int, error) {
	u, err := s.authorize(ctx, "project.list", "projects", RoleAdmin, RoleReviewer, RoleResearcher)
	if err != nil {
		return nil, 0, err
	}
	if !u.HasRole(RoleAdmin) && !u.HasRole(RoleReviewer) {
		f.Member = &u.Subject
	}
	f.Limit = pageLimit(f.Limit)
	var ps []*Project
	var n int
	err = s.store.View(ctx, func(tx Tx) error {
		ps, n, err = tx.FindProjects(ctx, f)
		if err != nil {
			return err
		}
		cutoff := s.cutoff()
		for _, p := range ps {
			if !researcherOf(u, p) {
				continue
			}
			if err := s.researcherBudget(ctx, tx, p, cutoff); err != nil {
				return err
			}
		}
		return nil
	})
	return ps, n, err
}

// UpdateProject changes a project. Admins only; budgets cannot drop below
// what is already spent and reserved.
func (s *Service) UpdateProject(ctx context.Context, id int64, upd ProjectUpdate) (*Project, error) {
	u, err := s.authorize(ctx, "project.update", projectObject(id), RoleAdmin)
	if err != nil {
		return nil, err
	}
	now := s.clock()
	var p *Project
	err = s.update(ctx, u, func(tx Tx) error {
		if err := tx.LockProject(ctx, id); err != nil {
			return err
		}
		p, err = tx.FindProject(ctx, id)
		if err != nil {
			return err
		}
		if err := projectDuty(u, "project.update", projectObject(id), p.Members); err != nil {
			return err
		}
		var changed []string
		set := func(name string, ok bool, apply func()) {
			if ok {
				apply()
				changed = append(changed, name)
			}
		}
		set("title", upd.Title != nil, func() { p.Title = *upd.Title })
		set("organisation", upd.Organisation != nil, func() { p.Organisation = *upd.Organisation })
		set("purpose", upd.Purpose != nil, func() { p.Purpose = *upd.Purpose })
		set("lawful_basis", upd.LawfulBasis != nil, func() { p.LawfulBasis = *upd.LawfulBasis })
		set("data_sharing_agreement", upd.DataSharingAgreement != nil, func() { p.DataSharingAgreement = *upd.DataSharingAgreement })
		set("members", upd.Members != nil, func() { p.Members = dedupe(*upd.Members) })
		set("datasets", upd.Datasets != nil, func() { p.Datasets = dedupe(*upd.Datasets) })
		set("epsilon_budget", upd.EpsilonBudget != nil, func() { p.EpsilonBudget = *upd.EpsilonBudget })
		set("delta_budget", upd.DeltaBudget != nil, func() { p.DeltaBudget = *upd.DeltaBudget })
		set("starts_at", upd.StartsAt != nil, func() { p.StartsAt = upd.StartsAt.UTC().Truncate(time.Microsecond) })
		set("expires_at", upd.ExpiresAt != nil, func() { p.ExpiresAt = upd.ExpiresAt.UTC().Truncate(time.Microsecond) })
		set("status", upd.Status != nil, func() { p.Status = *upd.Status })
		if len(changed) == 0 {
			return Errorf(EINVALID, "project update changes nothing")
		}
		if err := validateProject(p); err != nil {
			return err
		}
		if err := projectDuty(u, "project.update", projectObject(id), p.Members); err != nil {
			return err
		}
		b := p.Budget
		if over(b.EpsilonSpent+b.EpsilonReserved, 0, p.EpsilonBudget) || over(b.DeltaSpent+b.DeltaReserved, 0, p.DeltaBudget) {
			return Errorf(ECONFLICT, "project %d budget cannot drop below what is spent and reserved (ε %s, δ %s)",
				id, fmtFloat(b.EpsilonSpent+b.EpsilonReserved), fmtFloat(b.DeltaSpent+b.DeltaReserved))
		}
		if err := tx.UpdateProject(ctx, p); err != nil {
			return err
		}
		if p, err = tx.FindProject(ctx, id); err != nil {
			return err
		}
		return appendAudit(ctx, tx, now, u.Subject, "project.update", projectObject(id), auditDetail("changed", strings.Join(changed, ",")))
	})
	if err != nil {
		return nil, err
	}
	return p, nil
}

// over reports whether used+cost exceeds budget beyond float tolerance.
func over(used, cost, budget float64) bool {
	return used+cost > budget*(1+budgetTolerance)+budgetTolerance*1e-9
}

// ---- submission ----

// prepared is a compiled submission ready to store.
type prepared struct {
	project *Project
	cat     *queries.Catalog
	plan    *queries.Plan
}

// validSubmission checks a submission's fields before any lookup.
func validSubmission(sub QuerySubmission) error {
	switch {
	case sub.ProjectID <= 0:
		return Errorf(EINVALID, "project_id is required")
	case strings.TrimSpace(sub.SQL) == "":
		return Errorf(EINVALID, "sql is required")
	case len(sub.SQL) > MaxSQLBytes:
		return Errorf(EINVALID, "sql is longer than %d bytes", MaxSQLBytes)
	case math.IsNaN(sub.Epsilon) || math.IsInf(sub.Epsilon, 0) || sub.Epsilon < 0:
		// Well-formed, but no dataset accepts it: refused like an ε below
		// the dataset's min_epsilon or above its max_epsilon.
		return Errorf(EREFUSED, "epsilon (ε) must be a positive, finite number (or omitted for the dataset's default)")
	}
	return nil
}

// submitter checks in tx that the caller may submit to the project and
// returns the project and the catalog of the dataset the query is over,
// with the catalog's hash.
func (s *Service) submitter(ctx context.Context, tx Tx, u *User, sub QuerySubmission, now time.Time) (*prepared, string, error) {
	p, err := tx.FindProject(ctx, sub.ProjectID)
	if err != nil {
		return nil, "", err
	}
	if !slices.Contains(p.Members, u.Subject) {
		return nil, "", deny("query.submit", projectObject(p.ID), "you are not a member of project %d", p.ID)
	}
	if err := usable(p, now); err != nil {
		return nil, "", err
	}
	dataset := sub.Dataset
	switch {
	case dataset == "" && len(p.Datasets) == 1:
		dataset = p.Datasets[0]
	case dataset == "":
		return nil, "", Errorf(EINVALID, "project %d has several datasets (%s): name one in dataset", p.ID, strings.Join(p.Datasets, ", "))
	case !slices.Contains(p.Datasets, dataset):
		return nil, "", Errorf(EFORBIDDEN, "project %d is not approved for dataset %q", p.ID, dataset)
	}
	cat, hash, err := s.catalog(ctx, tx, dataset)
	if err != nil {
		return nil, "", err
	}
	return &prepared{project: p, cat: cat}, hash, nil
}

// compileError turns a compilation failure into what the caller sees.
func (s *Service) compileError(err error, projectID int64) error {
	var ref *queries.Refusal
	var appErr *Error
	switch {
	case errors.As(err, &ref):
		return Errorf(EREFUSED, "%s", ref.Message)
	case errors.As(err, &appErr):
		return appErr
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return err
	}
	s.log.Error("compile query", "project", projectID, "err", err)
	return fmt.Errorf("compile query: %w", err)
}

// prepare checks the caller may submit to the project and compiles the SQL.
func (s *Service) prepare(ctx context.Context, u *User, sub QuerySubmission) (*prepared, error) {
	if err := validSubmission(sub); err != nil {
		return nil, err
	}
	now := s.clock()
	var pr *prepared
	var catalogHash string
	err := s.view(ctx, u, func(tx Tx) error {
		var err error
		pr, catalogHash, err = s.submitter(ctx, tx, u, sub, now)
		return err
	})
	if err != nil {
		return nil, err
	}
	plan, err := s.compile(ctx, pr.cat, catalogHash, sub.SQL, sub.Epsilon)
	if err != nil {
		return nil, s.compileError(err, sub.ProjectID)
	}
	pr.plan = plan
	return pr, nil
}

// needPlan ends a submission's transaction whose plan is not compiled yet:
// compiling (up to milliseconds) waits outside the transaction, which on
// SQLite holds the only writer.
type needPlan struct {
	cat  *queries.Catalog
	hash string
}

func (*needPlan) Error() string { return "the query must be compiled first" }

// CheckQuery validates and plans a submission without storing anything.
func (s *Service) CheckQuery(ctx context.Context, sub QuerySubmission) (*queries.Plan, error) {
	u, err := s.authorize(ctx, "query.check", projectObject(sub.ProjectID), RoleResearcher)
	if err != nil {
		return nil, err
	}
	pr, err := s.prepare(ctx, u, sub)
	if err != nil {
		return nil, err
	}
	return pr.plan, nil
}

// SubmitQuery validates, plans and stores a researcher's query with its
// cost, accuracy and risk flags. The caller's membership and the project
// are checked in the transaction that stores the query; the plan comes from
// the plan cache, or from a compilation between two attempts.
func (s *Service) SubmitQuery(ctx context.Context, sub QuerySubmission) (*Query, error) {
	u, err := s.authorize(ctx, "query.submit", projectObject(sub.ProjectID), RoleResearcher)
	if err != nil {
		return nil, err
	}
	if err := validSubmission(sub); err != nil {
		return nil, err
	}
	if strings.TrimSpace(sub.Purpose) == "" {
		// Checks and dry runs need none; a submission goes to a reviewer,
		// who judges the query by it.
		return nil, Errorf(EINVALID, "purpose is required: say why the project needs this query (the reviewer judges it by this)")
	}
	now := s.clock()
	var compiled *queries.Plan // compiled outside the transaction, for compiledHash
	var compiledHash string
	var q *Query
	for attempt := 1; ; attempt++ {
		// Submissions are the broker's most frequent write: concurrent
		// ones share a commit (each is still checked and stored alone).
		err = s.updateGrouped(ctx, u, func(tx Tx) error {
			// The project's lock serialises its submissions where
			// transactions run concurrently (PostgreSQL), so that each sees
			// every earlier one: two identical twins committed together
			// must still flag each other as repeats. SQLite's writers are
			// serial already, and the lock costs it one read.
			if err := tx.LockProject(ctx, sub.ProjectID); err != nil {
				return err
			}
			pr, hash, err := s.submitter(ctx, tx, u, sub, now)
			if err != nil {
				return err
			}
			plan := compiled
			if compiledHash != hash {
				if plan = s.cachedPlan(hash, sub.SQL, sub.Epsilon); plan == nil {
					return &needPlan{cat: pr.cat, hash: hash}
				}
			}
			q, err = s.storeSubmission(ctx, tx, u, sub, pr, plan, now)
			return err
		})
		var np *needPlan
		if !errors.As(err, &np) {
			break
		}
		if attempt == 3 {
			return nil, Errorf(EUNAVAILABLE, "the dataset's catalog changed while the query was compiled: try again")
		}
		if compiled, err = s.compile(ctx, np.cat, np.hash, sub.SQL, sub.Epsilon); err != nil {
			return nil, s.compileError(err, sub.ProjectID)
		}
		compiledHash = np.hash
	}
	if err != nil {
		return nil, err
	}
	q.History = []Event{{To: StatusSubmitted, Actor: u.Subject, At: now}}
	// The submitter is a member of the project: a researcher of it.
	return s.researcherQuery(q, q.History, s.cutoff(), true), nil
}

// storeSubmission flags and stores a compiled submission in tx and audits
// it.
func (s *Service) storeSubmission(ctx context.Context, tx Tx, u *User, sub QuerySubmission, pr *prepared, plan *queries.Plan, now time.Time) (*Query, error) {
	q := &Query{
		ProjectID:   pr.project.ID,
		Dataset:     plan.Dataset,
		SQL:         sub.SQL,
		SQLHash:     hashString(sub.SQL),
		Purpose:     sub.Purpose,
		Rewritten:   plan.Rewritten,
		Status:      StatusSubmitted,
		SubmittedBy: u.Subject,
		SubmittedAt: now,
		UpdatedAt:   now,
		Cost:        plan.Cost,
		Accuracy:    plan.Accuracy,
		RiskFlags:   []RiskFlag{},
	}
	if q.Dataset == "" {
		q.Dataset = pr.cat.Dataset
	}
	if q.Accuracy == nil {
		q.Accuracy = []dp.Accuracy{}
	}
	rec := &QueryRecord{
		Query:          q,
		Normalized:     plan.Normalized,
		NormalizedHash: hashString(q.Dataset + "\x00" + plan.Normalized),
		ShapeHash:      shapeHash(q.Dataset, plan.Shape),
		Predicates:     plan.Predicates,
		Ledger:         LedgerNone,
	}
	rec.PredicateSet, rec.PredicateKeys = PredicateKeys(rec.ShapeHash, rec.Predicates)
	flags, err := s.similarityFlags(ctx, tx, rec)
	if err != nil {
		return nil, err
	}
	q.RiskFlags = append(q.RiskFlags, flags...)
	if reason := narrowPopulation(pr.cat, plan.Predicates); reason != "" {
		q.RiskFlags = append(q.RiskFlags, RiskFlag{Kind: RiskNarrowPopulation, Message: reason})
	}
	if err := tx.CreateQuery(ctx, rec); err != nil {
		return nil, err
	}
	if err := tx.AddEvent(ctx, q.ID, Event{To: StatusSubmitted, Actor: u.Subject, At: now}); err != nil {
		return nil, err
	}
	kinds := make([]string, len(q.RiskFlags))
	for i, f := range q.RiskFlags {
		kinds[i] = f.Kind
	}
	return q, appendAudit(ctx, tx, now, u.Subject, "query.submit", queryObject(q.ID),
		auditDetail("project", strconv.FormatInt(q.ProjectID, 10), "dataset", q.Dataset, "sql_sha256", q.SQLHash,
			"epsilon", fmtFloat(q.Cost.Epsilon), "delta", fmtFloat(q.Cost.Delta), "risk_flags", strings.Join(kinds, ",")))
}

// similarityFlags compares a new query with the project's earlier ones:
// an identical normalised form is a repeat (averaging attack); the same
// output shape with one predicate added, removed or changed is a
// differencing risk. Every earlier query of the project is considered.
func (s *Service) similarityFlags(ctx context.Context, tx Tx, rec *QueryRecord) ([]RiskFlag, error) {
	q := rec.Query
	var flags []RiskFlag
	rep, err := tx.FindRepeat(ctx, q.ProjectID, rec.NormalizedHash)
	if err != nil {
		return nil, err
	}
	if rep != nil {
		f := RiskFlag{
			Kind:           RiskRepeat,
			Message:        fmt.Sprintf("repeats query %d of this project: repeated answers can be averaged to remove the noise", rep.ID),
			SimilarQueryID: rep.ID,
			SimilarSQL:     rep.SQL,
		}
		f.setSimilar(rep.Status)
		flags = append(flags, f)
	}
	o, err := tx.FindDifferencing(ctx, q.ProjectID, rec.PredicateSet, rec.PredicateKeys)
	if err != nil {
		return nil, err
	}
	if o == nil {
		return flags, nil
	}
	diff, ok := differsByOnePredicate(rec.Predicates, o.Predicates)
	if !ok {
		// Only a SHA-256 collision, or predicates stored by an older compiler
		// under the same keys, can get here.
		s.log.Error("differencing lookup matched a query that does not differ by one predicate", "query", o.ID)
		return flags, nil
	}
	f := RiskFlag{
		Kind:           RiskDifferencing,
		Message:        fmt.Sprintf("differs from query %d only in that it %s: subtracting the answers can isolate a small group", o.ID, diff),
		SimilarQueryID: o.ID,
		SimilarSQL:     o.SQL,
	}
	f.setSimilar(o.Status)
	return append(flags, f), nil
}

// refreshFlags sets each risk flag's view of the earlier query to its
// status now: a reviewer deciding days later must know whether the earlier
// answer has been released since.
func refreshFlags(ctx context.Context, tx Tx, q *Query) error {
	for i := range q.RiskFlags {
		f := &q.RiskFlags[i]
		if f.SimilarQueryID == 0 {
			continue
		}
		rec, err := tx.FindQuery(ctx, f.SimilarQueryID)
		if ErrorCode(err) == ENOTFOUND {
			continue
		} else if err != nil {
			return err
		}
		f.setSimilar(rec.Query.Status)
	}
	return nil
}

// ---- reading queries ----

// canSeeQuery applies visibility: staff see every query, researchers only
// their projects'.
func canSeeQuery(ctx context.Context, tx Tx, u *User, q *Query) (bool, error) {
	if isStaff(u) {
		return true, nil
	}
	if !u.HasRole(RoleResearcher) {
		return false, nil
	}
	return tx.IsMember(ctx, q.ProjectID, u.Subject)
}

// visibleQuery loads query id for u, refusing (audited) a caller who may
// not see it.
func visibleQuery(ctx context.Context, tx Tx, u *User, id int64) (*Query, error) {
	rec, err := tx.FindQuery(ctx, id)
	if err != nil {
		return nil, err
	}
	if ok, err := canSeeQuery(ctx, tx, u, rec.Query); err != nil {
		return nil, err
	} else if !ok {
		return nil, deny("query.read", queryObject(id), "you may not see query %d", id)
	}
	return rec.Query, nil
}

// FindQueryByID returns a query with its history.
func (s *Service) FindQueryByID(ctx context.Context, id int64) (*Query, error) {
	u, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	var q *Query
	err = s.view(ctx, u, func(tx Tx) error {
		if q, err = visibleQuery(ctx, tx, u, id); err != nil {
			return err
		}
		if q.History, err = tx.FindEvents(ctx, id); err != nil {
			return err
		}
		researcher, err := researcherFor(ctx, tx, u, q.ProjectID)
		if err != nil {
			return err
		}
		if researcher {
			q = s.researcherQuery(q, q.History, s.cutoff(), true)
			return nil
		}
		return refreshFlags(ctx, tx, q)
	})
	if err != nil {
		return nil, err
	}
	return q, nil
}

// FindQueries lists queries, oldest first: staff see all, researchers their
// projects' queries.
func (s *Service) FindQueries(ctx context.Context, f QueryFilter) ([]*Query, int, error) {
	u, err := s.authorize(ctx, "query.list", "queries", RoleResearcher, RoleReviewer, RoleOutputChecker, RoleAdmin)
	if err != nil {
		return nil, 0, err
	}
	member := ""
	if !isStaff(u) {
		member = u.Subject
	}
	if f.Status != nil && !f.Status.Valid() {
		return nil, 0, Errorf(EINVALID, "unknown status %q", *f.Status)
	}
	f.Limit = pageLimit(f.Limit)
	var qs []*Query
	var n int
	err = s.store.View(ctx, func(tx Tx) error {
		if researcherSees(u) {
			qs, n, err = s.findResearcherQueries(ctx, tx, f, member, s.cutoff())
			return err
		}
		if qs, n, err = tx.FindQueries(ctx, f, member); err != nil {
			return err
		}
		qs, n, err = s.memberViews(ctx, tx, u, qs, n, f.Status, s.cutoff())
		return err
	})
	return qs, n, err
}

// ReviewQueue returns submitted queries, oldest first, for reviewers.
func (s *Service) ReviewQueue(ctx context.Context) ([]*Query, error) {
	u, err := s.authorize(ctx, "review.queue", "queries", RoleReviewer)
	if err != nil {
		return nil, err
	}
	return s.queue(ctx, u, StatusSubmitted)
}

// OutputQueue returns outputs (results and failure notices) awaiting an
// output check, oldest first.
func (s *Service) OutputQueue(ctx context.Context) ([]*Query, error) {
	u, err := s.authorize(ctx, "output.queue", "queries", RoleOutputChecker)
	if err != nil {
		return nil, err
	}
	return s.queue(ctx, u, StatusAwaitingOutputCheck)
}

// queue lists the queries in st, their risk flags showing the earlier
// queries' statuses as they are now; the caller's own projects' queries as
// their researchers see them (memberViews).
func (s *Service) queue(ctx context.Context, u *User, st Status) ([]*Query, error) {
	var qs []*Query
	err := s.store.View(ctx, func(tx Tx) error {
		var err error
		var n int
		if qs, n, err = tx.FindQueries(ctx, QueryFilter{Status: &st, Limit: MaxLimit}, ""); err != nil {
			return err
		}
		for _, q := range qs {
			if err := refreshFlags(ctx, tx, q); err != nil {
				return err
			}
		}
		qs, _, err = s.memberViews(ctx, tx, u, qs, n, &st, s.cutoff())
		return err
	})
	return qs, err
}

// ---- decisions ----

// lockQuery locks and loads a query for a state change.
func lockQuery(ctx context.Context, tx Tx, id int64) (*QueryRecord, error) {
	if err := tx.LockQuery(ctx, id); err != nil {
		return nil, err
	}
	return tx.FindQuery(ctx, id)
}

// move changes a query's status, records the event and appends the audit
// entry: the last write of the transaction.
func move(ctx context.Context, tx Tx, rec *QueryRecord, to Status, actor, comment, action, detail string, at time.Time) error {
	q := rec.Query
	from := q.Status
	if err := checkTransition(q.ID, from, to); err != nil {
		return err
	}
	if o, ok := tx.(*observedTx); ok {
		t := Transition{From: from, To: to, InState: at.Sub(q.UpdatedAt)}
		if from == StatusRunning && to == StatusAwaitingOutputCheck {
			t.FailureCode = q.FailureCode
		}
		o.transitions = append(o.transitions, t)
	}
	q.Status = to
	q.UpdatedAt = at
	if err := tx.UpdateQuery(ctx, rec); err != nil {
		return err
	}
	if err := tx.AddEvent(ctx, q.ID, Event{From: from, To: to, Actor: actor, Comment: comment, At: at}); err != nil {
		return err
	}
	d := auditDetail("from", string(from), "to", string(to))
	if comment != "" {
		d += " " + auditDetail("comment", comment)
	}
	if detail != "" {
		d += " " + detail
	}
	return appendAudit(ctx, tx, at, actor, action, queryObject(q.ID), d)
}

// decide runs a decision on query id in one transaction and returns the
// query with its history.
func (s *Service) decide(ctx context.Context, u *User, id int64, fn func(tx Tx, rec *QueryRecord) error) (*Query, error) {
	var q *Query
	err := s.update(ctx, u, func(tx Tx) error {
		rec, err := lockQuery(ctx, tx, id)
		if err != nil {
			return err
		}
		if err := fn(tx, rec); err != nil {
			return err
		}
		q = rec.Query
		q.History, err = tx.FindEvents(ctx, id)
		return err
	})
	if err != nil {
		return nil, err
	}
	return q, nil
}

// CancelQuery withdraws a query before a reviewer decides on it. Only its
// submitter may.
//
// An approved query cannot be cancelled: whether a cancel came before or
// after the site leased the job would tell the researcher when the job
// started, to the instant, and that depends on how long the jobs before it
// ran (researcher.go hides it otherwise). The refusal says the same whatever
// has happened since the submission.
func (s *Service) CancelQuery(ctx context.Context, id int64) (*Query, error) {
	u, err := s.authorize(ctx, "query.cancel", queryObject(id), RoleResearcher)
	if err != nil {
		return nil, err
	}
	now := s.clock()
	q, err := s.decide(ctx, u, id, func(tx Tx, rec *QueryRecord) error {
		if rec.Query.SubmittedBy != u.Subject {
			return deny("query.cancel", queryObject(id), "only the submitter may cancel query %d", id)
		}
		if rec.Query.Status != StatusSubmitted {
			return wrapf(ErrIllegalTransition, "query %d cannot be cancelled: a query can be cancelled only until a reviewer decides on it", id)
		}
		return move(ctx, tx, rec, StatusCancelled, u.Subject, "", "query.cancel", "", now)
	})
	if err != nil {
		return nil, err
	}
	// Only the submitter cancels: a researcher of the project.
	return s.researcherQuery(q, q.History, s.cutoff(), true), nil
}

// ApproveQuery approves a submitted query and reserves its cost in the
// project's budget in the same transaction. A reviewer cannot approve their
// own query; approval that would overspend is refused.
func (s *Service) ApproveQuery(ctx context.Context, id int64, comment string) (*Query, error) {
	u, err := s.authorize(ctx, "query.approve", queryObject(id), RoleReviewer)
	if err != nil {
		return nil, err
	}
	now := s.clock()
	return s.decide(ctx, u, id, func(tx Tx, rec *QueryRecord) error {
		q := rec.Query
		if err := checkTransition(id, q.Status, StatusApproved); err != nil {
			return err
		}
		member, err := tx.IsMember(ctx, q.ProjectID, u.Subject)
		if err != nil {
			return err
		}
		if err := reviewDuty(u, q, member, "query.approve"); err != nil {
			return err
		}
		if err := tx.LockProject(ctx, q.ProjectID); err != nil {
			return err
		}
		p, err := tx.FindProject(ctx, q.ProjectID)
		if err != nil {
			return err
		}
		if err := usable(p, now); err != nil {
			return err
		}
		b := p.Budget
		if over(b.EpsilonSpent+b.EpsilonReserved, q.Cost.Epsilon, p.EpsilonBudget) {
			return wrapf(ErrBudgetExhausted, "approving query %d would overspend project %d: it costs ε %s and ε %s remains",
				id, p.ID, fmtFloat(q.Cost.Epsilon), fmtFloat(b.EpsilonRemaining))
		}
		if over(b.DeltaSpent+b.DeltaReserved, q.Cost.Delta, p.DeltaBudget) {
			return wrapf(ErrBudgetExhausted, "approving query %d would overspend project %d: it costs δ %s and δ %s remains",
				id, p.ID, fmtFloat(q.Cost.Delta), fmtFloat(b.DeltaRemaining))
		}
		rec.Ledger = LedgerReserved
		q.ApprovedBy = u.Subject
		return move(ctx, tx, rec, StatusApproved, u.Subject, comment, "query.approve",
			auditDetail("reserved_epsilon", fmtFloat(q.Cost.Epsilon), "reserved_delta", fmtFloat(q.Cost.Delta)), now)
	})
}

// RejectQuery rejects a submitted query with a reason.
func (s *Service) RejectQuery(ctx context.Context, id int64, reason string) (*Query, error) {
	u, err := s.authorize(ctx, "query.reject", queryObject(id), RoleReviewer)
	if err != nil {
		return nil, err
	}
	if strings.TrimSpace(reason) == "" {
		return nil, Errorf(EINVALID, "a reason is required to reject a query")
	}
	now := s.clock()
	return s.decide(ctx, u, id, func(tx Tx, rec *QueryRecord) error {
		if err := checkTransition(id, rec.Query.Status, StatusRejected); err != nil {
			return err
		}
		member, err := tx.IsMember(ctx, rec.Query.ProjectID, u.Subject)
		if err != nil {
			return err
		}
		if err := reviewDuty(u, rec.Query, member, "query.reject"); err != nil {
			return err
		}
		return move(ctx, tx, rec, StatusRejected, u.Subject, reason, "query.reject", "", now)
	})
}

// outputDuty applies checkDuty to u and q in tx.
func outputDuty(ctx context.Context, tx Tx, u *User, q *Query, action string) error {
	member, err := tx.IsMember(ctx, q.ProjectID, u.Subject)
	if err != nil {
		return err
	}
	return checkDuty(u, q, member, action)
}

// ReleaseQuery releases a checked output to the researchers: a result
// becomes released; a failure notice makes the query failed, and the
// researchers learn only FailedMessage.
func (s *Service) ReleaseQuery(ctx context.Context, id int64, comment string) (*Query, error) {
	u, err := s.authorize(ctx, "output.release", queryObject(id), RoleOutputChecker)
	if err != nil {
		return nil, err
	}
	now := s.clock()
	return s.decide(ctx, u, id, func(tx Tx, rec *QueryRecord) error {
		if err := checkTransition(id, rec.Query.Status, StatusReleased); err != nil {
			return err
		}
		to := StatusReleased
		if rec.Query.FailureCode != "" {
			to = StatusFailed
		}
		if err := outputDuty(ctx, tx, u, rec.Query, "output.release"); err != nil {
			return err
		}
		if err := tx.SetOutputReleased(ctx, id, now); err != nil {
			return err
		}
		return move(ctx, tx, rec, to, u.Subject, comment, "output.release", "", now)
	})
}

// WithholdQuery withholds a checked output with a reason.
func (s *Service) WithholdQuery(ctx context.Context, id int64, reason string) (*Query, error) {
	u, err := s.authorize(ctx, "output.withhold", queryObject(id), RoleOutputChecker)
	if err != nil {
		return nil, err
	}
	if strings.TrimSpace(reason) == "" {
		return nil, Errorf(EINVALID, "a reason is required to withhold an output")
	}
	now := s.clock()
	return s.decide(ctx, u, id, func(tx Tx, rec *QueryRecord) error {
		if err := checkTransition(id, rec.Query.Status, StatusWithheld); err != nil {
			return err
		}
		if err := outputDuty(ctx, tx, u, rec.Query, "output.withhold"); err != nil {
			return err
		}
		return move(ctx, tx, rec, StatusWithheld, u.Subject, reason, "output.withhold", "", now)
	})
}

// FindOutput returns a query's output as the output checker sees it (the
// full disclosure report, or the failure notice): to output checkers who
// neither submitted the query nor are members of its project
// (checkerView), once it exists. Everyone else reads a released output
// through ReleasedOutput. Every view is audited.
func (s *Service) FindOutput(ctx context.Context, id int64) (*Output, error) {
	u, err := s.authorize(ctx, "output.view", queryObject(id), RoleOutputChecker)
	if err != nil {
		return nil, err
	}
	o, _, err := s.readOutput(ctx, u, id, "output.view", asChecker)
	return o, err
}

// ReleasedOutput returns a released output as the project's researchers see
// it (ReleasedResult), and audits the view.
func (s *Service) ReleasedOutput(ctx context.Context, id int64) (*ReleasedResult, error) {
	u, err := s.authorize(ctx, "output.view", queryObject(id), RoleResearcher)
	if err != nil {
		return nil, err
	}
	o, _, err := s.readOutput(ctx, u, id, "output.view", asMember)
	if err != nil {
		return nil, err
	}
	return s.releasedResult(o)
}

// DownloadResult returns a released output as the project's researchers see
// it (ReleasedResult), and audits the download.
func (s *Service) DownloadResult(ctx context.Context, id int64) (*ReleasedResult, error) {
	u, err := s.authorize(ctx, "result.download", queryObject(id), RoleResearcher)
	if err != nil {
		return nil, err
	}
	o, _, err := s.readOutput(ctx, u, id, "result.download", asMember)
	if err != nil {
		return nil, err
	}
	return s.releasedResult(o)
}

// OutputView is a query's output as its reader may see it: exactly one of
// Checker (an output checker's view: FindOutput) and Released (a
// researcher's: ReleasedOutput) is set.
type OutputView struct {
	Checker  *Output
	Released *ReleasedResult
}

// ViewOutput returns query id's output as the caller may see it: as an
// output checker when separation of duties lets them check it, else as a
// researcher of the project once released. Every view is audited.
func (s *Service) ViewOutput(ctx context.Context, id int64) (*OutputView, error) {
	u, err := s.authorize(ctx, "output.view", queryObject(id), RoleOutputChecker, RoleResearcher)
	if err != nil {
		return nil, err
	}
	o, checker, err := s.readOutput(ctx, u, id, "output.view", asCheckerOrMember)
	if err != nil {
		return nil, err
	}
	if checker {
		return &OutputView{Checker: o}, nil
	}
	r, err := s.releasedResult(o)
	if err != nil {
		return nil, err
	}
	return &OutputView{Released: r}, nil
}

// releasedResult is what a researcher receives of a released output.
func (s *Service) releasedResult(o *Output) (*ReleasedResult, error) {
	if o.Result == nil || o.ReleasedAt == nil { // a released output is a result; fail closed
		return nil, fmt.Errorf("released output of query %d has no result or release time", o.QueryID)
	}
	return &ReleasedResult{QueryID: o.QueryID, ReleasedAt: *o.ReleasedAt, Result: o.Result.ForResearcher()}, nil
}

// outputReader says as whom readOutput reads an output.
type outputReader int

const (
	asChecker         outputReader = iota // only as an output checker (checkerView)
	asMember                              // only as a researcher of the project, once released
	asCheckerOrMember                     // as a checker if checkerView allows, else as a member
)

// readOutput returns query id's output to u, and whether u read it as an
// output checker: as a checker when how and checkerView allow it, else as
// a researcher member once it is released and the release is visible to
// researchers (researcher.go).
func (s *Service) readOutput(ctx context.Context, u *User, id int64, action string, how outputReader) (*Output, bool, error) {
	now := s.clock()
	var o *Output
	var checker bool
	err := s.update(ctx, u, func(tx Tx) error {
		rec, err := tx.FindQuery(ctx, id)
		if err != nil {
			return err
		}
		q := rec.Query
		member, err := tx.IsMember(ctx, q.ProjectID, u.Subject)
		if err != nil {
			return err
		}
		checker = how != asMember && checkerView(u, q, member)
		var releasedAt time.Time // as researchers see it
		if !checker {
			released, at, err := s.releasedToResearchers(ctx, tx, q)
			if err != nil {
				return err
			}
			releasedAt = at
			switch {
			case how == asChecker:
				return deny(action, queryObject(id), "only an output checker who neither submitted query %d nor is a member of its project reads its output as a checker; its researchers read it once released", id)
			case !member:
				return deny(action, queryObject(id), "you are not a member of the project of query %d", id)
			case !released && u.HasRole(RoleOutputChecker):
				return deny(action, queryObject(id), "the output of query %d has not been released, and you submitted it or are a member of its project: another output checker checks it", id)
			case !released:
				return deny(action, queryObject(id), "the output of query %d has not been released", id)
			case !u.HasRole(RoleResearcher):
				return deny(action, queryObject(id), "released results are for the project's researchers")
			}
		}
		switch q.Status {
		case StatusAwaitingOutputCheck, StatusReleased, StatusWithheld, StatusFailed:
		default:
			return Errorf(ENOTFOUND, "query %d has no output (it is %s)", id, q.Status)
		}
		if o, err = tx.FindOutput(ctx, id); err != nil {
			return err
		}
		if !checker {
			o.ReleasedAt = &releasedAt
		}
		return appendAudit(ctx, tx, now, u.Subject, action, queryObject(id), auditDetail("status", string(q.Status)))
	})
	if err != nil {
		return nil, false, err
	}
	return o, checker, nil
}

// releasedToResearchers reports whether q is released and its researchers
// see it released already, and when they see the release.
func (s *Service) releasedToResearchers(ctx context.Context, tx Tx, q *Query) (bool, time.Time, error) {
	if q.Status != StatusReleased {
		return false, time.Time{}, nil
	}
	events, err := tx.FindEvents(ctx, q.ID)
	if err != nil {
		return false, time.Time{}, err
	}
	v := s.researcherQuery(q, events, s.cutoff(), false)
	return v.Status == StatusReleased, v.UpdatedAt, nil
}

// ---- leases ----

// newToken returns a random lease token and its hash.
func (s *Service) newToken() (token, hash string, err error) {
	b := make([]byte, 32)
	if _, err := io.ReadFull(s.rand, b); err != nil {
		return "", "", fmt.Errorf("lease token: %w", err)
	}
	token = hex.EncodeToString(b)
	return token, hashString(token), nil
}

// LeaseJob gives site the oldest approved job over one of its datasets, or a
// running job whose lease expired. It returns nil, nil when there is none.
// The first lease turns the budget reservation into a final charge.
//
// Every poll records the site as seen, with the agent's version when it
// reports one, whether or not there is a job.
func (s *Service) LeaseJob(ctx context.Context, siteID, version string) (*Lease, error) {
	u, err := s.agentCaller(ctx, "job.lease", siteObject(siteID), siteID)
	if err != nil {
		return nil, err
	}
	if err := validName("site id", siteID); err != nil {
		return nil, err
	}
	if err := validVersion(version); err != nil {
		return nil, err
	}
	token, tokenHash, err := s.newToken()
	if err != nil {
		return nil, err
	}
	now := s.clock()
	var lease *Lease
	err = s.update(ctx, u, func(tx Tx) error {
		if err := registeredSite(ctx, tx, u, "job.lease", siteObject(siteID), version, now); err != nil {
			return err
		}
		for {
			id, err := tx.NextLeasable(ctx, siteID, now)
			if err != nil || id == 0 {
				return err
			}
			rec, err := tx.FindQuery(ctx, id)
			if err != nil {
				return err
			}
			q := rec.Query
			// A running job that still holds a lease token is leasable only
			// because that lease lapsed (a retryable failure clears it).
			lapsed := q.Status == StatusRunning && rec.LeaseTokenHash != ""
			if q.Status == StatusRunning && q.Attempts >= s.maxAttempts {
				// The last attempt's lease ran out: the run failed, and its
				// failure notice goes to the output check.
				rec.LeaseExpiresAt = time.Time{}
				rec.LeaseTokenHash = ""
				failure := Failure{Code: FailureLeaseExpired, Detail: "the last attempt's lease expired without a report from the site"}
				if err := s.failureNotice(ctx, tx, rec, failure, "broker", now); err != nil {
					return err
				}
				leaseLapsed(tx, lapsed)
				continue
			}
			q.Attempts++
			rec.LeaseTokenHash = tokenHash
			rec.LeaseSite = siteID
			rec.LeaseExpiresAt = now.Add(s.leaseTTL)
			charged := ""
			if rec.Ledger == LedgerReserved {
				rec.Ledger = LedgerCharged
				charged = fmtFloat(q.Cost.Epsilon)
			}
			detail := auditDetail("site", siteID, "attempt", strconv.Itoa(q.Attempts))
			if charged != "" {
				detail += " " + auditDetail("charged_epsilon", charged, "charged_delta", fmtFloat(q.Cost.Delta))
			}
			if err := move(ctx, tx, rec, StatusRunning, u.Subject, "", "job.lease", detail, now); err != nil {
				return err
			}
			leaseLapsed(tx, lapsed)
			lease = &Lease{
				QueryID: q.ID, Token: token, SiteID: siteID, ExpiresAt: rec.LeaseExpiresAt, Attempt: q.Attempts,
				Dataset: q.Dataset, SQL: q.SQL, SQLHash: q.SQLHash, Epsilon: q.Cost.Epsilon, Delta: q.Cost.Delta,
			}
			return nil
		}
	})
	if err != nil {
		return nil, err
	}
	return lease, nil
}

// failureNotice ends a running query's run with a failure: the notice is
// stored as its output and the query moves to the output check, exactly as
// a result would. Researchers see the query awaiting output checking and,
// once a checker releases the notice, failed with FailedMessage.
func (s *Service) failureNotice(ctx context.Context, tx Tx, rec *QueryRecord, f Failure, actor string, now time.Time) error {
	q := rec.Query
	q.FailureCode, q.FailureDetail = f.Code, f.Detail
	if err := tx.PutOutput(ctx, &Output{QueryID: q.ID, Failure: &f, SiteID: rec.LeaseSite, CreatedAt: now}); err != nil {
		return err
	}
	return move(ctx, tx, rec, StatusAwaitingOutputCheck, actor, "run failed: "+f.Code, "job.fail",
		auditDetail("site", rec.LeaseSite, "code", f.Code, "attempts", strconv.Itoa(q.Attempts)), now)
}

// siteJob locks and loads query id for a call by u's site: the site must
// be registered and the query leased to it. A lease token alone is not
// enough: a job leased by one site cannot be reported by another.
func siteJob(ctx context.Context, tx Tx, u *User, action string, id int64, now time.Time) (*QueryRecord, error) {
	if err := registeredSite(ctx, tx, u, action, queryObject(id), "", now); err != nil {
		return nil, err
	}
	rec, err := lockQuery(ctx, tx, id)
	if err != nil {
		return nil, err
	}
	if rec.LeaseSite != "" && rec.LeaseSite != u.Site {
		return nil, deny(action, queryObject(id), "query %d is not leased to site %q", id, u.Site)
	}
	return rec, nil
}

// holdsLease checks token against a running query's lease.
func holdsLease(rec *QueryRecord, token string) error {
	if rec.Query.Status != StatusRunning || rec.LeaseTokenHash == "" || hashString(token) != rec.LeaseTokenHash {
		return wrapf(ErrLeaseExpired, "the lease on query %d has expired or is held by another agent", rec.Query.ID)
	}
	return nil
}

// HeartbeatJob extends a lease. A lease that ran out may still be extended
// while no other agent has taken the job.
func (s *Service) HeartbeatJob(ctx context.Context, id int64, token string) (*Lease, error) {
	u, err := s.agentCaller(ctx, "job.heartbeat", queryObject(id), "")
	if err != nil {
		return nil, err
	}
	now := s.clock()
	var lease *Lease
	err = s.update(ctx, u, func(tx Tx) error {
		rec, err := siteJob(ctx, tx, u, "job.heartbeat", id, now)
		if err != nil {
			return err
		}
		if err := holdsLease(rec, token); err != nil {
			return err
		}
		rec.LeaseExpiresAt = now.Add(s.leaseTTL)
		if err := tx.UpdateQuery(ctx, rec); err != nil {
			return err
		}
		q := rec.Query
		lease = &Lease{
			QueryID: q.ID, Token: token, SiteID: rec.LeaseSite, ExpiresAt: rec.LeaseExpiresAt, Attempt: q.Attempts,
			Dataset: q.Dataset, SQL: q.SQL, SQLHash: q.SQLHash, Epsilon: q.Cost.Epsilon, Delta: q.Cost.Delta,
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return lease, nil
}

// CompleteJob stores a job's protected result and moves it to the output
// check. Completing again with the same token is a no-op success.
func (s *Service) CompleteJob(ctx context.Context, id int64, token string, res dp.Result) error {
	u, err := s.agentCaller(ctx, "job.complete", queryObject(id), "")
	if err != nil {
		return err
	}
	if err := validateResult(&res); err != nil {
		return err
	}
	spec, err := s.approvedSpec(ctx, u, id)
	if err != nil {
		return err
	}
	now := s.clock()
	return s.update(ctx, u, func(tx Tx) error {
		rec, err := siteJob(ctx, tx, u, "job.complete", id, now)
		if err != nil {
			return err
		}
		q := rec.Query
		switch q.Status {
		case StatusAwaitingOutputCheck, StatusReleased, StatusWithheld:
			if rec.LeaseTokenHash != "" && hashString(token) == rec.LeaseTokenHash {
				return nil
			}
		}
		if q.Status != StatusRunning {
			if err := checkTransition(id, q.Status, StatusAwaitingOutputCheck); err != nil {
				return err
			}
		}
		if err := holdsLease(rec, token); err != nil {
			return err
		}
		if err := spec.CheckResult(&res); err != nil {
			return Errorf(EINVALID, "the result of query %d does not match the approved query: %v", id, err)
		}
		if err := tx.PutOutput(ctx, &Output{QueryID: id, Result: &res, SiteID: rec.LeaseSite, CreatedAt: now}); err != nil {
			return err
		}
		rec.LeaseExpiresAt = time.Time{}
		return move(ctx, tx, rec, StatusAwaitingOutputCheck, u.Subject, "", "job.complete",
			auditDetail("site", rec.LeaseSite, "rows", strconv.Itoa(len(res.Rows))), now)
	})
}

// approvedSpec compiles query id again, as the site does, to learn what
// its result must look like: the approved SQL at the approved ε over the
// dataset's catalog (the site compiles against the catalog it published).
// The compilation runs outside any transaction and comes from the plan
// cache after the first completion of a query.
func (s *Service) approvedSpec(ctx context.Context, u *User, id int64) (dp.Spec, error) {
	var q *Query
	var cat *queries.Catalog
	var hash string
	err := s.view(ctx, u, func(tx Tx) error {
		rec, err := tx.FindQuery(ctx, id)
		if err != nil {
			return err
		}
		q = rec.Query
		cat, hash, err = s.catalog(ctx, tx, q.Dataset)
		return err
	})
	if err != nil {
		return dp.Spec{}, err
	}
	plan, err := s.compile(ctx, cat, hash, q.SQL, q.Cost.Epsilon)
	var ref *queries.Refusal
	switch {
	case errors.As(err, &ref):
		return dp.Spec{}, Errorf(EINVALID, "query %d no longer compiles against dataset %q's catalog: its result cannot be checked", id, q.Dataset)
	case err != nil:
		return dp.Spec{}, s.compileError(err, q.ProjectID)
	}
	if c := plan.Spec.Cost(); !sameCost(c, q.Cost) {
		return dp.Spec{}, Errorf(EINVALID, "query %d costs ε %s, δ %s over dataset %q's current catalog, not the approved ε %s, δ %s: its result cannot be checked",
			id, fmtFloat(c.Epsilon), fmtFloat(c.Delta), q.Dataset, fmtFloat(q.Cost.Epsilon), fmtFloat(q.Cost.Delta))
	}
	return plan.Spec, nil
}

// sameCost compares two costs within the budget tolerance.
func sameCost(a, b dp.Cost) bool {
	near := func(x, y float64) bool { return math.Abs(x-y) <= budgetTolerance*math.Max(math.Abs(y), 1e-12) }
	return near(a.Epsilon, b.Epsilon) && near(a.Delta, b.Delta)
}

// validateResult checks a result's table is well formed.
func validateResult(res *dp.Result) error {
	if len(res.Columns) == 0 {
		return Errorf(EINVALID, "result has no columns")
	}
	for i, row := range res.Rows {
		if len(row) != len(res.Columns) {
			return Errorf(EINVALID, "result row %d has %d cells for %d columns", i, len(row), len(res.Columns))
		}
	}
	for _, x := range []float64{res.Report.Epsilon, res.Report.Delta} {
		if math.IsNaN(x) || math.IsInf(x, 0) || x < 0 {
			return Errorf(EINVALID, "result report has an invalid ε or δ")
		}
	}
	return nil
}

// retryableFailures are the failure codes that may say more about the
// site's host than about the query (a child killed from outside, a scratch
// disk that filled up): such a run is leased again, up to MaxAttempts. Any
// other code (refused, invalid, timeout, memory, too_large, unavailable, or
// one this broker does not know) would only fail again: it ends the run at
// once. Either way the researcher sees neither the attempts nor the code.
var retryableFailures = []string{"crashed", "internal"}

// FailJob records a failed run reported by the site agent. A retryable
// failure makes the job leasable again while it has had fewer than
// MaxAttempts leases; otherwise the failure notice goes to the output check
// (failureNotice).
func (s *Service) FailJob(ctx context.Context, id int64, token, code, message string) error {
	u, err := s.agentCaller(ctx, "job.fail", queryObject(id), "")
	if err != nil {
		return err
	}
	if err := validCode(code); err != nil {
		return err
	}
	if len(message) > 1000 {
		message = message[:1000]
	}
	now := s.clock()
	return s.update(ctx, u, func(tx Tx) error {
		rec, err := siteJob(ctx, tx, u, "job.fail", id, now)
		if err != nil {
			return err
		}
		if rec.Query.Status != StatusRunning {
			if err := checkTransition(id, rec.Query.Status, StatusAwaitingOutputCheck); err != nil {
				return err
			}
		}
		if err := holdsLease(rec, token); err != nil {
			return err
		}
		q := rec.Query
		rec.LeaseExpiresAt = time.Time{}
		rec.LeaseTokenHash = ""
		if slices.Contains(retryableFailures, code) && q.Attempts < s.maxAttempts {
			// Back to leasable: running with no lease. The charge stays.
			return move(ctx, tx, rec, StatusRunning, u.Subject,
				fmt.Sprintf("attempt %d failed: %s", q.Attempts, code), "job.fail",
				auditDetail("site", rec.LeaseSite, "code", code, "attempt", strconv.Itoa(q.Attempts)), now)
		}
		return s.failureNotice(ctx, tx, rec, Failure{Code: code, Detail: message}, u.Subject, now)
	})
}

// ---- audit and register ----

// FindAuditEntries lists audit entries, oldest first. Admins only.
func (s *Service) FindAuditEntries(ctx context.Context, f AuditFilter) ([]*AuditEntry, int, error) {
	u, err := s.authorize(ctx, "audit.read", "audit", RoleAdmin)
	if err != nil {
		return nil, 0, err
	}
	f.Limit = pageLimit(f.Limit)
	var es []*AuditEntry
	var n int
	err = s.view(ctx, u, func(tx Tx) error {
		es, n, err = tx.FindAuditEntries(ctx, f)
		return err
	})
	return es, n, err
}

// VerifyAudit recomputes the audit chain. Admins only.
func (s *Service) VerifyAudit(ctx context.Context) (*AuditVerification, error) {
	if _, err := s.authorize(ctx, "audit.verify", "audit", RoleAdmin); err != nil {
		return nil, err
	}
	return VerifyChain(ctx, s.store, nil)
}

// AuditHead returns the audit chain's current head for the public
// register. Anyone may read it.
func (s *Service) AuditHead(ctx context.Context) (*AuditHead, error) {
	h := &AuditHead{}
	err := s.store.View(ctx, func(tx Tx) error {
		var err error
		h.Entries, h.Hash, err = tx.AuditHead(ctx)
		return err
	})
	if err != nil {
		return nil, err
	}
	return h, nil
}

// Register returns the public transparency register. Anyone may read it.
// Like a researcher, the public sees a run's charge only once the run's
// start is visible (researcher.go): the ε spent moves when a job is leased,
// which depends on how long the jobs before it ran.
func (s *Service) Register(ctx context.Context) ([]*RegisterEntry, error) {
	var out []*RegisterEntry
	err := s.store.View(ctx, func(tx Tx) error {
		var err error
		if out, err = tx.Register(ctx); err != nil {
			return err
		}
		started, err := s.startedAfter(ctx, tx, nil, s.cutoff())
		if err != nil {
			return err
		}
		for _, q := range started {
			for _, e := range out {
				if e.ProjectID == q.ProjectID {
					e.EpsilonSpent, _ = shift(e.EpsilonSpent, 0, q.Cost.Epsilon)
				}
			}
		}
		return nil
	})
	return out, err
}

// ---- small helpers ----

func fmtFloat(f float64) string { return strconv.FormatFloat(f, 'g', -1, 64) }

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
