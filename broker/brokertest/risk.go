package brokertest

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/nhs-tre/tre/broker"
	"github.com/nhs-tre/tre/queries"
)

func testRiskFlags(t *testing.T, f *Fixture) {
	const (
		base   = "SELECT sex, count(*) FROM patients WHERE region = 'London' GROUP BY sex"
		repeat = "select sex,   COUNT(*) from patients where region = 'London' group by sex"
		added  = "SELECT sex, count(*) FROM patients WHERE region = 'London' AND imd_quintile = 1 GROUP BY sex"
		shape  = "SELECT region, count(*) FROM patients GROUP BY region"
		narrow = "SELECT sex, count(*) FROM patients WHERE region = 'London' AND imd_quintile = 1 AND ethnicity = 'Mixed' AND date_of_birth = DATE '1950-01-01' GROUP BY sex"
	)
	first := f.MustSubmit(f.Researcher, base, 0.5)
	if len(first.RiskFlags) != 0 {
		t.Fatalf("first query flagged: %+v", first.RiskFlags)
	}
	kinds := func(q *broker.Query) []string {
		var out []string
		for _, r := range q.RiskFlags {
			out = append(out, r.Kind)
		}
		return out
	}
	rep := f.MustSubmit(f.Researcher2, repeat, 0.5)
	if diff := cmp.Diff([]string{broker.RiskRepeat}, kinds(rep)); diff != "" {
		t.Fatalf("repeat flags (-want +got):\n%s", diff)
	}
	if rep.RiskFlags[0].SimilarQueryID != first.ID || rep.RiskFlags[0].SimilarSQL != base {
		t.Errorf("repeat points at %d %q, want %d", rep.RiskFlags[0].SimilarQueryID, rep.RiskFlags[0].SimilarSQL, first.ID)
	}
	diff := f.MustSubmit(f.Researcher, added, 0.5)
	if got := kinds(diff); len(got) == 0 || got[0] != broker.RiskDifferencing {
		t.Fatalf("added predicate flags = %v, want differencing", got)
	}
	if id := diff.RiskFlags[0].SimilarQueryID; id != first.ID && id != rep.ID {
		t.Errorf("differencing points at %d, want %d or %d", id, first.ID, rep.ID)
	}
	if got := f.MustSubmit(f.Researcher, shape, 0.5); len(got.RiskFlags) != 0 {
		t.Errorf("different shape flagged: %+v", got.RiskFlags)
	}
	n := f.MustSubmit(f.Researcher, narrow, 0.5)
	found := false
	for _, k := range kinds(n) {
		found = found || k == broker.RiskNarrowPopulation
	}
	if !found {
		t.Errorf("narrow query flags = %v, want narrow_population", kinds(n))
	}
	// Reviewers see the flags in their queue.
	queue, err := f.Service.ReviewQueue(f.Reviewer)
	if err != nil || len(queue) != 5 || len(queue[1].RiskFlags) != 1 {
		t.Fatalf("review queue = %d queries, %v", len(queue), err)
	}
}

