package queries

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"testing"

	_ "github.com/duckdb/duckdb-go/v2"
	"github.com/google/go-cmp/cmp"

	"github.com/nhs-tre/tre/dp"
)

// MustTestDB creates the catalog's tables in an in-memory DuckDB database,
// runs setup statements, builds the release snapshot (ReleaseStatements)
// into an attached in-memory database it makes the default, as the sandbox
// does into a file, and creates the views of ViewStatements over it.
func MustTestDB(tb testing.TB, cat *Catalog, setup ...string) *sql.DB {
	tb.Helper()
	db, err := openTestDB(cat, setup...)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { db.Close() })
	return db
}

// openTestDB is MustTestDB returning its error (a NULL opt-out id fails
// the snapshot).
func openTestDB(cat *Catalog, setup ...string) (*sql.DB, error) {
	db, err := openSourceDB(cat, setup...)
	if err != nil {
		return nil, err
	}
	cols, err := ReadUniqueColumns(context.Background(), db)
	if err != nil {
		db.Close()
		return nil, err
	}
	var nulls int
	if err := db.QueryRow(OptOutNullsSQL(cat)).Scan(&nulls); err != nil || nulls > 0 {
		db.Close()
		return nil, fmt.Errorf("the opt-out table holds %d NULL ids: %v", nulls, err)
	}
	stmts := []string{"ATTACH ':memory:' AS tre_release"}
	for _, st := range ReleaseStatements(cat, "tre_release", UniqueTablesFrom(cols, cat)) {
		stmts = append(stmts, st.SQL)
	}
	stmts = append(stmts, "USE tre_release")
	stmts = append(stmts, ViewStatements(cat)...)
	for _, s := range stmts {
		if _, err := db.Exec(s); err != nil {
			db.Close()
			return nil, fmt.Errorf("%s: %w", s, err)
		}
	}
	return db, nil
}

// openSourceDB is a site's data as MustTestDB builds it before the release
// snapshot: the catalog's tables, filled by setup.
func openSourceDB(cat *Catalog, setup ...string) (*sql.DB, error) {
	db, err := sql.Open("duckdb", "")
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(1) // temp views live on one connection
	var stmts []string
	for _, t := range cat.Tables {
		cols := make([]string, 0, len(t.Columns))
		for _, c := range t.Columns {
			cols = append(cols, QuoteIdent(c.Name)+" "+c.Type)
		}
		stmts = append(stmts, fmt.Sprintf("CREATE TABLE %s (%s)", QuoteIdent(t.Name), strings.Join(cols, ", ")))
	}
	stmts = append(stmts, setup...)
	for _, s := range stmts {
		if _, err := db.Exec(s); err != nil {
			db.Close()
			return nil, fmt.Errorf("%s: %w", s, err)
		}
	}
	return db, nil
}

// runPlan executes plan.Rewritten and scans the rows as the sandbox does.
func runPlan(tb testing.TB, db *sql.DB, plan *Plan) ([]dp.GroupStats, int64) {
	tb.Helper()
	rows, err := db.Query(plan.Rewritten)
	if err != nil {
		tb.Fatalf("run rewritten SQL: %v\n%s", err, plan.Rewritten)
	}
	defer rows.Close()
	ng, na := len(plan.Spec.Groups), len(plan.Spec.Aggregates)
	var out []dp.GroupStats
	var dropped int64
	for rows.Next() {
		g := dp.GroupStats{Keys: make([]*string, ng), Aggs: make([]dp.AggStats, na)}
		dest := make([]any, 0, ng+2+5*na)
		keys := make([]sql.NullString, ng)
		for i := range keys {
			dest = append(dest, &keys[i])
		}
		dest = append(dest, &g.Patients)
		for i := range g.Aggs {
			a := &g.Aggs[i]
			dest = append(dest, &a.Count, &a.Sum, &a.SumSq, &a.Top1, &a.Top2)
		}
		dest = append(dest, &dropped)
		owners := plan.Spec.TreeOwners()
		hists := make([]any, len(owners))
		for i := range hists {
			dest = append(dest, &hists[i])
		}
		if err := rows.Scan(dest...); err != nil {
			tb.Fatalf("scan: %v", err)
		}
		for t, j := range owners {
			h, err := DecodeHistogram(hists[t])
			if err != nil {
				tb.Fatal(err)
			}
			g.Aggs[j].Hist = h
		}
		for i, k := range keys {
			if k.Valid {
				s := k.String
				g.Keys[i] = &s
			}
		}
		out = append(out, g)
	}
	if err := rows.Err(); err != nil {
		tb.Fatal(err)
	}
	return out, dropped
}

