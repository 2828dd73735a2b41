package queries

import (
	"context"
	"database/sql"
	"fmt"
	"math"
	"strconv"
	"strings"
	"testing"

	"github.com/nhs-tre/tre/dp"
)

// TestQuantileLeafSQL: DuckDB's leaf of a value (quantileLeafSQL) is
// dp.QuantileLeaf's for values at, between and beyond the bounds, on leaf
// edges and next to them, over narrow, wide and negative ranges.
func TestQuantileLeafSQL(t *testing.T) {
	db, err := sql.Open("duckdb", "")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for _, b := range [][2]float64{{0, 200}, {12, 70}, {-1e15, 1e15}, {0.1, 0.3}, {-7, -3}, {0, 1}} {
		lo, hi := b[0], b[1]
		var xs []float64
		for _, x := range []float64{lo, hi, lo - 1, hi + 1, math.Nextafter(hi, lo), math.Nextafter(lo, hi), (lo + hi) / 2} {
			xs = append(xs, x)
		}
		for i := 0; i <= dp.QuantileLeaves; i += 97 {
			edge := lo + (hi-lo)*float64(i)/dp.QuantileLeaves
			xs = append(xs, edge, math.Nextafter(edge, lo), math.Nextafter(edge, hi))
		}
		vals := make([]string, len(xs))
		for i, x := range xs {
			vals[i] = fmt.Sprintf("(%d, CAST(%s AS DOUBLE))", i, strconv.FormatFloat(x, 'e', -1, 64))
		}
		q := fmt.Sprintf(`SELECT i, %s FROM (VALUES %s) AS v(i, "__a0") ORDER BY i`, quantileLeafSQL(`"__a0"`, lo, hi), strings.Join(vals, ", "))
		rows, err := db.Query(q)
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var i, leaf int
			if err := rows.Scan(&i, &leaf); err != nil {
				t.Fatal(err)
			}
			if want := dp.QuantileLeaf(xs[i], lo, hi); leaf != want {
				t.Errorf("[%g, %g]: %v in leaf %d in SQL, %d in dp", lo, hi, xs[i], leaf, want)
			}
		}
		rows.Close()
	}
	var null sql.NullInt64
	if err := db.QueryRow(`SELECT ` + quantileLeafSQL(`"__a0"`, 0, 1) + ` FROM (SELECT CAST(NULL AS DOUBLE) AS "__a0")`).Scan(&null); err != nil || null.Valid {
		t.Errorf("leaf of NULL: %v, %v; want NULL", null, err)
	}
}

// TestQuantileCompile: median and quantile_cont compile to quantiles with
// their ranks and bounds; several ranks of one expression share one tree,
// another expression or FILTER gets its own; bad ranks are refused.
func TestQuantileCompile(t *testing.T) {
	p := MustParser(t)
	cat := MustLoadTestCatalog(t)
	plan := mustCompile(t, p, cat, `SELECT median(numeric_value) AS md, quantile_cont(numeric_value, 0.25) AS q1,
		quantile_cont(greatest(10, least(50, numeric_value)), 0.9) AS p90,
		median(numeric_value) FILTER (WHERE snomed_code = '60621009') AS bmi_md
		FROM clinical_events`)
	want := []dp.AggSpec{
		{Name: "md", Kind: dp.AggQuantile, Lower: 0, Upper: 200, Rank: 0.5, Tree: 1},
		{Name: "q1", Kind: dp.AggQuantile, Lower: 0, Upper: 200, Rank: 0.25, Tree: 1},
		{Name: "p90", Kind: dp.AggQuantile, Lower: 10, Upper: 50, Rank: 0.9, Tree: 2},
		{Name: "bmi_md", Kind: dp.AggQuantile, Lower: 0, Upper: 200, Rank: 0.5, Tree: 3},
	}
	for i, w := range want {
		if got := plan.Spec.Aggregates[i]; got != w {
			t.Errorf("aggregate %d: %+v, want %+v", i, got, w)
		}
	}
	if len(plan.Accuracy) != 4 || !(plan.Accuracy[0].HalfWidth95 > 0) {
		t.Errorf("accuracy %+v", plan.Accuracy)
	}
	for _, bad := range []string{
		"quantile_cont(numeric_value, 0)", "quantile_cont(numeric_value, 1)", "quantile_cont(numeric_value, 1.5)",
		"quantile_cont(numeric_value, [0.25, 0.75])", "quantile_cont(numeric_value, numeric_value)",
		"quantile_cont(numeric_value)", "median(DISTINCT numeric_value)", "quantile_disc(numeric_value, 0.5)",
		"quantile(numeric_value, 0.5)", "median(snomed_code)", "median(date)",
	} {
		if _, err := p.Compile(context.Background(), cat, "SELECT "+bad+" AS x FROM clinical_events", Options{}); err == nil {
			t.Errorf("%s: accepted", bad)
		} else if _, ok := err.(*Refusal); !ok {
			t.Errorf("%s: %v is not a refusal", bad, err)
		}
	}
}

// TestQuantileRows: the rewrite's histograms hold each patient's bounded
// values (at most C per group, clamped), the same on the shortcut paths as
// on the full pipeline.
func TestQuantileRows(t *testing.T) {
	p := MustParser(t)
	cat := MustLoadTestCatalog(t)
	db := MustTestDB(t, cat, smallData)
	plan := mustCompile(t, p, cat, `SELECT count(*) AS n, median(numeric_value) AS md FROM clinical_events WHERE snomed_code = '60621009'`)
	got, _ := runPlan(t, db, plan)
	// BMI 31.5, 500 (clamped to 200) and 22; the opted-out patient has none.
	want := map[int]int64{dp.QuantileLeaf(31.5, 0, 200): 1, dp.QuantileLeaf(200, 0, 200): 1, dp.QuantileLeaf(22, 0, 200): 1}
	if h := got[0].Aggs[1].Hist; fmt.Sprint(h) != fmt.Sprint(want) || got[0].Aggs[1].Count != 3 {
		t.Errorf("histogram %v (count %v), want %v", h, got[0].Aggs[1].Count, want)
	}
	dbs := map[string]*sql.DB{
		"small": db,
		"duplicated": MustTestDB(t, cat, smallData,
			`INSERT INTO patients SELECT * FROM patients WHERE patient_id = 101`,
			`INSERT INTO clinical_events SELECT * FROM clinical_events`),
	}
	for _, q := range []string{
		`SELECT sex, median(greatest(0, least(110, date_diff('year', date_of_birth, DATE '2024-01-01')))) AS age FROM patients GROUP BY sex`,
		`SELECT region, quantile_cont(numeric_value, 0.25) AS q1, median(numeric_value) AS md, count(*) AS n
			FROM clinical_events e JOIN patients p ON p.patient_id = e.patient_id GROUP BY region`,
		`WITH b AS (SELECT patient_id, max(numeric_value) AS v FROM clinical_events GROUP BY patient_id)
			SELECT median(v) AS md, median(v) FILTER (WHERE v > 50) AS high FROM b`,
	} {
		full, err := p.compile(context.Background(), cat, q, Options{Seed: 42}, false)
		if err != nil {
			t.Fatal(err)
		}
		sameRowsAsFull(t, dbs, full, mustCompile(t, p, cat, q))
	}
}
