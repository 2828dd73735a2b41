package dp

import (
	"errors"
	"fmt"
	"math"
	"slices"
)

// TotalKey is the key a total or subtotal row shows in each column it
// totals over (GROUP BY ROLLUP, CUBE or GROUPING SETS: Spec.Sets). It is
// never a value of a public domain (Validate refuses one that holds it), and
// only public domains may be totalled, so a released key equal to TotalKey
// is always a total, never data; a real NULL key is never released at all.
const TotalKey = "(total)"

// MaxSetCells caps the cells a query with grouping sets may release: the
// secondary suppression of totals solves linear systems over them.
const MaxSetCells = 10_000

// setCount is the number of grouping sets: a patient's bounded rows count in
// one cell of each, so the L0 sensitivity is k times this.
func (s Spec) setCount() int { return max(1, len(s.Sets)) }

// setsLInf is the L∞ a statistic of aggregate agg (-1: the hidden patient
// count) is calibrated to with grouping sets. A total sums a patient's
// cells of the full grouping (up to k of them), so one total can take all
// of a patient's k·C rows. Laplace noise is calibrated to L1 = L0·L∞, and
// the L1 norm of a patient's contributions to a grouping's cells is still
// at most k·C·bound: nothing changes. Gaussian noise is calibrated to
// L2 = √L0·L∞, and a grouping's L2 norm can reach k·C·bound (all in one
// total), √k times more than √k·C·bound: L∞ is raised by √k, so that
// √(k·sets)·√k·C·bound covers √sets·k·C·bound over all sets. Distinct
// patient counts (count_patients, the hidden count) count a patient once
// per cell whatever the grouping: L∞ stays 1.
func (s Spec) setsLInf(agg int, lInf float64) float64 {
	if len(s.Sets) == 0 || s.mechanism() != MechanismGaussian || agg < 0 || s.Aggregates[agg].Kind == AggCountPatients {
		return lInf
	}
	return lInf * math.Sqrt(float64(s.MaxGroupsPerPatient))
}

// DomainCells is the number of cells a public-domain Spec releases: the
// cross product of the domains, or with grouping sets the cells of every
// set.
func (s Spec) DomainCells() int {
	if len(s.Sets) > 0 {
		return int(s.setCells())
	}
	n := 1
	for _, g := range s.Groups {
		n *= len(g.Domain)
	}
	return n
}

// setsNote is what the accuracy of a query with grouping sets adds to
// each aggregate's note.
func (s Spec) setsNote() string {
	if len(s.Sets) == 0 {
		return ""
	}
	return fmt.Sprintf("with totals: %d grouping sets, each patient counts in up to %d cells (L0 = k × %d), and the noise grows with it", len(s.Sets), s.MaxGroupsPerPatient*len(s.Sets), len(s.Sets))
}

// checkSets validates Spec.Sets: every set lists group columns in
// increasing order, no set twice, the full grouping among them (so every
// total is the sum of released cells, and the secondary suppression sees
// every relation between released values), every group column with a
// public domain not holding TotalKey, and at most MaxSetCells cells.
func (s Spec) checkSets() error {
	if len(s.Sets) == 0 {
		return nil
	}
	if len(s.Groups) == 0 {
		return errors.New("grouping sets need group columns")
	}
	if !s.Margins {
		return errors.New("grouping sets release totals: margins must be set")
	}
	for _, g := range s.Groups {
		if len(g.Domain) == 0 {
			return fmt.Errorf("grouping sets need every group column to have a public domain; %q has none", g.Name)
		}
		if slices.Contains(g.Domain, TotalKey) {
			return fmt.Errorf("group column %q: the domain holds %q, the key of totals", g.Name, TotalKey)
		}
	}
	seen := map[string]bool{}
	full := false
	for i, set := range s.Sets {
		for j, c := range set {
			if c < 0 || c >= len(s.Groups) || (j > 0 && c <= set[j-1]) {
				return fmt.Errorf("grouping set %d must list group columns 0–%d in increasing order", i+1, len(s.Groups)-1)
			}
		}
		k := fmt.Sprint(set)
		if seen[k] {
			return fmt.Errorf("grouping set %d repeats an earlier one", i+1)
		}
		seen[k] = true
		full = full || len(set) == len(s.Groups)
	}
	if !full {
		return errors.New("the grouping sets must include the grouping by every group column: a total is protected only with the cells it sums")
	}
	if n := s.setCells(); n > MaxSetCells {
		return fmt.Errorf("the grouping sets release %.0f cells, more than the %d allowed", n, MaxSetCells)
	}
	return nil
}

