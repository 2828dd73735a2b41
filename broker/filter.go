package broker

import "time"

// QuerySubmission is what a researcher sends to ask a question.
type QuerySubmission struct {
	ProjectID int64 `json:"project_id"`
	// Dataset names the catalog the SQL is written against; empty means the
	// project's only dataset.
	Dataset string `json:"dataset,omitempty"`
	SQL     string `json:"sql"`
	Purpose string `json:"purpose"`
	// Epsilon asks for a budget; 0 means the catalog's default.
	Epsilon float64 `json:"epsilon,omitempty"`
}

// QueryFilter selects queries. Nil pointer fields are unset. Visibility is
// applied by the service on top of the filter.
type QueryFilter struct {
	ProjectID   *int64  `json:"project_id,omitempty"`
	Status      *Status `json:"status,omitempty"`
	SubmittedBy *string `json:"submitted_by,omitempty"`
	Offset      int     `json:"offset,omitempty"`
	Limit       int     `json:"limit,omitempty"`

	// UpdatedAfter selects queries last changed after a time, UpdatedBefore
	// those last changed at or before it. OrIDs adds the queries with these
	// ids to those Status and UpdatedBefore select (ProjectID, SubmittedBy,
	// UpdatedAfter and visibility still apply). The service sets them to
	// build a researcher's view; the API never does.
	UpdatedAfter  *time.Time `json:"-"`
	UpdatedBefore *time.Time `json:"-"`
	OrIDs         []int64    `json:"-"`
}

// ProjectFilter selects projects. Nil pointer fields are unset.
type ProjectFilter struct {
	Member *string        `json:"member,omitempty"`
	Status *ProjectStatus `json:"status,omitempty"`
	Offset int            `json:"offset,omitempty"`
	Limit  int            `json:"limit,omitempty"`
}

// ProjectUpdate changes a project. Nil pointer fields are left as they are.
type ProjectUpdate struct {
	Title                *string        `json:"title,omitempty"`
	Organisation         *string        `json:"organisation,omitempty"`
	Purpose              *string        `json:"purpose,omitempty"`
	LawfulBasis          *string        `json:"lawful_basis,omitempty"`
	DataSharingAgreement *string        `json:"data_sharing_agreement,omitempty"`
	Members              *[]string      `json:"members,omitempty"`
	Datasets             *[]string      `json:"datasets,omitempty"`
	EpsilonBudget        *float64       `json:"epsilon_budget,omitempty"`
	DeltaBudget          *float64       `json:"delta_budget,omitempty"`
	StartsAt             *time.Time     `json:"starts_at,omitempty"`
	ExpiresAt            *time.Time     `json:"expires_at,omitempty"`
	Status               *ProjectStatus `json:"status,omitempty"`
}

// AuditFilter selects audit entries, oldest first. Nil pointer fields are
// unset.
type AuditFilter struct {
	Actor    *string `json:"actor,omitempty"`
	Action   *string `json:"action,omitempty"`
	Object   *string `json:"object,omitempty"`
	AfterSeq *int64  `json:"after_seq,omitempty"`
	Offset   int     `json:"offset,omitempty"`
	Limit    int     `json:"limit,omitempty"`
}

// AuditVerification is the outcome of recomputing the audit chain.
type AuditVerification struct {
	OK      bool  `json:"ok"`
	Entries int64 `json:"entries"`
	// FirstBadSeq is the first entry that does not verify (0 when OK); a
	// removed entry is reported as the sequence number that is missing.
	FirstBadSeq int64  `json:"first_bad_seq,omitempty"`
	Reason      string `json:"reason,omitempty"`
	// Head is the hash of the last entry, worth recording elsewhere: the
	// chain alone cannot show that entries were cut from its end.
	Head string `json:"head,omitempty"`
}

// AuditHead is the audit chain's last entry as the public register shows
// it. Anyone may keep a copy: `tre audit verify --expect-head HASH
// --expect-count N` then detects entries removed from the chain's end
// after it, which the chain alone cannot show.
type AuditHead struct {
	Entries int64  `json:"entries"`
	Hash    string `json:"hash"`
}

// Default and maximum page sizes for Find* calls.
const (
	DefaultLimit = 100
	MaxLimit     = 1000
)

// pageLimit normalises a requested limit.
func pageLimit(n int) int {
	switch {
	case n <= 0:
		return DefaultLimit
	case n > MaxLimit:
		return MaxLimit
	}
	return n
}
