package sandbox

import (
	"context"
	"database/sql"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

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
// or a partial run of a query that cannot be federated, must fail; a
// median with ROLLUP combines, its total released. Then
// the same for quartiles of BMI by sex (fedQuartiles), whose trees the
// sites send whole: the exact quartiles of the union of the three sites'
// values (DuckDB's quantile_cont over the three files attached together)
// must lie inside the released 95% intervals as often.
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
	var paths []string
	for i, seed := range []int64{31, 32, 33} {
		path, r := synthRunner(t, 4000+1000*i, seed)
		// A quantile part draws the library's noise for every node of its
		// trees (584 a tree): a fraction of a second of CPU, far more on
		// a loaded test machine, past the tests' usual 20 s.
		r.cfg.Timeout = 3 * time.Minute
		paths = append(paths, path)
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
	// A median with ROLLUP: the sites' trees of each sex and of the total
	// combine, the total released with the cells (offset test noise, +1e6
	// on every node and statistic: the library's noise on four trees' 70k
	// nodes at three sites is minutes of CPU on a loaded test machine).
	const rollup = `SELECT p.sex, median(greatest(12, least(70, e.numeric_value))) AS m FROM clinical_events e JOIN patients p ON p.patient_id = e.patient_id
WHERE e.snomed_code = '60621009' GROUP BY ROLLUP (p.sex)`
	rplan, err := p.Compile(ctx, cat, rollup, queries.Options{Federated: true, Epsilon: 1})
	if err != nil {
		t.Fatal(err)
	}
	var rparts []*dp.Partial
	for _, r := range runners {
		part, err := r.runPartial(ctx, noiseJob(job.Job{QueryID: 2, SQL: rollup, SQLHash: queries.SQLHash(rollup), Epsilon: 1, Partial: true}, 1e6))
		if err != nil {
			t.Fatalf("a federated median with ROLLUP: %v", err)
		}
		rparts = append(rparts, part)
	}
	rres, err := dp.Combine(rplan.Spec, rparts)
	if err != nil {
		t.Fatal(err)
	}
	if last := rres.Rows[len(rres.Rows)-1]; last[0].Key != dp.TotalKey || last[1].Value == nil || *last[1].Value < 12 || *last[1].Value > 70 {
		t.Errorf("ROLLUP median over three sites: total row %+v, want a released median in [12, 70]", last)
	}

	fedQuartilesThroughSandbox(t, p, runners, paths)
	fedMonthlyThroughSandbox(t, p, runners, paths)
}

// fedMonthly is a federated query grouping by month: patients with an
// HbA1c reading per month from May 2024 to February 2025. Its months come
// from the WHERE bounds (the last two, after the synthetic extract ends,
// are empty at every site) and each patient counts once per month (k = 10
// months, C = 1), so the bounded values are the exact ones. %s as in
// fedBMI; %s is the month key: the query's, or, in the exact query, its
// text as DuckDB writes the released key.
const fedMonthly = `SELECT %s AS month, count(DISTINCT e.patient_id) AS patients
FROM clinical_events e
WHERE e.snomed_code = '999791000000106' AND e.date >= DATE '2024-05-01' AND e.date < DATE '2025-03-01' %s
GROUP BY month`

// fedMonthlyThroughSandbox runs fedMonthly as a federated part at the
// three sites with the library's noise, five times, and checks the
// combined table: every month of the range, and the exact sum over the
// sites (keyed by DuckDB's own text of the month, so a derived key written
// otherwise would miss its value) inside the released 95% intervals as in
// TestFederatedThroughSandbox.
func fedMonthlyThroughSandbox(t *testing.T, p *queries.Parser, runners []*Runner, paths []string) {
	t.Helper()
	ctx := context.Background()
	const month = "date_trunc('month', e.date)"
	q := fmt.Sprintf(fedMonthly, month, "")
	plan, err := p.Compile(ctx, synth.Catalog(), q, queries.Options{Federated: true, Epsilon: 1})
	if err != nil {
		t.Fatal(err)
	}
	if got := plan.Spec.Groups[0].Domain; len(got) != 10 || got[0] != "2024-05-01" || got[9] != "2025-02-01" {
		t.Fatalf("months %v, want 2024-05-01 … 2025-02-01", got)
	}
	exact := map[string]float64{}
	for _, path := range paths {
		for key, v := range exactRows(t, path, fmt.Sprintf(fedMonthly, "CAST(CAST("+month+" AS DATE) AS VARCHAR)",
			"AND e.patient_id NOT IN (SELECT patient_id FROM optouts)"), 1) {
			exact[key] += v[0]
		}
	}
	j := job.Job{QueryID: 4, SQL: q, SQLHash: queries.SQLHash(q), Epsilon: 1, Partial: true}
	var cov coverage
	for range 5 {
		parts := make([]*dp.Partial, len(runners))
		for i, r := range runners {
			if parts[i], err = r.RunPartial(ctx, j); err != nil {
				t.Fatal(err)
			}
		}
		res, err := dp.Combine(plan.Spec, parts)
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Rows) != 10 {
			t.Fatalf("%d months released, want the 10 of the range", len(res.Rows))
		}
		for _, row := range res.Rows {
			if c := row[1]; !c.Suppressed && !cov.add(*c.CILow, *c.CIHigh, exact[row[0].Key]) {
				t.Logf("%s: exact %v outside [%v, %v]", row[0].Key, exact[row[0].Key], *c.CILow, *c.CIHigh)
			}
		}
	}
	cov.check(t, 30, "monthly patient count")
}

