package brokertest

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nhs-tre/tre/broker"
	"github.com/nhs-tre/tre/dp"
	"github.com/nhs-tre/tre/queries"
)

// Federation (issue 21): a dataset several sites hold, one query run at
// each of them.

// fedSites are the extra sites of the federation tests, besides SiteID.
var fedSites = []string{"site-b", "site-c"}

// federate registers fedSites and has each publish cat (nil: Catalog),
// with its own opt-out table name and descriptions, which may differ.
func (f *Fixture) federate(cat func() *queries.Catalog) {
	f.TB.Helper()
	if cat == nil {
		cat = func() *queries.Catalog { return Catalog(f.TB) }
	}
	for _, id := range fedSites {
		f.MustSite(id)
		c := cat()
		c.Description = "the data of " + id
		for i := range c.Tables {
			if c.Tables[i].Name == "optouts" {
				c.Tables[i].Name = "optouts_" + strings.ReplaceAll(id, "-", "_")
				c.Policy.OptOutTable = c.Tables[i].Name
			}
		}
		if err := f.Service.PublishCatalog(AgentOf("agent-"+id, id), id, "", c); err != nil {
			f.TB.Fatalf("site %s publishes: %v", id, err)
		}
	}
}

// allSites are the federation's sites in id order.
func allSites() []string { return append([]string{SiteID}, fedSites...) }

// PartialOf returns the partial result a site uploads for its part of sql
// at eps: compiled as a federated query against the fixture's catalog and
// protected by dp.ProtectPartial.
func (f *Fixture) PartialOf(tb testing.TB, sql string, eps float64) *dp.Partial {
	tb.Helper()
	plan, err := f.compiler.Compile(context.Background(), Catalog(tb), sql, queries.Options{Epsilon: eps, Federated: true})
	if err != nil {
		tb.Fatalf("compile %q at ε %g: %v", sql, eps, err)
	}
	p, err := dp.ProtectPartial(plan.Spec, nil, dp.Options{})
	if err != nil {
		tb.Fatalf("protect partial: %v", err)
	}
	return p
}

// siteLedgers returns the project's per-site ledgers by site.
func (f *Fixture) siteLedgers(id int64) map[string]broker.SiteLedger {
	f.TB.Helper()
	p, err := f.Service.FindProjectByID(f.Admin, id)
	if err != nil {
		f.TB.Fatalf("find project: %v", err)
	}
	out := map[string]broker.SiteLedger{}
	for _, l := range p.SiteLedgers {
		out[l.SiteID] = l
	}
	return out
}

// leaseAt leases site's next job, which must be query id's part.
func (f *Fixture) leaseAt(site string, id int64) *broker.Lease {
	f.TB.Helper()
	l, err := f.Service.LeaseJob(AgentOf("agent-"+site, site), site, "")
	if err != nil {
		f.TB.Fatalf("lease at %s: %v", site, err)
	}
	if l == nil || l.QueryID != id || !l.Partial || l.SiteID != site {
		f.TB.Fatalf("lease at %s = %+v, want query %d's part", site, l, id)
	}
	return l
}

