package sandbox

import (
	"context"
	"fmt"
	"testing"

	"github.com/nhs-tre/tre/dp"
	"github.com/nhs-tre/tre/job"
	"github.com/nhs-tre/tre/queries"
)

// TestQuantileAccuracy: quartiles of BMI by region released through the
// real sandbox child with the library's real noise, against DuckDB's own
// exact quantile_cont of the same bounded per-patient values (opted-out
// patients left out, as the release snapshot leaves them out) on the same
// synthetic data. The exact value must lie inside the released 95%
// interval in at least 95% of the cells less six standard errors of their
// number, and each released value inside the bounds.
func TestQuantileAccuracy(t *testing.T) {
	if testing.Short() {
		t.Skip("generates synthetic data and runs sandbox jobs")
	}
	ctx := context.Background()
	path, r := synthRunner(t, 20000, 19)
	const bmi = `WITH bmi AS (
  SELECT patient_id, max(numeric_value) AS bmi FROM clinical_events WHERE snomed_code = '60621009' %s GROUP BY patient_id)
SELECT p.region, quantile_cont(greatest(12, least(70, b.bmi)), 0.25) AS q1, median(greatest(12, least(70, b.bmi))) AS md,
  quantile_cont(greatest(12, least(70, b.bmi)), 0.75) AS q3
FROM bmi b JOIN patients p ON p.patient_id = b.patient_id GROUP BY p.region`
	exact := exactRows(t, path, fmt.Sprintf(bmi, "AND patient_id NOT IN (SELECT patient_id FROM optouts)"), 1)
	q := fmt.Sprintf(bmi, "")
	var cov coverage
	for range 6 {
		res, err := r.Run(ctx, job.Job{QueryID: 1, SQL: q, SQLHash: queries.SQLHash(q), Epsilon: 1})
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range res.Columns[1:] {
			if c.Kind != string(dp.AggQuantile) {
				t.Fatalf("column %s released as %s", c.Name, c.Kind)
			}
		}
		for _, row := range res.Rows {
			want, ok := exact[row[0].Key]
			if !ok {
				t.Fatalf("region %q released, not in the data", row[0].Key)
			}
			for j, c := range row[1:] {
				if c.Suppressed {
					continue
				}
				if *c.Value < 12 || *c.Value > 70 {
					t.Errorf("%s: %v outside the bounds", row[0].Key, *c.Value)
				}
				cov.add(*c.CILow, *c.CIHigh, want[j])
			}
		}
	}
	cov.check(t, 100, "quartile")
}