// sameRowsAsFull fails t unless plan, compiled with a shortcut, has full's
// Spec and returns exactly full's rows and dropped count on every database.
func sameRowsAsFull(t *testing.T, dbs map[string]*sql.DB, full, plan *Plan) {
	t.Helper()
	if diff := cmp.Diff(full.Spec, plan.Spec); diff != "" {
		t.Errorf("specs differ (-full +shortcut):\n%s", diff)
	}
	for dbName, db := range dbs {
		got, dropped := runPlan(t, db, plan)
		want, wantDropped := runPlan(t, db, full)
		if diff := cmp.Diff(want, got, cmp.Transformer("sort", sortGroups)); diff != "" || dropped != wantDropped {
			t.Errorf("%s: rows differ from the full pipeline (dropped %d vs %d) (-full +shortcut):\n%s", dbName, wantDropped, dropped, diff)
		}
		if len(plan.Spec.Groups) == 0 && len(got) != 1 {
			t.Errorf("%s: %d rows without GROUP BY", dbName, len(got))
		}
	}
}

// compileFull compiles sqlText with no shortcut: the full bounding pipeline
// every shortcut's rows are compared with (sameRowsAsFull).
func compileFull(tb testing.TB, p *Parser, cat *Catalog, sqlText string, opts Options) *Plan {
	tb.Helper()
	full, err := p.compile(context.Background(), cat, sqlText, opts, false)
	if err != nil {
		tb.Fatalf("compile %q: %v", sqlText, err)
	}
	if !strings.Contains(full.Rewritten, `"__tre_over"`) || !strings.Contains(full.Rewritten, `"__tre_kept"`) {
		tb.Fatalf("full pipeline expected:\n%s", full.Rewritten)
	}
	return full
}

func mustCompile(tb testing.TB, p *Parser, cat *Catalog, sqlText string) *Plan {
	tb.Helper()
	plan, err := p.Compile(context.Background(), cat, sqlText, Options{Seed: 42})
	if err != nil {
		tb.Fatalf("compile %q: %v", sqlText, err)
	}
	return plan
}

const smallData = `
INSERT INTO patients VALUES
 (101, DATE '1950-03-01', 'female', 'White', 'London', 1, 'P1', DATE '2000-01-01', NULL, NULL),
 (102, DATE '1980-07-01', 'male', 'Asian', 'London', 2, 'P1', DATE '2000-01-01', NULL, NULL),
 (103, DATE '2010-01-01', 'female', 'Black', 'North East', 5, 'P2', DATE '2010-01-01', NULL, NULL),
 (104, DATE '1940-01-01', 'male', 'White', 'North East', 3, 'P2', DATE '2000-01-01', NULL, DATE '2020-05-01'),
 (999, DATE '1960-01-01', 'female', 'White', 'London', 1, 'P1', DATE '2000-01-01', NULL, NULL);
INSERT INTO optouts VALUES (999, 'ndop');
INSERT INTO clinical_events VALUES
 (101, DATE '2015-01-01', '44054006', NULL),
 (101, DATE '2023-01-01', '999791000000106', 62),
 (101, DATE '2023-06-01', '999791000000106', 51),
 (101, DATE '2023-06-01', '60621009', 31.5),
 (102, DATE '2019-01-01', '44054006', NULL),
 (102, DATE '2023-02-01', '999791000000106', 70),
 (102, DATE '2023-03-01', '60621009', 500),
 (103, DATE '2023-03-01', '60621009', 22),
 (999, DATE '2019-01-01', '44054006', NULL),
 (999, DATE '2023-02-01', '999791000000106', 40);
INSERT INTO dmd_codes VALUES ('s1', 'atorvastatin', 'statin'), ('a1', 'amoxicillin', 'antibiotic');
INSERT INTO medications VALUES
 (101, DATE '2023-01-15', 's1'), (101, DATE '2023-02-15', 's1'), (102, DATE '2023-01-20', 'a1'), (999, DATE '2023-01-20', 's1');
INSERT INTO hospital_admissions VALUES (104, DATE '2019-01-01', DATE '2019-01-05', 'I50.0', 'emergency'), (999, DATE '2019-01-01', DATE '2019-01-05', 'I50.0', 'emergency');
INSERT INTO vaccinations VALUES (101, DATE '2023-10-01', 'influenza'), (999, DATE '2023-10-01', 'influenza');
`

