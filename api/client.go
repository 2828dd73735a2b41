package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/nhs-tre/tre/broker"
	"github.com/nhs-tre/tre/dp"
	"github.com/nhs-tre/tre/queries"
)

// maxResponseBytes bounds what the client reads from the broker.
const maxResponseBytes = 64 << 20

// Client calls the broker's HTTP API. The CLI and the site agent use it.
type Client struct {
	BaseURL string // e.g. https://broker.example.nhs.uk
	Token   string // bearer token
	// AgentVersion is what a site agent reports about itself when it
	// publishes its catalog and polls for work (shown on the sites page).
	AgentVersion string
	// HTTPClient defaults to a client with a 60 s overall timeout, so a
	// stuck broker can never hang a caller forever.
	HTTPClient *http.Client
}

// do sends one request and decodes a JSON answer into out (when non-nil).
// It returns the status so callers can tell 204 from 200.
func (c *Client) do(ctx context.Context, method, path string, query url.Values, in, out any) (int, error) {
	data, status, _, err := c.raw(ctx, method, path, query, in)
	if err != nil {
		return status, err
	}
	if out != nil && status != http.StatusNoContent {
		if err := json.Unmarshal(data, out); err != nil {
			return status, fmt.Errorf("%s %s: decode response: %w", method, path, err)
		}
	}
	return status, nil
}

