package brokertest

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/nhs-tre/tre/broker"
	"github.com/nhs-tre/tre/dp"
	"github.com/nhs-tre/tre/queries"
)

// Fixture is a service over a fresh store with a published catalog, one
// active project and a context per test user.
type Fixture struct {
	TB      testing.TB
	Store   Store
	Service *broker.Service
	Clock   *Clock
	Project *broker.Project

	// Contexts carrying each test user. Dual-role users exist to test
	// separation of duties.
	Admin, Reviewer, Reviewer2, Checker, Researcher, Researcher2, Outsider, Agent context.Context
	ResearchReview, ResearchCheck, ReviewCheck                                    context.Context
	// Members of the fixture's project who hold a staff role: separation
	// of duties keeps each from acting on the project's queries.
	MemberReviewer, MemberChecker, AdminResearcher context.Context

	compiler broker.Compiler
	results  map[float64]dp.Result // by ε, see Result
}

func as(sub string, roles ...broker.Role) context.Context {
	return broker.NewContext(context.Background(), &broker.User{Subject: sub, Roles: roles})
}

// AgentOf returns the context of an agent token bound to site.
func AgentOf(sub, site string) context.Context {
	return broker.NewContext(context.Background(), &broker.User{Subject: sub, Roles: []broker.Role{broker.RoleAgent}, Site: site})
}

// NewFixture builds a fixture over store.
func NewFixture(tb testing.TB, cfg Config, store Store, opts broker.Options) *Fixture {
	tb.Helper()
	f := &Fixture{
		TB:             tb,
		Store:          store,
		Clock:          NewClock(time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC)),
		Admin:          as("admin1", broker.RoleAdmin),
		Reviewer:       as("rev1", broker.RoleReviewer),
		Reviewer2:      as("rev2", broker.RoleReviewer),
		Checker:        as("chk1", broker.RoleOutputChecker),
		Researcher:     as("res1", broker.RoleResearcher),
		Researcher2:    as("res2", broker.RoleResearcher),
		Outsider:       as("res3", broker.RoleResearcher),
		Agent:          AgentOf("agent1", SiteID),
		ResearchReview: as("dual1", broker.RoleResearcher, broker.RoleReviewer),
		ResearchCheck:  as("dual2", broker.RoleResearcher, broker.RoleOutputChecker),
		ReviewCheck:    as("dual3", broker.RoleReviewer, broker.RoleOutputChecker),

		MemberReviewer:  as("rev9", broker.RoleReviewer),
		MemberChecker:   as("chk9", broker.RoleOutputChecker),
		AdminResearcher: as("boss", broker.RoleAdmin, broker.RoleResearcher),
	}
	if opts.Now == nil {
		opts.Now = f.Clock.Now
	}
	compiler := cfg.Compiler
	if compiler == nil {
		compiler = MustParser(tb)
	}
	f.compiler, f.results = compiler, map[float64]dp.Result{}
	f.Service = broker.NewService(store, compiler, opts)
	if err := f.Service.CreateSite(f.Admin, &broker.Site{ID: SiteID, Name: "Test site " + SiteID, Organisation: "Test NHS Trust"}); err != nil &&
		broker.ErrorCode(err) != broker.ECONFLICT { // a reopened store keeps its site
		tb.Fatalf("register site: %v", err)
	}
	if err := f.Service.PublishCatalog(f.Agent, SiteID, "", Catalog(tb)); err != nil {
		tb.Fatalf("publish catalog: %v", err)
	}
	f.Project = f.MustProject(ProjectEpsilon, ProjectDelta, "res1", "res2", "dual1", "dual2", "rev9", "chk9", "boss")
	return f
}

// MustSite registers site id as the admin.
func (f *Fixture) MustSite(id string) *broker.Site {
	f.TB.Helper()
	s := &broker.Site{ID: id, Name: "Test site " + id, Organisation: "Test NHS Trust"}
	if err := f.Service.CreateSite(f.Admin, s); err != nil {
		f.TB.Fatalf("register site %s: %v", id, err)
	}
	return s
}

// MustProject creates an active project over the test dataset.
func (f *Fixture) MustProject(eps, delta float64, members ...string) *broker.Project {
	f.TB.Helper()
	now := f.Clock.Now()
	p := &broker.Project{
		Title: "Heart failure outcomes", Organisation: "University of Leeds", Purpose: "Service evaluation",
		LawfulBasis: "GDPR 6(1)(e), 9(2)(j)", DataSharingAgreement: "DSA-0042",
		Members: members, Datasets: []string{Dataset}, EpsilonBudget: eps, DeltaBudget: delta,
		StartsAt: now.Add(-time.Hour), ExpiresAt: now.Add(365 * 24 * time.Hour),
	}
	if err := f.Service.CreateProject(f.Admin, p); err != nil {
		f.TB.Fatalf("create project: %v", err)
	}
	return p
}