func TestTypicalQueriesRun(t *testing.T) {
	p := MustParser(t)
	cat := MustLoadTestCatalog(t)
	db := MustTestDB(t, cat, smallData)
	for _, tq := range TypicalQueries {
		t.Run(tq.Name, func(t *testing.T) {
			plan := mustCompile(t, p, cat, tq.SQL)
			groups, _ := runPlan(t, db, plan)
			if len(plan.Spec.Groups) == 0 && len(groups) != 1 {
				t.Errorf("query without GROUP BY returned %d rows, want 1", len(groups))
			}
		})
	}
}

func TestRewriteSemantics(t *testing.T) {
	p := MustParser(t)
	cat := MustLoadTestCatalog(t)
	db := MustTestDB(t, cat, smallData)
	s := func(v string) *string { return &v }

	t.Run("opted-out patient excluded and values clamped", func(t *testing.T) {
		plan := mustCompile(t, p, cat, `SELECT count(*) AS n, sum(numeric_value) AS total, avg(numeric_value) AS mean, stddev(numeric_value) AS sd
			FROM clinical_events WHERE snomed_code = '999791000000106'`)
		got, dropped := runPlan(t, db, plan)
		// Patient 999 (opted out) has an HbA1c of 40 that must not count.
		// Statistics dp does not read for a kind are 0 (dp.AggKind.UsesTop,
		// UsesSumSq). A mean's and a standard deviation's sums are of the
		// values less the bounds' midpoint, 100; the dominance rules see
		// uncentred contributions.
		want := []dp.GroupStats{{Keys: []*string{}, Patients: 2, Aggs: []dp.AggStats{
			{Count: 3},
			{Count: 3, Sum: 183, Top1: 113, Top2: 70},
			{Count: 3, Sum: 183 - 300, Top1: 113, Top2: 70},
			{Count: 3, Sum: 183 - 300, SumSq: 38*38 + 49*49 + 30*30},
		}}}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("stats (-want +got):\n%s", diff)
		}
		if dropped != 0 {
			t.Errorf("dropped = %d, want 0", dropped)
		}
		plan = mustCompile(t, p, cat, `SELECT sum(numeric_value) AS total FROM clinical_events WHERE snomed_code = '60621009'`)
		got, _ = runPlan(t, db, plan)
		// BMI 500 is clamped to the catalog's upper bound 200.
		if g := got[0].Aggs[0]; g.Sum != 31.5+200+22 || g.Top1 != 200 {
			t.Errorf("clamped sum = %+v, want sum %v and top1 200", g, 31.5+200+22)
		}
	})

	t.Run("patient-level groups", func(t *testing.T) {
		plan := mustCompile(t, p, cat, `SELECT region, count(*) AS n FROM patients GROUP BY region`)
		if plan.Spec.MaxGroupsPerPatient != 1 {
			t.Errorf("k = %d, want 1 for patient-level groups", plan.Spec.MaxGroupsPerPatient)
		}
		got, _ := runPlan(t, db, plan)
		want := map[string]float64{"London": 2, "North East": 2}
		for _, g := range got {
			if want[*g.Keys[0]] != g.Aggs[0].Count {
				t.Errorf("%s: count %v", *g.Keys[0], g.Aggs[0].Count)
			}
		}
		if len(got) != 2 {
			t.Errorf("got %d groups, want 2", len(got))
		}
	})

	t.Run("left join count distinct right side", func(t *testing.T) {
		plan := mustCompile(t, p, cat, `WITH flu AS (SELECT patient_id, count(*) AS doses FROM vaccinations GROUP BY patient_id)
			SELECT count(DISTINCT f.patient_id) AS vaccinated, count(DISTINCT p.patient_id) AS everyone
			FROM patients p LEFT JOIN flu f ON f.patient_id = p.patient_id`)
		got, _ := runPlan(t, db, plan)
		if a := got[0].Aggs; a[0].Count != 1 || a[1].Count != 4 {
			t.Errorf("vaccinated %v, everyone %v; want 1 and 4", a[0].Count, a[1].Count)
		}
	})

	t.Run("null group key", func(t *testing.T) {
		plan := mustCompile(t, p, cat, `SELECT CASE WHEN sex = 'female' THEN 'f' END AS f, count(*) AS n FROM patients GROUP BY f`)
		got, _ := runPlan(t, db, plan)
		var null, f float64
		for _, g := range got {
			if g.Keys[0] == nil {
				null = g.Aggs[0].Count
			} else if *g.Keys[0] == "f" {
				f = g.Aggs[0].Count
			}
		}
		if null != 2 || f != 2 {
			t.Errorf("null %v, f %v; want 2 and 2", null, f)
		}
		_ = s
	})

	t.Run("null group key through the bounding stages", func(t *testing.T) {
		plan := mustCompile(t, p, cat, `SELECT CASE WHEN snomed_code = '44054006' THEN 't2d' END AS c, count(*) AS n FROM clinical_events GROUP BY c`)
		if !strings.Contains(plan.Rewritten, `"__tre_kept"`) || strings.Contains(plan.Rewritten, `"__tre_dup"`) {
			t.Fatalf("bounding stages not used:\n%s", plan.Rewritten)
		}
		got, dropped := runPlan(t, db, plan)
		// Not opted out: 101 has one T2D row and three others, 102 one and
		// two, 103 one other; C = 3 keeps them all.
		want := map[string][2]float64{"t2d": {2, 2}, "NULL": {3, 6}}
		for _, g := range got {
			k := "NULL"
			if g.Keys[0] != nil {
				k = *g.Keys[0]
			}
			if w := want[k]; float64(g.Patients) != w[0] || g.Aggs[0].Count != w[1] {
				t.Errorf("group %s: %d patients, count %v; want %v", k, g.Patients, g.Aggs[0].Count, w)
			}
			delete(want, k)
		}
		if len(want) != 0 || dropped != 0 {
			t.Errorf("groups missing: %v; dropped %d", want, dropped)
		}
	})
}

