// Package broker is tre's system of record: projects, users' roles, queries
// and their lifecycle, review and output-check decisions, the privacy-budget
// ledger, job leases for site agents, the tamper-evident audit chain and the
// released results.
//
// The broker never holds a patient row: it stores researchers' SQL, decisions
// and protected (already safe) output. It must never lose a decision, never
// overspend a budget and never let anyone act outside their role.
package broker

import (
	"time"

	"github.com/nhs-tre/tre/dp"
	"github.com/nhs-tre/tre/job"
)

// Role is a user's role, carried in the token's roles claim.
type Role string

// Roles. Stored values never change.
const (
	RoleResearcher    Role = "researcher"
	RoleReviewer      Role = "reviewer"
	RoleOutputChecker Role = "output_checker"
	RoleAdmin         Role = "admin"
	RoleAgent         Role = "agent"
)

// User is the authenticated caller. It travels in the context (NewContext,
// UserFromContext) from the API layer to the service.
type User struct {
	Subject string `json:"sub"`
	Name    string `json:"name,omitempty"`
	Org     string `json:"org,omitempty"`
	Roles   []Role `json:"roles"`
	// Site is the site an agent token acts for (its site claim). The broker
	// refuses every agent call from a token without one, or for another
	// site. It means nothing on a person's token.
	Site string `json:"site,omitempty"`
}

// HasRole reports whether u holds role r.
func (u *User) HasRole(r Role) bool {
	if u == nil {
		return false
	}
	for _, x := range u.Roles {
		if x == r {
			return true
		}
	}
	return false
}

// Status is a query's lifecycle state. Stored values never change.
type Status string

// Query statuses, as in CONTRACT.md.
const (
	StatusSubmitted           Status = "submitted"
	StatusRejected            Status = "rejected"
	StatusApproved            Status = "approved"
	StatusCancelled           Status = "cancelled"
	StatusRunning             Status = "running"
	StatusAwaitingOutputCheck Status = "awaiting_output_check"
	StatusReleased            Status = "released"
	StatusWithheld            Status = "withheld"
	StatusFailed              Status = "failed"
)

// ProjectStatus is whether a project may be used.
type ProjectStatus string

// Project statuses.
const (
	ProjectActive    ProjectStatus = "active"
	ProjectSuspended ProjectStatus = "suspended"
)

// Project is a "safe project": an approved purpose with a lawful basis,
// members, datasets and a privacy budget.
type Project struct {
	ID                   int64         `json:"id"`
	Title                string        `json:"title"`
	Organisation         string        `json:"organisation"`
	Purpose              string        `json:"purpose"`
	LawfulBasis          string        `json:"lawful_basis"`
	DataSharingAgreement string        `json:"data_sharing_agreement,omitempty"`
	Members              []string      `json:"members"` // subjects
	Datasets             []string      `json:"datasets"`
	EpsilonBudget        float64       `json:"epsilon_budget"`
	DeltaBudget          float64       `json:"delta_budget"`
	StartsAt             time.Time     `json:"starts_at"`
	ExpiresAt            time.Time     `json:"expires_at"`
	Status               ProjectStatus `json:"status"`
	CreatedBy            string        `json:"created_by"`
	CreatedAt            time.Time     `json:"created_at"`
	Budget               Budget        `json:"budget"`
	// SiteLedgers are the project's per-site ledgers of federated
	// queries (staff only: FindProjectByID). Each is limited by the
	// project's budget.
	SiteLedgers []SiteLedger `json:"site_ledgers,omitempty"`
}

// Budget is a project's ledger position. Spent is final (runs started);
// Reserved is held by approved queries that have not started.
type Budget struct {
	EpsilonSpent     float64 `json:"epsilon_spent"`
	EpsilonReserved  float64 `json:"epsilon_reserved"`
	EpsilonRemaining float64 `json:"epsilon_remaining"`
	DeltaSpent       float64 `json:"delta_spent"`
	DeltaReserved    float64 `json:"delta_reserved"`
	DeltaRemaining   float64 `json:"delta_remaining"`
}

