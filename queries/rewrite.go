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
// When every aggregate is count(*) or a patient count, __tre_all and
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
	r := c.newRewriter(q, spec)
	r.input()
	if r.base() {
		r.withHistograms(`"__tre_base"`, func() { c.fastSelect(&r.b, q, r.gcols, false) })
		return r.b.String()
	}
	r.dupCheck()
	r.pairs()
	r.kept()
	r.withHistograms(`"__tre_kept"`, func() {
		if r.guarded {
			c.fastSelect(&r.b, q, r.gcols, true)
			r.b.WriteString("\nUNION ALL\n")
		}
		r.result()
	})
	return r.b.String()
}

// rewriter is one rewrite in progress: the SQL written so far and the
// names and choices its stages share.
type rewriter struct {
	c    *compiler
	q    *query
	spec dp.Spec
	b    strings.Builder
	seed string // the row- and group-ranking hash's key, as SQL

	gcols []string // group key columns
	key   string   // "__pid" and every group key column
	// late is the late join's plan (late.go), nil without one; baseKey is
	// "__pid" and the group key columns the stages before it carry (all of
	// them without a late join).
	late    *lateJoin
	baseKey string
	// hashCols are the row-ranking hash's key columns: the patient and the
	// group keys that are not functions of the patient.
	hashCols []string
	// pairCols is the pair key: the patient and the group keys that may
	// differ between a patient's rows; pkey lists them and psel selects
	// them (and the other group keys through any_value).
	pairCols   []string
	pkey, psel string
	// hashArgs are the argument columns the row-ranking hash reads: all
	// but the NOT NULL indicators of the patient's own id (aggregate.rootPU),
	// 1 on every row, which the shortcuts leave out.
	hashArgs []string
	statCols []string // per-pair statistics (stats)
	pgCols   string   // key and statCols

	// trees lists, per quantile tree, its first aggregate (treeOwners).
	trees []int
	// direct: proven one row per patient, no bounding stages; guarded: a
	// run-time check (__tre_dup) chooses between the direct branch and the
	// stages; counts: every aggregate is a count, so pairs need no ranking.
	direct, guarded, counts bool
	// slowFilter makes the stages see no rows when the guarded direct
	// branch answers; allRows counts the rows before the bounds.
	slowFilter, allRows string
}

// acol names aggregate j's column of a kind: a (argument), c (count), s
// (sum), q (sum of squares), l (a quantile's list of leaves).
func acol(prefix string, j int) string { return fmt.Sprintf(`"__%s%d"`, prefix, j) }

