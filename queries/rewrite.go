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
//	__tre_input  one row per joined input row of a patient: the patient,
//	             the group keys and each aggregate's argument (opted-out
//	             patients are not in the release snapshot at all);
//	__tre_base   the same rows, each argument clamped to its bounds;
//	__tre_all    every (patient, group) with all its rows aggregated;
//	__tre_over   the (patient, group) pairs with more than C rows, recomputed
//	             from the first C rows ranked by a keyed hash of (seed,
//	             patient, group, values), so which rows survive depends on
//	             that patient's rows alone;
//	__tre_pg     each patient's contribution to each group from at most C rows;
//	__tre_many   patients in more than k groups;
//	__tre_kept   every group of the other patients, and the first k groups of
//	             those, ranked by a keyed hash of (seed, patient, group);
//	result       per group: distinct patients, Σ contributions, Σ squares and
//	             the two largest contributions, plus the rows dropped.
//
// When every aggregate is count(*) or the patient count, __tre_all and
// __tre_over collapse into __tre_pg: a pair keeps min(n, C) rows whichever
// rows they are. Group keys proven to be functions of the patient stay out
// of the pair key, and __tre_many is left out where no patient can be in
// more than k groups (query.groupBound). Ranking only the pairs and
// patients above the bounds keeps the window functions (sorts) off the
// common case, where nobody exceeds them. When each patient has at most one
// input row the stages are skipped: proven at compile time
// (q.onePerPatient) the query is just __tre_base grouped; checked at run
// time (__tre_dup) a guarded direct branch is added and the stages see no
// rows.
func (c *compiler) rewrite(q *query, spec dp.Spec) string {
	var b strings.Builder
	seed := strconv.FormatUint(c.seed, 10) + "::UBIGINT"
	gcols := make([]string, len(q.groups))
	for i := range q.groups {
		gcols[i] = fmt.Sprintf(`"__g%d"`, i)
	}
	acol := func(prefix string, j int) string { return fmt.Sprintf(`"__%s%d"`, prefix, j) }
	key := strings.Join(append([]string{`"__pid"`}, gcols...), ", ")
	// The pair key: the patient and the group keys that may differ between
	// a patient's rows. A key proven to be a function of the patient
	// (groupKey.ofPatient) adds no pairs, so it is carried by any_value(),
	// which over one patient's rows can only be that patient's one value:
	// the same pairs with a narrower hash key.
	pairCols := []string{`"__pid"`}
	pairSel := []string{`"__pid"`}
	for i, g := range q.groups {
		if c.shortcuts && g.ofPatient {
			pairSel = append(pairSel, "any_value("+gcols[i]+") AS "+gcols[i])
			continue
		}
		pairCols = append(pairCols, gcols[i])
		pairSel = append(pairSel, gcols[i])
	}
	pkey, psel := strings.Join(pairCols, ", "), strings.Join(pairSel, ", ")
	// Pair equality that treats NULL group keys as equal.
	on := func(l, r string) string {
		parts := []string{l + `."__pid" = ` + r + `."__pid"`}
		for _, g := range pairCols[1:] {
			parts = append(parts, l+"."+g+" IS NOT DISTINCT FROM "+r+"."+g)
		}
		return strings.Join(parts, " AND ")
	}

	b.WriteString("WITH ")
	for _, w := range c.with {
		b.WriteString(w)
		b.WriteString(",\n")
	}
	// Stage 1: base rows, arguments clamped. NULL falls through to ELSE and
	// stays NULL; DuckDB orders NaN above every number, so NaN clamps to the
	// upper bound.
	b.WriteString(`"__tre_input" AS (SELECT ` + q.pid + ` AS "__pid"`)
	for i, g := range q.groups {
		b.WriteString(", " + g.sql + " AS " + gcols[i])
	}
	var args []string
	for j, a := range q.aggs {
		if a.arg != "" {
			b.WriteString(", " + a.arg + " AS " + acol("a", j))
			args = append(args, acol("a", j))
		}
	}
	b.WriteString(" FROM " + q.from + " WHERE ")
	if q.where != "" {
		b.WriteString("(" + q.where + ") AND ")
	}
	// The release snapshot holds no row without a patient id and the root
	// relation is never on the right of a LEFT JOIN, so this removes
	// nothing; it keeps that so if either ever changed.
	b.WriteString(q.pid + " IS NOT NULL),\n")
	// Proven one row per patient (onePerPatient): each row is a patient's whole
	// contribution, within any k and C, so the rows are grouped directly
	// with nothing to check, rank or drop. __tre_base is then read once and
	// stays inlined rather than materialised.
	direct := c.shortcuts && q.onePerPatient
	guarded := !direct && c.shortcuts && q.maybeOnePerPatient
	counts := c.shortcuts && countsOnly(q)
	// __tre_base is materialised only when more than one stage reads it.
	if direct || (counts && !guarded) {
		b.WriteString(`"__tre_base" AS (SELECT ` + key)
	} else {
		b.WriteString(`"__tre_base" AS MATERIALIZED (SELECT ` + key)
	}
	for j, a := range q.aggs {
		if a.arg == "" {
			continue
		}
		col := acol("a", j)
		if a.kind == aggValue {
			lo, hi := sqlDouble(a.spec.Lower), sqlDouble(a.spec.Upper)
			// A mean, variance or standard deviation is computed from
			// values centred on the bounds' midpoint (dp.AggStats).
			centre := ""
			if a.spec.Kind.Centred() {
				centre = " - " + sqlDouble(a.spec.Midpoint())
			}
			fmt.Fprintf(&b, ", CASE WHEN %s < %s THEN %s WHEN %s > %s THEN %s ELSE %s END%s AS %s", col, lo, lo, col, hi, hi, col, centre, col)
		} else {
			b.WriteString(", " + col)
		}
	}
	if direct {
		b.WriteString(` FROM "__tre_input")` + "\n")
		c.fastSelect(&b, q, gcols, false)
		return b.String()
	}
	b.WriteString(` FROM "__tre_input"),` + "\n")

	// Per (patient, group) statistics over a set of rows.
	stats := func() string {
		var s strings.Builder
		s.WriteString(`count(*) AS "__n"`)
		for j, a := range q.aggs {
			col := acol("a", j)
			switch {
			case a.kind == aggCountRows && a.arg == "":
				fmt.Fprintf(&s, ", CAST(count(*) AS DOUBLE) AS %s", acol("c", j))
			case a.kind == aggCountRows:
				fmt.Fprintf(&s, ", CAST(count(%s) AS DOUBLE) AS %s", col, acol("c", j))
			case a.kind == aggCountPatients && a.arg == "":
				fmt.Fprintf(&s, ", CAST(1 AS DOUBLE) AS %s", acol("c", j))
			case a.kind == aggCountPatients:
				// At most 1 per patient and group: the L∞ of count_patients.
				fmt.Fprintf(&s, ", CAST(coalesce(max(%s), 0) AS DOUBLE) AS %s", col, acol("c", j))
			default:
				fmt.Fprintf(&s, ", CAST(count(%s) AS DOUBLE) AS %s, CAST(coalesce(sum(%s), 0) AS DOUBLE) AS %s", col, acol("c", j), col, acol("s", j))
				if a.spec.Kind.UsesSumSq() {
					fmt.Fprintf(&s, ", CAST(coalesce(sum(%s * %s), 0) AS DOUBLE) AS %s", col, col, acol("q", j))
				}
			}
		}
		return s.String()
	}
	statCols := []string{`"__n"`}
	for j, a := range q.aggs {
		statCols = append(statCols, acol("c", j))
		if a.kind == aggValue {
			statCols = append(statCols, acol("s", j))
		}
		if a.kind == aggValue && a.spec.Kind.UsesSumSq() {
			statCols = append(statCols, acol("q", j))
		}
	}
	pgCols := key + ", " + strings.Join(statCols, ", ")

	// The shortcut: when no patient has more than one input row (a
	// demographics table, per-patient CTEs), every patient is in one group
	// with one row, within any k and C, so grouping the rows directly gives
	// exactly the bounded statistics. Checking it costs one distinct count
	// on the patient id; the per-(patient, group) pipeline below then sees
	// no rows. Otherwise the shortcut sees none. It is only worth checking
	// when every patient relation is meant to hold one row per patient: with
	// an event table in FROM the check would cost and always fail.
	slowFilter := ""
	if guarded {
		b.WriteString(`"__tre_dup" AS MATERIALIZED (SELECT count("__pid") <> count(DISTINCT "__pid") OR count("__pid") <> count(*) AS "__d" FROM "__tre_base"),` + "\n")
		slowFilter = ` WHERE (SELECT "__d" FROM "__tre_dup")`
	}

	// Stage 2: all rows per (patient, group); the pairs above C recomputed
	// from their first C rows.
	//
	// When every aggregate is count(*) or the patient count, which C rows a
	// pair keeps cannot change its statistics: it keeps min(n, C) rows and
	// counts one patient. One grouping then gives the bounded pairs, with
	// __nall keeping the rows before the bound for the dropped-row count.
	allRows := `(SELECT coalesce(sum("__n"), 0) FROM "__tre_all")`
	if counts {
		c := spec.MaxRowsPerGroup
		fmt.Fprintf(&b, `"__tre_pg" AS MATERIALIZED (SELECT %s, count(*) AS "__nall", least(count(*), %d) AS "__n"`, psel, c)
		for j, a := range q.aggs {
			if a.kind == aggCountRows {
				fmt.Fprintf(&b, ", CAST(least(count(*), %d) AS DOUBLE) AS %s", c, acol("c", j))
			} else {
				fmt.Fprintf(&b, ", CAST(1 AS DOUBLE) AS %s", acol("c", j))
			}
		}
		fmt.Fprintf(&b, ` FROM "__tre_base"%s GROUP BY %s),`+"\n", slowFilter, pkey)
		allRows = `(SELECT coalesce(sum("__nall"), 0) FROM "__tre_pg")`
	} else {
		fmt.Fprintf(&b, `"__tre_all" AS MATERIALIZED (SELECT %s, %s FROM "__tre_base"%s GROUP BY %s),`+"\n", psel, stats(), slowFilter, pkey)
		hash := strings.Join(append(append([]string{seed, `"__pid"`}, gcols...), args...), ", ")
		fmt.Fprintf(&b, `"__tre_over" AS (SELECT %s, %s FROM (SELECT r.*, row_number() OVER (PARTITION BY %s ORDER BY hash(%s)) AS "__rn" FROM "__tre_base" AS r SEMI JOIN (SELECT %s FROM "__tre_all" WHERE "__n" > %d) AS o ON %s) WHERE "__rn" <= %d GROUP BY %s),`+"\n",
			psel, stats(), pkey, hash, pkey, spec.MaxRowsPerGroup, on("r", "o"), spec.MaxRowsPerGroup, pkey)
		fmt.Fprintf(&b, `"__tre_pg" AS MATERIALIZED (SELECT %s FROM "__tre_all" WHERE "__n" <= %d UNION ALL SELECT %s FROM "__tre_over"),`+"\n",
			pgCols, spec.MaxRowsPerGroup, pgCols)
	}

	// Stage 3: at most k groups per patient. With every group key carried a
	// patient has one pair, and where the query proves no patient's rows
	// fall in more than k groups (query.groupBound, e.g. months of a year
	// the WHERE bounds) nobody is over k either.
	withinK := c.shortcuts && q.groupBound > 0 && q.groupBound <= spec.MaxGroupsPerPatient
	if len(pairCols) > 1 && !withinK {
		k := spec.MaxGroupsPerPatient
		ghash := strings.Join(append([]string{seed, `"__pid"`}, gcols...), ", ")
		fmt.Fprintf(&b, `"__tre_many" AS (SELECT "__pid" FROM "__tre_pg" GROUP BY "__pid" HAVING count(*) > %d),`+"\n", k)
		fmt.Fprintf(&b, `"__tre_kept" AS (SELECT %s FROM "__tre_pg" ANTI JOIN "__tre_many" USING ("__pid") UNION ALL SELECT %s FROM (SELECT p.*, row_number() OVER (PARTITION BY "__pid" ORDER BY hash(%s)) AS "__gr" FROM "__tre_pg" AS p SEMI JOIN "__tre_many" USING ("__pid")) WHERE "__gr" <= %d)`+"\n",
			pgCols, pgCols, ghash, k)
	} else {
		b.WriteString(`"__tre_kept" AS (SELECT * FROM "__tre_pg")` + "\n")
	}

	if guarded {
		c.fastSelect(&b, q, gcols, true)
		b.WriteString("\nUNION ALL\n")
	}
	// Stage 4: per-group statistics in the layout the sandbox scans.
	b.WriteString("SELECT ")
	for i, g := range q.groups {
		fmt.Fprintf(&b, "CAST(%s AS VARCHAR) AS %s, ", gcols[i], quoteIdent(g.name))
	}
	b.WriteString(`CAST(count(*) AS BIGINT) AS "__patients"`)
	for j, a := range q.aggs {
		name := escapeName(a.spec.Name)
		contrib := acol("c", j)
		if a.kind == aggValue {
			contrib = uncentred(a, acol("s", j), acol("c", j))
		}
		fmt.Fprintf(&b, `, CAST(coalesce(sum(%s), 0) AS DOUBLE) AS "%s__count"`, acol("c", j), name)
		sum, sumsq := "0", "0"
		if a.kind == aggValue {
			sum = fmt.Sprintf("coalesce(sum(%s), 0)", acol("s", j))
		}
		if a.kind == aggValue && a.spec.Kind.UsesSumSq() {
			sumsq = fmt.Sprintf("coalesce(sum(%s), 0)", acol("q", j))
		}
		fmt.Fprintf(&b, `, CAST(%s AS DOUBLE) AS "%s__sum", CAST(%s AS DOUBLE) AS "%s__sumsq"`, sum, name, sumsq, name)
		writeTop(&b, a, contrib, name)
	}
	// Rows dropped: all rows less those kept, summed over the groups by a
	// window on this stage's own rows, so __tre_kept is read once and
	// streams into this aggregate instead of being materialised for a second
	// reader (~8% of a bounded query at 10M patients).
	b.WriteString(`, CAST(` + allRows + ` - coalesce(sum(sum("__n")) OVER (), 0) AS BIGINT) AS "__dropped"`)
	b.WriteString(` FROM "__tre_kept"`)
	if len(gcols) > 0 {
		b.WriteString(" GROUP BY " + strings.Join(gcols, ", "))
	}
	if guarded && len(gcols) == 0 {
		// Without GROUP BY each branch returns one row; keep one.
		b.WriteString(` HAVING (SELECT "__d" FROM "__tre_dup")`)
	}
	return b.String()
}

