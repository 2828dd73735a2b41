// Package api is tre's HTTP face: gin routes for every CONTRACT.md endpoint,
// bearer-token authentication, strict JSON decoding, the one table mapping
// domain error codes to HTTP statuses, the OpenAPI document, and the Go
// client the CLI and the site agent use.
//
// api decides nothing about the domain: who may do what to which query is
// the broker's call, made again behind every coarse role check done here.
// It must never log tokens, request bodies or query results, never show a
// caller an internal error's text, and never answer a caller's mistake
// with a 500. It is the only package that imports gin.
package api

import (
	"context"

	"github.com/nhs-tre/tre/broker"
	"github.com/nhs-tre/tre/dp"
	"github.com/nhs-tre/tre/queries"
)

// Service is the part of the broker domain the HTTP layer calls.
// *broker.Service satisfies it; tests of handlers alone may use a fake.
type Service interface {
	PublishCatalog(ctx context.Context, siteID, agentVersion string, cat *queries.Catalog) error
	FindDatasets(ctx context.Context) ([]*queries.Catalog, error)
	CreateSite(ctx context.Context, site *broker.Site) error
	FindSites(ctx context.Context) ([]*broker.Site, error)

	CreateProject(ctx context.Context, p *broker.Project) error
	FindProjectByID(ctx context.Context, id int64) (*broker.Project, error)
	FindProjects(ctx context.Context, f broker.ProjectFilter) ([]*broker.Project, int, error)
	UpdateProject(ctx context.Context, id int64, upd broker.ProjectUpdate) (*broker.Project, error)

	SubmitQuery(ctx context.Context, sub broker.QuerySubmission) (*broker.Query, error)
	CheckQuery(ctx context.Context, sub broker.QuerySubmission) (*queries.Plan, error)
	FindQueryByID(ctx context.Context, id int64) (*broker.Query, error)
	FindQueries(ctx context.Context, f broker.QueryFilter) ([]*broker.Query, int, error)
	ReviewQueue(ctx context.Context) ([]*broker.Query, error)
	CancelQuery(ctx context.Context, id int64) (*broker.Query, error)
	ApproveQuery(ctx context.Context, id int64, comment string) (*broker.Query, error)
	RejectQuery(ctx context.Context, id int64, reason string) (*broker.Query, error)

	OutputQueue(ctx context.Context) ([]*broker.Query, error)
	FindOutput(ctx context.Context, id int64) (*broker.Output, error)
	ViewOutput(ctx context.Context, id int64) (*broker.OutputView, error)
	ReleaseQuery(ctx context.Context, id int64, comment string) (*broker.Query, error)
	WithholdQuery(ctx context.Context, id int64, reason string) (*broker.Query, error)
	DownloadResult(ctx context.Context, id int64) (*broker.ReleasedResult, error)

	LeaseJob(ctx context.Context, siteID, agentVersion string) (*broker.Lease, error)
	HeartbeatJob(ctx context.Context, id int64, token string) (*broker.Lease, error)
	CompleteJob(ctx context.Context, id int64, token string, res dp.Result) error
	FailJob(ctx context.Context, id int64, token, code, message string) error

	FindAuditEntries(ctx context.Context, f broker.AuditFilter) ([]*broker.AuditEntry, int, error)
	VerifyAudit(ctx context.Context) (*broker.AuditVerification, error)
	Register(ctx context.Context) ([]*broker.RegisterEntry, error)
	AuditHead(ctx context.Context) (*broker.AuditHead, error)
	RecordAuthFailure(ctx context.Context, f broker.AuthFailure)
	Ping(ctx context.Context) error
}

// DryRunner answers a query from synthetic data with the same schema as the
// dataset, spending no budget. The lead wires it to a sandbox.
type DryRunner interface {
	DryRun(ctx context.Context, dataset, sql string, epsilon float64) (*dp.Result, error)
}
