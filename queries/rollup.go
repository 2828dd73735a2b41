package queries

import (
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/nhs-tre/tre/dp"
)

// Tables with totals: GROUP BY ROLLUP (a, b), CUBE (a, b) and GROUPING SETS
// ((a, b), (a), ()). DuckDB's parser gives the group expressions once and
// the sets as lists of their indexes; the outer query keeps them in
// query.sets (dp.Spec.Sets).
//
// What the rewrite does with them: every stage up to __tre_kept bounds the
// contributions of the full grouping (all group columns) as for a plain
// GROUP BY, so each patient keeps at most k cells of it and C rows in each;
// only the final aggregation groups the kept pairs by GROUPING SETS, in one
// pass. A total is then the sum of the bounded cells it covers: in each
// set a patient is in at most k cells (the projections of their k cells)
// and adds at most what they add to the full grouping, so the L1 norm of a
// patient's contributions to each set is at most k·C times a value's bound,
// the sensitivity Laplace noise with L0 = k, L∞ = C is calibrated to (dp
// refuses Gaussian noise for totals: their L2 norm can reach k·C). Over
// all sets L0 = k × sets (dp.Spec.plan). Distinct patient counts of a total
// are counted as distinct patients (count(DISTINCT __pid)), not summed over
// a patient's cells, so their L∞ stays 1.
//
// Totals show dp.TotalKey in the columns they total over; since every
// group column must have a public domain and rows whose key is outside it
// (NULL included) are left out of __tre_input, a released "(total)" is
// always a total and each total is exactly the sum of released cells,
// which secondary suppression relies on.

// groupSets validates the GROUP BY's grouping sets against the compiled
// group keys and returns them in dp.Spec.Sets form (sorted, full grouping
// first), or nil for a plain GROUP BY.
func (c *compiler) groupSets(node obj, q *query) ([][]int, error) {
	raw := list(node, "group_sets")
	n := len(q.groups)
	if len(raw) == 0 || (len(raw) == 1 && len(setIndexes(raw[0])) == n) {
		return nil, nil // no GROUP BY, or a plain one
	}
	var sets [][]int
	seen := map[string]bool{}
	for _, r := range raw {
		set := setIndexes(r)
		slices.Sort(set)
		if k := fmt.Sprint(set); seen[k] {
			return nil, refuse("a grouping set listed twice", -1, "list each grouping once: it would release its totals twice")
		} else {
			seen[k] = true
		}
		sets = append(sets, set)
	}
	if !seen[fmt.Sprint(seqInts(n))] {
		return nil, refuse("GROUPING SETS without the full grouping", -1, "include ("+groupNames(q)+"): a total is released only with the cells it sums, so that suppressed cells can be protected")
	}
	for _, g := range q.groups {
		if !g.v.hasDomain {
			return nil, refuse("ROLLUP, CUBE or GROUPING SETS over "+g.name, -1, "totals need every group column to have a public domain (a catalog domain, month, quarter or a CASE with literal results); partition selection of each grouping's keys is not supported")
		}
		if slices.Contains(g.v.domain, dp.TotalKey) {
			return nil, refuse("group value "+dp.TotalKey, -1, "it is how totals are shown; use another label")
		}
	}
	slices.SortFunc(sets, func(a, b []int) int {
		if len(a) != len(b) {
			return len(b) - len(a)
		}
		return slices.Compare(a, b)
	})
	return sets, nil
}

func setIndexes(v any) []int {
	l, _ := v.([]any)
	out := make([]int, 0, len(l))
	for _, e := range l {
		if n, ok := e.(json.Number); ok {
			if i, err := strconv.Atoi(string(n)); err == nil {
				out = append(out, i)
			}
		}
	}
	return out
}

func seqInts(n int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = i
	}
	return out
}

func groupNames(q *query) string {
	names := make([]string, len(q.groups))
	for i, g := range q.groups {
		names[i] = g.name
	}
	return strings.Join(names, ", ")
}