// newRewriter names the columns and takes the shortcuts' decisions.
func (c *compiler) newRewriter(q *query, spec dp.Spec) *rewriter {
	r := &rewriter{c: c, q: q, spec: spec}
	r.seed = strconv.FormatUint(c.seed, 10) + "::UBIGINT"
	r.gcols = make([]string, len(q.groups))
	for i := range q.groups {
		r.gcols[i] = fmt.Sprintf(`"__g%d"`, i)
	}
	r.key = strings.Join(append([]string{`"__pid"`}, r.gcols...), ", ")
	r.late = q.late
	base := []string{`"__pid"`}
	r.hashCols = []string{`"__pid"`}
	for i, g := range q.groups {
		if !r.lateKey(i) {
			base = append(base, r.gcols[i])
		}
		if !g.ofPatient {
			r.hashCols = append(r.hashCols, r.gcols[i])
		}
	}
	r.baseKey = strings.Join(base, ", ")
	// The pair key: the patient and the group keys that may differ between
	// a patient's rows. A key proven to be a function of the patient
	// (groupKey.ofPatient) adds no pairs, so it is carried by any_value(),
	// which over one patient's rows can only be that patient's one value:
	// the same pairs with a narrower hash key.
	r.pairCols = []string{`"__pid"`}
	pairSel := []string{`"__pid"`}
	for i, g := range q.groups {
		if r.lateKey(i) {
			continue // joined after the pairs
		}
		if c.shortcuts && g.ofPatient {
			pairSel = append(pairSel, "any_value("+r.gcols[i]+") AS "+r.gcols[i])
			continue
		}
		r.pairCols = append(r.pairCols, r.gcols[i])
		pairSel = append(pairSel, r.gcols[i])
	}
	r.pkey, r.psel = strings.Join(r.pairCols, ", "), strings.Join(pairSel, ", ")
	// Proven one row per patient (onePerPatient): each row is a patient's whole
	// contribution, within any k and C, so the rows are grouped directly
	// with nothing to check, rank or drop. __tre_base is then read once and
	// stays inlined rather than materialised.
	r.direct = c.shortcuts && q.onePerPatient
	r.trees = treeOwners(q)
	// The guarded branch would need histograms of its own; a query with
	// quantiles takes the stages (a per-patient CTE is direct anyway).
	r.guarded = !r.direct && c.shortcuts && q.maybeOnePerPatient && len(r.trees) == 0
	r.counts = c.shortcuts && countsOnly(q)
	r.statCols = []string{`"__n"`}
	for j, a := range q.aggs {
		if a.kind == aggRatio {
			continue // read from its parts' columns by dp
		}
		r.statCols = append(r.statCols, acol("c", j))
		if a.kind == aggValue {
			r.statCols = append(r.statCols, acol("s", j))
		}
		if a.kind == aggValue && a.spec.Kind.UsesSumSq() {
			r.statCols = append(r.statCols, acol("q", j))
		}
		if a.kind == aggQuantile {
			r.statCols = append(r.statCols, acol("l", j))
		}
	}
	r.pgCols = r.key + ", " + strings.Join(r.statCols, ", ")
	r.allRows = `(SELECT coalesce(sum("__n"), 0) FROM "__tre_all")`
	return r
}

// lateKey reports whether group key i comes from the late join.
func (r *rewriter) lateKey(i int) bool { return r.late != nil && r.late.keys[i] }

// on is pair equality of relations l and r, treating NULL group keys as
// equal.
func (r *rewriter) on(left, right string) string {
	parts := []string{left + `."__pid" = ` + right + `."__pid"`}
	for _, g := range r.pairCols[1:] {
		parts = append(parts, left+"."+g+" IS NOT DISTINCT FROM "+right+"."+g)
	}
	return strings.Join(parts, " AND ")
}

// input writes the WITH clause's CTEs and __tre_input: one row per joined
// input row of a patient.
func (r *rewriter) input() {
	b, q := &r.b, r.q
	b.WriteString("WITH ")
	for _, w := range r.c.with {
		b.WriteString(w)
		b.WriteString(",\n")
	}
	// Stage 1: base rows, arguments clamped. NULL falls through to ELSE and
	// stays NULL; DuckDB orders NaN above every number, so NaN clamps to the
	// upper bound.
	pid, from, where := q.pid, q.from, q.whereSQL()
	if r.late != nil {
		pid, from, where = r.late.restPid, r.late.rest, r.late.early
	}
	b.WriteString(`"__tre_input" AS (SELECT ` + pid + ` AS "__pid"`)
	for i, g := range q.groups {
		if !r.lateKey(i) {
			b.WriteString(", " + g.sql + " AS " + r.gcols[i])
		}
	}
	for j, a := range q.aggs {
		if a.arg != "" {
			b.WriteString(", " + a.arg + " AS " + acol("a", j))
			if !a.rootPU {
				r.hashArgs = append(r.hashArgs, acol("a", j))
			}
		}
	}
	b.WriteString(" FROM " + from + " WHERE ")
	if len(where) > 0 {
		b.WriteString("(" + strings.Join(where, " AND ") + ") AND ")
	}
	if d := inDomain(q, func(i int) bool { return !r.lateKey(i) }); d != "" {
		b.WriteString(d + " AND ")
	}
	// The release snapshot holds no row without a patient id and the root
	// relation is never on the right of a LEFT JOIN, so this removes
	// nothing; it keeps that so if either ever changed.
	b.WriteString(pid + " IS NOT NULL),\n")
}

