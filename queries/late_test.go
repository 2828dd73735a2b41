package queries

import (
	"context"
	"database/sql"
	"strings"
	"testing"
)

// lateData has patients over C rows and over k groups, a patient with no
// region, a dead patient, an opted-out patient, and events of a patient
// the patients table does not hold (id 7), so the late join drops patients
// by its conditions and by absence.
var lateData = []string{
	`INSERT INTO patients VALUES (1, DATE '1950-01-01', 'female', 'White', 'London', 1, 'P', DATE '2000-01-01', NULL, NULL),
	 (2, DATE '1950-01-01', 'male', 'White', 'North East', 2, 'P', DATE '2000-01-01', NULL, NULL),
	 (3, DATE '1990-01-01', 'male', 'Asian', NULL, NULL, 'P', DATE '2000-01-01', NULL, NULL),
	 (4, DATE '1950-01-01', 'male', 'White', 'London', 1, 'P', DATE '2000-01-01', NULL, NULL),
	 (5, DATE '1970-01-01', 'female', 'Black', 'London', 3, 'P', DATE '2000-01-01', NULL, DATE '2021-06-01'),
	 (6, DATE '1980-01-01', 'female', 'Mixed', 'North East', 5, 'P', DATE '2000-01-01', NULL, NULL)`,
	`INSERT INTO optouts VALUES (4, 'ndop')`,
	`INSERT INTO dmd_codes VALUES ('s1', 'atorvastatin', 'statin'), ('a1', 'amoxicillin', 'antibiotic')`,
	`INSERT INTO medications SELECT 1 + i % 7, DATE '2023-01-01' + CAST(i % 400 AS INTEGER), ['s1', 'a1'][1 + i % 2] FROM range(3000) t(i)`,
	`INSERT INTO clinical_events SELECT 1 + i % 7, DATE '2020-01-01' + CAST(i % 40 AS INTEGER), 'code' || (i % 3), i % 300 FROM range(4000) t(i)`,
	`INSERT INTO clinical_events VALUES (6, DATE '2020-02-01', 'code0', 12)`,
	`ALTER TABLE patients ADD PRIMARY KEY (patient_id)`,
}