// TestBoundingOnePatient: one patient with 10,000 rows across 1,000 groups
// contributes to at most k groups and C rows per group.
func TestBoundingOnePatient(t *testing.T) {
	p := MustParser(t)
	cat := MustLoadTestCatalog(t)
	k, c := cat.Policy.MaxGroupsPerPatient, cat.Policy.MaxRowsPerGroup
	db := MustTestDB(t, cat,
		`INSERT INTO patients VALUES (1, DATE '1950-01-01', 'female', 'White', 'London', 1, 'P', DATE '2000-01-01', NULL, NULL),
		 (2, DATE '1950-01-01', 'male', 'White', 'London', 1, 'P', DATE '2000-01-01', NULL, NULL)`,
		// Patient 1: 1,000 codes × 10 readings of 150 (well inside bounds).
		`INSERT INTO clinical_events SELECT 1, DATE '2020-01-01' + CAST(i % 10 AS INTEGER), 'code' || (i // 10), 150 FROM range(10000) t(i)`,
		// Patient 2: one reading of one code.
		`INSERT INTO clinical_events VALUES (2, DATE '2020-01-01', 'code0', 10)`,
		// Patient 3: 10 readings without a code (a NULL group key).
		`INSERT INTO patients VALUES (3, DATE '1950-01-01', 'male', 'White', 'London', 1, 'P', DATE '2000-01-01', NULL, NULL)`,
		`INSERT INTO clinical_events SELECT 3, DATE '2020-01-01', NULL, 1 FROM range(10)`,
	)
	plan := mustCompile(t, p, cat, `SELECT snomed_code, count(*) AS n, sum(numeric_value) AS total FROM clinical_events GROUP BY snomed_code`)
	if plan.Spec.MaxGroupsPerPatient != k || plan.Spec.MaxRowsPerGroup != c {
		t.Fatalf("spec k=%d C=%d, want %d %d", plan.Spec.MaxGroupsPerPatient, plan.Spec.MaxRowsPerGroup, k, c)
	}
	groups, dropped := runPlan(t, db, plan)
	var rows1, groups1 float64
	var sum float64
	for _, g := range groups {
		if g.Keys[0] == nil {
			if g.Patients != 1 || g.Aggs[0].Count != float64(c) || g.Aggs[1].Sum != float64(c) {
				t.Errorf("NULL group: %d patients, count %v, sum %v; want 1, %d, %d", g.Patients, g.Aggs[0].Count, g.Aggs[1].Sum, c, c)
			}
			continue
		}
		n := g.Aggs[0].Count
		if *g.Keys[0] == "code0" {
			n-- // patient 2's row, always kept: its only group
		} else if g.Patients != 1 {
			t.Errorf("group %s: %d patients", *g.Keys[0], g.Patients)
		}
		if n > float64(c) {
			t.Errorf("group %s: %v rows of patient 1, want ≤ %d", *g.Keys[0], n, c)
		}
		if n > 0 {
			groups1++
		}
		rows1 += n
		sum += g.Aggs[1].Sum
	}
	if groups1 != float64(k) || rows1 != float64(k*c) {
		t.Errorf("patient 1 counted in %v groups with %v rows, want %d groups and %d rows", groups1, rows1, k, k*c)
	}
	if want := float64(k*c)*150 + 10; sum != want {
		t.Errorf("sum over groups %v, want %v", sum, want)
	}
	if want := int64(10000 - k*c + 10 - c); dropped != want {
		t.Errorf("dropped %d, want %d", dropped, want)
	}

	// The selection is keyed by the seed: the same seed keeps the same groups.
	again, _ := runPlan(t, db, plan)
	if diff := cmp.Diff(groups, again, cmp.Transformer("sort", sortGroups)); diff != "" {
		t.Errorf("same seed, different selection:\n%s", diff)
	}
}

