package broker

import (
	"context"
	"time"
)

// Store is the persistence the service needs. Implementations (broker/sqlite,
// broker/postgres) are thin: they run SQL and translate driver errors into
// *Error; every rule lives in Service.
type Store interface {
	// Update runs fn in a read-write transaction and commits if fn returns
	// nil. Rows fn means to change must first be locked with LockProject or
	// LockQuery so that concurrent transactions (also in other broker
	// processes sharing the database) serialise on them.
	Update(ctx context.Context, fn func(Tx) error) error
	// UpdateGrouped is Update for frequent, short writes: the store may run
	// fn in a transaction shared with other concurrent UpdateGrouped calls,
	// so that they share one commit (and its sync to disk). fn runs alone,
	// after the calls ahead of it, and its writes are kept or discarded as
	// a whole, on their own: a failing fn does not affect the others. It
	// returns only once the shared transaction has committed; if that
	// fails, every call sharing it fails and nothing of any is written.
	UpdateGrouped(ctx context.Context, fn func(Tx) error) error
	// View runs fn in a read-only transaction.
	View(ctx context.Context, fn func(Tx) error) error
	// ReadQuery returns query id (with its rewritten SQL only when
	// rewritten is set), its events oldest first and whether subject is a
	// member of its project, all as of one moment, for the frequent read
	// of one query (FindQueryByID); ENOTFOUND when it is missing. The
	// record leaves out what only transitions read: NormalizedHash,
	// ShapeHash, Ledger and the lease fields are empty.
	ReadQuery(ctx context.Context, id int64, subject string, rewritten bool) (*QueryRecord, []Event, bool, error)
	// SwapBucket stores token bucket name's next state if the stored one is
	// still old, in one statement outside any transaction, and reports
	// whether it did (TakeToken's fast path; false when the bucket changed
	// or is missing).
	SwapBucket(ctx context.Context, name string, old, next Bucket) (bool, error)
	Ping(ctx context.Context) error
	Close() error
}

// LedgerState is where a query stands in its project's budget ledger. The
// budget figures are always derived from these states; nothing else holds
// them.
type LedgerState string

// Ledger states. Stored values never change.
const (
	LedgerNone     LedgerState = "none"     // not approved: costs nothing
	LedgerReserved LedgerState = "reserved" // approved, not started
	LedgerCharged  LedgerState = "charged"  // run started: spent for good
	LedgerFreed    LedgerState = "freed"    // reservation released by a cancel (approved queries can no longer be cancelled; older rows keep it)
)

// QueryRecord is a query with the fields only the service sees: the
// normalised form used for risk flags, the ledger state and the lease.
type QueryRecord struct {
	Query *Query

	// Normalized, Predicates, PredicateSet and PredicateKeys are written by
	// CreateQuery; FindQuery and FindQueries leave them empty (nothing after
	// submission uses them, and reading them costs every read).
	Normalized     string
	NormalizedHash string
	// ShapeHash identifies the query's output shape (dataset, groups,
	// aggregates): queries with the same shape whose predicates differ by
	// one are a differencing risk.
	ShapeHash  string
	Predicates []string
	// PredicateSet and PredicateKeys are PredicateKeys(ShapeHash,
	// Predicates): what the differencing lookup matches on.
	PredicateSet  string
	PredicateKeys []string

	Ledger LedgerState
	// LeaseTokenHash is the hex SHA-256 of the current (or completing)
	// lease token; the token itself is never stored.
	LeaseTokenHash string
	LeaseSite      string
	LeaseExpiresAt time.Time

	// Federation (issue 21): Sites is how many sites the query runs at (0
	// for a single-site dataset), Disjoint whether the catalog declared
	// disjoint populations, LedgerFactor how many times its cost counts in
	// the project's ledger, DeadlineAt when it fails as a whole unless
	// every site has reported (zero before approval).
	Sites        int
	Disjoint     bool
	LedgerFactor int
	DeadlineAt   time.Time
}

// JobStatus is where one site's part of a federated query stands.
type JobStatus string

// Job statuses. Stored values never change.
const (
	JobPending JobStatus = "pending" // not leased yet
	JobRunning JobStatus = "running" // leased (or leasable again after a lapse or retryable failure)
	JobDone    JobStatus = "done"    // its partial result is stored
	JobFailed  JobStatus = "failed"  // the site's run failed for good
)