// setCells is the number of cells the grouping sets release.
func (s Spec) setCells() float64 {
	total := 0.0
	for _, set := range s.Sets {
		n := 1.0
		for _, c := range set {
			n *= float64(len(s.Groups[c].Domain))
		}
		total += n
	}
	return total
}

// totalled reports, per group column, whether some grouping set totals it
// (its released keys then include TotalKey).
func (s Spec) totalled() []bool {
	out := make([]bool, len(s.Groups))
	for _, set := range s.Sets {
		for c := range s.Groups {
			out[c] = out[c] || !slices.Contains(set, c)
		}
	}
	return out
}

// setOf returns the index in s.Sets of the grouping set a key tuple belongs
// to (its columns not TotalKey), or -1 if none. Without Sets every tuple
// is of the one grouping.
func (s Spec) setOf(keys []*string) int {
	if len(s.Sets) == 0 {
		return 0
	}
	for i, set := range s.Sets {
		ok := true
		for c, k := range keys {
			isTotal := k != nil && *k == TotalKey
			if isTotal == slices.Contains(set, c) {
				ok = false
				break
			}
		}
		if ok {
			return i
		}
	}
	return -1
}

// releasedKeys lists the key tuples a public-domain Spec releases, in
// domain order, last column fastest, TotalKey after a column's domain:
// the cross product of the domains, or with grouping sets the cells of
// each set (a total's key column shows TotalKey), so that every subtotal
// follows the cells it sums.
func (s Spec) releasedKeys() [][]*string {
	domains := make([][]string, len(s.Groups))
	tot := s.totalled()
	for j, g := range s.Groups {
		domains[j] = g.Domain
		if tot[j] {
			domains[j] = append(slices.Clip(g.Domain), TotalKey)
		}
	}
	total := 1
	for _, d := range domains {
		total *= len(d)
	}
	var out [][]*string
	idx := make([]int, len(domains))
	for range total {
		keys := make([]*string, len(domains))
		for j, d := range domains {
			keys[j] = &d[idx[j]]
		}
		if s.setOf(keys) >= 0 {
			out = append(out, keys)
		}
		// Odometer over the domains, last column fastest.
		for j := len(idx) - 1; j >= 0; j-- {
			idx[j]++
			if idx[j] < len(domains[j]) {
				break
			}
			idx[j] = 0
		}
	}
	return out
}

// relation is one linear relation between cells of a released table: the
// cells it involves and their coefficients. Its constant (a released
// margin, or 0) does not matter for which cells it determines.
type relation struct {
	cells []int
	coef  []float64
}

// setRelations lists the relations between the cells of a table with
// grouping sets, keys as releasedKeys gives them: every total equals the
// sum of the cells of the full grouping it covers (complete, since the full
// grouping is released and every value is a sum over it), and every total
// equals the sum of its children one column finer where that grouping is
// released (implied by the first, listed because they are the lines
// secondary suppression completes first). Patient counts of totals can be
// less than such a sum when a patient is in several cells (k > 1): the
// relation then overstates what is known, which only suppresses more.
func (s Spec) setRelations(keys [][]*string) (lines, full []relation) {
	byKey := make(map[string]int, len(keys))
	for i, k := range keys {
		byKey[keyString(k)] = i
	}
	var finest []int
	for i, k := range keys {
		if len(s.Sets[s.setOf(k)]) == len(s.Groups) {
			finest = append(finest, i)
		}
	}
	covers := func(t, f []*string) bool {
		for c := range t {
			if *t[c] != TotalKey && *t[c] != *f[c] {
				return false
			}
		}
		return true
	}
	for i, k := range keys {
		if len(s.Sets[s.setOf(k)]) == len(s.Groups) {
			continue
		}
		r := relation{cells: []int{i}, coef: []float64{1}}
		for _, f := range finest {
			if covers(k, keys[f]) {
				r.cells, r.coef = append(r.cells, f), append(r.coef, -1)
			}
		}
		full = append(full, r)
		for c := range k {
			if *k[c] != TotalKey {
				continue
			}
			l := relation{cells: []int{i}, coef: []float64{1}}
			child := slices.Clone(k)
			for _, v := range s.Groups[c].Domain {
				child[c] = &v
				if j, ok := byKey[keyString(child)]; ok {
					l.cells, l.coef = append(l.cells, j), append(l.coef, -1)
				}
			}
			if len(l.cells) > 1 {
				lines = append(lines, l)
			}
		}
	}
	return lines, full
}