// checkGroupSetsNode refuses grouping sets anywhere but in the released
// query, and sets that name no group expression.
func checkGroupSetsNode(node obj, outer bool) error {
	sets := list(node, "group_sets")
	groups := list(node, "group_expressions")
	plain := len(groups) == 0 && len(sets) == 0
	if len(sets) == 1 {
		plain = len(setIndexes(sets[0])) == len(groups)
	}
	if plain {
		return nil
	}
	if !outer {
		return refuse("GROUPING SETS, ROLLUP or CUBE in a per-patient query", -1, "a per-patient query is grouped by the patient alone")
	}
	for _, s := range sets {
		for _, i := range setIndexes(s) {
			if i < 0 || i >= len(groups) {
				return refuse("GROUPING SETS", -1, "unrecognised parser output")
			}
		}
	}
	return nil
}

// inDomain is the WHERE condition that keeps the input rows whose every
// group key (of those keep selects) lies in its public domain: with totals
// the rows outside (which no cell releases) must not be counted in a total
// either. It is "" without grouping sets.
func inDomain(q *query, keep func(i int) bool) string {
	if len(q.sets) == 0 {
		return ""
	}
	var parts []string
	for i, g := range q.groups {
		if !keep(i) {
			continue
		}
		vals := make([]string, len(g.v.domain))
		for k, v := range g.v.domain {
			vals[k] = quoteString(v)
		}
		parts = append(parts, fmt.Sprintf("CAST(%s AS VARCHAR) IN (%s)", g.sql, strings.Join(vals, ", ")))
	}
	return strings.Join(parts, " AND ")
}

// groupByClause is the final stage's GROUP BY over the key columns cols:
// the plain list, or GROUPING SETS.
func groupByClause(q *query, cols []string) string {
	if len(q.sets) == 0 {
		return " GROUP BY " + strings.Join(cols, ", ")
	}
	sets := make([]string, len(q.sets))
	for i, set := range q.sets {
		cs := make([]string, len(set))
		for j, c := range set {
			cs[j] = cols[c]
		}
		sets[i] = "(" + strings.Join(cs, ", ") + ")"
	}
	return " GROUP BY GROUPING SETS (" + strings.Join(sets, ", ") + ")"
}

// keyOut is a key column as the final stage releases it: cast to VARCHAR,
// and with grouping sets dp.TotalKey where the row totals over it.
func keyOut(q *query, col string) string {
	if len(q.sets) == 0 {
		return "CAST(" + col + " AS VARCHAR)"
	}
	return fmt.Sprintf("CASE WHEN GROUPING(%s) = 1 THEN %s ELSE CAST(%s AS VARCHAR) END", col, quoteString(dp.TotalKey), col)
}

// grandTotal reports whether one of the grouping sets is (): its row
// exists even when no row is grouped, as a query without GROUP BY.
func grandTotal(q *query) bool {
	for _, set := range q.sets {
		if len(set) == 0 {
			return true
		}
	}
	return false
}

// finestOnly restricts a per-row expression of the final stage to the rows
// of the full grouping (each input row counted once): itself without
// grouping sets.
func finestOnly(q *query, cols []string, expr string) string {
	if len(q.sets) == 0 {
		return expr
	}
	return fmt.Sprintf("CASE WHEN GROUPING(%s) = 0 THEN %s ELSE 0 END", strings.Join(cols, ", "), expr)
}

// setsShape is the canonical text of the grouping sets, by the canonical
// text of their group keys: ROLLUP (a, b) and GROUP BY a, b differ.
func (c *compiler) setsShape(q *query, sc *scope) string {
	if len(q.sets) == 0 {
		return ""
	}
	var sets []string
	for _, set := range q.sets {
		keys := make([]string, len(set))
		for j, i := range set {
			keys[j] = canonicalText(q.groups[i].sql, sc.rels)
		}
		slices.Sort(keys)
		sets = append(sets, "("+strings.Join(keys, ", ")+")")
	}
	slices.Sort(sets)
	return "grouping sets " + strings.Join(sets, ", ") + "\n"
}