// base writes __tre_base, the input rows with each argument clamped to its
// bounds, and reports whether the query is direct: then the statement ends
// with the shortcut branch and there are no further stages.
func (r *rewriter) base() (direct bool) {
	b, q := &r.b, r.q
	// __tre_base is materialised only when more than one stage reads it.
	if r.direct || (r.counts && !r.guarded) {
		b.WriteString(`"__tre_base" AS (SELECT ` + r.baseKey)
	} else {
		b.WriteString(`"__tre_base" AS MATERIALIZED (SELECT ` + r.baseKey)
	}
	for j, a := range q.aggs {
		if a.arg == "" {
			continue
		}
		col := acol("a", j)
		if a.kind == aggQuantile {
			b.WriteString(", " + quantileLeafSQL(col, a.spec.Lower, a.spec.Upper) + " AS " + col)
			continue
		}
		if a.kind == aggValue {
			lo, hi := sqlDouble(a.spec.Lower), sqlDouble(a.spec.Upper)
			// A mean, variance or standard deviation is computed from
			// values centred on the bounds' midpoint (dp.AggStats).
			centre := ""
			if a.spec.Kind.Centred() {
				centre = " - " + sqlDouble(a.spec.Midpoint())
			}
			fmt.Fprintf(b, ", CASE WHEN %s < %s THEN %s WHEN %s > %s THEN %s ELSE %s END%s AS %s", col, lo, lo, col, hi, hi, col, centre, col)
		} else {
			b.WriteString(", " + col)
		}
	}
	if r.direct {
		b.WriteString(` FROM "__tre_input")` + "\n")
		return true
	}
	b.WriteString(` FROM "__tre_input"),` + "\n")
	return false
}

// stats is the per (patient, group) statistics over a set of rows.
func (r *rewriter) stats() string {
	var s strings.Builder
	s.WriteString(`count(*) AS "__n"`)
	for j, a := range r.q.aggs {
		col := acol("a", j)
		switch {
		case a.kind == aggRatio:
		case a.kind == aggCountRows && a.arg == "":
			fmt.Fprintf(&s, ", CAST(count(*) AS DOUBLE) AS %s", acol("c", j))
		case a.kind == aggCountRows:
			fmt.Fprintf(&s, ", CAST(count(%s) AS DOUBLE) AS %s", col, acol("c", j))
		case a.kind == aggCountPatients && a.arg == "":
			fmt.Fprintf(&s, ", CAST(1 AS DOUBLE) AS %s", acol("c", j))
		case a.kind == aggCountPatients:
			s.WriteString(patientCount(j))
		case a.kind == aggQuantile:
			fmt.Fprintf(&s, ", CAST(count(%s) AS DOUBLE) AS %s, list(%s) FILTER (WHERE %s IS NOT NULL) AS %s", col, acol("c", j), col, col, acol("l", j))
		default:
			fmt.Fprintf(&s, ", CAST(count(%s) AS DOUBLE) AS %s, CAST(coalesce(sum(%s), 0) AS DOUBLE) AS %s", col, acol("c", j), col, acol("s", j))
			if a.spec.Kind.UsesSumSq() {
				fmt.Fprintf(&s, ", CAST(coalesce(sum(%s * %s), 0) AS DOUBLE) AS %s", col, col, acol("q", j))
			}
		}
	}
	return s.String()
}

// patientCount is the per-pair statistic of aggregate j, a patient count
// with an argument (a FILTER, a joined id): 0 or 1 from all the pair's
// rows, at most 1 per patient and group (its L∞). __tre_all and the counts
// stage both select it, so the two plans count alike.
func patientCount(j int) string {
	return fmt.Sprintf(", CAST(coalesce(max(%s), 0) AS DOUBLE) AS %s", acol("a", j), acol("c", j))
}

