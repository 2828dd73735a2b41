package bench

import (
	"context"
	"fmt"
	"strings"
)

// statPair is a statistic measured side by side with the query it costs
// against: the same rows, groups and bounds, one aggregate swapped.
type statPair struct {
	Name      string
	Stat      string // the statistic's query
	Base      string // the baseline query
	StatLabel string
	BaseLabel string
	// Target is the most Stat may cost as a multiple of Base (issue 19).
	Target float64
}

// statPairs are issue 19's performance targets: a median by group against
// the same query with avg, on a per-patient CTE (each patient one value)
// and on an event table (the bounding stages carry each pair's values),
// and a ROLLUP's cells and totals against the plain GROUP BY.
var statPairs = []statPair{
	{
		Name: "median by sex, per-patient BMI", StatLabel: "median", BaseLabel: "avg", Target: 2,
		Stat: pairBMI("median"), Base: pairBMI("avg"),
	},
	{
		Name: "median by region, HbA1c readings", StatLabel: "median", BaseLabel: "avg", Target: 2,
		Stat: pairHbA1c("median"), Base: pairHbA1c("avg"),
	},
	{
		// Totals: the bounding stages are the plain query's; only the
		// last aggregation groups by GROUPING SETS, and the distinct
		// patient count of a total (docs/sql.md, "Totals").
		Name: "ROLLUP (sex, region) against GROUP BY sex, region, HbA1c readings", StatLabel: "ROLLUP", BaseLabel: "GROUP BY", Target: 1.5,
		Stat: pairRollup("ROLLUP (p.sex, p.region)"), Base: pairRollup("p.sex, p.region"),
	},
}

func pairRollup(groupBy string) string {
	return `SELECT p.sex, p.region, count(*) AS readings, count(DISTINCT p.patient_id) AS patients,
  avg(greatest(20, least(150, e.numeric_value))) AS hba1c
FROM clinical_events e JOIN patients p ON p.patient_id = e.patient_id
WHERE e.snomed_code = '999791000000106' GROUP BY ` + groupBy
}

func pairBMI(agg string) string {
	return `WITH bmi AS (SELECT patient_id, arg_max(numeric_value, date) AS bmi FROM clinical_events
  WHERE snomed_code = '60621009' GROUP BY patient_id)
SELECT p.sex, count(*) AS patients, ` + agg + `(greatest(12, least(70, b.bmi))) AS bmi
FROM bmi b JOIN patients p ON p.patient_id = b.patient_id GROUP BY p.sex`
}

func pairHbA1c(agg string) string {
	return `SELECT p.region, count(*) AS readings, ` + agg + `(greatest(20, least(150, e.numeric_value))) AS hba1c
FROM clinical_events e JOIN patients p ON p.patient_id = e.patient_id
WHERE e.snomed_code = '999791000000106' GROUP BY p.region`
}

// pairResult is one pair measured: warm pipeline runs of each, taken in
// turn so that both see the same load on the machine.
type pairResult struct {
	statPair
	Stat, Base       sample
	StatCPU, BaseCPU sample
}

// measurePairs runs each pair's two queries alternately through the warm
// pipeline (compile, rewritten SQL, dp.Protect), Warmup + Reps times each.
func (m *harness) measurePairs(ctx context.Context, p *benchProgress, pipe *Pipeline) ([]pairResult, error) {
	var out []pairResult
	for _, sp := range statPairs {
		r := pairResult{statPair: sp}
		p.stage(sp.Name)
		for i := range m.Warmup + m.Reps {
			for _, q := range []struct {
				sql       string
				wall, cpu *sample
			}{{sp.Stat, &r.Stat, &r.StatCPU}, {sp.Base, &r.Base, &r.BaseCPU}} {
				cpu := cpuTime()
				t, err := pipe.Run(ctx, q.sql, 0)
				c := cpuTime() - cpu
				if err != nil {
					return nil, fmt.Errorf("%s: %w", sp.Name, err)
				}
				if i >= m.Warmup {
					q.wall.add(t.Total())
					q.cpu.add(c)
				}
			}
			p.step()
		}
		out = append(out, r)
	}
	return out, nil
}

// pairsMarkdown renders the pairs' section of the report.
func pairsMarkdown(pairs []pairResult) string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	w("### Statistics against their baselines (issue 19)\n\n")
	w("Warm pipeline (compile, rewritten SQL, dp.Protect), the two queries of a pair run alternately; the same rows, groups and bounds, one aggregate swapped.\n\n")
	w("| pair | statistic | baseline | ratio | CPU ratio | target | met |\n|---|---|---|---|---|---|---|\n")
	for _, r := range pairs {
		met := "yes"
		if float64(r.Stat.median()) > r.Target*float64(r.Base.median()) {
			met = "**no**"
		}
		w("| %s | %s %s | %s %s | %s | %s | ≤ %.1f× | %s |\n", r.Name, r.StatLabel, r.Stat.spread(), r.BaseLabel, r.Base.spread(),
			ratio(r.Stat, r.Base), ratio(r.StatCPU, r.BaseCPU), r.Target, met)
	}
	w("\n")
	return b.String()
}
