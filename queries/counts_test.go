package queries

import (
	"database/sql"
	"strings"
	"testing"
)

// TestCountsOnlySameRows: a query whose aggregates are all count(*),
// count(pid) or count(DISTINCT pid), with or without a FILTER or a joined
// id, takes the one-grouping counts stage,
// which must return exactly the rows and dropped count of the full
// pipeline (C rows ranked per pair, k groups per patient), also where a
// patient exceeds both bounds and where a group key is NULL.
func TestCountsOnlySameRows(t *testing.T) {
	p := MustParser(t)
	cat := MustLoadTestCatalog(t)
	dbs := map[string]*sql.DB{
		"small": MustTestDB(t, cat, smallData),
		"over both bounds": MustTestDB(t, cat,
			`INSERT INTO patients VALUES (1, DATE '1950-01-01', 'female', 'White', 'London', 1, 'P', DATE '2000-01-01', NULL, NULL),
			 (2, DATE '1950-01-01', 'male', 'White', 'North East', 1, 'P', DATE '2000-01-01', NULL, NULL),
			 (3, DATE '1950-01-01', 'male', 'White', 'London', 1, 'P', DATE '2000-01-01', NULL, NULL),
			 (4, DATE '1950-01-01', 'male', 'White', 'London', 1, 'P', DATE '2000-01-01', NULL, NULL)`,
			`INSERT INTO optouts VALUES (4, 'ndop')`,
			`INSERT INTO clinical_events SELECT 1, DATE '2020-01-01' + CAST(i % 40 AS INTEGER), 'code' || (i // 10), 150 FROM range(10000) t(i)`,
			`INSERT INTO clinical_events VALUES (2, DATE '2020-01-01', 'code0', 10), (2, DATE '2020-03-01', 'code0', 10)`,
			`INSERT INTO clinical_events SELECT 3, DATE '2020-01-01', NULL, 1 FROM range(10)`,
			// Patient 3's one row above 18 among 20 in one pair: a FILTER
			// that matches a row the C bound may not keep.
			`INSERT INTO clinical_events SELECT 3, DATE '2020-02-01', 'code0', i FROM range(20) t(i)`,
			`INSERT INTO clinical_events SELECT 4, DATE '2020-01-01', 'code0', 1 FROM range(10)`,
			`INSERT INTO dmd_codes VALUES ('s1', 'atorvastatin', 'statin'), ('a1', 'amoxicillin', 'antibiotic')`,
			// Patients 1–4 prescribed both drugs on 200 days: over C per
			// month and over k months.
			`INSERT INTO medications SELECT 1 + i % 4, DATE '2023-01-01' + CAST(i % 400 AS INTEGER), ['s1', 'a1'][1 + i % 2] FROM range(4000) t(i)`,
		),
		"empty": MustTestDB(t, cat),
	}
	for _, tt := range []struct {
		name, sql string
	}{
		{name: "typical statins", sql: TypicalQueries[1].SQL},
		{name: "typical heart failure", sql: TypicalQueries[3].SQL},
		{name: "typical antibiotics", sql: TypicalQueries[7].SQL},
		{name: "count(*) by code", sql: `SELECT snomed_code, count(*) AS n FROM clinical_events GROUP BY snomed_code`},
		{name: "count(pid) and count(DISTINCT pid) by month", sql: `SELECT date_trunc('month', date) AS month, count(patient_id) AS n, count(DISTINCT patient_id) AS pts FROM clinical_events GROUP BY month`},
		{name: "no GROUP BY", sql: `SELECT count(*) AS n, count(DISTINCT patient_id) AS pts FROM clinical_events`},
		{name: "joined through USING", sql: `SELECT p.region, count(DISTINCT patient_id) AS pts, count(*) AS n FROM clinical_events c JOIN patients p USING (patient_id) GROUP BY p.region`},
		{name: "typical monthly measure", sql: typicalQuery(t, "hba1c_monthly_measure")},
		{name: "count(DISTINCT pid) FILTER", sql: `SELECT snomed_code, count(DISTINCT patient_id) FILTER (WHERE numeric_value > 18) AS n, count(*) AS rows FROM clinical_events GROUP BY snomed_code`},
		{name: "joined id, codelist shape", sql: `SELECT p.region, count(DISTINCT p.patient_id) AS n FROM clinical_events e JOIN patients p ON p.patient_id = e.patient_id WHERE e.snomed_code IN ('code0', 'code1') GROUP BY p.region`},
		{name: "LEFT-joined id", sql: `SELECT c.snomed_code, count(DISTINCT m.patient_id) AS n FROM clinical_events c LEFT JOIN medications m ON m.patient_id = c.patient_id GROUP BY c.snomed_code`},
		{name: "filtered to nothing", sql: `SELECT snomed_code, count(*) AS n FROM clinical_events WHERE numeric_value > 1e9 GROUP BY snomed_code`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			plan := mustCompile(t, p, cat, tt.sql)
			if strings.Contains(plan.Rewritten, `"__tre_over"`) || !strings.Contains(plan.Rewritten, `"__nall"`) {
				t.Fatalf("counts stage not taken:\n%s", plan.Rewritten)
			}
			sameRowsAsFull(t, dbs, compileFull(t, p, cat, tt.sql, Options{Seed: 42}), plan)
		})
	}
}

// TestCountsOnlyNotTaken: an aggregate whose value depends on which C rows
// a pair keeps keeps the ranking stage: a sum, count(column) and a count
// of rows with a FILTER. (A patient count with a FILTER or a joined id is
// 0 or 1 from all the pair's rows either way: TestCountsOnlySameRows.)
func TestCountsOnlyNotTaken(t *testing.T) {
	p := MustParser(t)
	cat := MustLoadTestCatalog(t)
	for _, q := range []string{
		`SELECT snomed_code, count(*) AS n, sum(numeric_value) AS s FROM clinical_events GROUP BY snomed_code`,
		`SELECT snomed_code, count(numeric_value) AS n FROM clinical_events GROUP BY snomed_code`,
		`SELECT snomed_code, count(*) FILTER (WHERE numeric_value > 50) AS n FROM clinical_events GROUP BY snomed_code`,
		`SELECT snomed_code, count(*) AS n, quantile_cont(numeric_value, 0.5) AS med FROM clinical_events GROUP BY snomed_code`,
	} {
		plan := mustCompile(t, p, cat, q)
		if !strings.Contains(plan.Rewritten, `"__tre_over"`) {
			t.Errorf("%s: counts stage taken:\n%s", q, plan.Rewritten)
		}
	}
}

// typicalQuery is the SQL of the typical query called name.
func typicalQuery(t *testing.T, name string) string {
	t.Helper()
	for _, tq := range TypicalQueries {
		if tq.Name == name {
			return tq.SQL
		}
	}
	t.Fatalf("no typical query %s", name)
	return ""
}
