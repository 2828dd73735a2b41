package queries

import (
	"context"
	"database/sql"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/nhs-tre/tre/dp"
)

func TestRollupCompile(t *testing.T) {
	p := MustParser(t)
	cat := MustLoadTestCatalog(t)
	accepted := []struct {
		sql  string
		sets [][]int
	}{
		{`SELECT sex, region, count(*) AS n FROM patients GROUP BY ROLLUP (sex, region)`, [][]int{{0, 1}, {0}, {}}},
		{`SELECT sex, region, count(*) AS n FROM patients GROUP BY GROUPING SETS ((sex, region), (sex), ())`, [][]int{{0, 1}, {0}, {}}},
		{`SELECT sex, region, count(*) AS n FROM patients GROUP BY CUBE (sex, region)`, [][]int{{0, 1}, {0}, {1}, {}}},
		{`SELECT sex, region, count(*) AS n FROM patients GROUP BY sex, ROLLUP (region)`, [][]int{{0, 1}, {0}}},
		{`SELECT sex, count(*) AS n FROM patients GROUP BY ROLLUP (sex) ORDER BY sex`, [][]int{{0}, {}}},
		{`SELECT CASE WHEN imd_quintile <= 2 THEN 'deprived' ELSE 'other' END AS imd, sex, count(*) AS n FROM patients GROUP BY ROLLUP (imd, sex)`, [][]int{{0, 1}, {0}, {}}},
	}
	for _, tt := range accepted {
		plan := mustCompile(t, p, cat, tt.sql)
		if diff := cmp.Diff(tt.sets, plan.Spec.Sets); diff != "" || !plan.Spec.Margins {
			t.Errorf("%s: sets (-want +got):\n%s (margins %v)", tt.sql, diff, plan.Spec.Margins)
		}
		if !strings.Contains(plan.Rewritten, "GROUPING SETS") {
			t.Errorf("%s: rewrite without GROUPING SETS:\n%s", tt.sql, plan.Rewritten)
		}
	}
	plain := mustCompile(t, p, cat, `SELECT sex, region, count(*) AS n FROM patients GROUP BY sex, region`)
	roll := mustCompile(t, p, cat, accepted[0].sql)
	if plain.Spec.Sets != nil || plain.Shape == roll.Shape {
		t.Errorf("a plain GROUP BY has sets %v, or the same shape as its ROLLUP", plain.Spec.Sets)
	}
	if roll.Accuracy[0].HalfWidth95 <= plain.Accuracy[0].HalfWidth95 || !strings.Contains(roll.Accuracy[0].Note, "3 grouping sets") {
		t.Errorf("ROLLUP accuracy %+v, plain %+v: want wider, with a note", roll.Accuracy[0], plain.Accuracy[0])
	}

	refused := []struct{ sql, construct string }{
		{`SELECT left(snomed_code, 3) AS code, count(*) AS n FROM clinical_events GROUP BY ROLLUP (code)`, "ROLLUP, CUBE or GROUPING SETS over code"},
		{`SELECT sex, region, count(*) AS n FROM patients GROUP BY GROUPING SETS ((sex), (region), ())`, "GROUPING SETS without the full grouping"},
		{`SELECT sex, count(*) AS n FROM patients GROUP BY GROUPING SETS ((sex), (sex), ())`, "a grouping set listed twice"},
		{`SELECT CASE WHEN imd_quintile <= 2 THEN '(total)' ELSE 'other' END AS imd, count(*) AS n FROM patients GROUP BY ROLLUP (imd)`, "group value (total)"},
		{`WITH x AS (SELECT patient_id, count(*) AS n FROM clinical_events GROUP BY ROLLUP (patient_id)) SELECT count(*) AS n FROM x`, "GROUPING SETS, ROLLUP or CUBE in a per-patient query"},
		{`SELECT sex, grouping(sex) AS g, count(*) AS n FROM patients GROUP BY ROLLUP (sex)`, "grouping"},
	}
	for _, tt := range refused {
		_, err := p.Compile(context.Background(), cat, tt.sql, Options{})
		r, ok := err.(*Refusal)
		if !ok || !strings.Contains(r.Construct, tt.construct) {
			t.Errorf("%s: got %v, want a refusal of %q", tt.sql, err, tt.construct)
		}
	}
}