// TestLateJoinSameRows: where the per-patient relation is joined after the
// pairs (late.go), the rows and the dropped-row count equal the full
// pipeline's, whichever side of the join it is on, with its conditions,
// its NULL keys, grouping sets, quantiles and ratios; where the query reads
// it beside the events, the join stays first.
func TestLateJoinSameRows(t *testing.T) {
	p := MustParser(t)
	cat := MustLoadTestCatalog(t)
	db := MustTestDB(t, cat, lateData...)
	dbs := map[string]*sql.DB{"data": db, "empty": MustTestDB(t, cat, `ALTER TABLE patients ADD PRIMARY KEY (patient_id)`)}
	opts := Options{Seed: 7, UniqueTables: uniqueTables(t, db, cat)}
	for _, tt := range []struct {
		name, sql string
		late      bool
	}{
		{name: "codelist by region", late: true, sql: `SELECT p.region, count(DISTINCT p.patient_id) AS n FROM clinical_events e JOIN patients p ON p.patient_id = e.patient_id
WHERE e.snomed_code IN ('code0', 'code2') GROUP BY p.region`},
		{name: "patients on the left, a condition on them", late: true, sql: `SELECT p.sex, count(*) AS n, avg(greatest(0, least(250, e.numeric_value))) AS m, sum(greatest(0, least(250, e.numeric_value))) AS s
FROM patients p JOIN clinical_events e ON e.patient_id = p.patient_id WHERE p.date_of_death IS NULL AND e.snomed_code <> 'code1' GROUP BY p.sex`},
		{name: "median by region", late: true, sql: `SELECT p.region, count(*) AS n, median(greatest(0, least(250, e.numeric_value))) AS med
FROM clinical_events e JOIN patients p USING (patient_id) GROUP BY p.region`},
		{name: "event and patient keys over k", late: true, sql: `SELECT date_trunc('month', m.date) AS month, p.region, count(*) AS n, count(DISTINCT m.patient_id) AS pts
FROM medications m JOIN dmd_codes d ON m.dmd_code = d.dmd_code JOIN patients p ON p.patient_id = m.patient_id
WHERE d.drug_class = 'antibiotic' AND p.region IS NOT NULL GROUP BY month, p.region`},
		{name: "ROLLUP of patient keys", late: true, sql: `SELECT p.sex, p.region, count(*) AS readings, count(DISTINCT p.patient_id) AS patients, avg(greatest(0, least(250, e.numeric_value))) AS m
FROM clinical_events e JOIN patients p ON p.patient_id = e.patient_id WHERE e.snomed_code = 'code0' GROUP BY ROLLUP (p.sex, p.region)`},
		{name: "ratio of event-side counts", late: true, sql: `SELECT month(e.date) AS month, p.region,
  count(DISTINCT e.patient_id) FILTER (WHERE e.snomed_code = 'code1') / count(DISTINCT e.patient_id) AS share
FROM clinical_events e JOIN patients p ON p.patient_id = e.patient_id GROUP BY month, p.region`},
		{name: "a per-patient CTE", late: true, sql: `WITH first_event AS (SELECT patient_id, min(date) AS first FROM clinical_events GROUP BY patient_id)
SELECT CASE WHEN f.first < DATE '2020-01-03' THEN 'early' ELSE 'late' END AS onset, m.dmd_code, count(*) AS n
FROM medications m JOIN first_event f ON f.patient_id = m.patient_id GROUP BY onset, m.dmd_code`},
		{name: "only the patients' presence", late: true, sql: `SELECT e.snomed_code, count(*) AS n FROM clinical_events e JOIN patients p ON p.patient_id = e.patient_id GROUP BY e.snomed_code`},
		{name: "patients inside the FROM, a lookup joined after", late: true, sql: `SELECT p.region, d.drug_class, count(*) AS n
FROM medications m JOIN patients p ON p.patient_id = m.patient_id JOIN dmd_codes d ON d.dmd_code = m.dmd_code GROUP BY p.region, d.drug_class`},
		{name: "patients in a nested join on the right", late: true, sql: `SELECT p.sex, count(*) AS n
FROM dmd_codes d JOIN (medications m JOIN patients p ON p.patient_id = m.patient_id) ON d.dmd_code = m.dmd_code WHERE d.drug_class = 'statin' GROUP BY p.sex`},
		{name: "patients inside, a LEFT JOIN after", late: true, sql: `SELECT p.region, count(*) AS n, count(m.patient_id) AS with_meds
FROM clinical_events e JOIN patients p ON p.patient_id = e.patient_id LEFT JOIN medications m ON m.patient_id = e.patient_id GROUP BY p.region`},
		{name: "a later join on the patients' id", sql: `SELECT p.region, count(*) AS n
FROM clinical_events e JOIN patients p ON p.patient_id = e.patient_id JOIN medications m ON m.patient_id = p.patient_id GROUP BY p.region`},
		{name: "a LEFT JOIN", sql: `SELECT p.region, count(*) AS n FROM clinical_events e LEFT JOIN patients p ON p.patient_id = e.patient_id GROUP BY p.region`},
		{name: "a further join condition", sql: `SELECT p.region, count(*) AS n FROM clinical_events e JOIN patients p ON p.patient_id = e.patient_id AND p.sex = 'male' GROUP BY p.region`},
		{name: "a key of both sides", sql: `SELECT CASE WHEN p.sex = 'male' AND e.numeric_value > 100 THEN 'a' ELSE 'b' END AS band, count(*) AS n
FROM clinical_events e JOIN patients p ON p.patient_id = e.patient_id GROUP BY band`},
		{name: "a condition on both sides", sql: `SELECT p.region, count(*) AS n FROM clinical_events e JOIN patients p ON p.patient_id = e.patient_id
WHERE e.date > p.date_of_birth GROUP BY p.region`},
		{name: "an aggregate of a patient column", sql: `SELECT e.snomed_code, count(*) AS n, sum(CASE WHEN p.sex = 'male' THEN 1 ELSE 0 END) AS men FROM clinical_events e JOIN patients p ON p.patient_id = e.patient_id GROUP BY e.snomed_code`},
		{name: "a patient count filtered on both sides", sql: `SELECT p.region, count(DISTINCT p.patient_id) FILTER (WHERE e.snomed_code = 'code1') AS n
FROM clinical_events e JOIN patients p ON p.patient_id = e.patient_id GROUP BY p.region`},
		{name: "joined to a relation a LEFT JOIN makes nullable", sql: `SELECT p.region, count(*) AS n
FROM clinical_events e LEFT JOIN medications m ON m.patient_id = e.patient_id JOIN patients p ON p.patient_id = m.patient_id GROUP BY p.region`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			plan, err := p.compile(context.Background(), cat, tt.sql, opts, true)
			if err != nil {
				t.Fatal(err)
			}
			if got := lateStage(plan.Rewritten) != ""; got != tt.late {
				t.Errorf("late join %v, want %v:\n%s", got, tt.late, plan.Rewritten)
			}
			sameRowsAsFull(t, dbs, compileFull(t, p, cat, tt.sql, opts), plan)
		})
	}
}

// TestLateJoinNeedsProof: a patients table only declared one row per
// patient is joined first, where its duplicates would weigh in the
// bounds.
func TestLateJoinNeedsProof(t *testing.T) {
	p := MustParser(t)
	cat := MustLoadTestCatalog(t)
	plan := mustCompile(t, p, cat, TypicalQueries[3].SQL)
	if lateStage(plan.Rewritten) != "" {
		t.Errorf("late join without a proof of one row per patient:\n%s", plan.Rewritten)
	}
	db := MustTestDB(t, cat, append(lateData[:len(lateData)-1:len(lateData)-1], `INSERT INTO patients SELECT * FROM patients WHERE patient_id = 2`)...)
	dup, err := p.compile(context.Background(), cat, TypicalQueries[3].SQL, Options{Seed: 7, UniqueTables: uniqueTables(t, db, cat)}, true)
	if err != nil {
		t.Fatal(err)
	}
	if lateStage(dup.Rewritten) != "" {
		t.Errorf("late join over a patients table with a duplicate:\n%s", dup.Rewritten)
	}
	if !strings.Contains(dup.Rewritten, `"__tre_kept"`) {
		t.Errorf("bounding stages missing:\n%s", dup.Rewritten)
	}
}