// differencing returns q's differencing flag, or nil.
// testRiskFlagsNotDodged submits a query, releases its answer, and then
// rewrites of it that ask the same question: renamed outputs, another
// layout, conjuncts swapped, literals written otherwise, a table alias.
// Each is flagged as a repeat of the released query, and one condition
// more, however written, as differencing; the flags say the earlier answer
// was released (to staff, as it is now; not to researchers, whose view of
// statuses is coarse).
func testRiskFlagsNotDodged(t *testing.T, f *Fixture) {
	const base = "SELECT sex, count(*) AS n FROM patients WHERE region = 'London' AND imd_quintile = 2 GROUP BY sex"
	released := f.SubmitAs(t, f.Researcher, base, broker.StatusReleased)
	flag := func(q *broker.Query, kind string) *broker.RiskFlag {
		for i := range q.RiskFlags {
			if q.RiskFlags[i].Kind == kind {
				return &q.RiskFlags[i]
			}
		}
		return nil
	}
	repeats := []struct{ name, sql string }{
		{"renamed output", "SELECT sex, count(*) AS n_again FROM patients WHERE region = 'London' AND imd_quintile = 2 GROUP BY sex"},
		{"layout and case", "select SEX ,count( * ) as N\nfrom PATIENTS\nwhere REGION='London'   and IMD_QUINTILE=2\ngroup by 1"},
		{"conjuncts swapped", "SELECT sex, count(*) AS n FROM patients WHERE imd_quintile = 2 AND region = 'London' GROUP BY sex"},
		{"literal written otherwise", "SELECT sex, count(*) AS n FROM patients WHERE region = 'London' AND imd_quintile = 2.0 GROUP BY sex"},
		{"literal as a string", "SELECT sex, count(*) AS n FROM patients WHERE region = 'London' AND imd_quintile = '2' GROUP BY sex"},
		{"table alias", "SELECT p.sex, count(*) AS total FROM patients p WHERE p.region = 'London' AND p.imd_quintile = 2 GROUP BY p.sex"},
	}
	for _, tt := range repeats {
		t.Run(tt.name, func(t *testing.T) {
			q := f.MustSubmit(f.Researcher2, tt.sql, 0.5)
			q, err := f.Service.FindQueryByID(f.Reviewer, q.ID)
			if err != nil {
				t.Fatal(err)
			}
			r := flag(q, broker.RiskRepeat)
			if r == nil || r.SimilarQueryID != released.ID || !r.SimilarReleased || r.SimilarStatus != broker.StatusReleased {
				t.Fatalf("flags %+v, want a repeat of released query %d", q.RiskFlags, released.ID)
			}
			if flag(q, broker.RiskDifferencing) != nil {
				t.Errorf("a repeat flagged as differencing: %+v", q.RiskFlags)
			}
		})
	}
	t.Run("one condition more, renamed", func(t *testing.T) {
		q := f.MustSubmit(f.Researcher2, "SELECT p.sex, count(*) AS n_fewer FROM patients p WHERE p.imd_quintile = 2.0 AND p.region = 'London' AND p.ethnicity = 'Mixed' GROUP BY 1", 0.5)
		if d := flag(q, broker.RiskDifferencing); d == nil || !strings.Contains(d.Message, "ethnicity") {
			t.Fatalf("flags %+v, want differencing naming the added condition", q.RiskFlags)
		}
	})

	// Researchers see the flags without the earlier query's status; staff
	// see its status now, not when the flag was raised.
	pending := f.MustSubmit(f.Researcher, "SELECT region, count(*) AS n FROM patients GROUP BY region", 0.5)
	twin := f.MustSubmit(f.Researcher2, "SELECT region, count(*) AS m FROM patients GROUP BY region", 0.5)
	if r := flag(twin, broker.RiskRepeat); r == nil || r.SimilarQueryID != pending.ID || r.SimilarReleased || r.SimilarStatus != "" {
		t.Fatalf("the submitter sees the twin's flags as %+v, want a repeat of query %d without its status", twin.RiskFlags, pending.ID)
	}
	if q, err := f.Service.FindQueryByID(f.Reviewer, twin.ID); err != nil {
		t.Fatal(err)
	} else if r := flag(q, broker.RiskRepeat); r == nil || r.SimilarReleased || r.SimilarStatus != broker.StatusSubmitted {
		t.Fatalf("a reviewer sees the twin's flags as %+v, want the earlier query submitted", q.RiskFlags)
	}
	f.Drive(t, pending.ID, f.Reviewer, broker.StatusReleased)
	asResearcher, err := f.Service.FindQueryByID(f.Researcher2, twin.ID)
	if err != nil {
		t.Fatal(err)
	}
	if r := flag(asResearcher, broker.RiskRepeat); r == nil || r.SimilarStatus != "" || r.SimilarReleased {
		t.Errorf("a researcher sees the flag as %+v, want no status", r)
	}
	asReviewer, err := f.Service.FindQueryByID(f.Reviewer, twin.ID)
	if err != nil {
		t.Fatal(err)
	}
	if r := flag(asReviewer, broker.RiskRepeat); r == nil || !r.SimilarReleased {
		t.Errorf("a reviewer sees the flag as %+v, want the earlier query released now", r)
	}
	queue, err := f.Service.ReviewQueue(f.Reviewer)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range queue {
		if q.ID == twin.ID {
			if r := flag(q, broker.RiskRepeat); r == nil || !r.SimilarReleased {
				t.Errorf("the review queue shows the flag as %+v, want the earlier query released now", r)
			}
		}
	}
}