// raw sends one request and returns the body of a 2xx answer; any other
// answer becomes an *Error.
func (c *Client) raw(ctx context.Context, method, path string, query url.Values, in any) ([]byte, int, http.Header, error) {
	if c.BaseURL == "" {
		return nil, 0, nil, errors.New("no broker URL configured")
	}
	u := strings.TrimRight(c.BaseURL, "/") + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, 0, nil, fmt.Errorf("%s %s: encode request: %w", method, path, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return nil, 0, nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	hc := c.HTTPClient
	if hc == nil {
		hc = &http.Client{Timeout: 60 * time.Second}
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, 0, nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes))
	if err != nil {
		return nil, resp.StatusCode, resp.Header, fmt.Errorf("%s %s: read response: %w", method, path, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return nil, resp.StatusCode, resp.Header, responseError(resp.StatusCode, data)
	}
	return data, resp.StatusCode, resp.Header, nil
}

// responseError rebuilds the API error from an error body, or from the
// status alone when the body is not ours.
func responseError(status int, data []byte) *Error {
	var body ErrorResponse
	if err := json.Unmarshal(data, &body); err == nil && body.Error.Code != "" {
		body.Error.Status = status
		return &body.Error
	}
	return &Error{Status: status, Code: codeByStatus(status), Message: http.StatusText(status)}
}

func idPath(format string, id int64) string { return fmt.Sprintf(format, id) }

// Healthz calls /healthz.
func (c *Client) Healthz(ctx context.Context) error {
	_, err := c.do(ctx, http.MethodGet, "/healthz", nil, nil, nil)
	return err
}

// Readyz calls /readyz.
func (c *Client) Readyz(ctx context.Context) error {
	_, err := c.do(ctx, http.MethodGet, "/readyz", nil, nil, nil)
	return err
}

// OpenAPI returns the OpenAPI document.
func (c *Client) OpenAPI(ctx context.Context) (json.RawMessage, error) {
	var doc json.RawMessage
	_, err := c.do(ctx, http.MethodGet, "/api/v1/openapi.json", nil, nil, &doc)
	return doc, err
}

// Register returns the public transparency register.
func (c *Client) Register(ctx context.Context, o ListOptions) (*RegisterList, error) {
	var out RegisterList
	_, err := c.do(ctx, http.MethodGet, "/public/register", o.values(), nil, &out)
	return &out, err
}

// Datasets lists the published dataset catalogs.
func (c *Client) Datasets(ctx context.Context, o ListOptions) (*List[queries.Catalog], error) {
	var out List[queries.Catalog]
	_, err := c.do(ctx, http.MethodGet, "/api/v1/datasets", o.values(), nil, &out)
	return &out, err
}

// Sites lists the registered sites and the sites agents have called from
// (admin; tre site list).
func (c *Client) Sites(ctx context.Context, o ListOptions) (*List[broker.Site], error) {
	var out List[broker.Site]
	_, err := c.do(ctx, http.MethodGet, "/api/v1/sites", o.values(), nil, &out)
	return &out, err
}

// CreateProject creates a project (admin).
func (c *Client) CreateProject(ctx context.Context, req ProjectRequest) (*broker.Project, error) {
	var out broker.Project
	_, err := c.do(ctx, http.MethodPost, "/api/v1/projects", nil, req, &out)
	return &out, err
}

// Projects lists the projects the caller may see.
func (c *Client) Projects(ctx context.Context, o ListOptions) (*List[broker.Project], error) {
	var out List[broker.Project]
	_, err := c.do(ctx, http.MethodGet, "/api/v1/projects", o.values(), nil, &out)
	return &out, err
}

// Project returns one project with its budget.
func (c *Client) Project(ctx context.Context, id int64) (*broker.Project, error) {
	var out broker.Project
	_, err := c.do(ctx, http.MethodGet, idPath("/api/v1/projects/%d", id), nil, nil, &out)
	return &out, err
}

// UpdateProject changes a project (admin).
func (c *Client) UpdateProject(ctx context.Context, id int64, upd broker.ProjectUpdate) (*broker.Project, error) {
	var out broker.Project
	_, err := c.do(ctx, http.MethodPatch, idPath("/api/v1/projects/%d", id), nil, upd, &out)
	return &out, err
}

// SubmitQuery submits a query for review.
func (c *Client) SubmitQuery(ctx context.Context, req QueryRequest) (*broker.Query, error) {
	var out broker.Query
	_, err := c.do(ctx, http.MethodPost, "/api/v1/queries", nil, req, &out)
	return &out, err
}

// DryRun answers a query from synthetic data.
func (c *Client) DryRun(ctx context.Context, req QueryRequest) (*DryRunResponse, error) {
	var out DryRunResponse
	_, err := c.do(ctx, http.MethodPost, "/api/v1/queries/dry-run", nil, req, &out)
	return &out, err
}

// QueryListOptions filters a query listing.
type QueryListOptions struct {
	ListOptions
	Status      broker.Status
	ProjectID   int64
	SubmittedBy string
}

// Queries lists the queries the caller may see.
func (c *Client) Queries(ctx context.Context, o QueryListOptions) (*List[broker.Query], error) {
	v := o.values()
	if o.Status != "" {
		v.Set("status", string(o.Status))
	}
	if o.ProjectID > 0 {
		v.Set("project_id", strconv.FormatInt(o.ProjectID, 10))
	}
	if o.SubmittedBy != "" {
		v.Set("submitted_by", o.SubmittedBy)
	}
	var out List[broker.Query]
	_, err := c.do(ctx, http.MethodGet, "/api/v1/queries", v, nil, &out)
	return &out, err
}

// Query returns one query with its history.
func (c *Client) Query(ctx context.Context, id int64) (*broker.Query, error) {
	var out broker.Query
	_, err := c.do(ctx, http.MethodGet, idPath("/api/v1/queries/%d", id), nil, nil, &out)
	return &out, err
}

// QueryWithRewritten is Query with the query's rewritten SQL, the
// contribution-bounded SQL the sandbox runs (?include=rewritten_sql).
func (c *Client) QueryWithRewritten(ctx context.Context, id int64) (*broker.Query, error) {
	var out broker.Query
	_, err := c.do(ctx, http.MethodGet, idPath("/api/v1/queries/%d", id), url.Values{"include": {"rewritten_sql"}}, nil, &out)
	return &out, err
}

func (c *Client) action(ctx context.Context, id int64, verb string, body any) (*broker.Query, error) {
	var out broker.Query
	_, err := c.do(ctx, http.MethodPost, fmt.Sprintf("/api/v1/queries/%d/%s", id, verb), nil, body, &out)
	return &out, err
}

// CancelQuery cancels the caller's query before a reviewer decides on it.
func (c *Client) CancelQuery(ctx context.Context, id int64) (*broker.Query, error) {
	return c.action(ctx, id, "cancel", nil)
}

// ApproveQuery approves a query (reviewer).
func (c *Client) ApproveQuery(ctx context.Context, id int64, comment string) (*broker.Query, error) {
	return c.action(ctx, id, "approve", CommentRequest{Comment: comment})
}

// RejectQuery rejects a query (reviewer).
func (c *Client) RejectQuery(ctx context.Context, id int64, reason string) (*broker.Query, error) {
	return c.action(ctx, id, "reject", ReasonRequest{Reason: reason})
}

// ReleaseQuery releases a query's output (output checker).
func (c *Client) ReleaseQuery(ctx context.Context, id int64, comment string) (*broker.Query, error) {
	return c.action(ctx, id, "release", CommentRequest{Comment: comment})
}

// WithholdQuery withholds a query's output (output checker).
func (c *Client) WithholdQuery(ctx context.Context, id int64, reason string) (*broker.Query, error) {
	return c.action(ctx, id, "withhold", ReasonRequest{Reason: reason})
}

// ReviewQueue lists submitted queries awaiting review.
func (c *Client) ReviewQueue(ctx context.Context, o ListOptions) (*List[QueueItem], error) {
	var out List[QueueItem]
	_, err := c.do(ctx, http.MethodGet, "/api/v1/review/queue", o.values(), nil, &out)
	return &out, err
}

// OutputQueue lists results awaiting output check.
func (c *Client) OutputQueue(ctx context.Context, o ListOptions) (*List[broker.Query], error) {
	var out List[broker.Query]
	_, err := c.do(ctx, http.MethodGet, "/api/v1/outputs/queue", o.values(), nil, &out)
	return &out, err
}

// Output returns a query's output as an output checker checks it: the
// protected table with its full disclosure report, or the failure notice.
func (c *Client) Output(ctx context.Context, id int64) (*broker.Output, error) {
	var out broker.Output
	_, err := c.do(ctx, http.MethodGet, idPath("/api/v1/queries/%d/output", id), nil, nil, &out)
	return &out, err
}

// ReleasedOutput returns what a researcher may see of a released output
// (the same route as Output, called with a researcher's token).
func (c *Client) ReleasedOutput(ctx context.Context, id int64) (*broker.ReleasedResult, error) {
	var out broker.ReleasedResult
	_, err := c.do(ctx, http.MethodGet, idPath("/api/v1/queries/%d/output", id), nil, nil, &out)
	return &out, err
}

// Result returns a released table.
func (c *Client) Result(ctx context.Context, id int64) (*ResultResponse, error) {
	data, err := c.ResultRaw(ctx, id, "json")
	if err != nil {
		return nil, err
	}
	var out ResultResponse
	if err := json.Unmarshal(data, &out); err != nil {
		return nil, fmt.Errorf("decode result: %w", err)
	}
	return &out, nil
}

// QueryRaw returns the JSON document Query decodes, undecoded: for callers
// that only check it, such as tre bench's load generator.
func (c *Client) QueryRaw(ctx context.Context, id int64) ([]byte, error) {
	data, _, _, err := c.raw(ctx, http.MethodGet, idPath("/api/v1/queries/%d", id), nil, nil)
	return data, err
}

// ResultRaw returns a released table's bytes in format "csv" or "json".
func (c *Client) ResultRaw(ctx context.Context, id int64, format string) ([]byte, error) {
	data, _, _, err := c.raw(ctx, http.MethodGet, idPath("/api/v1/queries/%d/result", id), url.Values{"format": {format}}, nil)
	return data, err
}

// AuditOptions filters the audit log.
type AuditOptions struct {
	ListOptions
	Actor, Action, Object string
}

// Audit lists audit entries (admin).
func (c *Client) Audit(ctx context.Context, o AuditOptions) (*List[broker.AuditEntry], error) {
	v := o.values()
	for k, s := range map[string]string{"actor": o.Actor, "action": o.Action, "object": o.Object} {
		if s != "" {
			v.Set(k, s)
		}
	}
	var out List[broker.AuditEntry]
	_, err := c.do(ctx, http.MethodGet, "/api/v1/audit", v, nil, &out)
	return &out, err
}

// VerifyAudit recomputes the audit chain (admin).
func (c *Client) VerifyAudit(ctx context.Context) (*broker.AuditVerification, error) {
	var out broker.AuditVerification
	_, err := c.do(ctx, http.MethodGet, "/api/v1/audit/verify", nil, nil, &out)
	return &out, err
}

// CreateSite registers a site so that its agent may act (admin).
func (c *Client) CreateSite(ctx context.Context, req SiteRequest) (*broker.Site, error) {
	var out broker.Site
	_, err := c.do(ctx, http.MethodPost, "/api/v1/sites", nil, req, &out)
	return &out, err
}

// PublishCatalog publishes a site's dataset catalog (agent).
func (c *Client) PublishCatalog(ctx context.Context, siteID string, cat *queries.Catalog) error {
	_, err := c.do(ctx, http.MethodPut, "/api/v1/agent/catalog", nil,
		CatalogRequest{SiteID: siteID, AgentVersion: c.AgentVersion, Catalog: cat}, nil)
	return err
}

// Lease asks for an approved job; it returns nil, nil when there is none.
func (c *Client) Lease(ctx context.Context, siteID string) (*broker.Lease, error) {
	var out broker.Lease
	status, err := c.do(ctx, http.MethodPost, "/api/v1/agent/lease", nil, LeaseRequest{SiteID: siteID, AgentVersion: c.AgentVersion}, &out)
	if err != nil {
		return nil, err
	}
	if status == http.StatusNoContent {
		return nil, nil
	}
	return &out, nil
}

// Heartbeat extends a job's lease.
func (c *Client) Heartbeat(ctx context.Context, id int64, token string) (*broker.Lease, error) {
	var out broker.Lease
	_, err := c.do(ctx, http.MethodPost, idPath("/api/v1/agent/jobs/%d/heartbeat", id), nil, HeartbeatRequest{Token: token}, &out)
	return &out, err
}

// Complete uploads a job's protected result.
func (c *Client) Complete(ctx context.Context, id int64, token string, res dp.Result) error {
	_, err := c.do(ctx, http.MethodPost, idPath("/api/v1/agent/jobs/%d/complete", id), nil, CompleteRequest{Token: token, Result: &res}, nil)
	return err
}

// CompletePartial uploads a site's part of a federated query (a job
// leased with Partial set): its noisy statistics, which the broker
// combines with the other sites' (dp.Combine).
func (c *Client) CompletePartial(ctx context.Context, id int64, token string, part *dp.Partial) error {
	_, err := c.do(ctx, http.MethodPost, idPath("/api/v1/agent/jobs/%d/complete", id), nil, CompleteRequest{Token: token, Partial: part}, nil)
	return err
}

// Fail reports that a job could not run. code is a broker error code; the
// message must not contain data values or DuckDB error text.
func (c *Client) Fail(ctx context.Context, id int64, token, code, message string) error {
	_, err := c.do(ctx, http.MethodPost, idPath("/api/v1/agent/jobs/%d/fail", id), nil, FailRequest{Token: token, Code: code, Message: message}, nil)
	return err
}

// UploadCodelist uploads a codelist.
func (c *Client) UploadCodelist(ctx context.Context, req CodelistRequest) (*broker.Codelist, error) {
	var out broker.Codelist
	_, err := c.do(ctx, http.MethodPost, "/api/v1/codelists", nil, req, &out)
	return &out, err
}

// Codelists lists codelists, newest first, without their codes.
func (c *Client) Codelists(ctx context.Context, o ListOptions) (*List[broker.Codelist], error) {
	var out List[broker.Codelist]
	_, err := c.do(ctx, http.MethodGet, "/api/v1/codelists", o.values(), nil, &out)
	return &out, err
}

// Codelist returns one codelist (ORG/SLUG/VERSION) with its codes and the
// queries the caller may see that use it.
func (c *Client) Codelist(ctx context.Context, name string) (*broker.Codelist, error) {
	var out broker.Codelist
	_, err := c.do(ctx, http.MethodGet, CodelistPath(name), nil, nil, &out)
	return &out, err
}

// CodelistPath is a codelist's API path: each part of its name escaped.
func CodelistPath(name string) string {
	parts := strings.Split(name, "/")
	for i, p := range parts {
		parts[i] = url.PathEscape(p)
	}
	return "/api/v1/codelists/" + strings.Join(parts, "/")
}
