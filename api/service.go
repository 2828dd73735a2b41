package api

import (
	"context"

	"github.com/nhs-tre/tre/broker"
	"github.com/nhs-tre/tre/dp"
	"github.com/nhs-tre/tre/job"
	"github.com/nhs-tre/tre/queries"
)

// The broker operations both faces of the broker call — the JSON API
// (api/server) and the web pages (api/web) — declared once, by noun.
// *broker.Service satisfies all of them. Each face composes Service with
// the few only it calls (the agent's job calls and ViewOutput in
// the server; QueryAccess, FindOutput and ReleasedOutput in the pages).
// The caller travels in ctx (broker.NewContext).

// Service is every operation both faces call.
type Service interface {
	SiteService
	ProjectService
	QueryService
	ReviewService
	OutputService
	AuditService
	CodelistService
}

// CodelistService uploads and reads codelists: public lists of clinical
// codes queries join as the table codelists.
type CodelistService interface {
	CreateCodelist(ctx context.Context, up broker.CodelistUpload) (*broker.Codelist, error)
	FindCodelists(ctx context.Context) ([]*broker.Codelist, error)
	FindCodelist(ctx context.Context, name string) (*broker.Codelist, error)
}

// SiteService registers sites and lists them and the datasets they publish.
type SiteService interface {
	FindDatasets(ctx context.Context) ([]*queries.Catalog, error)
	CreateSite(ctx context.Context, site *broker.Site) error
	FindSites(ctx context.Context) ([]*broker.Site, error)
}

// ProjectService manages projects and their budgets.
type ProjectService interface {
	CreateProject(ctx context.Context, p *broker.Project) error
	FindProjectByID(ctx context.Context, id int64) (*broker.Project, error)
	FindProjects(ctx context.Context, f broker.ProjectFilter) ([]*broker.Project, int, error)
	UpdateProject(ctx context.Context, id int64, upd broker.ProjectUpdate) (*broker.Project, error)
}

// QueryService is a researcher's side of queries: check, submit, follow,
// cancel.
type QueryService interface {
	SubmitQuery(ctx context.Context, sub broker.QuerySubmission) (*broker.Query, error)
	CheckQuery(ctx context.Context, sub broker.QuerySubmission) (*broker.Checked, error)
	FindQueryByID(ctx context.Context, id int64) (*broker.Query, error)
	FindQueries(ctx context.Context, f broker.QueryFilter) ([]*broker.Query, int, error)
	CancelQuery(ctx context.Context, id int64) (*broker.Query, error)
}

// ReviewService is a reviewer's side: the queue and the decision.
type ReviewService interface {
	ReviewQueue(ctx context.Context) ([]*broker.Query, error)
	ApproveQuery(ctx context.Context, id int64, comment string) (*broker.Query, error)
	RejectQuery(ctx context.Context, id int64, reason string) (*broker.Query, error)
}

// OutputService is the output check and the download of what it released.
type OutputService interface {
	OutputQueue(ctx context.Context) ([]*broker.Query, error)
	ReleaseQuery(ctx context.Context, id int64, comment string) (*broker.Query, error)
	WithholdQuery(ctx context.Context, id int64, reason string) (*broker.Query, error)
	DownloadResult(ctx context.Context, id int64) (*broker.ReleasedResult, error)
}

// AuditService reads and verifies the audit chain, serves the public
// register and records refused authentications.
type AuditService interface {
	FindAuditEntries(ctx context.Context, f broker.AuditFilter) ([]*broker.AuditEntry, int, error)
	VerifyAudit(ctx context.Context) (*broker.AuditVerification, error)
	Register(ctx context.Context) ([]*broker.RegisterEntry, error)
	AuditHead(ctx context.Context) (*broker.AuditHead, error)
	RecordAuthFailure(ctx context.Context, f broker.AuthFailure)
}

// DryRunner answers a query from synthetic data with the same schema as the
// dataset, spending no budget. cmd wires it to a sandbox; without one,
// neither face offers dry runs.
type DryRunner interface {
	DryRun(ctx context.Context, dataset, sql string, epsilon float64, codelists []job.Codelist) (*dp.Result, []job.AbsentCodes, error)
}

// DryRunCodelists returns, with their codes, the codelists a checked query
// names (queries.Plan.Codelists), for a dry run.
func DryRunCodelists(ctx context.Context, svc CodelistService, names []string) ([]job.Codelist, error) {
	var out []job.Codelist
	for _, name := range names {
		c, err := svc.FindCodelist(ctx, name)
		if err != nil {
			return nil, err
		}
		out = append(out, job.Codelist{Name: c.Name, Hash: c.Hash, Codes: c.Codes})
	}
	return out, nil
}