// dupCheck writes __tre_dup when the direct branch is guarded.
//
// The shortcut: when no patient has more than one input row (a
// demographics table, per-patient CTEs), every patient is in one group
// with one row, within any k and C, so grouping the rows directly gives
// exactly the bounded statistics. Checking it costs one distinct count
// on the patient id; the per-(patient, group) pipeline below then sees
// no rows. Otherwise the shortcut sees none. It is only worth checking
// when every patient relation is meant to hold one row per patient: with
// an event table in FROM the check would cost and always fail.
func (r *rewriter) dupCheck() {
	if r.guarded {
		r.b.WriteString(`"__tre_dup" AS MATERIALIZED (SELECT count("__pid") <> count(DISTINCT "__pid") OR count("__pid") <> count(*) AS "__d" FROM "__tre_base"),` + "\n")
		r.slowFilter = ` WHERE (SELECT "__d" FROM "__tre_dup")`
	}
}

// pairs writes stage 2: all rows per (patient, group); the pairs above C
// recomputed from their first C rows.
//
// When every aggregate is count(*) or a patient count, which C rows a
// pair keeps cannot change its statistics: it keeps min(n, C) rows and
// counts one patient, or, for a patient count with an argument (a FILTER,
// a joined id), 0 or 1 from all its rows, as the full pipeline reads it
// (overPairs). One grouping then gives the bounded pairs, with __nall
// keeping the rows before the bound for the dropped-row count.
func (r *rewriter) pairs() {
	b, q, spec := &r.b, r.q, r.spec
	if r.counts {
		c := spec.MaxRowsPerGroup
		fmt.Fprintf(b, `%s (SELECT %s, count(*) AS "__nall", least(count(*), %d) AS "__n"`, r.grouped(`"__tre_pg"`), r.psel, c)
		for j, a := range q.aggs {
			switch {
			case a.kind == aggCountRows:
				fmt.Fprintf(b, ", CAST(least(count(*), %d) AS DOUBLE) AS %s", c, acol("c", j))
			case a.kind == aggCountPatients && a.arg != "":
				// As overPairs: 0 or 1 from all the pair's rows.
				b.WriteString(patientCount(j))
			case a.kind != aggRatio:
				fmt.Fprintf(b, ", CAST(1 AS DOUBLE) AS %s", acol("c", j))
			}
		}
		fmt.Fprintf(b, ` FROM "__tre_base"%s GROUP BY %s),`+"\n", r.slowFilter, r.pkey)
		r.lateJoin(`"__tre_pg"`)
		r.allRows = `(SELECT coalesce(sum("__nall"), 0) FROM "__tre_pg")`
		return
	}
	fmt.Fprintf(b, `%s (SELECT %s, %s FROM "__tre_base"%s GROUP BY %s),`+"\n", r.grouped(`"__tre_all"`), r.psel, r.stats(), r.slowFilter, r.pkey)
	r.lateJoin(`"__tre_all"`)
	// A key that is a function of the patient is the same on all of a
	// patient's rows, so it orders none of them: the hash leaves it out,
	// and the late join (late.go) can add it after this stage.
	hash := strings.Join(append(append([]string{r.seed}, r.hashCols...), r.hashArgs...), ", ")
	fmt.Fprintf(b, `"__tre_over" AS (SELECT %s, %s FROM (SELECT r.*, row_number() OVER (PARTITION BY %s ORDER BY hash(%s)) AS "__rn" FROM "__tre_base" AS r SEMI JOIN (SELECT %s FROM "__tre_all" WHERE "__n" > %d) AS o ON %s) WHERE "__rn" <= %d GROUP BY %s),`+"\n",
		r.psel, r.stats(), r.pkey, hash, r.pkey, spec.MaxRowsPerGroup, r.on("r", "o"), spec.MaxRowsPerGroup, r.pkey)
	fmt.Fprintf(b, `"__tre_pg" AS MATERIALIZED (SELECT %s FROM "__tre_all" WHERE "__n" <= %d UNION ALL %s),`+"\n",
		r.pgCols, spec.MaxRowsPerGroup, r.overPairs())
}

