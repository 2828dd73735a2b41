package brokertest

import (
	"context"
	"slices"
	"sync"
	"testing"

	"github.com/nhs-tre/tre/broker"
	"github.com/nhs-tre/tre/queries"
)

// testPredicateSetBackfill checks migration 2 on a database written before
// it: the predicate sets of existing queries are backfilled, so a new query
// is flagged against an old one.
func testPredicateSetBackfill(t *testing.T, cfg Config) {
	ctx := context.Background()
	store := cfg.Open(t)
	f := NewFixture(t, cfg, store, broker.Options{})
	const sel = "SELECT sex, count(*) FROM patients WHERE "
	f.MustSubmit(f.Researcher, sel+"region = 'London' AND imd_quintile = 1 GROUP BY sex", 0.1)
	latest := f.MustSubmit(f.Researcher, sel+"imd_quintile = 1 AND region = 'London' GROUP BY sex", 0.1)
	other := f.MustSubmit(f.Researcher, sel+"ethnicity = 'Asian' AND imd_quintile = 4 GROUP BY sex", 0.1)
	// Back to the schema before migration 2.
	for _, stmt := range []string{
		`DROP TABLE predicate_set_keys`,
		`DROP TABLE predicate_sets`,
		`DROP INDEX queries_ledger_cost`,
		`DELETE FROM schema_migrations WHERE version = 2`,
	} {
		if err := store.Exec(ctx, stmt); err != nil {
			t.Fatalf("%s: %v", stmt, err)
		}
	}
	f2 := NewFixture(t, cfg, cfg.Reopen(t, store), broker.Options{})
	// NewFixture made a new project; submit to the old one.
	q := f2.MustSubmitTo(f2.Researcher, f.Project.ID, sel+"region = 'London' GROUP BY sex", 0.1)
	mustDiffer(t, q, latest, "removes the condition")
	q = f2.MustSubmitTo(f2.Researcher, f.Project.ID, sel+"ethnicity = 'Asian' AND imd_quintile = 4 AND sex = 'male' GROUP BY sex", 0.1)
	mustDiffer(t, q, other, "adds the condition")
	if v := f2.MustVerify(); !v.OK {
		t.Errorf("audit chain after the migration: %+v", v)
	}
}

// testTwoReplicas runs two services over two stores sharing one database,
// as two broker processes would: approvals never overspend and every job is
// leased exactly once.
func testTwoReplicas(t *testing.T, cfg Config) {
	s1, s2 := cfg.OpenPair(t)
	f := NewFixture(t, cfg, s1, broker.Options{})
	compiler := cfg.Compiler
	if compiler == nil {
		compiler = MustParser(t)
	}
	other := broker.NewService(s2, compiler, broker.Options{Now: f.Clock.Now})
	svcs := []*broker.Service{f.Service, other}

	const n, cost = 60, 0.25
	ids := make([]int64, n)
	for i := range ids {
		ids[i] = f.MustSubmit(f.Researcher, DefaultSQL, cost).ID
	}
	approved, refused := approveAll(t, svcs, f, ids)
	if approved != 40 || refused != 20 {
		t.Fatalf("approved %d, refused %d; want 40 and 20", approved, refused)
	}

	var mu sync.Mutex
	leased := map[int64]int{}
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			svc := svcs[w%2]
			for {
				l, err := svc.LeaseJob(f.Agent, SiteID, "")
				if err != nil {
					t.Errorf("lease: %v", err)
					return
				}
				if l == nil {
					return
				}
				mu.Lock()
				leased[l.QueryID]++
				mu.Unlock()
				if err := svc.CompleteJob(f.Agent, l.QueryID, l.Token, f.Result(cost)); err != nil {
					t.Errorf("complete %d: %v", l.QueryID, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if len(leased) != approved {
		t.Errorf("%d jobs leased, want %d", len(leased), approved)
	}
	for id, k := range leased {
		if k != 1 {
			t.Errorf("query %d leased %d times", id, k)
		}
	}
	if b := f.MustBudget(); !near(b.EpsilonSpent, ProjectEpsilon) || !near(b.EpsilonReserved, 0) {
		t.Errorf("budget = %+v, want all spent", b)
	}
	f.MustVerify()
}

// testCatalogAcrossReplicas checks that a catalog published through one
// broker process is the one every other process uses from its next
// submission on, though each keeps a parsed catalog and compiled plans in
// memory (keyed by the catalog's hash, read in each submission's
// transaction): no replica goes on with a stale one (issue 25).
func testCatalogAcrossReplicas(t *testing.T, cfg Config) {
	s1, s2 := cfg.OpenPair(t)
	f := NewFixture(t, cfg, s1, broker.Options{})
	compiler := cfg.Compiler
	if compiler == nil {
		compiler = MustParser(t)
	}
	other := broker.NewService(s2, compiler, broker.Options{Now: f.Clock.Now})
	const byRegion = "SELECT region, count(*) FROM patients GROUP BY region"
	submit := func(svc *broker.Service) error {
		_, err := svc.SubmitQuery(f.Researcher, broker.QuerySubmission{ProjectID: f.Project.ID, SQL: byRegion, Purpose: "test", Epsilon: 0.1})
		return err
	}
	// The other process caches the catalog and the plan.
	for range 2 {
		if err := submit(other); err != nil {
			t.Fatalf("submit on the other process: %v", err)
		}
	}
	// The site drops the region column, publishing through the first.
	without := Catalog(t)
	cols := without.Tables[0].Columns
	without.Tables[0].Columns = slices.DeleteFunc(slices.Clone(cols), func(c queries.Column) bool { return c.Name == "region" })
	if err := f.Service.PublishCatalog(f.Agent, SiteID, "", without); err != nil {
		t.Fatalf("publish without region: %v", err)
	}
	MustCode(t, submit(other), broker.EREFUSED) // unknown column region
	// And puts it back: accepted again on the other process at once.
	if err := f.Service.PublishCatalog(f.Agent, SiteID, "", Catalog(t)); err != nil {
		t.Fatalf("publish with region: %v", err)
	}
	if err := submit(other); err != nil {
		t.Fatalf("submit on the other process after region came back: %v", err)
	}
}
