package queries

import (
	"context"
	"database/sql"
	"strings"
	"testing"

	"github.com/nhs-tre/tre/dp"
)

// TestRatioCompile: accepted ratio forms become a ratio over its parts,
// sharing a part released as a column and hiding the others; proportions
// are recognised; the cost is that of the parts alone.
func TestRatioCompile(t *testing.T) {
	p := MustParser(t)
	cat := MustLoadTestCatalog(t)
	plan := mustCompile(t, p, cat, `SELECT p.region,
		count(DISTINCT p.patient_id) FILTER (WHERE e.snomed_code = '999791000000106') / count(DISTINCT p.patient_id) AS tested,
		count(DISTINCT p.patient_id) AS patients,
		sum(greatest(0, least(10, e.numeric_value))) / count(*) AS per_row
		FROM patients p JOIN clinical_events e ON e.patient_id = p.patient_id GROUP BY p.region`)
	got := plan.Spec.Aggregates
	if len(got) != 6 {
		t.Fatalf("aggregates %+v, want 3 columns and 3 hidden parts", got)
	}
	want := []dp.AggSpec{
		{Name: "tested", Kind: dp.AggRatio, Num: 4, Den: 2, Proportion: true},
		{Name: "patients", Kind: dp.AggCountPatients, PatientCount: true},
		{Name: "per_row", Kind: dp.AggRatio, Num: 5, Den: 6},
		{Name: "tested/numerator", Kind: dp.AggCountPatients, Hidden: true},
		{Name: "per_row/numerator", Kind: dp.AggSum, Lower: 0, Upper: 10, Hidden: true},
		{Name: "per_row/denominator", Kind: dp.AggCount, Hidden: true},
	}
	for i, w := range want {
		if got[i] != w {
			t.Errorf("aggregate %d: %+v, want %+v", i, got[i], w)
		}
	}
	if cols := plan.Spec.Columns(); len(cols) != 4 || cols[1].Kind != string(dp.AggRatio) {
		t.Errorf("columns %+v", cols)
	}
	if len(plan.Accuracy) != 3 || plan.Accuracy[0].Column != "tested" || !(plan.Accuracy[0].HalfWidth95 > 0) {
		t.Errorf("accuracy %+v", plan.Accuracy)
	}
	// A ratio of released columns costs what the columns cost.
	cols := mustCompile(t, p, cat, `SELECT sex, count(*) FILTER (WHERE region = 'London') AS a, count(*) AS b FROM patients GROUP BY sex`)
	both := mustCompile(t, p, cat, `SELECT sex, count(*) FILTER (WHERE region = 'London') AS a, count(*) AS b, count(*) FILTER (WHERE region = 'London') / count(*) AS share FROM patients GROUP BY sex`)
	if len(both.Spec.Aggregates) != 3 || both.Spec.Aggregates[2].Num != 1 || both.Spec.Aggregates[2].Den != 2 || !both.Spec.Aggregates[2].Proportion {
		t.Errorf("shared parts: %+v", both.Spec.Aggregates)
	}
	if cols.Cost != both.Cost || len(cols.Accuracy)+1 != len(both.Accuracy) {
		t.Errorf("cost %v → %v", cols.Cost, both.Cost)
	}
	if cols.Shape == both.Shape {
		t.Error("the canonical shape does not show the ratio")
	}
}