// MustSubmit submits sql to the fixture's project as ctx's user.
func (f *Fixture) MustSubmit(ctx context.Context, sql string, eps float64) *broker.Query {
	f.TB.Helper()
	return f.MustSubmitTo(ctx, f.Project.ID, sql, eps)
}

// MustSubmitTo submits sql to project id.
func (f *Fixture) MustSubmitTo(ctx context.Context, id int64, sql string, eps float64) *broker.Query {
	f.TB.Helper()
	q, err := f.Service.SubmitQuery(ctx, broker.QuerySubmission{ProjectID: id, SQL: sql, Purpose: "test", Epsilon: eps})
	if err != nil {
		f.TB.Fatalf("submit %q: %v", sql, err)
	}
	return q
}

// MustApprove approves query id as rev1.
func (f *Fixture) MustApprove(id int64) {
	f.TB.Helper()
	if _, err := f.Service.ApproveQuery(f.Reviewer, id, "ok"); err != nil {
		f.TB.Fatalf("approve %d: %v", id, err)
	}
}

// MustLease leases the next job and checks it is query id.
func (f *Fixture) MustLease(id int64) *broker.Lease {
	f.TB.Helper()
	l, err := f.Service.LeaseJob(f.Agent, SiteID, "")
	if err != nil {
		f.TB.Fatalf("lease: %v", err)
	}
	if l == nil || l.QueryID != id {
		f.TB.Fatalf("lease = %+v, want query %d", l, id)
	}
	return l
}

// ResultOf returns the protected result a site uploads for sql at eps,
// compiled against the fixture's catalog and protected by dp.Protect.
func (f *Fixture) ResultOf(tb testing.TB, sql string, eps float64) dp.Result {
	tb.Helper()
	plan, err := f.compiler.Compile(context.Background(), Catalog(tb), sql, queries.Options{Epsilon: eps})
	if err != nil {
		tb.Fatalf("compile %q at ε %g: %v", sql, eps, err)
	}
	res, err := dp.Protect(plan.Spec, nil, dp.Options{})
	if err != nil {
		tb.Fatalf("protect: %v", err)
	}
	return *res
}

// Result returns the protected result a site uploads for DefaultSQL at
// eps: compiled against the fixture's catalog as the site compiles it and
// protected by dp.Protect, so that it passes the broker's result checks.
// The same eps gives the same result within a fixture.
func (f *Fixture) Result(eps float64) dp.Result {
	f.TB.Helper()
	if r, ok := f.results[eps]; ok {
		return r
	}
	res := f.ResultOf(f.TB, DefaultSQL, eps)
	f.results[eps] = res
	return res
}

// DiagnosedResult is Result(eps) with every figure only an output checker
// may see set: dominance flags on the first aggregate cell, partitions not
// released and rows dropped by bounding. It shares nothing with Result's.
func (f *Fixture) DiagnosedResult(eps float64) dp.Result {
	f.TB.Helper()
	res := f.Result(eps)
	rows := make([][]dp.Cell, len(res.Rows))
	for i, row := range res.Rows {
		rows[i] = slices.Clone(row)
	}
	res.Rows = rows
	for j, c := range res.Columns {
		if c.Kind != "group" && len(rows) > 0 {
			rows[0][j].Dominance = []string{"nk", "p%"}
			res.Report.CellsDominanceFlags = 1
			break
		}
	}
	res.Report.PartitionsNotRelease, res.Report.RowsDroppedByBounding = 7, 4321
	return res
}

// MustQuery returns query id as the admin sees it.
func (f *Fixture) MustQuery(id int64) *broker.Query {
	f.TB.Helper()
	q, err := f.Service.FindQueryByID(f.Admin, id)
	if err != nil {
		f.TB.Fatalf("find query %d: %v", id, err)
	}
	return q
}

// MustBudget returns the fixture project's budget.
func (f *Fixture) MustBudget() broker.Budget {
	f.TB.Helper()
	p, err := f.Service.FindProjectByID(f.Admin, f.Project.ID)
	if err != nil {
		f.TB.Fatalf("find project: %v", err)
	}
	return p.Budget
}

