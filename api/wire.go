package api

import (
	"time"

	"github.com/nhs-tre/tre/broker"
	"github.com/nhs-tre/tre/dp"
	"github.com/nhs-tre/tre/job"
	"github.com/nhs-tre/tre/queries"
)

// SiteRequest is the body of POST /api/v1/sites.
type SiteRequest struct {
	ID           string `json:"id"`
	Name         string `json:"name"`
	Organisation string `json:"organisation"`
}

// ProjectRequest is the body of POST /api/v1/projects.
type ProjectRequest struct {
	Title                string    `json:"title"`
	Organisation         string    `json:"organisation"`
	Purpose              string    `json:"purpose"`
	LawfulBasis          string    `json:"lawful_basis"`
	DataSharingAgreement string    `json:"data_sharing_agreement,omitempty"`
	Members              []string  `json:"members"`
	Datasets             []string  `json:"datasets"`
	EpsilonBudget        float64   `json:"epsilon_budget"`
	DeltaBudget          float64   `json:"delta_budget"`
	StartsAt             time.Time `json:"starts_at,omitzero"`
	ExpiresAt            time.Time `json:"expires_at"`
}

// QueryRequest is the body of POST /api/v1/queries and /queries/dry-run.
type QueryRequest struct {
	ProjectID int64   `json:"project_id"`
	Dataset   string  `json:"dataset,omitempty"`
	SQL       string  `json:"sql"`
	Purpose   string  `json:"purpose"`
	Epsilon   float64 `json:"epsilon,omitempty"`
}

// CheckResponse is the answer to a check: how the query would be run, what
// it would cost and how accurate it would be, from the same validation and
// plan as a submission, with nothing stored or run.
type CheckResponse struct {
	Dataset   string        `json:"dataset"`
	Cost      dp.Cost       `json:"cost"`
	Accuracy  []dp.Accuracy `json:"accuracy"`
	Rewritten string        `json:"rewritten_sql"`
	// Federation is set over a dataset several sites hold: how many sites
	// the query would run at and what each site's ledger and the project's
	// would be charged; Accuracy is then the combined answer's.
	Federation *broker.Federation `json:"federation,omitempty"`
}

// Kinds of dry-run table (DryRunResponse.Run).
const (
	// DryRunSynthetic: the query run once on the broker's synthetic data,
	// as the dataset's one site would run it.
	DryRunSynthetic = "synthetic"
	// DryRunSyntheticSingleSite: over a dataset several sites hold, the
	// query still run once on the broker's synthetic data, as one site
	// alone would run it: the table's values, noise and intervals are one
	// site's, not the sites' combined answer that Federation and Accuracy
	// describe.
	DryRunSyntheticSingleSite = "synthetic_single_site"
)

// DryRunResponse is the answer to a dry run: a protected table computed from
// synthetic data, never from patient records, shown as a researcher would
// receive it from a real run (the researcher's part of the report).
type DryRunResponse struct {
	Synthetic bool `json:"synthetic"`
	// Run says what the table is: DryRunSynthetic, or
	// DryRunSyntheticSingleSite over a dataset several sites hold.
	Run     string  `json:"run"`
	Dataset string  `json:"dataset"`
	Cost    dp.Cost `json:"cost"`
	// Accuracy is the submitted query's: over a dataset several sites
	// hold, the combined answer's (not the table's).
	Accuracy []dp.Accuracy `json:"accuracy"`
	// Federation is set over a dataset several sites hold, as on a check.
	Federation *broker.Federation  `json:"federation,omitempty"`
	Columns    []dp.Column         `json:"columns"`
	Rows       [][]dp.Cell         `json:"rows"`
	Report     dp.ResearcherReport `json:"report"`
	// AbsentCodes lists, per codelist the query joins, the codes that
	// occur nowhere in the synthetic data (never computed from real data).
	AbsentCodes []job.AbsentCodes `json:"absent_codes,omitempty"`
}

// CommentRequest is the body of approve and release.
type CommentRequest struct {
	Comment string `json:"comment"`
}

// ReasonRequest is the body of reject and withhold.
type ReasonRequest struct {
	Reason string `json:"reason"`
}

// QueueItem is a query in the review queue with its project's budget, so
// a reviewer sees what approving would leave.
type QueueItem struct {
	*broker.Query
	ProjectBudget *broker.Budget `json:"project_budget,omitempty"`
}

// ResultResponse is a released table as JSON: what a researcher may see of
// it (dp.ResearcherResult), never the checker's full report.
type ResultResponse struct {
	QueryID    int64               `json:"query_id"`
	ReleasedAt time.Time           `json:"released_at"`
	Columns    []dp.Column         `json:"columns"`
	Rows       [][]dp.Cell         `json:"rows"`
	Report     dp.ResearcherReport `json:"report"`
}

// CatalogRequest is the body of PUT /api/v1/agent/catalog. SiteID must be
// the site the agent's token names; AgentVersion is shown on the sites page.
type CatalogRequest struct {
	SiteID       string           `json:"site_id"`
	AgentVersion string           `json:"agent_version,omitempty"`
	Catalog      *queries.Catalog `json:"catalog"`
}

// LeaseRequest is the body of POST /api/v1/agent/lease: the agent's poll.
type LeaseRequest struct {
	SiteID       string `json:"site_id"`
	AgentVersion string `json:"agent_version,omitempty"`
}

// HeartbeatRequest is the body of a job heartbeat.
type HeartbeatRequest struct {
	Token string `json:"token"`
}

// CompleteRequest is the body of a job completion: a site's protected
// result, or, for its part of a federated query (a lease with partial
// set), its protected partial result.
type CompleteRequest struct {
	Token   string      `json:"token"`
	Result  *dp.Result  `json:"result"`
	Partial *dp.Partial `json:"partial,omitempty"`
}

// FailRequest is the body of a job failure.
type FailRequest struct {
	Token   string `json:"token"`
	Code    string `json:"code"`
	Message string `json:"message"`
}

// CodelistRequest is the body of POST /api/v1/codelists: a codelist named
// ORG/SLUG/VERSION and its CSV in OpenCodelists' download format (a header
// naming code and term columns; other columns are ignored).
type CodelistRequest struct {
	Name        string `json:"name"`
	Description string `json:"description,omitempty"`
	CSV         string `json:"csv"`
}