// overPairs selects the pairs above C from __tre_over, each patient count
// with an argument (a FILTER, or a LEFT-joined id) taken from all the
// pair's rows in __tre_all: it is 0 or 1 whatever rows are kept, so its
// L∞ is 1 without the C bound, and reading only the C kept rows (chosen by
// a hash, not by the FILTER) would miss a patient whose matching row was
// not kept.
//
// With a late join __tre_over has only the event side's keys, and the
// others come from __tre_all too.
func (r *rewriter) overPairs() string {
	all := map[string]bool{}
	for j, a := range r.q.aggs {
		if a.kind == aggCountPatients && a.arg != "" {
			all[acol("c", j)] = true
		}
	}
	if len(all) == 0 && r.late == nil {
		return `SELECT ` + r.pgCols + ` FROM "__tre_over"`
	}
	sel := []string{`o."__pid"`}
	for i, k := range r.gcols {
		if r.lateKey(i) {
			sel = append(sel, "a."+k)
		} else {
			sel = append(sel, "o."+k)
		}
	}
	for _, c := range r.statCols {
		if all[c] {
			sel = append(sel, "a."+c)
		} else {
			sel = append(sel, "o."+c)
		}
	}
	return `SELECT ` + strings.Join(sel, ", ") + ` FROM "__tre_over" AS o JOIN "__tre_all" AS a ON ` + r.on("o", "a")
}

// grouped names the stage that groups the base rows by pair: stage itself,
// materialised, or with a late join __tre_pe, which the late join reads
// once to make stage.
func (r *rewriter) grouped(stage string) string {
	if r.late != nil {
		return `"__tre_pe" AS`
	}
	return stage + " AS MATERIALIZED"
}

// lateJoin writes stage, materialised, as the late join (late.go) of the
// per-patient relation to the pairs of __tre_pe: their columns and the
// relation's group keys, for the patients its conditions keep.
func (r *rewriter) lateJoin(stage string) {
	lj := r.late
	if lj == nil {
		return
	}
	b := &r.b
	b.WriteString(stage + ` AS MATERIALIZED (SELECT "__tre_e".*`)
	for i, g := range r.q.groups {
		if lj.keys[i] {
			b.WriteString(", " + g.sql + " AS " + r.gcols[i])
		}
	}
	b.WriteString(` FROM "__tre_pe" AS "__tre_e" JOIN ` + lj.src + ` ON ` + lj.pid + ` = "__tre_e"."__pid"`)
	conds := append([]string(nil), lj.after...)
	if d := inDomain(r.q, r.lateKey); d != "" {
		conds = append(conds, d)
	}
	if len(conds) > 0 {
		b.WriteString(" WHERE (" + strings.Join(conds, ") AND (") + ")")
	}
	b.WriteString("),\n")
}

// kept writes stage 3: at most k groups per patient. With every group key
// carried a patient has one pair, and where the query proves no patient's
// rows fall in more than k groups (query.groupBound, e.g. months of a year
// the WHERE bounds) nobody is over k either.
func (r *rewriter) kept() {
	b, q, spec := &r.b, r.q, r.spec
	withinK := r.c.shortcuts && q.groupBound > 0 && q.groupBound <= spec.MaxGroupsPerPatient
	if len(r.pairCols) > 1 && !withinK {
		k := spec.MaxGroupsPerPatient
		ghash := strings.Join(append([]string{r.seed, `"__pid"`}, r.gcols...), ", ")
		fmt.Fprintf(b, `"__tre_many" AS (SELECT "__pid" FROM "__tre_pg" GROUP BY "__pid" HAVING count(*) > %d),`+"\n", k)
		fmt.Fprintf(b, `"__tre_kept" AS (SELECT %s FROM "__tre_pg" ANTI JOIN "__tre_many" USING ("__pid") UNION ALL SELECT %s FROM (SELECT p.*, row_number() OVER (PARTITION BY "__pid" ORDER BY hash(%s)) AS "__gr" FROM "__tre_pg" AS p SEMI JOIN "__tre_many" USING ("__pid")) WHERE "__gr" <= %d)`+"\n",
			r.pgCols, r.pgCols, ghash, k)
	} else {
		b.WriteString(`"__tre_kept" AS (SELECT * FROM "__tre_pg")` + "\n")
	}
}