func differencing(q *broker.Query) *broker.RiskFlag {
	for i := range q.RiskFlags {
		if q.RiskFlags[i].Kind == broker.RiskDifferencing {
			return &q.RiskFlags[i]
		}
	}
	return nil
}

// mustDiffer checks q carries a differencing flag against want whose message
// says how it differs.
func mustDiffer(t *testing.T, q *broker.Query, want *broker.Query, how string) {
	t.Helper()
	d := differencing(q)
	switch {
	case d == nil:
		t.Errorf("query %q has no differencing flag (flags %+v), want one against query %d", q.SQL, q.RiskFlags, want.ID)
	case d.SimilarQueryID != want.ID || d.SimilarSQL != want.SQL:
		t.Errorf("query %q: differencing points at %d %q, want %d %q", q.SQL, d.SimilarQueryID, d.SimilarSQL, want.ID, want.SQL)
	case !strings.Contains(d.Message, how):
		t.Errorf("query %q: differencing message %q does not say %q", q.SQL, d.Message, how)
	}
}

// testDifferencingFlags covers the differencing flag's cases: an added,
// removed and changed predicate; the most recent match wins; two changes,
// another shape or the same predicates are not flagged; and a match far back
// in a long-lived project is still found.
func testDifferencingFlags(t *testing.T, f *Fixture) {
	const sel = "SELECT sex, count(*) FROM patients WHERE "
	two := f.MustSubmit(f.Researcher, sel+"region = 'London' AND imd_quintile = 1 GROUP BY sex", 0.1)
	if len(two.RiskFlags) != 0 {
		t.Fatalf("first query flagged: %+v", two.RiskFlags)
	}
	removed := f.MustSubmit(f.Researcher, sel+"region = 'London' GROUP BY sex", 0.1)
	mustDiffer(t, removed, two, "removes the condition")
	// Both earlier queries differ from this one by one predicate (a change
	// from two, an addition to removed): the most recent is named.
	changed := f.MustSubmit(f.Researcher, sel+"imd_quintile = 2 AND region = 'London' GROUP BY sex", 0.1)
	mustDiffer(t, changed, removed, "adds the condition")
	// Two changed predicates are not a one-predicate difference from any.
	if d := differencing(f.MustSubmit(f.Researcher, sel+"region = 'North East' AND imd_quintile = 3 GROUP BY sex", 0.1)); d != nil {
		t.Errorf("two changed predicates flagged: %+v", d)
	}
	// The same predicates in another order are a repeat, not a difference.
	again := f.MustSubmit(f.Researcher2, sel+"imd_quintile = 1 AND region = 'London' GROUP BY sex", 0.1)
	if d := differencing(again); d != nil && d.SimilarQueryID == two.ID {
		t.Errorf("the same predicate set flagged as differencing against itself: %+v", d)
	}
	// The resubmission is now that set's most recent query.
	mustDiffer(t, f.MustSubmit(f.Researcher, sel+"imd_quintile = 1 GROUP BY sex", 0.1), again, "removes the condition")
	// Another shape (grouped by region) with one predicate more is not
	// flagged.
	if d := differencing(f.MustSubmit(f.Researcher, "SELECT region, count(*) FROM patients WHERE imd_quintile = 4 AND ethnicity = 'Asian' GROUP BY region", 0.1)); d != nil {
		t.Errorf("a query of another shape flagged: %+v", d)
	}

	// Queries with more predicates than one lookup statement takes keys.
	var many []string
	for i := 1; i <= 8; i++ {
		many = append(many, fmt.Sprintf("date_of_birth <> DATE '1950-01-0%d'", i))
	}
	eight := f.MustSubmit(f.Researcher, sel+strings.Join(many, " AND ")+" GROUP BY sex", 0.1)
	nine := f.MustSubmit(f.Researcher, sel+strings.Join(append(many, "sex <> 'unknown'"), " AND ")+" GROUP BY sex", 0.1)
	mustDiffer(t, nine, eight, "adds the condition")
	many[0] = "date_of_birth <> DATE '1950-02-01'"
	mustDiffer(t, f.MustSubmit(f.Researcher, sel+strings.Join(append(many, "sex <> 'unknown'"), " AND ")+" GROUP BY sex", 0.1), nine, "changes the condition")

	// A long-lived project: the match lies behind many same-shape queries
	// with other predicates, and is still found.
	old := f.MustSubmit(f.Researcher, sel+"ethnicity = 'Black' AND imd_quintile = 5 GROUP BY sex", 0.1)
	for i := range 210 {
		f.MustSubmit(f.Researcher, fmt.Sprintf("%sdate_of_birth >= DATE '1950-01-01' AND date_of_birth < DATE '%d-01-01' GROUP BY sex", sel, 1960+i), 0.1)
	}
	mustDiffer(t, f.MustSubmit(f.Researcher, sel+"ethnicity = 'Black' GROUP BY sex", 0.1), old, "removes the condition")
}