func testFederatedCatalogs(t *testing.T, f *Fixture) {
	svc := f.Service
	f.federate(nil)
	sites, err := svc.FindSites(f.Admin)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range sites {
		if !slices.Equal(s.Datasets, []string{Dataset}) {
			t.Errorf("site %s holds %v, want [%s]", s.ID, s.Datasets, Dataset)
		}
	}
	if cats, err := svc.FindDatasets(f.Researcher); err != nil || len(cats) != 1 || cats[0].Policy.OptOutTable != "optouts" {
		t.Fatalf("datasets = %v, %v: want the earliest holder's catalog once", cats, err)
	}
	f.MustSite("site-d")
	agentD := AgentOf("agent-d", "site-d")
	for _, tc := range []struct {
		path   string
		change func(c *queries.Catalog)
	}{
		{"tables.clinical_events.columns.numeric_value.bounds", func(c *queries.Catalog) { c.Tables[1].Columns[3].Bounds = &[2]float64{0, 100} }},
		{"tables.patients.columns.sex.domain", func(c *queries.Catalog) { c.Tables[0].Columns[1].Domain = []string{"female", "male"} }},
		{"tables.patients.columns.date_of_birth.role", func(c *queries.Catalog) { c.Tables[0].Columns[5].Role = queries.RoleForbidden }},
		{"policy.small_cell_threshold", func(c *queries.Catalog) { c.Policy.SmallCellThreshold = 5 }},
		{"federation.disjoint_populations", func(c *queries.Catalog) { c.Federation = &queries.Federation{DisjointPopulations: true} }},
		{"tables.clinical_events", func(c *queries.Catalog) { c.Tables = slices.Delete(c.Tables, 1, 2) }},
	} {
		c := Catalog(t)
		tc.change(c)
		err := svc.PublishCatalog(agentD, "site-d", "", c)
		MustCode(t, err, broker.ECONFLICT)
		if msg := broker.ErrorMessage(err); !strings.Contains(msg, " differs at "+tc.path+":") {
			t.Errorf("conflict %q does not name %s", msg, tc.path)
		}
	}
	// A holder may not change its catalog away from the others either.
	c := Catalog(t)
	c.Policy.RoundingBase = 10
	MustCode(t, svc.PublishCatalog(f.Agent, SiteID, "", c), broker.ECONFLICT)
	// Descriptions, examples and the opt-out table are the site's own.
	c = Catalog(t)
	c.Tables[0].Description = "site d's patients"
	c.Tables[1].Columns[2].Examples = []queries.CodeExample{{Code: "44054006", Term: "Diabetes mellitus type 2"}}
	if err := svc.PublishCatalog(agentD, "site-d", "", c); err != nil {
		t.Fatalf("an agreeing catalog: %v", err)
	}
	f.MustVerify()
}

