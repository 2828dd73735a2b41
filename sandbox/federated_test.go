package sandbox

import (
	"context"
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/nhs-tre/tre/dp"
	"github.com/nhs-tre/tre/job"
	"github.com/nhs-tre/tre/queries"
	"github.com/nhs-tre/tre/synth"
)

// fedBMI is a federated query: patients, mean and total of their (latest
// recorded, clamped) BMI by sex, a public domain. %s is where the exact
// query leaves out the opted-out patients, as the release snapshot does.
const fedBMI = `WITH bmi AS (
  SELECT patient_id, max(numeric_value) AS bmi FROM clinical_events WHERE snomed_code = '60621009' %s GROUP BY patient_id)
SELECT p.sex, count(*) AS n, avg(greatest(12, least(70, b.bmi))) AS mean_bmi, sum(greatest(12, least(70, b.bmi))) AS total_bmi
FROM bmi b JOIN patients p ON p.patient_id = b.patient_id GROUP BY p.sex`

// TestFederatedThroughSandbox: three "sites", three synthetic datasets of
// different seeds, each with its own sandbox runner, run the same
// federated part through the real child with the library's noise
// (RunPartial); the broker's side compiles the query as federated and
// combines the parts (dp.Combine). The exact combined value, summed from
// DuckDB's answers on each site's data, must lie inside the released 95%
// interval in at least 95% of the released cells less six standard errors,
// the report must say three sites, and an ordinary Run of a partial job,
// or a partial run of a query that cannot be federated, must fail.
func TestFederatedThroughSandbox(t *testing.T) {
	if testing.Short() {
		t.Skip("generates three synthetic datasets and runs sandbox jobs")
	}
	ctx := context.Background()
	cat := synth.Catalog()
	q := fmt.Sprintf(fedBMI, "")
	p, err := queries.NewParser()
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	plan, err := p.Compile(ctx, cat, q, queries.Options{Federated: true, Epsilon: 1})
	if err != nil {
		t.Fatal(err)
	}
	if err := plan.Spec.ValidateFederated(); err != nil {
		t.Fatal(err)
	}
	exact := map[string][3]float64{} // n, Σbmi, over the three sites
	var runners []*Runner
	for i, seed := range []int64{31, 32, 33} {
		path, r := synthRunner(t, 4000+1000*i, seed)
		for sex, v := range exactRows(t, path, fmt.Sprintf(fedBMI, "AND patient_id NOT IN (SELECT patient_id FROM optouts)"), 1) {
			e := exact[sex]
			exact[sex] = [3]float64{e[0] + v[0], e[1] + v[2]} // n, Σbmi
		}
		runners = append(runners, r)
	}
	j := job.Job{QueryID: 1, SQL: q, SQLHash: queries.SQLHash(q), Epsilon: 1, Partial: true}
	var cov coverage
	for range 5 {
		var parts []*dp.Partial
		for _, r := range runners {
			part, err := r.RunPartial(ctx, j)
			if err != nil {
				t.Fatal(err)
			}
			if !part.OptOut.Applied || len(part.Sandbox.Layers) == 0 {
				t.Errorf("partial result without its opt-out or sandbox report: %+v %+v", part.OptOut, part.Sandbox)
			}
			parts = append(parts, part)
		}
		res, err := dp.Combine(plan.Spec, parts)
		if err != nil {
			t.Fatal(err)
		}
		if res.Report.Sites != 3 {
			t.Errorf("report says %d sites", res.Report.Sites)
		}
		for _, row := range res.Rows {
			e := exact[row[0].Key]
			want := []float64{e[0], e[1] / math.Max(e[0], 1), e[1]}
			for k, c := range row[1:] {
				if c.Suppressed {
					continue
				}
				if !cov.add(*c.CILow, *c.CIHigh, want[k]) {
					t.Logf("%s %s: exact %v outside [%v, %v]", row[0].Key, res.Columns[k+1].Name, want[k], *c.CILow, *c.CIHigh)
				}
			}
		}
	}
	cov.check(t, 20, "combined value")

	if _, err := runners[0].Run(ctx, j); job.Code(err) != job.CodeInvalid {
		t.Errorf("Run of a federated part: %v, want %s", err, job.CodeInvalid)
	}
	plain := j
	plain.Partial = false
	if _, err := runners[0].RunPartial(ctx, plain); job.Code(err) != job.CodeInvalid {
		t.Errorf("RunPartial of an ordinary job: %v, want %s", err, job.CodeInvalid)
	}
	const quantile = `WITH bmi AS (
  SELECT patient_id, max(numeric_value) AS bmi FROM clinical_events WHERE snomed_code = '60621009' GROUP BY patient_id)
SELECT p.sex, median(greatest(12, least(70, b.bmi))) AS m FROM bmi b JOIN patients p ON p.patient_id = b.patient_id GROUP BY p.sex`
	_, err = runners[0].RunPartial(ctx, job.Job{QueryID: 2, SQL: quantile, SQLHash: queries.SQLHash(quantile), Epsilon: 1, Partial: true})
	if job.Code(err) != job.CodeRefused || !strings.Contains(job.Message(err), "quantile tree") {
		t.Errorf("a federated median: %v, want %s naming the quantile tree", err, job.CodeRefused)
	}
}
