package sandbox

import (
	"context"
	"fmt"
	"testing"

	"github.com/nhs-tre/tre/dp"
	"github.com/nhs-tre/tre/job"
	"github.com/nhs-tre/tre/queries"
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
	path, r := synthRunner(t, 20000, 23)
	const tested = `WITH t AS (SELECT patient_id, bool_or(snomed_code = '999791000000106') AS tested FROM clinical_events GROUP BY patient_id)
SELECT p.region, count(*) FILTER (WHERE t.tested) / count(*) AS tested
FROM t JOIN patients p ON p.patient_id = t.patient_id %s GROUP BY p.region`
	const joined = `SELECT p.region,
  count(DISTINCT p.patient_id) FILTER (WHERE e.snomed_code = '999791000000106') / count(DISTINCT p.patient_id) AS tested
FROM patients p JOIN clinical_events e ON e.patient_id = p.patient_id %s GROUP BY p.region`
	const women = `SELECT region, count(*) FILTER (WHERE sex = 'female') / count(*) AS women FROM patients %s GROUP BY region`
	const optout = "WHERE %s NOT IN (SELECT patient_id FROM optouts)"
	var cov coverage
	for _, q := range []struct{ sql, exact string }{
		{fmt.Sprintf(tested, ""), fmt.Sprintf(tested, fmt.Sprintf(optout, "p.patient_id"))},
		{fmt.Sprintf(women, ""), fmt.Sprintf(women, fmt.Sprintf(optout, "patient_id"))},
		{fmt.Sprintf(joined, ""), fmt.Sprintf(joined, fmt.Sprintf(optout, "p.patient_id"))},
	} {
		exact := exactRows(t, path, q.exact, 1)
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
				cov.add(*c.CILow, *c.CIHigh, want[0])
			}
		}
	}
	cov.check(t, 100, "ratio")
}