func testFederation(t *testing.T, f *Fixture) {
	svc := f.Service
	f.federate(nil)
	const eps = 0.5
	q := f.MustSubmit(f.Researcher, DefaultSQL, eps)
	if q.Federation == nil || q.Federation.Sites != 3 || q.Federation.DisjointPopulations {
		t.Fatalf("federation = %+v, want 3 sites, populations not disjoint", q.Federation)
	}
	plan, err := f.compiler.Compile(context.Background(), Catalog(t), DefaultSQL, queries.Options{Epsilon: eps, Federated: true})
	if err != nil {
		t.Fatal(err)
	}
	acc, err := plan.Spec.FederatedAccuracy(3)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(q.Accuracy) != fmt.Sprint(acc) {
		t.Errorf("accuracy quoted %v, want the combined answer's %v", q.Accuracy, acc)
	}
	// A check (and a dry run, which quotes it) says the same as the
	// submission.
	c, err := svc.CheckQuery(f.Researcher, broker.QuerySubmission{ProjectID: f.Project.ID, SQL: DefaultSQL, Epsilon: eps})
	if err != nil {
		t.Fatal(err)
	}
	if c.Federation == nil || *c.Federation != *q.Federation || fmt.Sprint(c.Accuracy) != fmt.Sprint(acc) {
		t.Errorf("check: federation %+v, accuracy %v; want the submission's %+v, %v", c.Federation, c.Accuracy, q.Federation, acc)
	}
	if c := q.Federation.ProjectCost; !near(c.Epsilon, 3*q.Cost.Epsilon) || !near(c.Delta, 3*q.Cost.Delta) {
		t.Errorf("project cost %+v, want 3 × %+v", c, q.Cost)
	}
	f.MustApprove(q.ID)
	if b := f.MustBudget(); !near(b.EpsilonReserved, 3*q.Cost.Epsilon) {
		t.Errorf("project reserved ε %g, want %g", b.EpsilonReserved, 3*q.Cost.Epsilon)
	}
	for _, s := range allSites() {
		if l := f.siteLedgers(f.Project.ID)[s]; !near(l.EpsilonReserved, q.Cost.Epsilon) || l.EpsilonSpent != 0 {
			t.Errorf("site %s ledger %+v, want ε %g reserved", s, l, q.Cost.Epsilon)
		}
	}
	la := f.leaseAt(SiteID, q.ID)
	if l, err := svc.LeaseJob(f.Agent, SiteID, ""); err != nil || l != nil {
		t.Fatalf("site-a leases again: %+v, %v; want nothing: its part is leased", l, err)
	}
	MustCode(t, svc.CompleteJob(f.Agent, q.ID, la.Token, f.Result(eps)), broker.EINVALID)
	// A site cannot report another's part, even with its token.
	MustCode(t, svc.CompletePartial(AgentOf("agent-site-b", "site-b"), q.ID, la.Token, f.PartialOf(t, DefaultSQL, eps)), broker.ECONFLICT)
	if err := svc.CompletePartial(f.Agent, q.ID, la.Token, f.PartialOf(t, DefaultSQL, eps)); err != nil {
		t.Fatalf("site-a's part: %v", err)
	}
	if err := svc.CompletePartial(f.Agent, q.ID, la.Token, f.PartialOf(t, DefaultSQL, eps)); err != nil {
		t.Fatalf("site-a's part again (same token): %v", err)
	}
	if st := f.MustQuery(q.ID).Status; st != broker.StatusRunning {
		t.Fatalf("after one part: %s, want running", st)
	}
	for _, s := range fedSites {
		l := f.leaseAt(s, q.ID)
		if _, err := svc.HeartbeatJob(AgentOf("agent-"+s, s), q.ID, l.Token); err != nil {
			t.Fatalf("heartbeat at %s: %v", s, err)
		}
		if err := svc.CompletePartial(AgentOf("agent-"+s, s), q.ID, l.Token, f.PartialOf(t, DefaultSQL, eps)); err != nil {
			t.Fatalf("%s's part: %v", s, err)
		}
	}
	got := f.MustQuery(q.ID)
	if got.Status != broker.StatusAwaitingOutputCheck {
		t.Fatalf("after every part: %s, want awaiting_output_check", got.Status)
	}
	var sites []string
	for _, s := range got.Sites {
		sites = append(sites, s.SiteID)
		if s.Status != broker.JobDone || s.Attempts != 1 {
			t.Errorf("site %+v, want done after 1 attempt", s)
		}
	}
	if !slices.Equal(sites, allSites()) {
		t.Errorf("sites %v, want %v", sites, allSites())
	}
	o, err := svc.FindOutput(f.Checker, q.ID)
	if err != nil {
		t.Fatal(err)
	}
	if o.Result == nil || len(o.Result.Rows) != 3 || len(o.Sites) != 3 {
		t.Fatalf("output: result %+v, sites %+v; want the combined table of 3 groups and 3 sites' reports", o.Result, o.Sites)
	}
	for _, s := range o.Sites {
		if s.Report == nil || s.Status != broker.JobDone {
			t.Errorf("site output %+v, want done with its report", s)
		}
	}
	if _, err := svc.ReleaseQuery(f.Checker, q.ID, "safe"); err != nil {
		t.Fatal(err)
	}
	if b := f.MustBudget(); !near(b.EpsilonSpent, 3*q.Cost.Epsilon) || b.EpsilonReserved != 0 {
		t.Errorf("project budget %+v, want ε %g spent", b, 3*q.Cost.Epsilon)
	}
	for _, s := range allSites() {
		if l := f.siteLedgers(f.Project.ID)[s]; !near(l.EpsilonSpent, q.Cost.Epsilon) || l.EpsilonReserved != 0 {
			t.Errorf("site %s ledger %+v, want ε %g spent", s, l, q.Cost.Epsilon)
		}
	}
	reg, err := svc.Register(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(reg) != 1 || !slices.Equal(reg[0].Sites, allSites()) {
		t.Errorf("register %+v, want sites %v", reg, allSites())
	}
	// Researchers see the sites, not how each stands, nor the deadline.
	rq, err := svc.FindQueryByID(f.Researcher, q.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(rq.Sites) != 3 || rq.Sites[0].Status != "" || rq.Sites[0].Attempts != 0 || !rq.Federation.Deadline.IsZero() {
		t.Errorf("researcher's view: sites %+v, federation %+v", rq.Sites, rq.Federation)
	}
	f.MustVerify()
}

func testFederationDisjoint(t *testing.T, f *Fixture) {
	disjoint := func() *queries.Catalog {
		c := Catalog(f.TB)
		c.Federation = &queries.Federation{DisjointPopulations: true}
		return c
	}
	if err := f.Service.PublishCatalog(f.Agent, SiteID, "", disjoint()); err != nil {
		t.Fatal(err)
	}
	f.federate(disjoint)
	q := f.MustSubmit(f.Researcher, DefaultSQL, 0.5)
	if fed := q.Federation; fed == nil || !fed.DisjointPopulations || fed.ProjectCost != q.Cost {
		t.Fatalf("federation %+v, want disjoint populations costing the project %+v once", fed, q.Cost)
	}
	if c, err := f.Service.CheckQuery(f.Researcher, broker.QuerySubmission{ProjectID: f.Project.ID, SQL: DefaultSQL, Epsilon: 0.5}); err != nil || c.Federation == nil || *c.Federation != *q.Federation {
		t.Errorf("check: %+v, %v; want the submission's federation %+v", c, err, q.Federation)
	}
	f.MustApprove(q.ID)
	if b := f.MustBudget(); !near(b.EpsilonReserved, q.Cost.Epsilon) {
		t.Errorf("project reserved ε %g, want %g (parallel composition)", b.EpsilonReserved, q.Cost.Epsilon)
	}
	for _, s := range allSites() {
		if l := f.siteLedgers(f.Project.ID)[s]; !near(l.EpsilonReserved, q.Cost.Epsilon) {
			t.Errorf("site %s ledger %+v, want ε %g reserved", s, l, q.Cost.Epsilon)
		}
	}
}

// testFederationConcurrentApprovals: concurrent approvals of federated
// queries never overspend the project's or any site's ledger.
func testFederationConcurrentApprovals(t *testing.T, f *Fixture) {
	f.federate(nil)
	p := f.MustProject(4, ProjectDelta, "res1")
	var ids []int64
	for range 8 {
		ids = append(ids, f.MustSubmitTo(f.Researcher, p.ID, DefaultSQL, 0.5).ID) // 1.5 each at the project
	}
	approved, refused := approveAll(t, []*broker.Service{f.Service}, f, ids)
	if approved != 2 || refused != 6 {
		t.Errorf("%d approved, %d refused; want 2 and 6 (ε 4 holds two queries of ε 1.5)", approved, refused)
	}
	pr, err := f.Service.FindProjectByID(f.Admin, p.ID)
	if err != nil {
		t.Fatal(err)
	}
	if pr.Budget.EpsilonReserved > 4+1e-9 {
		t.Errorf("project reserved ε %g over its budget 4", pr.Budget.EpsilonReserved)
	}
	for _, l := range pr.SiteLedgers {
		if !near(l.EpsilonReserved, float64(approved)*0.5) {
			t.Errorf("site %s ledger %+v, want ε %g reserved", l.SiteID, l, float64(approved)*0.5)
		}
	}
	f.MustVerify()
}

// testFederationFailure: a site's part failing for good fails the query as
// a whole; sites that never ran are refunded in their own ledgers, the
// project's charge stands.
func testFederationFailure(t *testing.T, f *Fixture) {
	svc := f.Service
	f.federate(nil)
	q := f.MustSubmit(f.Researcher, DefaultSQL, 0.5)
	f.MustApprove(q.ID)
	la := f.leaseAt(SiteID, q.ID)
	// A retryable failure: the part is leased again.
	if err := svc.FailJob(f.Agent, q.ID, la.Token, "crashed", "the child died"); err != nil {
		t.Fatal(err)
	}
	la = f.leaseAt(SiteID, q.ID)
	if la.Attempt != 2 {
		t.Errorf("attempt %d, want 2", la.Attempt)
	}
	if err := svc.FailJob(f.Agent, q.ID, la.Token, "timeout", "the query ran past its time limit"); err != nil {
		t.Fatal(err)
	}
	got := f.MustQuery(q.ID)
	if got.Status != broker.StatusAwaitingOutputCheck || got.FailureCode != broker.FailureFederationSite {
		t.Fatalf("query %s with failure %q, want awaiting_output_check with %q", got.Status, got.FailureCode, broker.FailureFederationSite)
	}
	for _, s := range []string{SiteID, "site-b", "site-c"} {
		if !strings.Contains(got.FailureDetail, s) {
			t.Errorf("failure detail %q does not list %s", got.FailureDetail, s)
		}
	}
	if l, err := svc.LeaseJob(AgentOf("agent-site-b", "site-b"), "site-b", ""); err != nil || l != nil {
		t.Errorf("site-b leases %+v, %v after the query failed; want nothing", l, err)
	}
	ls := f.siteLedgers(f.Project.ID)
	if l := ls[SiteID]; !near(l.EpsilonSpent, q.Cost.Epsilon) {
		t.Errorf("site-a ran: ledger %+v, want ε %g spent", l, q.Cost.Epsilon)
	}
	for _, s := range fedSites {
		if l := ls[s]; l.EpsilonSpent != 0 || l.EpsilonReserved != 0 {
			t.Errorf("site %s never ran: ledger %+v, want refunded", s, l)
		}
	}
	if b := f.MustBudget(); !near(b.EpsilonSpent, 3*q.Cost.Epsilon) || b.EpsilonReserved != 0 {
		t.Errorf("project budget %+v, want ε %g spent (the project's charge is never refunded)", b, 3*q.Cost.Epsilon)
	}
	o, err := svc.FindOutput(f.Checker, q.ID)
	if err != nil || o.Failure == nil || o.Result != nil || len(o.Sites) != 3 {
		t.Fatalf("output %+v, %v: want a failure notice with 3 sites", o, err)
	}
	// Researchers and staff see the project cost quoted.
	rq, err := svc.FindQueryByID(f.Researcher, q.ID)
	if err != nil {
		t.Fatal(err)
	}
	if c := rq.Federation.ProjectCost; !near(c.Epsilon, 3*q.Cost.Epsilon) {
		t.Errorf("researcher sees project cost %+v, want the quoted 3 × %+v", c, q.Cost)
	}
	if c := f.MustQuery(q.ID).Federation.ProjectCost; !near(c.Epsilon, 3*q.Cost.Epsilon) {
		t.Errorf("staff see project cost %+v, want ε %g (not refunded)", c, 3*q.Cost.Epsilon)
	}
	if _, err := svc.ReleaseQuery(f.Checker, q.ID, "tell them"); err != nil {
		t.Fatal(err)
	}
	if st := f.MustQuery(q.ID).Status; st != broker.StatusFailed {
		t.Errorf("released notice: %s, want failed", st)
	}
	f.MustVerify()
}

// testFederationDeadline: past the federation deadline the query fails as
// a whole at the next lease poll of any site; a late part is refused.
func testFederationDeadline(t *testing.T, f *Fixture) {
	svc := f.Service
	f.federate(nil)
	q := f.MustSubmit(f.Researcher, DefaultSQL, 0.5)
	f.MustApprove(q.ID)
	if err := svc.CompletePartial(f.Agent, q.ID, f.leaseAt(SiteID, q.ID).Token, f.PartialOf(t, DefaultSQL, 0.5)); err != nil {
		t.Fatal(err)
	}
	lb := f.leaseAt("site-b", q.ID)
	f.Clock.Advance(11 * time.Minute)
	if l, err := svc.LeaseJob(f.Agent, SiteID, ""); err != nil || l != nil {
		t.Fatalf("poll past the deadline: %+v, %v", l, err)
	}
	got := f.MustQuery(q.ID)
	if got.Status != broker.StatusAwaitingOutputCheck || got.FailureCode != broker.FailureFederationDeadline {
		t.Fatalf("query %s, failure %q; want awaiting_output_check, %q", got.Status, got.FailureCode, broker.FailureFederationDeadline)
	}
	err := svc.CompletePartial(AgentOf("agent-site-b", "site-b"), q.ID, lb.Token, f.PartialOf(t, DefaultSQL, 0.5))
	MustCode(t, err, broker.ECONFLICT)
	ls := f.siteLedgers(f.Project.ID)
	for s, want := range map[string]float64{SiteID: 0.5, "site-b": 0.5, "site-c": 0} {
		if l := ls[s]; !near(l.EpsilonSpent, want) || l.EpsilonReserved != 0 {
			t.Errorf("site %s ledger %+v, want ε %g spent", s, l, want)
		}
	}
	if b := f.MustBudget(); !near(b.EpsilonSpent, 1.5) || b.EpsilonReserved != 0 {
		t.Errorf("project budget %+v, want ε 1.5 spent (two sites ran; the project's charge stands)", b)
	}
	// Nobody started: every site's reservation is freed, the project's
	// becomes a charge.
	q2 := f.MustSubmit(f.Researcher, DefaultSQL, 0.5)
	f.MustApprove(q2.ID)
	f.Clock.Advance(11 * time.Minute)
	if _, err := svc.LeaseJob(f.Agent, SiteID, ""); err != nil {
		t.Fatal(err)
	}
	if got := f.MustQuery(q2.ID); got.Status != broker.StatusAwaitingOutputCheck {
		t.Fatalf("query nobody started: %s past the deadline", got.Status)
	}
	if b := f.MustBudget(); !near(b.EpsilonSpent, 3) || b.EpsilonReserved != 0 {
		t.Errorf("project budget %+v, want ε 3 spent", b)
	}
	for s, l := range f.siteLedgers(f.Project.ID) {
		if want := map[string]float64{SiteID: 0.5, "site-b": 0.5, "site-c": 0}[s]; !near(l.EpsilonSpent, want) || l.EpsilonReserved != 0 {
			t.Errorf("site %s ledger %+v, want ε %g spent", s, l, want)
		}
	}
	f.MustVerify()
}

// testFederationSweep: with no site's agent ever polling, SweepOverdue
// (what `tre serve` runs periodically) fails a federated query once its
// deadline has passed, with the outcome a poll gives; the notice released,
// the query is failed for the researcher. More overdue queries than one
// transaction takes are all failed by one sweep.
func testFederationSweep(t *testing.T, f *Fixture) {
	svc := f.Service
	f.federate(nil)
	q := f.MustSubmit(f.Researcher, DefaultSQL, 0.5)
	f.MustApprove(q.ID)
	f.Clock.Advance(9 * time.Minute)
	if n, err := svc.SweepOverdue(context.Background()); err != nil || n != 0 {
		t.Fatalf("sweep before the deadline: %d, %v; want nothing", n, err)
	}
	if st := f.MustQuery(q.ID).Status; st != broker.StatusApproved {
		t.Fatalf("before the deadline: %s, want approved", st)
	}
	f.Clock.Advance(2 * time.Minute)
	if n, err := svc.SweepOverdue(context.Background()); err != nil || n != 1 {
		t.Fatalf("sweep past the deadline: %d, %v; want 1", n, err)
	}
	got := f.MustQuery(q.ID)
	if got.Status != broker.StatusAwaitingOutputCheck || got.FailureCode != broker.FailureFederationDeadline {
		t.Fatalf("query %s, failure %q; want awaiting_output_check, %q", got.Status, got.FailureCode, broker.FailureFederationDeadline)
	}
	for _, s := range allSites() {
		if !strings.Contains(got.FailureDetail, s+" failed after 0 attempt(s), refunded") {
			t.Errorf("failure detail %q does not list %s as never started", got.FailureDetail, s)
		}
		if l := f.siteLedgers(f.Project.ID)[s]; l.EpsilonSpent != 0 || l.EpsilonReserved != 0 {
			t.Errorf("site %s ledger %+v, want refunded", s, l)
		}
	}
	if b := f.MustBudget(); !near(b.EpsilonSpent, 1.5) || b.EpsilonReserved != 0 {
		t.Errorf("project budget %+v, want ε 1.5 spent", b)
	}
	if n, err := svc.SweepOverdue(context.Background()); err != nil || n != 0 {
		t.Errorf("second sweep: %d, %v; want nothing", n, err)
	}
	if l, err := svc.LeaseJob(f.Agent, SiteID, ""); err != nil || l != nil {
		t.Errorf("a poll after the sweep leases %+v, %v; want nothing", l, err)
	}
	if _, err := svc.ReleaseQuery(f.Checker, q.ID, "tell them"); err != nil {
		t.Fatal(err)
	}
	f.Clock.Advance(2 * time.Minute) // past the researcher's granularity
	rq, err := svc.FindQueryByID(f.Researcher, q.ID)
	if err != nil {
		t.Fatal(err)
	}
	if rq.Status != broker.StatusFailed || rq.FailureCode != "" {
		t.Errorf("researcher sees %s with failure %q, want failed and no code", rq.Status, rq.FailureCode)
	}

	// More than one transaction's worth: one sweep fails them all.
	p := f.MustProject(100, ProjectDelta, "res1")
	var ids []int64
	for range 12 {
		id := f.MustSubmitTo(f.Researcher, p.ID, DefaultSQL, 0.5).ID
		f.MustApprove(id)
		ids = append(ids, id)
	}
	f.Clock.Advance(11 * time.Minute)
	if n, err := svc.SweepOverdue(context.Background()); err != nil || n != len(ids) {
		t.Fatalf("sweep of %d overdue: %d, %v", len(ids), n, err)
	}
	for _, id := range ids {
		if got := f.MustQuery(id); got.Status != broker.StatusAwaitingOutputCheck || got.FailureCode != broker.FailureFederationDeadline {
			t.Errorf("query %d: %s, %q after the sweep", id, got.Status, got.FailureCode)
		}
	}
	f.MustVerify()
}

// refundScenario creates a project of ε 8 and ends a federated query of
// ε 1 there (3 at the project) in a federated failure after ran of its
// three sites took their part (0: the deadline passes before any lease;
// 1: one site leased it; 3: every site leased it, two reported and the
// third's part failed for good). It returns the project.
func refundScenario(t *testing.T, f *Fixture, ran int) int64 {
	svc := f.Service
	f.federate(nil)
	pid := f.MustProject(8, ProjectDelta, "res1").ID
	q := f.MustSubmitTo(f.Researcher, pid, DefaultSQL, 1)
	f.MustApprove(q.ID)
	switch ran {
	case 0:
		f.Clock.Advance(11 * time.Minute)
		if _, err := svc.SweepOverdue(context.Background()); err != nil {
			t.Fatal(err)
		}
	case 1:
		f.leaseAt(SiteID, q.ID)
		f.Clock.Advance(11 * time.Minute)
		if _, err := svc.SweepOverdue(context.Background()); err != nil {
			t.Fatal(err)
		}
	case 3:
		for i, s := range allSites() {
			l := f.leaseAt(s, q.ID)
			ctx := AgentOf("agent-"+s, s)
			if s == SiteID {
				ctx = f.Agent
			}
			if i < 2 {
				if err := svc.CompletePartial(ctx, q.ID, l.Token, f.PartialOf(t, DefaultSQL, 1)); err != nil {
					t.Fatal(err)
				}
				continue
			}
			if err := svc.FailJob(ctx, q.ID, l.Token, "refused", "the site's compiler refused it"); err != nil {
				t.Fatal(err)
			}
		}
	}
	got := f.MustQuery(q.ID)
	if got.Status != broker.StatusAwaitingOutputCheck || got.FailureCode == "" {
		t.Fatalf("%d sites ran: query %s, failure %q; want a failure notice", ran, got.Status, got.FailureCode)
	}
	if _, err := svc.ReleaseQuery(f.Checker, q.ID, "tell them"); err != nil {
		t.Fatal(err)
	}
	return pid
}

// researcherSees is what a researcher can observe of their project's
// budget after a federated failure: the budget they read, the register's
// ε spent, and whether their next federated query can be approved.
type researcherSees struct {
	Budget     broker.Budget
	Register   float64
	NextStatus broker.Status
	NextCode   string
}

// testFederationRefundInvisible: whether 0, 1 or all 3 sites ran before
// a federated query failed (which can depend on the data), the researcher
// sees the same project budget, the register the same ε spent, and their
// next query is approved or refused alike; the sites' own ledgers (staff
// only) are refunded where the site never ran.
func testFederationRefundInvisible(t *testing.T, fresh func(*testing.T) *Fixture) {
	var first *researcherSees
	for _, ran := range []int{0, 1, 3} {
		f := fresh(t)
		pid := refundScenario(t, f, ran)
		f.Clock.Advance(2 * time.Minute) // past the researcher's granularity
		p, err := f.Service.FindProjectByID(f.Researcher, pid)
		if err != nil {
			t.Fatal(err)
		}
		reg, err := f.Service.Register(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		// The sites' ledgers are right: charged where the site ran.
		ls := f.siteLedgers(pid)
		for i, s := range allSites() {
			want := 0.0
			if i < ran {
				want = 1
			}
			if l := ls[s]; !near(l.EpsilonSpent, want) || l.EpsilonReserved != 0 {
				t.Errorf("%d ran: site %s ledger %+v, want ε %g spent", ran, s, l, want)
			}
		}
		// The failed query cost the project (ε 8) 3. A next query of ε 2
		// (6 at the project) is approved only if the failed query was
		// refunded there, in part or in full.
		next := f.MustSubmitTo(f.Researcher, pid, DefaultSQL, 2)
		_, aerr := f.Service.ApproveQuery(f.Reviewer, next.ID, "ok")
		seen := &researcherSees{Budget: p.Budget, NextStatus: f.MustQuery(next.ID).Status, NextCode: broker.ErrorCode(aerr)}
		for _, r := range reg {
			if r.ProjectID == pid {
				seen.Register = r.EpsilonSpent
			}
		}
		if len(p.SiteLedgers) != 0 {
			t.Errorf("%d ran: the researcher sees site ledgers %+v", ran, p.SiteLedgers)
		}
		if !near(seen.Budget.EpsilonSpent, 3) || seen.NextCode != broker.EBUDGET {
			t.Errorf("%d ran: researcher sees %+v; want ε 3 spent and the next query refused for budget", ran, seen)
		}
		if first == nil {
			first = seen
		} else if *seen != *first {
			t.Errorf("%d ran: researcher sees %+v, but %+v when no site ran", ran, seen, first)
		}
		f.MustVerify()
	}
}

// testSingleSiteBeforeFederation: a query submitted while one site held
// the dataset runs at that site alone (over the data it was submitted
// against), even once other sites publish the dataset.
func testSingleSiteBeforeFederation(t *testing.T, f *Fixture) {
	svc := f.Service
	q := f.MustSubmit(f.Researcher, DefaultSQL, 0.5)
	f.MustApprove(q.ID)
	waiting := f.MustSubmit(f.Researcher, DefaultSQL, 0.5)
	if c, err := svc.CheckQuery(f.Researcher, broker.QuerySubmission{ProjectID: f.Project.ID, SQL: DefaultSQL, Epsilon: 0.5}); err != nil || c.Federation != nil {
		t.Fatalf("check over one site: %+v, %v; want no federation", c, err)
	}
	f.federate(nil)
	f.MustApprove(waiting.ID)
	for _, s := range fedSites {
		if l, err := svc.LeaseJob(AgentOf("agent-"+s, s), s, ""); err != nil || l != nil {
			t.Fatalf("%s leases %+v, %v; want nothing: single-site queries run at site-a", s, l, err)
		}
	}
	for _, id := range []int64{q.ID, waiting.ID} {
		l := f.MustLease(id)
		if l.Partial {
			t.Errorf("single-site lease of query %d marked partial", id)
		}
		if err := svc.CompleteJob(f.Agent, id, l.Token, f.Result(0.5)); err != nil {
			t.Fatal(err)
		}
	}
	if b := f.MustBudget(); !near(b.EpsilonSpent, 1) {
		t.Errorf("project budget %+v, want ε 1 spent", b)
	}
}

// testFederationMonths: a query grouping by month over a dataset three
// sites hold federates when its WHERE bounds the date on both sides: the
// check and the submission say so, every site's part (compiled at the
// site) has the broker's spec, and the combined table has every month of
// the range. Bounded on one side only, the check and the submission are
// refused saying which bound to add, where over one site it was accepted
// (partition selection).
func testFederationMonths(t *testing.T, f *Fixture) {
	svc := f.Service
	const eps = 0.5
	const monthly = "SELECT date_trunc('month', date) AS month, count(*) AS n FROM clinical_events WHERE date >= DATE '2023-01-01' AND date < DATE '2024-01-01' GROUP BY month"
	const open = "SELECT date_trunc('month', date) AS month, count(*) AS n FROM clinical_events WHERE date >= DATE '2023-01-01' GROUP BY month"
	if c, err := svc.CheckQuery(f.Researcher, broker.QuerySubmission{ProjectID: f.Project.ID, SQL: open, Epsilon: eps}); err != nil || c.Federation != nil {
		t.Fatalf("open-ended monthly query over one site: %+v, %v; want it accepted", c, err)
	}
	f.federate(nil)
	c, err := svc.CheckQuery(f.Researcher, broker.QuerySubmission{ProjectID: f.Project.ID, SQL: monthly, Epsilon: eps})
	if err != nil || c.Federation == nil || c.Federation.Sites != 3 {
		t.Fatalf("check of the monthly query: %+v, %v; want it federated over 3 sites", c, err)
	}
	_, err = svc.CheckQuery(f.Researcher, broker.QuerySubmission{ProjectID: f.Project.ID, SQL: open, Epsilon: eps})
	MustCode(t, err, broker.EREFUSED)
	if !strings.Contains(err.Error(), "add an upper bound on clinical_events.date to WHERE") {
		t.Errorf("refusal %q does not say which bound to add", err)
	}
	_, err = svc.SubmitQuery(f.Researcher, broker.QuerySubmission{ProjectID: f.Project.ID, SQL: open, Epsilon: eps, Purpose: "monthly"})
	MustCode(t, err, broker.EREFUSED)
	q := f.MustSubmit(f.Researcher, monthly, eps)
	f.MustApprove(q.ID)
	for _, s := range allSites() {
		l := f.leaseAt(s, q.ID)
		if err := svc.CompletePartial(AgentOf("agent-"+s, s), q.ID, l.Token, f.PartialOf(t, monthly, eps)); err != nil {
			t.Fatalf("%s's part: %v", s, err)
		}
	}
	o, err := svc.FindOutput(f.Checker, q.ID)
	if err != nil {
		t.Fatal(err)
	}
	if o.Result == nil || len(o.Result.Rows) != 12 {
		t.Fatalf("output: %+v; want the combined table of the 12 months", o.Result)
	}
	for i, row := range o.Result.Rows {
		if want := fmt.Sprintf("2023-%02d-01", i+1); row[0].Key != want {
			t.Errorf("row %d: month %q, want %q", i, row[0].Key, want)
		}
	}
}
