package sandbox

import (
	"context"
	"database/sql"
	"fmt"
	"math"
	"path/filepath"
	"testing"

	"github.com/nhs-tre/tre/dp"
	"github.com/nhs-tre/tre/job"
	"github.com/nhs-tre/tre/queries"
	"github.com/nhs-tre/tre/synth"
)

// TestRatioAccuracy: three ratios by region released through the real
// sandbox child with the library's real noise — the share of patients with
// an event who had an HbA1c test (a per-patient flag, count(*) FILTER over
// count(*)) and the share of women (count(*) FILTER over count(*) of the
// patients table) — against DuckDB's exact ratios of the same data less
// the opted-out patients (the release snapshot leaves them out). One row
// per patient and region a column of the patients table: k = C = 1 and
// bounding drops nothing, so the exact ratio is DuckDB's. And the same
// share as count(DISTINCT patient_id) FILTER over a join of events: a
// patient count reads all of a (patient, group) pair's rows, not only the
// C that bounding keeps, so it is exact too. The exact value
// must lie inside the released 95% interval in at least 95% of cells less
// six standard errors, and every value inside [0, 1].
func TestRatioAccuracy(t *testing.T) {
	if testing.Short() {
		t.Skip("generates synthetic data and runs sandbox jobs")
	}
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "synth.duckdb")
	if _, err := synth.Generate(ctx, synth.Options{Out: path, Patients: 20000, Seed: 23, Threads: 2}); err != nil {
		t.Fatal(err)
	}
	const tested = `WITH t AS (SELECT patient_id, bool_or(snomed_code = '999791000000106') AS tested FROM clinical_events GROUP BY patient_id)
SELECT p.region, count(*) FILTER (WHERE t.tested) / count(*) AS tested
FROM t JOIN patients p ON p.patient_id = t.patient_id %s GROUP BY p.region`
	const joined = `SELECT p.region,
  count(DISTINCT p.patient_id) FILTER (WHERE e.snomed_code = '999791000000106') / count(DISTINCT p.patient_id) AS tested
FROM patients p JOIN clinical_events e ON e.patient_id = p.patient_id %s GROUP BY p.region`
	const women = `SELECT region, count(*) FILTER (WHERE sex = 'female') / count(*) AS women FROM patients %s GROUP BY region`
	const optout = "WHERE %s NOT IN (SELECT patient_id FROM optouts)"
	cfg := testConfig(t, path)
	cfg.Catalog = synth.Catalog()
	r := MustRunner(t, cfg)
	cells, covered := 0, 0
	for _, q := range []struct{ sql, exact string }{
		{fmt.Sprintf(tested, ""), fmt.Sprintf(tested, fmt.Sprintf(optout, "p.patient_id"))},
		{fmt.Sprintf(women, ""), fmt.Sprintf(women, fmt.Sprintf(optout, "patient_id"))},
		{fmt.Sprintf(joined, ""), fmt.Sprintf(joined, fmt.Sprintf(optout, "p.patient_id"))},
	} {
		exact := exactRatios(t, path, q.exact)
		for range 8 {
			res, err := r.Run(ctx, job.Job{QueryID: 1, SQL: q.sql, SQLHash: queries.SQLHash(q.sql), Epsilon: 1})
			if err != nil {
				t.Fatal(err)
			}
			if len(res.Columns) != 2 || res.Columns[1].Kind != string(dp.AggRatio) || len(res.Report.Ratios) != 1 {
				t.Fatalf("columns %+v, ratios %+v", res.Columns, res.Report.Ratios)
			}
			for _, row := range res.Rows {
				want, ok := exact[row[0].Key]
				c := row[1]
				if !ok || c.Suppressed {
					continue
				}
				if *c.Value < 0 || *c.Value > 1 || *c.CILow > *c.Value || *c.Value > *c.CIHigh {
					t.Errorf("%s: %v [%v, %v] not a proportion inside its interval", row[0].Key, *c.Value, *c.CILow, *c.CIHigh)
				}
				cells++
				if *c.CILow <= want && want <= *c.CIHigh {
					covered++
				}
			}
		}
	}
	rate := float64(covered) / float64(cells)
	t.Logf("%d cells, exact ratio inside the 95%% interval in %.1f%%", cells, 100*rate)
	if cells < 100 || rate < 0.95-6*math.Sqrt(0.05*0.95/float64(cells)) {
		t.Errorf("%d of %d exact ratios inside the released 95%% intervals", covered, cells)
	}
}

// exactRatios runs q (region, then a ratio) on the data file itself.
func exactRatios(t *testing.T, path, q string) map[string]float64 {
	t.Helper()
	db, err := sql.Open("duckdb", path+"?access_mode=read_only")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rows, err := db.Query(q)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]float64{}
	for rows.Next() {
		var region string
		var v float64
		if err := rows.Scan(&region, &v); err != nil {
			t.Fatal(err)
		}
		out[region] = v
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}
