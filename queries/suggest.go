package queries

import (
	"sort"
	"strings"
)

// didYouMean returns " (did you mean X?)" for the candidate closest to name
// when it is close enough to be a slip of the keyboard, or "". Candidates
// are names the query may use (tables, aliases and columns in scope), so a
// suggestion never reveals more than the catalog already shows. A
// candidate "p.sex" also matches the bare name "sexx" and is shown
// qualified.
func didYouMean(name string, candidates []string) string {
	name = strings.ToLower(name)
	limit := min(max(len([]rune(name))/3, 1), 3)
	sorted := append([]string(nil), candidates...)
	sort.Strings(sorted)
	best, bestDist := "", limit+1
	for _, c := range sorted {
		key := strings.ToLower(c)
		if _, col, ok := strings.Cut(key, "."); ok && !strings.Contains(name, ".") {
			key = col
		}
		if d := editDistance(name, key); d < bestDist {
			best, bestDist = c, d
		}
	}
	if best == "" {
		return ""
	}
	return " (did you mean " + best + "?)"
}

// editDistance is the Levenshtein distance between a and b, in runes.
func editDistance(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	prev := make([]int, len(rb)+1)
	cur := make([]int, len(rb)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(ra); i++ {
		cur[0] = i
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(rb)]
}

// columnNames lists the columns of the relations in scope, qualified with
// their alias ("p.sex").
func (sc *scope) columnNames() []string {
	var out []string
	for _, r := range sc.rels {
		out = append(out, r.columnNames()...)
	}
	return out
}

// columnNames lists r's columns qualified with its alias.
func (r *relation) columnNames() []string {
	out := make([]string, 0, len(r.cols))
	for _, c := range r.cols {
		out = append(out, r.alias+"."+c.name)
	}
	return out
}

// tableNames lists the tables and CTEs a FROM item may name; never the
// opt-out list.
func (c *compiler) tableNames() []string {
	var out []string
	for name := range c.idx.tables {
		if name != c.idx.optout {
			out = append(out, name)
		}
	}
	for name := range c.ctes {
		out = append(out, name)
	}
	return out
}