// RiskFlag warns a reviewer about a query that may be part of an attack.
type RiskFlag struct {
	Kind    string `json:"kind"` // "repeat", "differencing", "narrow_population"
	Message string `json:"message"`
	// SimilarQueryID and SimilarSQL show the earlier query beside this one.
	SimilarQueryID int64  `json:"similar_query_id,omitempty"`
	SimilarSQL     string `json:"similar_sql,omitempty"`
	// SimilarStatus is the earlier query's status (when the flag was
	// raised; reviewers and other staff see it as it is now), and
	// SimilarReleased whether its answer has been released: a repeat or a
	// difference of a released answer is the greater risk.
	SimilarStatus   Status `json:"similar_status,omitempty"`
	SimilarReleased bool   `json:"similar_released,omitempty"`
}

// setSimilar records the earlier query's status on the flag.
func (f *RiskFlag) setSimilar(st Status) {
	f.SimilarStatus, f.SimilarReleased = st, st == StatusReleased
}

// researcherFlags is the risk flags as a researcher sees them: without the
// earlier queries' statuses, which were read at the exact time of a
// submission, finer than the granularity at which researchers see status
// changes (researcher.go).
func researcherFlags(flags []RiskFlag) []RiskFlag {
	out := make([]RiskFlag, len(flags))
	for i, f := range flags {
		f.SimilarStatus, f.SimilarReleased = "", false
		out[i] = f
	}
	return out
}

// Query is a researcher's question and everything decided about it.
type Query struct {
	ID          int64         `json:"id"`
	ProjectID   int64         `json:"project_id"`
	Dataset     string        `json:"dataset"`
	SQL         string        `json:"sql"`
	SQLHash     string        `json:"sql_hash"` // hex SHA-256 of SQL
	Purpose     string        `json:"purpose"`
	Rewritten   string        `json:"rewritten_sql,omitempty"`
	Status      Status        `json:"status"`
	SubmittedBy string        `json:"submitted_by"`
	SubmittedAt time.Time     `json:"submitted_at"`
	UpdatedAt   time.Time     `json:"updated_at"`
	Cost        dp.Cost       `json:"cost"`
	Accuracy    []dp.Accuracy `json:"accuracy"`
	RiskFlags   []RiskFlag    `json:"risk_flags"`
	// Codelists are the codelists the query joins, with the content hash
	// each had at submission (codelists never change).
	Codelists []CodelistRef `json:"codelists,omitempty"`
	// ApprovedBy is the reviewer whose approval reserved the budget.
	ApprovedBy string `json:"approved_by,omitempty"`
	// Attempts counts leases taken. Staff only: how often a run was tried
	// can depend on the data, so a researcher's view has none (0, omitted).
	Attempts int `json:"attempts,omitempty"`
	// FailureCode and FailureDetail are the failure notice of a run that
	// failed at the site (Failure). Staff only: a researcher's view has
	// neither, whatever happened.
	FailureCode   string  `json:"failure_code,omitempty"`
	FailureDetail string  `json:"failure_detail,omitempty"`
	History       []Event `json:"history,omitempty"`
	// Federation is set on a query over a dataset several sites hold: it
	// runs at each of them and the broker combines their protected parts.
	Federation *Federation `json:"federation,omitempty"`
	// Sites are a federated query's sites and how each one's part stands
	// (after approval; staff see the attempts).
	Sites []QuerySite `json:"sites,omitempty"`
}

// Event is one entry in a query's status history: a transition and who made
// it and why.
type Event struct {
	From    Status    `json:"from,omitempty"`
	To      Status    `json:"to"`
	Actor   string    `json:"actor"`
	Comment string    `json:"comment,omitempty"`
	At      time.Time `json:"at"`
}

// Output is what a run produced, as the output checker sees it: either the
// protected result the site agent uploaded, with its full disclosure report,
// or the notice that the run failed (Failure). Both wait for an output
// check; researchers never see an Output, only a ReleasedResult made from a
// released one.
type Output struct {
	QueryID int64 `json:"query_id"`
	// Result is the protected table and its full disclosure report; nil for
	// a failure notice.
	Result *dp.Result `json:"result,omitempty"`
	// Failure is set instead of Result when the run failed.
	Failure    *Failure   `json:"failure,omitempty"`
	SiteID     string     `json:"site_id"`
	CreatedAt  time.Time  `json:"created_at"`
	ReleasedAt *time.Time `json:"released_at,omitempty"`
	// Sites are a federated query's sites, each with its state and
	// disclosure report (output checkers only).
	Sites []SiteOutput `json:"sites,omitempty"`
}

