package broker

import (
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/nhs-tre/tre/dp"
	"github.com/nhs-tre/tre/queries"
)

// Federation (issue 21): a dataset several registered sites hold, whose
// catalogs agree, is queried at every one of them. Each site bounds and
// protects its own part (dp.ProtectPartial: only noisy statistics leave
// it); the broker combines the parts (dp.Combine, post-processing only)
// into the one table that goes to the output check.
//
// Budget: each site's ledger for the project is charged the query's cost
// in the approving transaction (per-site ledgers, query_jobs.ledger). The
// project's ledger is charged the cost once when the catalog declares
// disjoint populations (parallel composition: no patient is in two sites'
// data, so no patient's data is used twice), else once per site.

// Federation is how a federated query runs and what it costs.
type Federation struct {
	// Sites is how many sites the query runs at.
	Sites int `json:"sites"`
	// DisjointPopulations is the catalog's declaration that no patient is
	// in two sites' data.
	DisjointPopulations bool `json:"disjoint_populations"`
	// SiteCost is what each site's ledger is charged: the query's cost.
	SiteCost dp.Cost `json:"site_cost"`
	// ProjectCost is what the project's ledger is charged: SiteCost under
	// parallel composition (disjoint populations), else Sites × SiteCost;
	// never refunded once approved, however many sites ran
	// (federatedFailure).
	ProjectCost dp.Cost `json:"project_cost"`
	// Deadline is when the query fails as a whole unless every site has
	// reported (set at approval; staff only).
	Deadline time.Time `json:"deadline,omitzero"`
}

// QuerySite is one site of a federated query and how its part stands.
// Researchers see the site only; staff see its status and attempts.
type QuerySite struct {
	SiteID   string    `json:"site_id"`
	Status   JobStatus `json:"status,omitempty"`
	Attempts int       `json:"attempts,omitempty"`
}

// SiteOutput is one site's part of a federated query's output, as the
// output checker sees it: its state and its own disclosure report (from
// its protected partial result).
type SiteOutput struct {
	SiteID   string      `json:"site_id"`
	Status   JobStatus   `json:"status"`
	Attempts int         `json:"attempts"`
	Failure  *Failure    `json:"failure,omitempty"`
	Report   *SiteReport `json:"report,omitempty"`
}

// SiteReport is the disclosure report of one site's part: what its
// partial result says of its run (nothing in it is exact data).
type SiteReport struct {
	// RowsDroppedByBounding is rounded to the rounding base (checker only).
	RowsDroppedByBounding int64            `json:"rows_dropped_by_bounding"`
	OptOut                dp.OptOutReport  `json:"optout"`
	Sandbox               dp.SandboxReport `json:"sandbox"`
	Synthetic             bool             `json:"synthetic,omitempty"`
}

// SiteLedger is one site's budget ledger for a project: what the
// project's federated queries have spent (runs started) and reserved
// (approved, not started) at that site. Its limit is the project's budget.
type SiteLedger struct {
	SiteID           string  `json:"site_id"`
	EpsilonSpent     float64 `json:"epsilon_spent"`
	EpsilonReserved  float64 `json:"epsilon_reserved"`
	EpsilonRemaining float64 `json:"epsilon_remaining"`
	DeltaSpent       float64 `json:"delta_spent"`
	DeltaReserved    float64 `json:"delta_reserved"`
	DeltaRemaining   float64 `json:"delta_remaining"`
}

// Failure codes of a federated query that fails as a whole.
const (
	// FailureFederationDeadline: not every site reported before the
	// federation deadline.
	FailureFederationDeadline = "federation_deadline"
	// FailureFederationSite: a site's part failed for good.
	FailureFederationSite = "federation_site_failed"
	// FailureFederationCombine: the sites' parts could not be combined.
	FailureFederationCombine = "federation_combine"
)

// projectCost is what rec's query costs the project's ledger.
func projectCost(rec *QueryRecord) dp.Cost {
	f := float64(max(rec.LedgerFactor, 1))
	return dp.Cost{Epsilon: rec.Query.Cost.Epsilon * f, Delta: rec.Query.Cost.Delta * f}
}

// FederationOf describes rec's federation (nil for a single-site query).
func FederationOf(rec *QueryRecord) *Federation {
	if rec.Sites == 0 {
		return nil
	}
	return &Federation{
		Sites: rec.Sites, DisjointPopulations: rec.Disjoint,
		SiteCost: rec.Query.Cost, ProjectCost: projectCost(rec), Deadline: rec.DeadlineAt,
	}
}

// ledgerFactor is how many times a federated query's cost is charged to
// the project: once under parallel composition (disjoint populations),
// else once per site.
func ledgerFactor(sites int, disjoint bool) int {
	if disjoint {
		return 1
	}
	return sites
}

