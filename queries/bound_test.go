package queries

import (
	"context"
	"database/sql"
	"strings"
	"testing"
)

// TestGroupBoundSkipsK: where the WHERE bounds a date column and every
// group key is a bucket of it (or proven per patient), no patient's rows
// can fall in more groups than there are buckets; with at most k of them
// the k stage is left out, and the rows equal the full pipeline's on data
// with rows in every month, inside and outside the range.
func TestGroupBoundSkipsK(t *testing.T) {
	p := MustParser(t)
	cat := MustLoadTestCatalog(t)
	if k := cat.Policy.MaxGroupsPerPatient; k != 4 {
		t.Fatalf("the queries below assume k = 4, the test catalog has %d", k)
	}
	db := MustTestDB(t, cat,
		`INSERT INTO patients VALUES (1, DATE '1950-01-01', 'female', 'White', 'London', 1, 'P', DATE '2000-01-01', NULL, NULL),
		 (2, DATE '1960-01-01', 'male', 'White', 'North East', 2, 'P', DATE '2000-01-01', NULL, NULL),
		 (3, DATE '1990-01-01', 'male', 'Asian', 'London', 3, 'P', DATE '2000-01-01', NULL, NULL)`,
		`INSERT INTO dmd_codes VALUES ('s1', 'atorvastatin', 'statin'), ('a1', 'amoxicillin', 'antibiotic')`,
		`INSERT INTO medications SELECT 1 + i % 3, DATE '2020-01-01' + CAST(i AS INTEGER), ['s1', 'a1'][1 + i % 2] FROM range(1500) t(i)`,
		`ALTER TABLE patients ADD PRIMARY KEY (patient_id)`,
	)
	dbs := map[string]*sql.DB{"rows every day": db}
	opts := Options{Seed: 42, UniqueTables: []string{"patients"}}
	for _, tt := range []struct {
		name, sql string
		skip      bool
	}{
		{name: "four months", skip: true, sql: `SELECT date_trunc('month', date) AS m, count(*) AS n FROM medications WHERE date >= DATE '2023-01-01' AND date < DATE '2023-05-01' GROUP BY m`},
		{name: "four months and a day", sql: `SELECT date_trunc('month', date) AS m, count(*) AS n FROM medications WHERE date >= DATE '2023-01-01' AND date < DATE '2023-05-02' GROUP BY m`},
		{name: "BETWEEN, literal on the left, bare string", skip: true, sql: `SELECT date_trunc('month', m.date) AS month, count(*) AS n, count(DISTINCT m.patient_id) AS pts
FROM medications m WHERE m.date BETWEEN DATE '2021-03-01' AND '2021-06-30' AND DATE '2021-01-01' <= m.date GROUP BY month`},
		{name: "two ranges intersected", skip: true, sql: `SELECT date_trunc('month', date) AS m, count(*) AS n FROM medications WHERE date >= DATE '2021-01-01' AND date <= DATE '2023-12-31' AND date > DATE '2023-09-01' GROUP BY m`},
		{name: "after the last day of a month counts that month", sql: `SELECT date_trunc('month', date) AS m, count(*) AS n FROM medications WHERE date > DATE '2023-08-31' AND date < DATE '2024-01-01' GROUP BY m`},
		{name: "years", skip: true, sql: `SELECT year(date) AS y, count(*) AS n FROM medications WHERE date >= DATE '2020-06-01' AND date < DATE '2024-01-01' GROUP BY y`},
		{name: "quarter of the year over three years", skip: true, sql: `SELECT quarter(date) AS q, count(*) AS n FROM medications WHERE date BETWEEN DATE '2020-01-01' AND DATE '2022-12-31' GROUP BY q`},
		{name: "a carried key times four months", skip: true, sql: `SELECT p.region, date_trunc('month', m.date) AS month, count(*) AS n FROM medications m JOIN patients p ON p.patient_id = m.patient_id
WHERE m.date >= DATE '2022-02-01' AND m.date < DATE '2022-06-01' GROUP BY p.region, month`},
		{name: "a lookup key times two months", sql: `SELECT d.drug_class, date_trunc('month', m.date) AS month, count(*) AS n FROM medications m JOIN dmd_codes d ON d.dmd_code = m.dmd_code
WHERE m.date >= DATE '2022-02-01' AND m.date < DATE '2022-04-01' GROUP BY d.drug_class, month`},
		{name: "a lower bound only", sql: `SELECT date_trunc('month', date) AS m, count(*) AS n FROM medications WHERE date >= DATE '2023-10-01' GROUP BY m`},
		{name: "the range inside an OR", sql: `SELECT date_trunc('month', date) AS m, count(*) AS n FROM medications WHERE (date >= DATE '2023-01-01' AND date < DATE '2023-03-01') OR date > DATE '2023-11-01' GROUP BY m`},
		{name: "the range on another column", sql: `SELECT date_trunc('month', c.date) AS month, count(*) AS n FROM medications m JOIN clinical_events c ON c.patient_id = m.patient_id
WHERE m.date >= DATE '2023-01-01' AND m.date < DATE '2023-03-01' GROUP BY month`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			plan, err := p.compile(context.Background(), cat, tt.sql, opts, true)
			if err != nil {
				t.Fatal(err)
			}
			if skipped := !strings.Contains(plan.Rewritten, `"__tre_many"`); skipped != tt.skip {
				t.Fatalf("k stage skipped %v, want %v:\n%s", skipped, tt.skip, plan.Rewritten)
			}
			sameRowsAsFull(t, dbs, compileFull(t, p, cat, tt.sql, opts), plan)
		})
	}
}