// QueryJob is one site's part of a federated query, with that site's
// budget ledger state for it.
type QueryJob struct {
	QueryID        int64
	SiteID         string
	ProjectID      int64
	Status         JobStatus
	Attempts       int
	LeaseTokenHash string
	LeaseExpiresAt time.Time
	Ledger         LedgerState
	// Partial is the site's protected partial result (dp.Partial as JSON),
	// nil until it reports.
	Partial       []byte
	FailureCode   string
	FailureDetail string
	UpdatedAt     time.Time
}

// CatalogHolder is one site's published catalog of a dataset.
type CatalogHolder struct {
	SiteID string
	Hash   string
	Body   []byte
	// Since is when the site first published the dataset.
	Since time.Time
}

// SimilarQuery is an earlier query of a project used for risk flags.
type SimilarQuery struct {
	ID         int64
	SQL        string
	Status     Status
	Predicates []string // set for FindSimilar's differencing candidate only
}

// Tx is one transaction's operations. Methods that find a single row return
// an *Error with code ENOTFOUND when it is missing.
type Tx interface {
	// Projects. FindProject fills Budget from the queries' ledger states.
	CreateProject(ctx context.Context, p *Project) error
	UpdateProject(ctx context.Context, p *Project) error
	LockProject(ctx context.Context, id int64) error
	// LockProjectRow is LockProject returning the project, in one
	// statement, without its Budget (zero): the ledger it would be read
	// from may change while the lock is waited for. For submissions, which
	// reserve nothing.
	LockProjectRow(ctx context.Context, id int64) (*Project, error)
	FindProject(ctx context.Context, id int64) (*Project, error)
	FindProjects(ctx context.Context, f ProjectFilter) ([]*Project, int, error)
	IsMember(ctx context.Context, projectID int64, subject string) (bool, error)

	// Sites and catalogs: the catalog is stored as published JSON.
	// CreateSite registers a site: it inserts it, or registers a row an
	// agent announced before registration existed (keeping its health).
	CreateSite(ctx context.Context, site *Site) error
	// FindSite returns a site (registered or not) without its datasets.
	FindSite(ctx context.Context, id string) (*Site, error)
	// TouchSite records that the site's agent called at the given time and,
	// when version is not empty, the version it reported.
	TouchSite(ctx context.Context, id string, at time.Time, version string) error
	PutCatalog(ctx context.Context, siteID, dataset, hash string, body []byte, at time.Time) error
	// FindCatalog returns the site holding dataset, the catalog's hash and
	// its JSON (nil body when wantBody is false).
	// With several holders it is the earliest (by Since, then site id).
	FindCatalog(ctx context.Context, dataset string, wantBody bool) (siteID, hash string, body []byte, err error)
	// FindCatalogHolders returns every site's catalog of dataset, the
	// earliest holder first (none: an empty slice), without Body unless
	// wantBody.
	FindCatalogHolders(ctx context.Context, dataset string, wantBody bool) ([]CatalogHolder, error)
	FindCatalogs(ctx context.Context) ([][]byte, error)
	FindSites(ctx context.Context) ([]*Site, error)

	// Queries. CreateQuery stores a new query with its first event (its
	// submission) and sets rec.Query.ID.
	CreateQuery(ctx context.Context, rec *QueryRecord, submitted Event) error
	UpdateQuery(ctx context.Context, rec *QueryRecord) error
	LockQuery(ctx context.Context, id int64) error
	// FindQuery returns the query without its rewritten SQL (Rewritten
	// empty): FindRewritten has it.
	FindQuery(ctx context.Context, id int64) (*QueryRecord, error)
	// FindRewritten returns the rewritten SQL of the queries with the
	// given ids, by id (ids without a query are left out).
	FindRewritten(ctx context.Context, ids []int64) (map[int64]string, error)
	// FindQueries applies f; when member is not empty only queries of
	// projects member belongs to are returned. Oldest first, without their
	// rewritten SQL.
	FindQueries(ctx context.Context, f QueryFilter, member string) ([]*Query, int, error)
	AddEvent(ctx context.Context, queryID int64, e Event) error
	FindEvents(ctx context.Context, queryID int64) ([]Event, error)
	// FindSimilar returns, for risk flags, the repeat: the earliest
	// released query of the project with the given normalised hash, else
	// the earliest one, or nil; and the differencing candidate: the
	// project's most recent query whose PredicateKeys share one of keys and
	// whose PredicateSet is not set, with its predicates, or nil.
	FindSimilar(ctx context.Context, projectID int64, normalizedHash, set string, keys []string) (repeat, differencing *SimilarQuery, err error)
	// NextLeasable locks and returns the id of the oldest query over one of
	// site's datasets that is approved, or running with a lease that expired
	// before now; 0 when there is none. Rows other transactions hold are
	// skipped.
	// Only single-site queries (Sites 0) are considered, and only when
	// site is the dataset's earliest holder.
	NextLeasable(ctx context.Context, siteID string, now time.Time) (int64, error)

	// Federated queries' jobs (issue 21); they change only under their
	// query's lock. FindJobs returns a query's jobs by site id;
	// NextLeasableJob locks and returns the oldest approved or running
	// query with a job of site that is pending or whose lease expired
	// before now (0 when none; rows other transactions hold are skipped);
	// FindOverdue returns up to limit federated queries approved or
	// running whose deadline passed before now.
	PutJob(ctx context.Context, j *QueryJob) error
	UpdateJob(ctx context.Context, j *QueryJob) error
	FindJobs(ctx context.Context, queryID int64) ([]*QueryJob, error)
	NextLeasableJob(ctx context.Context, siteID string, now time.Time) (int64, error)
	FindOverdue(ctx context.Context, now time.Time, limit int) ([]int64, error)
	// FindSiteLedgers returns the project's per-site ledgers (sites with
	// a federated job of the project), by site id.
	FindSiteLedgers(ctx context.Context, projectID int64) ([]SiteLedger, error)

	// Outputs.
	PutOutput(ctx context.Context, o *Output) error
	FindOutput(ctx context.Context, queryID int64) (*Output, error)
	SetOutputReleased(ctx context.Context, queryID int64, at time.Time) error

	// Audit chain. LockAuditHead serialises appenders until the transaction
	// ends and returns the last entry's seq and hash (0, "" when empty).
	LockAuditHead(ctx context.Context) (seq int64, hash string, err error)
	InsertAudit(ctx context.Context, e *AuditEntry) error
	// AuditHead returns the last entry's seq and hash without locking
	// (0, "" when empty).
	AuditHead(ctx context.Context) (seq int64, hash string, err error)
	FindAuditEntries(ctx context.Context, f AuditFilter) ([]*AuditEntry, int, error)
	// ScanAudit returns up to limit entries with seq > after, in seq order.
	ScanAudit(ctx context.Context, after int64, limit int) ([]*AuditEntry, error)

	// Codelists. PutCodelist inserts one with its codes (an existing name
	// is ECONFLICT); FindCodelist returns one, with its codes in upload
	// order when withCodes, and FirstTerms always; FindCodelists all,
	// newest first, without codes. FindCodelistUses returns the queries
	// that use the named codelist, or every use when name is empty, by
	// query id.
	PutCodelist(ctx context.Context, c *Codelist) error
	FindCodelist(ctx context.Context, name string, withCodes bool) (*Codelist, error)
	FindCodelists(ctx context.Context) ([]*Codelist, error)
	FindCodelistUses(ctx context.Context, name string) ([]CodelistUse, error)

	// Register derives the public register from projects and queries.
	Register(ctx context.Context) ([]*RegisterEntry, error)

	// Web sessions, by the hash of their id. PutSession inserts (a
	// duplicate id is a conflict); DeleteSession of a missing id is not an
	// error; DeleteExpiredSessions removes up to limit sessions that
	// expired at or before the given time, the longest expired first;
	// TrimSessions removes all but the keep most recently created sessions
	// of subject. Both return how many they removed.
	PutSession(ctx context.Context, s *Session) error
	FindSession(ctx context.Context, idHash string) (*Session, error)
	DeleteSession(ctx context.Context, idHash string) error
	DeleteExpiredSessions(ctx context.Context, before time.Time, limit int) (int64, error)
	TrimSessions(ctx context.Context, subject string, keep int) (int64, error)

	// Token buckets (TakeToken). LockBucket returns the bucket's tokens and
	// when they were counted, locked until the transaction ends; a missing
	// bucket is first created with full tokens at now. SetBucket stores
	// them; DeleteIdleBuckets removes buckets last counted before the given
	// time.
	LockBucket(ctx context.Context, name string, full float64, now time.Time) (float64, time.Time, error)
	SetBucket(ctx context.Context, name string, tokens float64, at time.Time) error
	DeleteIdleBuckets(ctx context.Context, before time.Time) error
}