// ReleasedResult is what a researcher receives of a released output: the
// table and the researcher's part of the disclosure report
// (dp.ResearcherResult: nothing computed from exact data), dated at the
// release as researchers see it (a multiple of the granularity).
type ReleasedResult struct {
	QueryID    int64                `json:"query_id"`
	ReleasedAt time.Time            `json:"released_at"`
	Result     *dp.ResearcherResult `json:"result"`
}

// Failure is a failure notice: why a run produced no result, as the site
// reported it (or the broker, when the last attempt's lease ran out). Whether
// a run fails, and how, can depend on the data, so a failure is an output
// like a result: output checkers see the code and detail and release the
// notice (the query becomes failed) or withhold it. A researcher sees
// neither, only FailedMessage once the notice is released.
type Failure struct {
	// Code is the site's error class (e.g. "timeout", "memory",
	// "too_large", "crashed", "refused") or FailureLeaseExpired.
	Code string `json:"code"`
	// Detail is the site's safe message: it names no data value, but it is
	// for the output checker's eyes only.
	Detail string `json:"detail,omitempty"`
}

// FailureLeaseExpired is the failure code the broker gives a run whose last
// attempt's lease ran out without a report.
const FailureLeaseExpired = "lease_expired"

// FailedMessage is all a researcher learns of a failed run: the same words
// for every failure, whatever its cause, and the budget is not refunded.
const FailedMessage = "The query ran at the site but produced no result that could be released. " +
	"Its privacy budget was spent when the run started and is not refunded."

// Lease is a site agent's claim on an approved job.
type Lease struct {
	// The job itself: what the reviewer approved, byte for byte; the agent
	// hands this value to its sandbox. Its fields are the lease's on the
	// wire (query_id, dataset, sql, sql_hash, epsilon).
	job.Job
	Token     string    `json:"token"`
	SiteID    string    `json:"site_id"`
	ExpiresAt time.Time `json:"expires_at"`
	Attempt   int       `json:"attempt"`
	Delta     float64   `json:"delta"`
}

// Site is an NHS site an admin registered, with its agent's health: when
// the agent last called, the version it reported and the datasets it
// published. Only a registered site's agent may act.
type Site struct {
	ID           string    `json:"id"`
	Name         string    `json:"name"`
	Organisation string    `json:"organisation"`
	Registered   bool      `json:"registered"`
	RegisteredBy string    `json:"registered_by,omitempty"`
	RegisteredAt time.Time `json:"registered_at,omitzero"`
	Datasets     []string  `json:"datasets"`
	LastSeen     time.Time `json:"last_seen,omitzero"`
	Version      string    `json:"version,omitempty"`
}

// AuditEntry is one link of the tamper-evident audit chain: Hash is SHA-256
// over PrevHash and the entry's canonical fields.
type AuditEntry struct {
	Seq      int64     `json:"seq"`
	At       time.Time `json:"at"`
	Actor    string    `json:"actor"`
	Action   string    `json:"action"`
	Object   string    `json:"object"` // e.g. "query/42", "project/3"
	Detail   string    `json:"detail,omitempty"`
	PrevHash string    `json:"prev_hash"`
	Hash     string    `json:"hash"`
}

// RegisterEntry is one project as the public transparency register shows it.
type RegisterEntry struct {
	ProjectID       int64         `json:"project_id"`
	Title           string        `json:"title"`
	Organisation    string        `json:"organisation"`
	Purpose         string        `json:"purpose"`
	LawfulBasis     string        `json:"lawful_basis"`
	StartsAt        time.Time     `json:"starts_at"`
	ExpiresAt       time.Time     `json:"expires_at"`
	Status          ProjectStatus `json:"status"`
	ReleasedQueries int           `json:"released_queries"`
	EpsilonSpent    float64       `json:"epsilon_spent"`
	// Codelists are the codelists the project's released queries used.
	Codelists []CodelistRef `json:"codelists,omitempty"`
	// Sites are the sites whose data the project's released queries used
	// (federated queries name each site that took part).
	Sites []string `json:"sites,omitempty"`
}