// suppressTotals is secondary suppression for a table with grouping sets
// (Spec.Sets), cells keyed as releasedKeys gives them, totals among them.
func (s Spec) suppressTotals(keys [][]*string, noisy []float64, suppressed []bool) []bool {
	lines, full := s.setRelations(keys)
	return completeSuppression(len(keys), lines, full, noisy, suppressed)
}

// completeSuppression chooses complementary suppressions so that no
// suppressed cell is determined by the released cells through the
// relations (lines, then full, whose union must span every linear relation
// between the cells). While some suppressed cell is determined, the
// released cell with the smallest noisy value in a line through it (else
// in any relation through it) is suppressed too, the first on ties. Only
// noisy values are used. A cell no choice can protect (a relation whose
// every other cell is already suppressed, such as a line of one cell with
// a released margin) is left as it is. It returns the cells suppressed for
// this reason only.
func completeSuppression(n int, lines, full []relation, noisy []float64, suppressed []bool) []bool {
	secondary := make([]bool, n)
	unknown := func(i int) bool { return suppressed[i] || secondary[i] }
	rels := append(slices.Clip(lines), full...)
	through := make([][]int, n) // relation indexes through each cell
	for ri, r := range rels {
		for _, c := range r.cells {
			through[c] = append(through[c], ri)
		}
	}
	stuck := make([]bool, n)
	for {
		det := determinedCells(n, rels, unknown)
		pick := -1
		for j := range n {
			if !det[j] || stuck[j] {
				continue
			}
			pick = cheapestReleased(j, rels, through, len(lines), noisy, unknown)
			if pick >= 0 {
				break
			}
			stuck[j] = true
		}
		if pick < 0 {
			return secondary
		}
		secondary[pick] = true
	}
}

// cheapestReleased is the released cell with the smallest noisy value (the
// first on ties) in a line (relation index below nLines) through cell j,
// else in any relation through j; -1 when there is none.
func cheapestReleased(j int, rels []relation, through [][]int, nLines int, noisy []float64, unknown func(int) bool) int {
	for _, linesOnly := range []bool{true, false} {
		pick := -1
		for _, ri := range through[j] {
			if linesOnly && ri >= nLines {
				continue
			}
			for _, c := range rels[ri].cells {
				if !unknown(c) && (pick < 0 || noisy[c] < noisy[pick] || (noisy[c] == noisy[pick] && c < pick)) {
					pick = c
				}
			}
		}
		if pick >= 0 {
			return pick
		}
	}
	return -1
}

// determinedCells reports which unknown cells the relations determine from
// the known ones: cell j is determined when e_j lies in the row space of
// the relations restricted to the unknown cells, i.e. every solution of
// the relations that agrees with the released cells gives j the same
// value. Gauss–Jordan elimination with partial pivoting on the unknown
// columns. The relations have coefficients ±1 and the systems are small,
// so rounding errors stay many orders below the 1e-9 under which a value
// counts as zero (dp's tests check the decisions in exact arithmetic).
func determinedCells(n int, rels []relation, unknown func(int) bool) []bool {
	col := map[int]int{}
	var cols []int
	for i := range n {
		if unknown(i) {
			col[i] = len(cols)
			cols = append(cols, i)
		}
	}
	det := make([]bool, n)
	if len(cols) == 0 {
		return det
	}
	var m [][]float64
	for _, r := range rels {
		row := make([]float64, len(cols))
		nz := false
		for k, c := range r.cells {
			if j, ok := col[c]; ok {
				row[j] += r.coef[k]
				nz = true
			}
		}
		if nz {
			m = append(m, row)
		}
	}
	const eps = 1e-9
	pivotRow := make([]int, len(cols))
	for j := range pivotRow {
		pivotRow[j] = -1
	}
	rank := 0
	for j := range cols {
		best := -1
		for i := rank; i < len(m); i++ {
			if math.Abs(m[i][j]) > eps && (best < 0 || math.Abs(m[i][j]) > math.Abs(m[best][j])) {
				best = i
			}
		}
		if best < 0 {
			continue
		}
		m[rank], m[best] = m[best], m[rank]
		p := m[rank][j]
		for c := range m[rank] {
			m[rank][c] /= p
		}
		for i := range m {
			if i == rank || math.Abs(m[i][j]) <= eps {
				continue
			}
			f := m[i][j]
			for c := range m[i] {
				m[i][c] -= f * m[rank][c]
			}
		}
		pivotRow[j] = rank
		rank++
	}
	for j, cell := range cols {
		r := pivotRow[j]
		if r < 0 {
			continue
		}
		free := false
		for c := range cols {
			if c != j && pivotRow[c] < 0 && math.Abs(m[r][c]) > eps {
				free = true
				break
			}
		}
		det[cell] = !free
	}
	return det
}