// countingCompiler counts compilations and runs during, when set, while
// it compiles.
type countingCompiler struct {
	broker.Compiler
	n      atomic.Int64
	during func()
}

func (c *countingCompiler) Compile(ctx context.Context, cat *queries.Catalog, sql string, opts queries.Options) (*queries.Plan, error) {
	c.n.Add(1)
	if c.during != nil {
		c.during()
	}
	return c.Compiler.Compile(ctx, cat, sql, opts)
}

// testPlanCache checks the service compiles a text once per catalog content
// and epsilon, never caches refusals, and hands out plans no caller can
// change for the next.
func testPlanCache(t *testing.T, cfg Config) {
	cc := &countingCompiler{Compiler: MustParser(t)}
	c := cfg
	c.Compiler = cc
	f := NewFixture(t, c, cfg.Open(t), broker.Options{})
	want := int64(0)
	check := func(what string, compiled bool) {
		t.Helper()
		if compiled {
			want++
		}
		if got := cc.n.Load(); got != want {
			t.Fatalf("%s: %d compilations, want %d", what, got, want)
		}
	}
	first := f.MustSubmit(f.Researcher, DefaultSQL, 0.1)
	check("first submission", true)
	first.Accuracy[0].Column = "tampered"
	again := f.MustSubmit(f.Researcher2, DefaultSQL, 0.1)
	check("same text and epsilon", false)
	if again.Accuracy[0].Column == "tampered" || again.Rewritten != first.Rewritten || again.Cost != first.Cost {
		t.Errorf("cached plan differs or was changed through an earlier result: %+v", again.Accuracy)
	}
	again.Accuracy[0].Column = "tampered"
	third := f.MustSubmit(f.Researcher2, DefaultSQL, 0.1)
	check("same text and epsilon again", false)
	if third.Accuracy[0].Column == "tampered" {
		t.Errorf("a cached plan was changed through an earlier result")
	}
	if _, err := f.Service.CheckQuery(f.Researcher, broker.QuerySubmission{ProjectID: f.Project.ID, SQL: DefaultSQL, Epsilon: 0.1}); err != nil {
		t.Fatal(err)
	}
	check("check of the same text", false)
	f.MustSubmit(f.Researcher, DefaultSQL, 0.2)
	check("another epsilon", true)
	for range 2 {
		_, err := f.Service.SubmitQuery(f.Researcher, broker.QuerySubmission{ProjectID: f.Project.ID, Purpose: "test", SQL: "SELECT patient_id FROM patients"})
		MustCode(t, err, broker.EREFUSED)
		check("refusal", true)
	}
	// A changed catalog is compiled against afresh.
	cat := Catalog(t)
	cat.Policy.SmallCellThreshold++
	if err := f.Service.PublishCatalog(f.Agent, SiteID, "", cat); err != nil {
		t.Fatal(err)
	}
	f.MustSubmit(f.Researcher, DefaultSQL, 0.1)
	check("after the catalog changed", true)

	// The catalog changes while a query compiles: the plan is compiled again
	// against the catalog the storing transaction sees.
	republish := func() {
		cat.Policy.SmallCellThreshold++
		if err := f.Service.PublishCatalog(f.Agent, SiteID, "", cat); err != nil {
			t.Error(err)
		}
	}
	changes := 1
	cc.during = func() {
		if changes > 0 {
			changes--
			republish()
		}
	}
	q := f.MustSubmit(f.Researcher, DefaultSQL, 0.3)
	want++ // compiled for the catalog it started with, then for the new one
	check("catalog changed during the first compilation", true)
	got, err := f.Service.CheckQuery(f.Researcher, broker.QuerySubmission{ProjectID: f.Project.ID, SQL: DefaultSQL, Epsilon: 0.3})
	if err != nil {
		t.Fatal(err)
	}
	check("check against the current catalog", false)
	if got.Spec.Threshold != cat.Policy.SmallCellThreshold || got.Rewritten != q.Rewritten {
		t.Errorf("the submission's plan (threshold %d) is not the current catalog's (%d)", got.Spec.Threshold, cat.Policy.SmallCellThreshold)
	}
	// A catalog that changes during every compilation ends in a retryable
	// error, not a loop.
	cc.during = republish
	_, err = f.Service.SubmitQuery(f.Researcher, broker.QuerySubmission{ProjectID: f.Project.ID, Purpose: "test", SQL: DefaultSQL, Epsilon: 0.4})
	MustCode(t, err, broker.EUNAVAILABLE)
}