// fedQuartiles is a federated query: patients and BMI quartiles by sex.
const fedQuartiles = `WITH bmi AS (
  SELECT patient_id, max(numeric_value) AS bmi FROM clinical_events WHERE snomed_code = '60621009' GROUP BY patient_id)
SELECT p.sex, count(*) AS n, quantile_cont(greatest(12, least(70, b.bmi)), 0.25) AS q1, median(greatest(12, least(70, b.bmi))) AS md,
  quantile_cont(greatest(12, least(70, b.bmi)), 0.75) AS q3
FROM bmi b JOIN patients p ON p.patient_id = b.patient_id GROUP BY p.sex`

// fedQuartilesThroughSandbox runs fedQuartiles as a federated part at the
// three sites with the library's noise, combines the parts and checks the
// released quartiles against the exact quartiles of the union of the
// sites' values, four times (36 cells): inside the 95% intervals in at
// least 95% of them less six standard errors (78%), which a sound interval
// misses with probability below 1e-6 for independent cells.
func fedQuartilesThroughSandbox(t *testing.T, p *queries.Parser, runners []*Runner, paths []string) {
	t.Helper()
	ctx := context.Background()
	q := fedQuartiles
	plan, err := p.Compile(ctx, synth.Catalog(), q, queries.Options{Federated: true, Epsilon: 1})
	if err != nil {
		t.Fatal(err)
	}
	if err := plan.Spec.ValidateFederated(); err != nil {
		t.Fatalf("federated quartiles refused: %v", err)
	}
	exact := exactUnionQuartiles(t, paths)
	j := job.Job{QueryID: 3, SQL: q, SQLHash: queries.SQLHash(q), Epsilon: 1, Partial: true}
	var cov coverage
	for range 4 {
		var parts []*dp.Partial
		for _, r := range runners {
			part, err := r.RunPartial(ctx, j)
			if err != nil {
				t.Fatal(err)
			}
			parts = append(parts, part)
		}
		res, err := dp.Combine(plan.Spec, parts)
		if err != nil {
			t.Fatal(err)
		}
		for _, row := range res.Rows {
			want, ok := exact[row[0].Key]
			for k, c := range row[2:] {
				if c.Suppressed {
					continue
				}
				if !ok {
					t.Fatalf("sex %q released with no value at any site", row[0].Key)
				}
				if *c.Value < 12 || *c.Value > 70 || *c.CILow > *c.Value || *c.Value > *c.CIHigh {
					t.Errorf("%s %s: %v [%v, %v] outside the bounds or its interval", row[0].Key, res.Columns[k+2].Name, *c.Value, *c.CILow, *c.CIHigh)
				}
				if !cov.add(*c.CILow, *c.CIHigh, want[k]) {
					t.Logf("%s %s: exact %v outside [%v, %v]", row[0].Key, res.Columns[k+2].Name, want[k], *c.CILow, *c.CIHigh)
				}
			}
		}
	}
	cov.check(t, 20, "quartile of the union")
}

// exactUnionQuartiles is DuckDB's exact answer of fedQuartiles over the
// union of the sites' bounded per-patient values (opted-out patients left
// out, as each release snapshot leaves them out): the files attached
// read-only to one in-memory database.
func exactUnionQuartiles(t *testing.T, paths []string) map[string][]float64 {
	t.Helper()
	db, err := sql.Open("duckdb", "")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var union []string
	for i, path := range paths {
		if _, err := db.Exec(fmt.Sprintf("ATTACH '%s' AS site%d (READ_ONLY)", path, i)); err != nil {
			t.Fatal(err)
		}
		union = append(union, fmt.Sprintf(`SELECT p.sex, greatest(12, least(70, b.bmi)) AS v FROM (
  SELECT patient_id, max(numeric_value) AS bmi FROM site%[1]d.clinical_events WHERE snomed_code = '60621009'
  AND patient_id NOT IN (SELECT patient_id FROM site%[1]d.optouts) GROUP BY patient_id) b
JOIN site%[1]d.patients p ON p.patient_id = b.patient_id`, i))
	}
	rows, err := db.Query(`SELECT sex, quantile_cont(v, 0.25), median(v), quantile_cont(v, 0.75) FROM (` +
		strings.Join(union, " UNION ALL ") + `) WHERE sex IS NOT NULL GROUP BY sex`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string][]float64{}
	for rows.Next() {
		var sex string
		v := make([]float64, 3)
		if err := rows.Scan(&sex, &v[0], &v[1], &v[2]); err != nil {
			t.Fatal(err)
		}
		out[sex] = v
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}
