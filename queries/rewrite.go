package queries

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/nhs-tre/tre/dp"
)

// rewrite emits the contribution-bounded query. Its stages:
//
//	__tre_base  one row per joined input row: the patient, the group keys and
//	            each aggregate's argument, over the opt-out-filtered views;
//	__tre_rows  arguments clamped to their bounds; rows of each (patient,
//	            group) ranked by a keyed hash of (seed, patient, group, values),
//	            so which rows survive depends on that patient's rows alone;
//	__tre_pg    the first C rows of each (patient, group) aggregated into the
//	            patient's contribution to the group;
//	__tre_kept  the first k groups of each patient, ranked by a keyed hash of
//	            (seed, patient, group);
//	result      per group: distinct patients, Σ contributions, Σ squares and
//	            the two largest contributions, plus the rows dropped.
func (c *compiler) rewrite(q *query, spec dp.Spec) string {
	var b strings.Builder
	seed := strconv.FormatUint(c.seed, 10) + "::UBIGINT"
	gcols := make([]string, len(q.groups))
	for i := range q.groups {
		gcols[i] = fmt.Sprintf(`"__g%d"`, i)
	}
	acol := func(prefix string, j int) string { return fmt.Sprintf(`"__%s%d"`, prefix, j) }

	b.WriteString("WITH ")
	for _, w := range c.with {
		b.WriteString(w)
		b.WriteString(",\n")
	}
	// Stage 1: base rows.
	b.WriteString(`"__tre_base" AS (SELECT ` + q.pid + ` AS "__pid"`)
	for i, g := range q.groups {
		b.WriteString(", " + g.sql + " AS " + gcols[i])
	}
	var hashArgs []string
	for j, a := range q.aggs {
		if a.arg != "" {
			b.WriteString(", " + a.arg + " AS " + acol("a", j))
			hashArgs = append(hashArgs, acol("a", j))
		}
	}
	b.WriteString(" FROM " + q.from)
	if q.where != "" {
		b.WriteString(" WHERE " + q.where)
	}
	b.WriteString("),\n")

	// Stage 2: clamp and rank rows within (patient, group).
	part := strings.Join(append([]string{`"__pid"`}, gcols...), ", ")
	b.WriteString(`"__tre_rows" AS (SELECT ` + part)
	for j, a := range q.aggs {
		if a.arg == "" {
			continue
		}
		col := acol("a", j)
		if a.kind == aggValue {
			lo, hi := sqlDouble(a.spec.Lower), sqlDouble(a.spec.Upper)
			// NULL falls through to ELSE and stays NULL; DuckDB orders NaN
			// above every number, so NaN clamps to the upper bound.
			fmt.Fprintf(&b, ", CASE WHEN %s < %s THEN %s WHEN %s > %s THEN %s ELSE %s END AS %s", col, lo, lo, col, hi, hi, col, col)
		} else {
			b.WriteString(", " + col)
		}
	}
	hash := strings.Join(append(append([]string{seed, `"__pid"`}, gcols...), hashArgs...), ", ")
	fmt.Fprintf(&b, `, row_number() OVER (PARTITION BY %s ORDER BY hash(%s)) AS "__rn" FROM "__tre_base"),`+"\n", part, hash)

	// Stage 3: per (patient, group) contributions from at most C rows.
	b.WriteString(`"__tre_pg" AS (SELECT ` + part + `, count(*) AS "__n"`)
	for j, a := range q.aggs {
		col := acol("a", j)
		switch {
		case a.kind == aggCountRows && a.arg == "":
			fmt.Fprintf(&b, ", CAST(count(*) AS DOUBLE) AS %s", acol("c", j))
		case a.kind == aggCountRows:
			fmt.Fprintf(&b, ", CAST(count(%s) AS DOUBLE) AS %s", col, acol("c", j))
		case a.kind == aggCountPatients && a.arg == "":
			fmt.Fprintf(&b, ", CAST(1 AS DOUBLE) AS %s", acol("c", j))
		case a.kind == aggCountPatients:
			// At most 1 per patient and group: the L∞ of count_patients.
			fmt.Fprintf(&b, ", CAST(coalesce(max(%s), 0) AS DOUBLE) AS %s", col, acol("c", j))
		default:
			fmt.Fprintf(&b, ", CAST(count(%s) AS DOUBLE) AS %s, coalesce(sum(%s), 0) AS %s, coalesce(sum(%s * %s), 0) AS %s",
				col, acol("c", j), col, acol("s", j), col, col, acol("q", j))
		}
	}
	fmt.Fprintf(&b, ` FROM "__tre_rows" WHERE "__rn" <= %d GROUP BY %s),`+"\n", spec.MaxRowsPerGroup, part)

	// Stage 4: at most k groups per patient.
	if len(gcols) > 0 {
		ghash := strings.Join(append([]string{seed, `"__pid"`}, gcols...), ", ")
		fmt.Fprintf(&b, `"__tre_kept" AS (SELECT * FROM (SELECT *, row_number() OVER (PARTITION BY "__pid" ORDER BY hash(%s)) AS "__gr" FROM "__tre_pg") WHERE "__gr" <= %d)`+"\n", ghash, spec.MaxGroupsPerPatient)
	} else {
		b.WriteString(`"__tre_kept" AS (SELECT * FROM "__tre_pg")` + "\n")
	}

	// Stage 5: per-group statistics in the layout the sandbox scans.
	b.WriteString("SELECT ")
	for i, g := range q.groups {
		fmt.Fprintf(&b, "CAST(%s AS VARCHAR) AS %s, ", gcols[i], quoteIdent(g.name))
	}
	b.WriteString(`CAST(count(*) AS BIGINT) AS "__patients"`)
	for j, a := range q.aggs {
		contrib := acol("c", j)
		if a.kind == aggValue {
			contrib = acol("s", j)
		}
		fmt.Fprintf(&b, `, CAST(coalesce(sum(%s), 0) AS DOUBLE) AS "%s__count"`, acol("c", j), escapeName(a.spec.Name))
		if a.kind == aggValue {
			fmt.Fprintf(&b, `, CAST(coalesce(sum(%s), 0) AS DOUBLE) AS "%s__sum", CAST(coalesce(sum(%s), 0) AS DOUBLE) AS "%s__sumsq"`,
				acol("s", j), escapeName(a.spec.Name), acol("q", j), escapeName(a.spec.Name))
		} else {
			fmt.Fprintf(&b, `, CAST(0 AS DOUBLE) AS "%s__sum", CAST(0 AS DOUBLE) AS "%s__sumsq"`, escapeName(a.spec.Name), escapeName(a.spec.Name))
		}
		fmt.Fprintf(&b, `, CAST(coalesce(max(%s, 2)[1], 0) AS DOUBLE) AS "%s__top1", CAST(coalesce(max(%s, 2)[2], 0) AS DOUBLE) AS "%s__top2"`,
			contrib, escapeName(a.spec.Name), contrib, escapeName(a.spec.Name))
	}
	b.WriteString(`, CAST((SELECT count(*) FROM "__tre_base") - (SELECT coalesce(sum("__n"), 0) FROM "__tre_kept") AS BIGINT) AS "__dropped"`)
	b.WriteString(` FROM "__tre_kept"`)
	if len(gcols) > 0 {
		b.WriteString(" GROUP BY " + strings.Join(gcols, ", "))
	}
	return b.String()
}

func escapeName(s string) string { return strings.ReplaceAll(s, `"`, `""`) }

// finishPlan validates the Spec with dp and fills in cost and accuracy,
// both computed by dp so the broker, the reviewer and the sandbox agree.
func finishPlan(p *Plan) error {
	if err := p.Spec.Validate(); err != nil {
		return &Refusal{Construct: "protection parameters", Pos: -1, Message: "refused: " + err.Error()}
	}
	p.Cost = p.Spec.Cost()
	acc, err := p.Spec.Accuracy()
	if err != nil {
		return errors.Join(errors.New("compute expected accuracy"), err)
	}
	p.Accuracy = acc
	return nil
}