func sortGroups(in []dp.GroupStats) map[string]dp.GroupStats {
	out := make(map[string]dp.GroupStats, len(in))
	for _, g := range in {
		var parts []string
		for _, k := range g.Keys {
			if k == nil {
				parts = append(parts, "<null>")
			} else {
				parts = append(parts, *k)
			}
		}
		out[strings.Join(parts, "|")] = g
	}
	return out
}

// TestFastPathSameRows: the one-row-per-patient shortcut returns exactly
// the rows of the full per-(patient, group) pipeline, on data where it
// applies (patient-level queries) and where it does not.
func TestFastPathSameRows(t *testing.T) {
	p := MustParser(t)
	cat := MustLoadTestCatalog(t)
	dbs := map[string]*sql.DB{
		"small": MustTestDB(t, cat, smallData),
		"duplicated": MustTestDB(t, cat, smallData,
			`INSERT INTO patients SELECT * FROM patients WHERE patient_id = 101`,
			`INSERT INTO clinical_events SELECT * FROM clinical_events`),
	}
	sqls := []string{
		`SELECT count(*) AS n FROM patients`,
		`SELECT sex, count(*) AS n, count(DISTINCT patient_id) AS pts FROM patients GROUP BY sex`,
		`SELECT count(*) AS n, avg(numeric_value) AS m FROM clinical_events WHERE snomed_code = '999791000000106'`,
	}
	for _, tq := range TypicalQueries {
		sqls = append(sqls, tq.SQL)
	}
	for dbName, db := range dbs {
		for _, q := range sqls {
			fast := mustCompile(t, p, cat, q)
			slow, err := p.compile(context.Background(), cat, q, Options{Seed: 42}, false)
			if err != nil {
				t.Fatal(err)
			}
			gotFast, droppedFast := runPlan(t, db, fast)
			gotSlow, droppedSlow := runPlan(t, db, slow)
			if diff := cmp.Diff(gotSlow, gotFast, cmp.Transformer("sort", sortGroups)); diff != "" || droppedFast != droppedSlow {
				t.Errorf("%s: %s\nfast and slow paths differ (dropped %d vs %d) (-slow +fast):\n%s", dbName, q, droppedSlow, droppedFast, diff)
			}
			if len(fast.Spec.Groups) == 0 && len(gotFast) != 1 {
				t.Errorf("%s: %s: %d rows without GROUP BY", dbName, q, len(gotFast))
			}
		}
	}
}