// result writes stage 4: per-group statistics in the layout the sandbox
// scans.
func (r *rewriter) result() {
	b, q := &r.b, r.q
	b.WriteString("SELECT ")
	for i, g := range q.groups {
		fmt.Fprintf(b, "%s AS %s, ", keyOut(q, r.gcols[i]), QuoteIdent(g.name))
	}
	// A patient has one pair per cell of the full grouping: a total counts
	// them once (rollup.go). With every group key carried by the pair
	// (pairCols is the patient alone) a patient has one pair, and a count
	// of pairs is the count of patients.
	distinct := len(q.sets) > 0 && len(r.pairCols) > 1
	if distinct {
		b.WriteString(`CAST(count(DISTINCT "__pid") AS BIGINT) AS "__patients"`)
	} else {
		b.WriteString(`CAST(count(*) AS BIGINT) AS "__patients"`)
	}
	for j, a := range q.aggs {
		name := escapeName(a.spec.Name)
		if a.kind == aggRatio {
			writeZeros(b, name)
			continue
		}
		contrib := acol("c", j)
		if a.kind == aggValue {
			contrib = uncentred(a, acol("s", j), acol("c", j))
		}
		if a.kind == aggCountPatients && distinct {
			fmt.Fprintf(b, `, CAST(count(DISTINCT CASE WHEN %s > 0 THEN "__pid" END) AS DOUBLE) AS "%s__count"`, acol("c", j), name)
		} else {
			fmt.Fprintf(b, `, CAST(coalesce(sum(%s), 0) AS DOUBLE) AS "%s__count"`, acol("c", j), name)
		}
		sum, sumsq := "0", "0"
		if a.kind == aggValue {
			sum = fmt.Sprintf("coalesce(sum(%s), 0)", acol("s", j))
		}
		if a.kind == aggValue && a.spec.Kind.UsesSumSq() {
			sumsq = fmt.Sprintf("coalesce(sum(%s), 0)", acol("q", j))
		}
		fmt.Fprintf(b, `, CAST(%s AS DOUBLE) AS "%s__sum", CAST(%s AS DOUBLE) AS "%s__sumsq"`, sum, name, sumsq, name)
		writeTop(b, a, contrib, name)
	}
	// Rows dropped: all rows less those kept, summed over the groups by a
	// window on this stage's own rows, so __tre_kept is read once and
	// streams into this aggregate instead of being materialised for a second
	// reader (~8% of a bounded query at 10M patients).
	b.WriteString(`, CAST(` + r.allRows + ` - coalesce(sum(` + finestOnly(q, r.gcols, `sum("__n")`) + `) OVER (), 0) AS BIGINT) AS "__dropped"`)
	b.WriteString(` FROM "__tre_kept"`)
	if len(r.gcols) > 0 {
		b.WriteString(groupByClause(q, r.gcols))
	}
	if r.guarded && (len(r.gcols) == 0 || grandTotal(q)) {
		// Without GROUP BY, or with a grand total (GROUPING SETS with ()),
		// each branch returns that row even from no rows; keep one.
		b.WriteString(` HAVING (SELECT "__d" FROM "__tre_dup")`)
	}
}