// rollupData is random patients with clinical events, one to three per
// patient (so C = 3 never binds) and vaccinations of up to three kinds
// (several cells per patient), with values outside the catalog domains,
// NULL keys and a real group value "(total)" mixed in.
func rollupData(seed uint64) string {
	rng := rand.New(rand.NewPCG(seed, 19))
	var b strings.Builder
	sexes := []string{"'female'", "'male'", "'unknown'", "NULL", "'(total)'"}
	regions := []string{"'London'", "'North East'", "'South West'", "NULL", "'Atlantis'"}
	vaccines := []string{"influenza", "covid19", "shingles", "mmr"}
	b.WriteString("INSERT INTO patients VALUES ")
	for i := range 300 {
		if i > 0 {
			b.WriteString(", ")
		}
		sex, region := sexes[rng.IntN(3)], regions[rng.IntN(3)]
		if rng.IntN(20) == 0 {
			sex = sexes[3+rng.IntN(2)]
		}
		if rng.IntN(20) == 0 {
			region = regions[3+rng.IntN(2)]
		}
		fmt.Fprintf(&b, "(%d, DATE '19%02d-01-01', %s, 'White', %s, %d, 'P1', DATE '2000-01-01', NULL, NULL)", i+1, 30+rng.IntN(60), sex, region, 1+rng.IntN(5))
	}
	b.WriteString(";\nINSERT INTO clinical_events VALUES ")
	first := true
	for i := range 300 {
		for range 1 + rng.IntN(3) {
			if !first {
				b.WriteString(", ")
			}
			first = false
			fmt.Fprintf(&b, "(%d, DATE '2023-01-01', '60621009', %.2f)", i+1, 10+rng.Float64()*60)
		}
	}
	b.WriteString(";\nINSERT INTO vaccinations VALUES ")
	first = true
	for i := range 300 {
		for _, v := range vaccines[:rng.IntN(4)] {
			if !first {
				b.WriteString(", ")
			}
			first = false
			fmt.Fprintf(&b, "(%d, DATE '2023-10-01', '%s')", i+1, v)
		}
	}
	b.WriteString(";\n")
	return b.String()
}

// TestRollupExactTotals: with bounds that never bind, the rewrite's rows
// are DuckDB's own exact GROUPING SETS answer over the in-domain rows, on
// both the shortcut and the full pipeline: every cell, subtotal and total,
// keyed "(total)", a real "(total)" value, NULL and out-of-domain keys
// counted nowhere.
func TestRollupExactTotals(t *testing.T) {
	p := MustParser(t)
	cat := MustLoadTestCatalog(t)
	db := MustTestDB(t, cat, rollupData(1))
	const q = `SELECT p.sex, p.region, count(*) AS readings, count(DISTINCT p.patient_id) AS patients,
  avg(greatest(10, least(70, e.numeric_value))) AS mean_bmi, median(greatest(10, least(70, e.numeric_value))) AS median_bmi
FROM clinical_events e JOIN patients p ON p.patient_id = e.patient_id
WHERE e.snomed_code = '60621009'
GROUP BY ROLLUP (p.sex, p.region)`
	const ref = `SELECT CASE WHEN GROUPING(p.sex) = 1 THEN '(total)' ELSE p.sex END AS sex,
  CASE WHEN GROUPING(p.region) = 1 THEN '(total)' ELSE p.region END AS region,
  count(DISTINCT p.patient_id), count(*), count(*), sum(greatest(10, least(70, e.numeric_value)))
FROM clinical_events e JOIN patients p ON p.patient_id = e.patient_id
WHERE e.snomed_code = '60621009' AND p.sex IN ('female', 'male', 'unknown')
  AND p.region IN ('North East', 'North West', 'Yorkshire and The Humber', 'East Midlands', 'West Midlands', 'East of England', 'London', 'South East', 'South West')
GROUP BY ROLLUP (p.sex, p.region)`
	rows, err := db.Query(ref)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][4]float64{}
	for rows.Next() {
		var sex, region string
		var v [4]float64
		if err := rows.Scan(&sex, &region, &v[0], &v[1], &v[2], &v[3]); err != nil {
			t.Fatal(err)
		}
		want[sex+"|"+region] = v
	}
	rows.Close()
	if len(want) < 8 {
		t.Fatalf("reference has %d rows", len(want))
	}
	for name, plan := range map[string]*Plan{"shortcuts": mustCompile(t, p, cat, q), "full": compileFull(t, p, cat, q, Options{Seed: 42})} {
		groups, dropped := runPlan(t, db, plan)
		got := map[string][4]float64{}
		for _, g := range groups {
			if g.Keys[0] == nil || g.Keys[1] == nil {
				t.Fatalf("%s: a NULL key in a ROLLUP's rows", name)
			}
			a := g.Aggs
			got[*g.Keys[0]+"|"+*g.Keys[1]] = [4]float64{float64(g.Patients), a[0].Count, a[2].Count, a[2].Sum + 40*a[2].Count}
			var hist int64
			for _, n := range a[3].Hist {
				hist += n
			}
			if float64(hist) != a[3].Count || a[1].Count != float64(g.Patients) {
				t.Errorf("%s: %v: histogram of %d values, count %v, patients %v/%d", name, g.Keys, hist, a[3].Count, a[1].Count, g.Patients)
			}
		}
		if diff := cmp.Diff(want, got, cmpopts.EquateApprox(0, 1e-9)); diff != "" {
			t.Errorf("%s: rows differ from DuckDB's GROUPING SETS (-want +got):\n%s", name, diff)
		}
		if dropped != 0 {
			t.Errorf("%s: %d rows dropped where no bound binds", name, dropped)
		}
	}
}

