package sandbox

import (
	"context"
	"testing"

	"github.com/nhs-tre/tre/dp"
	"github.com/nhs-tre/tre/job"
	"github.com/nhs-tre/tre/queries"
)

// TestRollupAgainstDuckDB runs ROLLUP and CUBE queries through the real
// sandbox child with the noise replaced by 1e-9 (the test hook; 0 means
// the library's noise) and
// compares every released cell, subtotal and total with DuckDB's own exact
// GROUPING SETS answer on the data file (opted-out patients left out):
// the released value is the exact one rounded, each total keyed
// "(total)", and primary suppression exactly where the exact values put
// it.
func TestRollupAgainstDuckDB(t *testing.T) {
	if testing.Short() {
		t.Skip("generates synthetic data and runs sandbox jobs")
	}
	ctx := context.Background()
	path, r := synthRunner(t, 20000, 21)
	for _, tt := range []struct{ name, sql, exact string }{
		{
			name: "patients by sex and region, ROLLUP",
			sql:  `SELECT p.sex, p.region, count(*) AS n FROM patients p GROUP BY ROLLUP (p.sex, p.region)`,
			exact: `SELECT CASE WHEN GROUPING(sex) = 1 THEN '(total)' ELSE sex END, CASE WHEN GROUPING(region) = 1 THEN '(total)' ELSE region END, count(*)
FROM patients WHERE patient_id NOT IN (SELECT patient_id FROM optouts) GROUP BY ROLLUP (sex, region)`,
		},
		{
			name: "type 2 diabetes by sex and IMD, CUBE",
			sql: `SELECT p.sex, p.imd_quintile, count(DISTINCT p.patient_id) AS n FROM clinical_events e JOIN patients p ON p.patient_id = e.patient_id
WHERE e.snomed_code = '44054006' GROUP BY CUBE (p.sex, p.imd_quintile)`,
			exact: `SELECT CASE WHEN GROUPING(p.sex) = 1 THEN '(total)' ELSE p.sex END, CASE WHEN GROUPING(p.imd_quintile) = 1 THEN '(total)' ELSE CAST(p.imd_quintile AS VARCHAR) END, count(DISTINCT p.patient_id)
FROM clinical_events e JOIN patients p ON p.patient_id = e.patient_id
WHERE e.snomed_code = '44054006' AND p.patient_id NOT IN (SELECT patient_id FROM optouts) GROUP BY CUBE (p.sex, p.imd_quintile)`,
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			exact := exactRows(t, path, tt.exact, 2)
			res, err := r.run(ctx, noiseJob(job.Job{QueryID: 1, SQL: tt.sql, SQLHash: queries.SQLHash(tt.sql), Epsilon: 1}, 1e-9))
			if err != nil {
				t.Fatal(err)
			}
			if res.Report.GroupingSets < 3 {
				t.Errorf("report: %d grouping sets", res.Report.GroupingSets)
			}
			released, totals := 0, 0
			for _, row := range res.Rows {
				k := row[0].Key + "|" + row[1].Key
				want := 0.0 // an empty cell of the public domains
				if v, ok := exact[k]; ok {
					want = v[0]
				}
				delete(exact, k)
				if row[0].Key == dp.TotalKey || row[1].Key == dp.TotalKey {
					totals++
				}
				c := row[2]
				if (want < res.Report.ReleaseThreshold) != (c.Suppressed && !c.Secondary) {
					t.Errorf("%s: exact %v, threshold %v, cell %+v", k, want, res.Report.ReleaseThreshold, c)
				}
				if c.Suppressed {
					continue
				}
				released++
				if got := *c.Value; got != dp.RoundCount(want, res.Report.RoundingBase, res.Report.Rounding) {
					t.Errorf("%s: released %v, DuckDB's exact %v", k, got, want)
				}
			}
			for k := range exact {
				t.Errorf("DuckDB's cell %s not released", k)
			}
			if released < 10 || totals < 3 {
				t.Errorf("%d cells released, %d totals", released, totals)
			}
		})
	}
}