// fastSelect is the shortcut branch: each input row is one patient's whole
// contribution, so per-row values are per-patient contributions. guarded
// makes it return no rows unless the run-time check found no patient with
// two input rows; unguarded (proven at compile time) it is the whole query.
func (c *compiler) fastSelect(b *strings.Builder, q *query, gcols []string, guarded bool) {
	b.WriteString("SELECT ")
	for i, g := range q.groups {
		fmt.Fprintf(b, "CAST(%s AS VARCHAR) AS %s, ", gcols[i], quoteIdent(g.name))
	}
	b.WriteString(`CAST(count(*) AS BIGINT) AS "__patients"`)
	for j, a := range q.aggs {
		col := fmt.Sprintf(`"__a%d"`, j)
		name := escapeName(a.spec.Name)
		contrib := "1"
		if a.arg != "" {
			contrib = "coalesce(" + uncentred(a, col, "1") + ", 0)"
		}
		if a.kind == aggValue {
			sumsq := "0"
			if a.spec.Kind.UsesSumSq() {
				sumsq = fmt.Sprintf("coalesce(sum(%s * %s), 0)", col, col)
			}
			fmt.Fprintf(b, `, CAST(count(%s) AS DOUBLE) AS "%s__count", CAST(coalesce(sum(%s), 0) AS DOUBLE) AS "%s__sum", CAST(%s AS DOUBLE) AS "%s__sumsq"`,
				col, name, col, name, sumsq, name)
		} else {
			fmt.Fprintf(b, `, CAST(coalesce(sum(%s), 0) AS DOUBLE) AS "%s__count", CAST(0 AS DOUBLE) AS "%s__sum", CAST(0 AS DOUBLE) AS "%s__sumsq"`,
				contrib, name, name, name)
		}
		writeTop(b, a, contrib, name)
	}
	b.WriteString(`, CAST(0 AS BIGINT) AS "__dropped" FROM "__tre_base"`)
	if guarded {
		b.WriteString(` WHERE NOT (SELECT "__d" FROM "__tre_dup")`)
	}
	if len(gcols) > 0 {
		b.WriteString(" GROUP BY " + strings.Join(gcols, ", "))
	} else if guarded {
		b.WriteString(` HAVING NOT (SELECT "__d" FROM "__tre_dup")`)
	}
}