// testRepeatPrefersReleased: a repeat points at the project's earliest
// released query of its normalised form, ahead of an earlier one not
// released, and never at another project's, however early or released.
func testRepeatPrefersReleased(t *testing.T, f *Fixture) {
	const (
		base = "SELECT sex, count(*) AS n FROM patients WHERE region = 'Leeds' GROUP BY sex"
		twin = "select SEX, COUNT(*) as m from PATIENTS where REGION = 'Leeds' group by 1"
	)
	repeatOf := func(q *broker.Query) int64 {
		t.Helper()
		q, err := f.Service.FindQueryByID(f.Reviewer, q.ID)
		if err != nil {
			t.Fatal(err)
		}
		for _, fl := range q.RiskFlags {
			if fl.Kind == broker.RiskRepeat {
				return fl.SimilarQueryID
			}
		}
		return 0
	}
	other := f.MustProject(ProjectEpsilon, ProjectDelta, "res1")
	elsewhere := f.MustSubmitTo(f.Researcher, other.ID, base, 0.5)
	f.Drive(t, elsewhere.ID, f.Reviewer, broker.StatusReleased)

	pending := f.MustSubmit(f.Researcher, base, 0.5)
	if id := repeatOf(pending); id != 0 {
		t.Fatalf("the project's first query flagged as a repeat of %d (another project's)", id)
	}
	if id := repeatOf(f.MustSubmit(f.Researcher2, twin, 0.5)); id != pending.ID {
		t.Fatalf("with none released: a repeat of %d, want the earliest, %d", id, pending.ID)
	}
	released := f.SubmitAs(t, f.Researcher, twin, broker.StatusReleased)
	later := f.SubmitAs(t, f.Researcher2, base, broker.StatusReleased)
	for _, q := range []*broker.Query{f.MustSubmit(f.Researcher2, base, 0.5), f.MustSubmit(f.Researcher, twin, 0.5)} {
		if id := repeatOf(q); id != released.ID {
			t.Errorf("query %d: a repeat of %d, want the earliest released, %d (earlier pending %d, later released %d)",
				q.ID, id, released.ID, pending.ID, later.ID)
		}
	}
}