// QueryIn drives a fresh query into status st and returns it with the
// lease token of its last lease ("" if never leased).
func (f *Fixture) QueryIn(st broker.Status) (*broker.Query, string) {
	f.TB.Helper()
	svc := f.Service
	q := f.MustSubmit(f.Researcher, DefaultSQL, 0.5)
	must := func(err error) {
		f.TB.Helper()
		if err != nil {
			f.TB.Fatalf("drive query %d to %s: %v", q.ID, st, err)
		}
	}
	var token string
	run := func() {
		f.MustApprove(q.ID)
		token = f.MustLease(q.ID).Token
	}
	switch st {
	case broker.StatusSubmitted:
	case broker.StatusApproved:
		f.MustApprove(q.ID)
	case broker.StatusRejected:
		_, err := svc.RejectQuery(f.Reviewer, q.ID, "not in scope")
		must(err)
	case broker.StatusCancelled:
		_, err := svc.CancelQuery(f.Researcher, q.ID)
		must(err)
	case broker.StatusRunning:
		run()
	case broker.StatusAwaitingOutputCheck, broker.StatusReleased, broker.StatusWithheld:
		run()
		must(svc.CompleteJob(f.Agent, q.ID, token, f.Result(0.5)))
		if st == broker.StatusReleased {
			_, err := svc.ReleaseQuery(f.Checker, q.ID, "safe")
			must(err)
		} else if st == broker.StatusWithheld {
			_, err := svc.WithholdQuery(f.Checker, q.ID, "dominance")
			must(err)
		}
	case broker.StatusFailed:
		// A failed run is a failure notice an output checker released.
		run()
		must(svc.FailJob(f.Agent, q.ID, token, "timeout", "the query ran past its time limit"))
		_, err := svc.ReleaseQuery(f.Checker, q.ID, "tell the researcher")
		must(err)
	default:
		f.TB.Fatalf("unknown status %s", st)
	}
	got := f.MustQuery(q.ID)
	if got.Status != st {
		f.TB.Fatalf("query %d is %s, want %s", q.ID, got.Status, st)
	}
	return got, token
}

// MustCode checks err carries code.
func MustCode(tb testing.TB, err error, code string) {
	tb.Helper()
	if got := broker.ErrorCode(err); got != code {
		tb.Fatalf("error = %v (code %q), want code %q", err, got, code)
	}
}

// MustVerify checks the audit chain is intact.
func (f *Fixture) MustVerify() *broker.AuditVerification {
	f.TB.Helper()
	v, err := f.Service.VerifyAudit(f.Admin)
	if err != nil {
		f.TB.Fatalf("verify audit: %v", err)
	}
	if !v.OK {
		f.TB.Fatalf("audit chain broken: %+v", v)
	}
	return v
}

// ShapedResult returns a result of spec's shape that passes the broker's
// checks, for tests that need chosen cells: the spec's columns and report
// claims; for a public-domain grouping every key of the domains' cross
// product in order (keys is ignored), or with grouping sets every cell of
// each set, a total's column showing dp.TotalKey after its domain's keys
// (as Protect orders them); otherwise one row per key of keys (a single
// group column). cell gives each row's aggregate cells.
func ShapedResult(spec dp.Spec, keys []string, cell func(row int) dp.Cell) dp.Result {
	res := dp.Result{Columns: spec.Columns(), Report: spec.Claims()}
	var tuples [][]string
	if res.Report.PartitionSelection == dp.SelectionPublicDomain {
		// A column some set totals has TotalKey after its domain.
		totalled := make([]bool, len(spec.Groups))
		for _, set := range spec.Sets {
			for c := range spec.Groups {
				totalled[c] = totalled[c] || !slices.Contains(set, c)
			}
		}
		tuples = [][]string{{}}
		for c, g := range spec.Groups {
			domain := g.Domain
			if totalled[c] {
				domain = append(slices.Clone(domain), dp.TotalKey)
			}
			var next [][]string
			for _, t := range tuples {
				for _, k := range domain {
					next = append(next, append(slices.Clone(t), k))
				}
			}
			tuples = next
		}
		if len(spec.Sets) > 0 {
			// Keep the tuples of some set: its columns keys, the others
			// totals.
			tuples = slices.DeleteFunc(tuples, func(t []string) bool {
				return !slices.ContainsFunc(spec.Sets, func(set []int) bool {
					for c, k := range t {
						if (k == dp.TotalKey) == slices.Contains(set, c) {
							return false
						}
					}
					return true
				})
			})
		}
	} else {
		for _, k := range keys {
			tuples = append(tuples, []string{k})
		}
	}
	for i, t := range tuples {
		var row []dp.Cell
		for _, k := range t {
			row = append(row, dp.Cell{Key: k})
		}
		for _, a := range spec.Aggregates {
			if a.Hidden {
				continue // a ratio's part: not a column
			}
			c := cell(i)
			if c.Suppressed {
				res.Report.CellsSuppressed++
			} else if c.Rounded {
				res.Report.CellsRounded++
			}
			row = append(row, c)
		}
		res.Rows = append(res.Rows, row)
	}
	return res
}