// fastSelect is the shortcut branch: each input row is one patient's whole
// contribution, so per-row values are per-patient contributions. guarded
// makes it return no rows unless the run-time check found no patient with
// two input rows; unguarded (proven at compile time) it is the whole query.
func (c *compiler) fastSelect(b *strings.Builder, q *query, gcols []string, guarded bool) {
	b.WriteString("SELECT ")
	for i, g := range q.groups {
		fmt.Fprintf(b, "%s AS %s, ", keyOut(q, gcols[i]), QuoteIdent(g.name))
	}
	b.WriteString(`CAST(count(*) AS BIGINT) AS "__patients"`)
	for j, a := range q.aggs {
		col := fmt.Sprintf(`"__a%d"`, j)
		name := escapeName(a.spec.Name)
		if a.kind == aggRatio {
			writeZeros(b, name)
			continue
		}
		contrib := "1"
		if a.arg != "" {
			contrib = "coalesce(" + uncentred(a, col, "1") + ", 0)"
		}
		if a.kind == aggQuantile {
			contrib = fmt.Sprintf("CASE WHEN %s IS NOT NULL THEN 1 ELSE 0 END", col)
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
		b.WriteString(groupByClause(q, gcols))
	}
	if guarded && (len(gcols) == 0 || grandTotal(q)) {
		b.WriteString(` HAVING NOT (SELECT "__d" FROM "__tre_dup")`)
	}
}

// treeOwners lists, per quantile tree (dp.AggSpec.Tree, numbered in order
// of first use), the index of its first aggregate.
func treeOwners(q *query) []int {
	var out []int
	for j, a := range q.aggs {
		if a.kind == aggQuantile && a.spec.Tree == len(out)+1 {
			out = append(out, j)
		}
	}
	return out
}

// quantileLeaf is the SQL of dp.QuantileLeaf: the leaf of the quantile
// tree over [lo, hi] that col, clamped, falls in, with the same double
// arithmetic ((x − lo) / (hi − lo) · leaves, truncated, at most the last
// leaf); NULL stays NULL. DuckDB orders NaN above every number, so NaN
// clamps to the upper bound.
//
// The bounds are written in exponent form, which DuckDB parses straight to
// the nearest double (a long decimal literal would go through DECIMAL and
// could land one ulp away), so SQL and dp divide by the same range.
func quantileLeafSQL(col string, lo, hi float64) string {
	exact := func(f float64) string { return "CAST(" + strconv.FormatFloat(f, 'e', -1, 64) + " AS DOUBLE)" }
	l, h := exact(lo), exact(hi)
	clamped := fmt.Sprintf("CASE WHEN %s < %s THEN %s WHEN %s > %s THEN %s ELSE %s END", col, l, l, col, h, h, col)
	return fmt.Sprintf("CASE WHEN %s IS NULL THEN NULL ELSE least(CAST(floor((%s - %s) / (%s - %s) * CAST(%d AS DOUBLE)) AS INTEGER), %d) END",
		col, clamped, l, h, l, dp.QuantileLeaves, dp.QuantileLeaves-1)
}

// histShift packs a leaf and its count into one BIGINT of a histogram
// list: leaf·2^40 + count (a leaf is below 2^16, a count below 2^40).
const histShift = 40

// DecodeHistogram decodes a quantile tree's histogram column of
// Plan.Rewritten (layout on Parser.Compile: a list of leaf·2^40 + count,
// or NULL for no values) into leaf → count (dp.AggStats.Hist).
func DecodeHistogram(v any) (map[int]int64, error) {
	if v == nil {
		return nil, nil
	}
	list, ok := v.([]any)
	if !ok {
		return nil, fmt.Errorf("quantile histogram is a %T, not a list", v)
	}
	h := make(map[int]int64, len(list))
	for _, e := range list {
		x, ok := e.(int64)
		if !ok || x < 0 {
			return nil, errors.New("quantile histogram entry is not a non-negative BIGINT")
		}
		h[int(x>>histShift)] += x & (1<<histShift - 1)
	}
	return h, nil
}

// withHistograms writes the statement's final SELECT, body, and for a
// query with quantiles appends to each of its rows one histogram column
// per tree: __tre_res holds body's rows, and per tree a CTE counts the
// bounded values of each leaf in each group of src (__tre_base, whose
// rows are values, or __tre_kept, whose pairs hold lists of them) and
// packs them into a list (histShift), joined to its group's row.
func (r *rewriter) withHistograms(src string, body func()) {
	if len(r.trees) == 0 {
		body()
		return
	}
	b := &r.b
	b.WriteString(`, "__tre_res" AS (`)
	body()
	b.WriteString(")")
	keys := make([]string, len(r.gcols))
	for i, g := range r.gcols {
		keys[i] = fmt.Sprintf(`CAST(%s AS VARCHAR) AS "__hk%d"`, g, i)
	}
	join := ""
	for t, j := range r.trees {
		leaves := fmt.Sprintf(`SELECT %s AS "__l"%s FROM %s WHERE %s IS NOT NULL`, acol("a", j), prefixComma(keys), src, acol("a", j))
		if src == `"__tre_kept"` {
			leaves = fmt.Sprintf(`SELECT unnest(%s) AS "__l"%s FROM %s`, acol("l", j), prefixComma(keys), src)
		}
		hk := make([]string, len(keys))
		on := []string{"TRUE"}
		for i := range keys {
			hk[i] = fmt.Sprintf(`"__hk%d"`, i)
			if i == 0 {
				on = nil
			}
			on = append(on, fmt.Sprintf(`r.%s IS NOT DISTINCT FROM h%d."__hk%d"`, QuoteIdent(r.q.groups[i].name), t, i))
		}
		group := strings.Join(append([]string{`"__l"`}, hk...), ", ")
		sel, by := group, group
		if len(r.q.sets) > 0 {
			// Each grouping set's leaf counts, keyed as the result's rows
			// (rollup.go).
			out := []string{`"__l"`}
			for i := range hk {
				out = append(out, keyOut(r.q, hk[i])+fmt.Sprintf(` AS "__hm%d"`, i))
			}
			sel = strings.Join(out, ", ")
			by = `"__l", ` + strings.TrimPrefix(groupByClause(r.q, hk), " GROUP BY ")
			for i := range hk {
				hk[i] = fmt.Sprintf(`"__hm%d"`, i)
				on[i] = fmt.Sprintf(`r.%s IS NOT DISTINCT FROM h%d."__hm%d"`, QuoteIdent(r.q.groups[i].name), t, i)
			}
		}
		outer := ""
		if len(hk) > 0 {
			outer = " GROUP BY " + strings.Join(hk, ", ")
		}
		fmt.Fprintf(b, `, "__tre_qh%d" AS (SELECT %slist(CAST("__l" AS BIGINT) * %d + "__n") AS "__h" FROM (SELECT %s, count(*) AS "__n" FROM (%s) GROUP BY %s)%s)`,
			t, suffixComma(hk), int64(1)<<histShift, sel, leaves, by, outer)
		join += fmt.Sprintf(` LEFT JOIN "__tre_qh%d" AS h%d ON %s`, t, t, strings.Join(on, " AND "))
	}
	b.WriteString("\nSELECT r.*")
	for t := range r.trees {
		fmt.Fprintf(b, `, h%d."__h" AS "__hist%d"`, t, t+1)
	}
	b.WriteString(` FROM "__tre_res" AS r` + join)
}

func prefixComma(xs []string) string {
	if len(xs) == 0 {
		return ""
	}
	return ", " + strings.Join(xs, ", ")
}

func suffixComma(xs []string) string {
	if len(xs) == 0 {
		return ""
	}
	return strings.Join(xs, ", ") + ", "
}

// countsOnly reports whether every aggregate is count(*) or a patient
// count (with or without an argument), whose bounded statistics do not
// depend on which rows are kept.
func countsOnly(q *query) bool {
	for _, a := range q.aggs {
		switch {
		case a.kind == aggCountPatients, a.kind == aggRatio:
		case a.kind == aggCountRows && a.arg == "":
		default:
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
