package queries

import (
	"context"
	"database/sql"
	"strings"
	"testing"
)

// TestPatientKeysCarried: a group key read only from relations proven to
// hold one row per patient (a table whose primary key is the privacy unit,
// a per-patient CTE) is carried outside the (patient, group) pair key, and
// the rows equal the full pipeline's where patients exceed k and C; a key
// from a table merely declared one_row_per_patient, or from a lookup
// table, stays in the pair key.
func TestPatientKeysCarried(t *testing.T) {
	p := MustParser(t)
	cat := MustLoadTestCatalog(t)
	setup := []string{
		`INSERT INTO patients VALUES (1, DATE '1950-01-01', 'female', 'White', 'London', 1, 'P', DATE '2000-01-01', NULL, NULL),
		 (2, DATE '1950-01-01', 'male', 'White', 'North East', 2, 'P', DATE '2000-01-01', NULL, NULL),
		 (3, DATE '1990-01-01', 'male', 'Asian', NULL, NULL, 'P', DATE '2000-01-01', NULL, NULL),
		 (4, DATE '1950-01-01', 'male', 'White', 'London', 1, 'P', DATE '2000-01-01', NULL, NULL)`,
		`INSERT INTO optouts VALUES (4, 'ndop')`,
		`INSERT INTO dmd_codes VALUES ('s1', 'atorvastatin', 'statin'), ('a1', 'amoxicillin', 'antibiotic')`,
		`INSERT INTO medications SELECT 1 + i % 4, DATE '2023-01-01' + CAST(i % 400 AS INTEGER), ['s1', 'a1'][1 + i % 2] FROM range(4000) t(i)`,
		`INSERT INTO clinical_events SELECT 1 + i % 4, DATE '2020-01-01' + CAST(i % 40 AS INTEGER), 'code' || (i % 30), i % 300 FROM range(6000) t(i)`,
		`ALTER TABLE patients ADD PRIMARY KEY (patient_id)`,
	}
	db := MustTestDB(t, cat, setup...)
	dbs := map[string]*sql.DB{"primary key": db, "empty": MustTestDB(t, cat, `ALTER TABLE patients ADD PRIMARY KEY (patient_id)`)}
	opts := Options{Seed: 42, UniqueTables: uniqueTables(t, db, cat)}
	for _, tt := range []struct {
		name, sql string
		carried   []string // group columns carried by any_value() or the late join
		late      bool     // the per-patient relation joined after the pairs (late.go)
	}{
		{name: "typical antibiotics", sql: TypicalQueries[7].SQL, carried: []string{`"__g1"`}, late: true},
		{name: "typical heart failure", sql: TypicalQueries[3].SQL, carried: []string{`"__g0"`}, late: true},
		{name: "values by region and month", sql: `SELECT p.region, date_trunc('month', c.date) AS month, count(*) AS n, sum(c.numeric_value) AS s, avg(c.numeric_value) AS m
FROM clinical_events c JOIN patients p ON p.patient_id = c.patient_id GROUP BY p.region, month`, carried: []string{`"__g0"`}, late: true},
		{name: "a per-patient CTE output", sql: `WITH first_event AS (SELECT patient_id, min(date) AS first FROM clinical_events GROUP BY patient_id)
SELECT CASE WHEN f.first < DATE '2020-01-20' THEN 'early' ELSE 'late' END AS onset, m.dmd_code, count(*) AS n
FROM medications m LEFT JOIN first_event f ON f.patient_id = m.patient_id GROUP BY onset, m.dmd_code`, carried: []string{`"__g0"`}},
		{name: "a lookup table column", sql: `SELECT d.drug_class, p.sex, count(*) AS n FROM medications m JOIN dmd_codes d ON d.dmd_code = m.dmd_code JOIN patients p ON p.patient_id = m.patient_id GROUP BY d.drug_class, p.sex`, carried: []string{`"__g1"`}, late: true},
		{name: "mixing a patient and an event column", sql: `SELECT CASE WHEN p.sex = 'male' AND c.numeric_value > 100 THEN 'a' ELSE 'b' END AS band, count(*) AS n
FROM clinical_events c JOIN patients p ON p.patient_id = c.patient_id GROUP BY band`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			plan, err := p.compile(context.Background(), cat, tt.sql, opts, true)
			if err != nil {
				t.Fatal(err)
			}
			for i := range plan.Spec.Groups {
				g := `"__g` + string(rune('0'+i)) + `"`
				want := false
				for _, c := range tt.carried {
					want = want || c == g
				}
				got := strings.Contains(plan.Rewritten, "any_value("+g+") AS "+g) || strings.Contains(lateStage(plan.Rewritten), " AS "+g+" FROM")
				if got != want {
					t.Errorf("group %s carried %v, want %v:\n%s", g, got, want, plan.Rewritten)
				}
			}
			if got := lateStage(plan.Rewritten) != ""; got != tt.late {
				t.Errorf("late join %v, want %v:\n%s", got, tt.late, plan.Rewritten)
			}
			// Every key carried: one pair per patient, so no k stage.
			if many := strings.Contains(plan.Rewritten, `"__tre_many"`); many != (len(tt.carried) < len(plan.Spec.Groups)) {
				t.Errorf("k stage present %v with %d of %d keys carried", many, len(tt.carried), len(plan.Spec.Groups))
			}
			sameRowsAsFull(t, dbs, compileFull(t, p, cat, tt.sql, opts), plan)
		})
	}

	// Without the constraint, patients' one_row_per_patient is only a
	// claim, so its columns stay in the pair key.
	plan := mustCompile(t, p, cat, TypicalQueries[7].SQL)
	if strings.Contains(plan.Rewritten, "any_value(") {
		t.Errorf("a declared-only table's column carried:\n%s", plan.Rewritten)
	}
}

// lateStage is the rewrite's late-join stage (late.go), "" if it has none.
func lateStage(rewritten string) string {
	for _, line := range strings.Split(rewritten, "\n") {
		if strings.Contains(line, `FROM "__tre_pe" AS "__tre_e" JOIN`) {
			return line
		}
	}
	return ""
}