// countsOnly reports whether every aggregate is count(*) or the patient
// count, whose bounded statistics do not depend on which rows are kept.
func countsOnly(q *query) bool {
	for _, a := range q.aggs {
		if a.arg != "" || a.kind == aggValue {
			return false
		}
	}
	return true
}

// uncentred is a patient's contribution to an aggregate's sum, sum, over
// count values: as it is, or for a centred aggregate (dp.AggKind.Centred)
// its sum of centred values plus count times the midpoint. The dominance
// rules judge uncentred contributions.
func uncentred(a aggregate, sum, count string) string {
	if !a.spec.Kind.Centred() {
		return sum
	}
	return "(" + sum + " + " + sqlDouble(a.spec.Midpoint()) + " * " + count + ")"
}

// writeTop writes the two largest per-patient contributions, contrib, of
// an aggregate that dp judges by the dominance rules (UsesTop: sums and
// means), and 0 for the others, which nothing reads: the top-2 aggregate
// costs about as much as a sum.
func writeTop(b *strings.Builder, a aggregate, contrib, name string) {
	if !a.spec.Kind.UsesTop() {
		fmt.Fprintf(b, `, CAST(0 AS DOUBLE) AS "%s__top1", CAST(0 AS DOUBLE) AS "%s__top2"`, name, name)
		return
	}
	fmt.Fprintf(b, `, CAST(coalesce(max(%s, 2)[1], 0) AS DOUBLE) AS "%s__top1", CAST(coalesce(max(%s, 2)[2], 0) AS DOUBLE) AS "%s__top2"`,
		contrib, name, contrib, name)
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