// ---- catalog agreement ----

// catalogDiff returns the path of the first difference between two
// catalogs' canonical forms (catalogPaths), or "" when they agree.
func catalogDiff(a, b *queries.Catalog) (string, error) {
	pa, err := catalogPaths(a)
	if err != nil {
		return "", err
	}
	pb, err := catalogPaths(b)
	if err != nil {
		return "", err
	}
	keys := make([]string, 0, len(pa)+len(pb))
	for k := range pa {
		keys = append(keys, k)
	}
	for k := range pb {
		if _, ok := pa[k]; !ok {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		va, oka := pa[k]
		vb, okb := pb[k]
		if oka != okb || va != vb {
			return k, nil
		}
	}
	return "", nil
}

// catalogPaths flattens a catalog's canonical form into values by path
// (tables.patients.columns.bmi.bounds): everything a query's meaning and
// protection depend on (tables, columns, types, roles, bounds, public
// domains, code systems, policy, federation), without the site-local or
// descriptive parts (descriptions, example codes, the opt-out table and
// its name). Tables and columns are keyed by lower-case name; a table or
// column present has a path of its own, which sorts before its fields.
func catalogPaths(c *queries.Catalog) (map[string]string, error) {
	cc := *c
	cc.Dataset, cc.Description = "", ""
	cc.Policy.OptOutTable = ""
	cc.Tables = nil
	for _, t := range c.Tables {
		if !strings.EqualFold(t.Name, c.Policy.OptOutTable) {
			cc.Tables = append(cc.Tables, t)
		}
	}
	body, err := json.Marshal(&cc)
	if err != nil {
		return nil, fmt.Errorf("encode catalog: %w", err)
	}
	var tree any
	if err := json.Unmarshal(body, &tree); err != nil {
		return nil, fmt.Errorf("decode catalog: %w", err)
	}
	out := map[string]string{}
	flattenCatalog("", tree, out)
	return out, nil
}

// flattenCatalog adds v's leaves under path to out (catalogPaths).
func flattenCatalog(path string, v any, out map[string]string) {
	join := func(k string) string {
		if path == "" {
			return k
		}
		return path + "." + k
	}
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			switch k {
			case "description", "examples":
				continue
			case "tables", "columns":
				if list, ok := e.([]any); ok {
					flattenNamed(join(k), list, out)
					continue
				}
			}
			flattenCatalog(join(k), e, out)
		}
	default:
		b, _ := json.Marshal(x) // decoded JSON: cannot fail
		out[path] = string(b)
	}
}

// flattenNamed adds a list of named objects (tables, columns) by name.
func flattenNamed(path string, list []any, out map[string]string) {
	for _, e := range list {
		m, ok := e.(map[string]any)
		if !ok {
			flattenCatalog(path, e, out)
			continue
		}
		name, _ := m["name"].(string)
		p := path + "." + strings.ToLower(name)
		out[p] = "declared"
		rest := make(map[string]any, len(m))
		for k, v := range m {
			if k != "name" {
				rest[k] = v
			}
		}
		flattenCatalog(p, rest, out)
	}
}

// agreeWithHolders refuses cat, published by siteID, when it disagrees
// with a catalog another site holds of the same dataset (they all agree
// with each other, so the earliest other holder is enough).
func agreeWithHolders(cat *queries.Catalog, siteID string, holders []CatalogHolder) error {
	for _, h := range holders {
		if h.SiteID == siteID {
			continue
		}
		other := new(queries.Catalog)
		if err := json.Unmarshal(h.Body, other); err != nil {
			return fmt.Errorf("decode stored catalog %q of site %q: %w", cat.Dataset, h.SiteID, err)
		}
		path, err := catalogDiff(other, cat)
		if err != nil {
			return err
		}
		if path != "" {
			return Errorf(ECONFLICT, "dataset %q is also held by site %q, whose catalog differs at %s: every site holding a dataset must publish the same tables, columns, roles, bounds, public domains, policy and federation (only descriptions, examples and the opt-out table may differ)",
				cat.Dataset, h.SiteID, path)
		}
		return nil
	}
	return nil
}

// holderIDs lists the holders' site ids.
func holderIDs(holders []CatalogHolder) []string {
	ids := make([]string, len(holders))
	for i, h := range holders {
		ids[i] = h.SiteID
	}
	slices.Sort(ids)
	return ids
}

// ledgerCost is what q costs its project's ledger: a federated query's
// project cost, else its cost.
func ledgerCost(q *Query) dp.Cost {
	if q.Federation != nil {
		return q.Federation.ProjectCost
	}
	return q.Cost
}