// TestRatioRefused: forms that are not one aggregate divided by another
// are refused with a reason naming the construct.
func TestRatioRefused(t *testing.T) {
	p := MustParser(t)
	cat := MustLoadTestCatalog(t)
	for sel, want := range map[string]string{
		"count(*) / 2":                   "division of an aggregate by a constant",
		"100 / count(*)":                 "a constant divided by an aggregate",
		"count(*) / numeric_value":       "a ratio of an aggregate and a row expression",
		"100 * count(*) / count(*)":      "nested arithmetic on aggregates",
		"count(*) / count(*) / count(*)": "nested arithmetic on aggregates",
		"count(*) FILTER (WHERE numeric_value > 5) / count(*) * 100": "arithmetic on aggregates",
		"count(*) + count(*)":                    "arithmetic on aggregates",
		"avg(numeric_value) / count(*)":          "a ratio with mean as numerator",
		"count(*) / sum(numeric_value)":          "a ratio with sum as denominator",
		"count(*) / count(*)":                    "a ratio of an aggregate to itself",
		"count(*) / max(numeric_value)":          "aggregate max",
		"count(DISTINCT snomed_code) / count(*)": "count(DISTINCT …) of a column other than patient_id",
		"median(numeric_value) / count(*)":       "a ratio with quantile as numerator",
	} {
		_, err := p.Compile(context.Background(), cat, "SELECT "+sel+" AS x FROM clinical_events", Options{})
		r, ok := err.(*Refusal)
		if !ok || !strings.Contains(r.Message, want) {
			t.Errorf("%s: %v, want a refusal naming %q", sel, err, want)
		}
	}
}

// TestRatioRows: the rewrite computes a ratio's parts like any aggregate
// (the same on the shortcut paths as on the full pipeline) and leaves the
// ratio's own layout columns zero.
func TestRatioRows(t *testing.T) {
	p := MustParser(t)
	cat := MustLoadTestCatalog(t)
	db := MustTestDB(t, cat, smallData)
	dbs := map[string]*sql.DB{
		"small": db,
		"duplicated": MustTestDB(t, cat, smallData,
			`INSERT INTO patients SELECT * FROM patients WHERE patient_id = 101`,
			`INSERT INTO clinical_events SELECT * FROM clinical_events`),
	}
	for _, q := range []string{
		`SELECT sex, count(*) FILTER (WHERE region = 'London') / count(*) AS share FROM patients GROUP BY sex`,
		`SELECT region, count(DISTINCT p.patient_id) FILTER (WHERE e.snomed_code = '60621009') / count(DISTINCT p.patient_id) AS r,
			sum(greatest(0, least(100, e.numeric_value))) / count(*) AS s
			FROM clinical_events e JOIN patients p ON p.patient_id = e.patient_id GROUP BY region`,
		`SELECT count(*) / count(DISTINCT patient_id) AS rows_per_patient FROM clinical_events`,
	} {
		full, err := p.compile(context.Background(), cat, q, Options{Seed: 42}, false)
		if err != nil {
			t.Fatal(err)
		}
		plan := mustCompile(t, p, cat, q)
		sameRowsAsFull(t, dbs, full, plan)
		got, _ := runPlan(t, db, plan)
		for _, g := range got {
			for i, a := range plan.Spec.Aggregates {
				if a.Kind == dp.AggRatio && (g.Aggs[i].Count != 0 || g.Aggs[i].Sum != 0 || g.Aggs[i].SumSq != 0 || g.Aggs[i].Top1 != 0 || g.Aggs[i].Top2 != 0) {
					t.Errorf("%s: ratio %s carries statistics %+v", q, a.Name, g.Aggs[i])
				}
			}
		}
	}
}

// TestRatioWithRollup: ratios of a ROLLUP are computed per cell and per
// total from the same parts (Table 1's percentages).
func TestRatioWithRollup(t *testing.T) {
	p := MustParser(t)
	cat := MustLoadTestCatalog(t)
	db := MustTestDB(t, cat, smallData)
	q := `SELECT sex, region, count(*) FILTER (WHERE region = 'London') / count(*) AS share FROM patients GROUP BY ROLLUP (sex, region)`
	plan := mustCompile(t, p, cat, q)
	if got := plan.Spec.Aggregates[0]; got.Kind != dp.AggRatio || !got.Proportion {
		t.Fatalf("ratio under ROLLUP compiled as %+v", got)
	}
	full, err := p.compile(context.Background(), cat, q, Options{Seed: 42}, false)
	if err != nil {
		t.Fatal(err)
	}
	sameRowsAsFull(t, map[string]*sql.DB{"small": db}, full, plan)
}