func TestFastPathTaken(t *testing.T) {
	p := MustParser(t)
	cat := MustLoadTestCatalog(t)
	plan := mustCompile(t, p, cat, `SELECT sex, count(*) AS n FROM patients GROUP BY sex`)
	dupAt := strings.Index(plan.Rewritten, `"__tre_dup" AS`)
	if dupAt < 0 {
		t.Fatal("no __tre_dup stage")
	}
	cut := dupAt + strings.Index(plan.Rewritten[dupAt:], "\n")
	probe := strings.TrimSuffix(strings.TrimSpace(plan.Rewritten[:cut]), ",") + ` SELECT "__d" FROM "__tre_dup"`
	for _, tt := range []struct {
		name  string
		setup []string
		dup   bool
	}{
		{name: "one row per patient", setup: []string{smallData}, dup: false},
		{name: "a patient twice", setup: []string{smallData, `INSERT INTO patients SELECT * FROM patients WHERE patient_id = 101`}, dup: true},
	} {
		db := MustTestDB(t, cat, tt.setup...)
		var dup bool
		if err := db.QueryRow(probe).Scan(&dup); err != nil {
			t.Fatalf("%s: %v\n%s", tt.name, err, probe)
		}
		if dup != tt.dup {
			t.Errorf("%s: duplicate check %v, want %v", tt.name, dup, tt.dup)
		}
	}
}