// TestRollupBoundedTotals: where the bounds bind (vaccinations of several
// kinds per patient, k = 2 on the catalog), a total counts each kept
// patient once (distinct, not summed over their cells), sums the kept
// cells' rows, and the shortcut paths give the full pipeline's rows.
func TestRollupBoundedTotals(t *testing.T) {
	p := MustParser(t)
	cat := MustLoadTestCatalog(t)
	cat.Policy.MaxGroupsPerPatient = 2
	dbs := map[string]*sql.DB{"a": MustTestDB(t, cat, rollupData(2)), "b": MustTestDB(t, cat, rollupData(3))}
	queries := []string{
		`SELECT vaccine, count(*) AS doses, count(DISTINCT patient_id) AS patients FROM vaccinations GROUP BY ROLLUP (vaccine)`,
		`SELECT v.vaccine, p.sex, count(*) AS doses, count(DISTINCT v.patient_id) AS patients FROM vaccinations v JOIN patients p ON p.patient_id = v.patient_id GROUP BY CUBE (v.vaccine, p.sex)`,
		`SELECT p.sex, p.region, count(*) AS n, avg(CASE WHEN p.imd_quintile <= 2 THEN 1 ELSE 0 END) AS deprived FROM patients p GROUP BY ROLLUP (p.sex, p.region)`,
		`WITH b AS (SELECT patient_id, avg(numeric_value) AS bmi FROM clinical_events GROUP BY patient_id)
SELECT p.sex, count(*) AS n, quantile_cont(greatest(10, least(70, b.bmi)), 0.25) AS q1, median(greatest(10, least(70, b.bmi))) AS med
FROM b JOIN patients p ON p.patient_id = b.patient_id GROUP BY ROLLUP (p.sex)`,
	}
	for _, q := range queries {
		plan := mustCompile(t, p, cat, q)
		full := compileFull(t, p, cat, q, Options{Seed: 42})
		sameRowsAsFull(t, dbs, full, plan)
	}
	plan := mustCompile(t, p, cat, queries[0])
	if plan.Spec.MaxGroupsPerPatient != 2 || len(plan.Spec.Sets) != 2 {
		t.Fatalf("spec k %d, sets %v", plan.Spec.MaxGroupsPerPatient, plan.Spec.Sets)
	}
	groups, _ := runPlan(t, dbs["a"], plan)
	var cells, doses float64
	var total dp.GroupStats
	for _, g := range groups {
		if *g.Keys[0] == dp.TotalKey {
			total = g
			continue
		}
		if g.Aggs[1].Count != float64(g.Patients) {
			t.Errorf("cell %s: patients %v vs %d", *g.Keys[0], g.Aggs[1].Count, g.Patients)
		}
		cells += float64(g.Patients)
		doses += g.Aggs[0].Count
	}
	var vaccinated float64
	if err := dbs["a"].QueryRow(`SELECT count(DISTINCT patient_id) FROM vaccinations WHERE vaccine IN ('influenza', 'covid19', 'pneumococcal', 'shingles', 'mmr')`).Scan(&vaccinated); err != nil {
		t.Fatal(err)
	}
	if float64(total.Patients) != vaccinated || total.Aggs[1].Count != vaccinated || total.Aggs[0].Count != doses || cells <= vaccinated {
		t.Errorf("total: %d patients (count %v), %v doses; want %v distinct patients (cells sum to %v) and %v doses",
			total.Patients, total.Aggs[1].Count, total.Aggs[0].Count, vaccinated, cells, doses)
	}
}