// TestDerivedPathSameRows: when every FROM relation is a CTE or subquery
// grouped by the privacy unit, the rewrite groups the rows directly, with no
// run-time check and no bounding stages, and returns exactly the rows of the
// full per-(patient, group) pipeline, also where the underlying tables hold
// many rows per patient and where values need clamping.
func TestDerivedPathSameRows(t *testing.T) {
	p := MustParser(t)
	cat := MustLoadTestCatalog(t)
	dbs := map[string]*sql.DB{
		"small": MustTestDB(t, cat, smallData),
		"duplicated": MustTestDB(t, cat, smallData,
			`INSERT INTO patients SELECT * FROM patients WHERE patient_id = 101`,
			`INSERT INTO clinical_events SELECT * FROM clinical_events`,
			`INSERT INTO medications SELECT * FROM medications`),
		"empty": MustTestDB(t, cat),
	}
	tests := []struct {
		name string
		sql  string
	}{
		{name: "typical mean BMI by statin exposure", sql: TypicalQueries[6].SQL},
		{name: "no GROUP BY, clamped sum and mean", sql: `WITH ev AS (SELECT patient_id, max(numeric_value) AS mx FROM clinical_events GROUP BY patient_id)
SELECT count(*) AS pts, sum(mx) AS total, avg(mx) AS mean FROM ev`},
		{name: "grouped by a CTE output", sql: `WITH ev AS (SELECT patient_id, max(numeric_value) AS mx FROM clinical_events GROUP BY patient_id)
SELECT CASE WHEN mx > 60 THEN 'high' ELSE 'low' END AS band, count(*) AS n, avg(mx) AS m, stddev(mx) AS sd FROM ev GROUP BY band`},
		{name: "subquery joined to a CTE", sql: `WITH med AS (SELECT patient_id, count(*) AS n FROM medications GROUP BY patient_id)
SELECT count(*) AS n, count(DISTINCT e.patient_id) AS pts, avg(e.mx) AS m
FROM (SELECT patient_id, max(numeric_value) AS mx FROM clinical_events GROUP BY patient_id) AS e
JOIN med m ON m.patient_id = e.patient_id`},
		{name: "LEFT JOIN of CTEs", sql: `WITH ev AS (SELECT patient_id, max(numeric_value) AS mx FROM clinical_events GROUP BY patient_id),
med AS (SELECT patient_id, 1 AS on_med FROM medications GROUP BY patient_id)
SELECT CASE WHEN m.on_med = 1 THEN 'yes' ELSE 'no' END AS medicated, count(*) AS n, sum(e.mx) AS s
FROM ev e LEFT JOIN med m USING (patient_id) GROUP BY medicated`},
		{name: "filtered to nothing", sql: `WITH ev AS (SELECT patient_id, max(numeric_value) AS mx FROM clinical_events GROUP BY patient_id)
SELECT count(*) AS n, avg(mx) AS m FROM ev WHERE mx > 1000`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			direct := mustCompile(t, p, cat, tt.sql)
			for _, stage := range []string{`"__tre_dup"`, `"__tre_all"`, `"__tre_kept"`, "MATERIALIZED"} {
				if strings.Contains(direct.Rewritten, stage) {
					t.Fatalf("direct path not taken: %s in\n%s", stage, direct.Rewritten)
				}
			}
			sameRowsAsFull(t, dbs, compileFull(t, p, cat, tt.sql, Options{Seed: 42}), direct)
		})
	}
}

// TestDerivedPathNotForCatalogTables: a catalog table declared
// one_row_per_patient in FROM keeps the run-time check, which is what
// enforces the declaration; an event table, where the check could only
// fail, goes straight to the bounding stages.
func TestDerivedPathNotForCatalogTables(t *testing.T) {
	p := MustParser(t)
	cat := MustLoadTestCatalog(t)
	for _, tt := range []struct {
		name  string
		sql   string
		check bool
	}{
		{name: "declared table alone", sql: `SELECT sex, count(*) AS n FROM patients GROUP BY sex`, check: true},
		{name: "declared table joined to a CTE", sql: TypicalQueries[0].SQL, check: true},
		{name: "CTE joined to a declared table", sql: TypicalQueries[5].SQL, check: true},
		{name: "event table", sql: `SELECT count(*) AS n FROM clinical_events`},
		{name: "event table joined to a declared table", sql: TypicalQueries[3].SQL},
	} {
		t.Run(tt.name, func(t *testing.T) {
			plan := mustCompile(t, p, cat, tt.sql)
			if !strings.Contains(plan.Rewritten, `"__tre_kept"`) {
				t.Errorf("bounding stages missing:\n%s", plan.Rewritten)
			}
			if got := strings.Contains(plan.Rewritten, `"__tre_dup" AS MATERIALIZED`); got != tt.check {
				t.Errorf("run-time check %v, want %v:\n%s", got, tt.check, plan.Rewritten)
			}
		})
	}
}
