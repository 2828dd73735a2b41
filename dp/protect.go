package dp

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"

	"github.com/google/differential-privacy/go/v3/dpagg"
	"github.com/google/differential-privacy/go/v3/noise"
)

// Options are the run-time inputs of Protect besides the Spec and the data.
type Options struct {
	// Noise replaces the Spec's mechanism for the statistics. Leave it nil in
	// production: the library's Laplace or Gaussian noise is used. Tests set
	// it to a deterministic fake, as the library's own tests do. Partition
	// selection always uses the library's own randomness (it offers no
	// seed), so there is no seed here either. Protect and ProtectPartial
	// call it from one goroutine.
	Noise noise.Noise
	// DroppedRows is the number of rows the k/C contribution bounds removed
	// (the rewritten query's __dropped column). It is reported rounded to
	// the rounding base.
	DroppedRows int64
	// Selected, when set, is the Selector every group passed through
	// (Keep) as the caller read them: the groups are those it kept, and
	// Protect does not select again.
	Selected *Selector
}

// noisyGroup is one group after noise: everything post-processing may use.
// It deliberately holds no exact statistic, so no suppression, rounding or
// clamping decision can look at one.
type noisyGroup struct {
	keys []*string
	// stats holds the noisy value of every statistic of the budget plan.
	stats []float64
	// dominance holds, per aggregate, the dominance rules the exact
	// contributions broke. Only these flags are derived from exact values.
	dominance [][]string
	// quantiles holds, per quantile aggregate, its released value and
	// interval, read from the noisy tree (quantileRelease).
	quantiles [][3]float64
	// trees holds, for a federated part, each quantile tree's noisy node
	// counts (Spec.TreeOwners order, encoded: noisyTreeNodes) in place of
	// quantiles, which the broker reads from the sum of the sites' trees.
	trees [][]byte
}

// Protect turns the exact, contribution-bounded statistics of a query's
// groups into a releasable table and its disclosure report. It fills every
// Report field except OptOut and Sandbox, which the sandbox fills.
//
// The steps, in order: choose the released keys (the public-domain cross
// product, or DP partition selection), add noise to every statistic, and
// then, on noisy values only: suppress small groups, secondary suppression
// when the output has margins, clamp impossible values, round counts and
// attach 95% confidence intervals.
func Protect(s Spec, groups []GroupStats, opts Options) (*Result, error) {
	if err := s.Validate(); err != nil {
		return nil, fmt.Errorf("protect: %w", err)
	}
	if err := checkGroups(s, groups); err != nil {
		return nil, fmt.Errorf("protect: %w", err)
	}
	p := s.plan()
	nz := opts.Noise
	if nz == nil {
		nz = p.declaredNoise()
	}

	noisy, notReleased, mode, err := noisyGroups(s, p, groups, nz, opts.Selected, false)
	if err != nil {
		return nil, fmt.Errorf("protect: %w", err)
	}
	// postProcess sees only noisy values: exact statistics are not passed
	// to it, so no decision it makes can depend on them.
	res, err := postProcess(s, p, noisy)
	if err != nil {
		return nil, fmt.Errorf("protect: %w", err)
	}
	r := &res.Report
	s.fillReport(p, r, mode)
	// Neither number is differentially private; rounding keeps them from
	// being usable as exact counts.
	r.PartitionsNotRelease = int(roundNearest(float64(notReleased), s.RoundingBase))
	r.RowsDroppedByBounding = int64(roundNearest(float64(max(opts.DroppedRows, 0)), s.RoundingBase))
	return res, nil
}

// fillReport fills the report fields that follow from the Spec and its
// budget plan p (Claims, the release threshold and the noise of every
// statistic): Protect's, and Combine's with the plan of the combined noise.
func (s Spec) fillReport(p budgetPlan, r *Report, mode string) {
	c := s.Claims()
	r.Epsilon, r.Delta, r.Mechanism = c.Epsilon, c.Delta, c.Mechanism
	r.MaxGroupsPerPatient, r.MaxRowsPerGroup = c.MaxGroupsPerPatient, c.MaxRowsPerGroup
	r.Threshold, r.RoundingBase, r.Rounding = c.Threshold, c.RoundingBase, c.Rounding
	r.ReleaseThreshold = p.release
	r.PartitionSelection = mode
	r.GroupingSets = c.GroupingSets
	r.Ratios = c.Ratios
	for _, st := range p.stats {
		r.Noise = append(r.Noise, NoiseReport{
			Statistic: st.name, Mechanism: p.mechanism,
			Epsilon: st.eps, Delta: st.delta, Scale: p.scale(st),
		})
	}
	if p.selection {
		r.Noise = append(r.Noise, NoiseReport{
			Statistic: "partition_selection", Mechanism: "pre_aggregation_partition_selection",
			Epsilon: p.selEps, Delta: p.selDelta,
		})
	}
}

// noisyGroups chooses the released keys and adds noise to every statistic
// of every released group; with partial set (a federated part), to every
// node of every quantile tree instead of reading the quantiles. It and the
// functions it calls are the only place exact statistics are read.
func noisyGroups(s Spec, p budgetPlan, groups []GroupStats, nz noise.Noise, selected *Selector, partial bool) (noisy []noisyGroup, notReleased int, mode string, err error) {
	var candidates []GroupStats
	mode = SelectionPublicDomain
	if p.selection {
		mode = SelectionPreThreshold
		candidates, notReleased, err = selectPartitions(s, groups, selected)
	} else {
		candidates, err = domainGroups(s, groups)
	}
	if err != nil {
		return nil, 0, "", err
	}
	noisy = make([]noisyGroup, len(candidates))
	for i, g := range candidates {
		if noisy[i], err = addNoise(s, p, g, nz, partial); err != nil {
			return nil, 0, "", err
		}
	}
	return noisy, notReleased, mode, nil
}

// checkGroups refuses input that does not match the Spec. Messages never
// contain data values.
func checkGroups(s Spec, groups []GroupStats) error {
	if len(s.Groups) == 0 && len(groups) > 1 {
		return fmt.Errorf("a query without GROUP BY has one group, got %d", len(groups))
	}
	for i, g := range groups {
		if len(g.Keys) != len(s.Groups) {
			return fmt.Errorf("group %d has %d keys, the spec has %d group columns", i+1, len(g.Keys), len(s.Groups))
		}
		if len(g.Aggs) != len(s.Aggregates) {
			return fmt.Errorf("group %d has %d aggregates, the spec has %d", i+1, len(g.Aggs), len(s.Aggregates))
		}
		if g.Patients < 0 {
			return fmt.Errorf("group %d has a negative patient count", i+1)
		}
		for j, a := range g.Aggs {
			for _, v := range []float64{a.Count, a.Sum, a.SumSq, a.Top1, a.Top2} {
				if math.IsNaN(v) || math.IsInf(v, 0) {
					return fmt.Errorf("group %d, aggregate %q: statistic is not finite", i+1, s.Aggregates[j].Name)
				}
			}
			if a.Count < 0 || a.SumSq < 0 {
				return fmt.Errorf("group %d, aggregate %q: negative count or sum of squares", i+1, s.Aggregates[j].Name)
			}
			for leaf, n := range a.Hist {
				if leaf < 0 || leaf >= QuantileLeaves || n < 0 {
					return fmt.Errorf("group %d, aggregate %q: histogram entry outside the quantile tree", i+1, s.Aggregates[j].Name)
				}
			}
		}
	}
	return nil
}

// keyString encodes a key tuple unambiguously (NULL distinct from any
// string) for use as a map key.
func keyString(keys []*string) string {
	var b strings.Builder
	for _, k := range keys {
		if k == nil {
			b.WriteString("N;")
			continue
		}
		b.WriteString(strconv.Itoa(len(*k)))
		b.WriteByte(':')
		b.WriteString(*k)
		b.WriteByte(';')
	}
	return b.String()
}

// domainGroups returns one entry per key of the cross product of the public
// domains, in domain order, with the exact statistics of the matching input
// group or zeros. Input keys outside the domains (including NULL) are
// ignored: releasing them would reveal that they occur.
func domainGroups(s Spec, groups []GroupStats) ([]GroupStats, error) {
	byKey := make(map[string]int, len(groups))
	domains := s.domainSets()
	for i, g := range groups {
		if err := s.checkClosed(g.Keys, domains); err != nil {
			return nil, err
		}
		k := keyString(g.Keys)
		if _, dup := byKey[k]; dup {
			return nil, fmt.Errorf("group %d repeats the keys of an earlier group", i+1)
		}
		byKey[k] = i
	}
	released := s.releasedKeys()
	out := make([]GroupStats, 0, len(released))
	for _, keys := range released {
		if i, ok := byKey[keyString(keys)]; ok {
			g := groups[i]
			g.Keys = keys
			out = append(out, g)
		} else {
			out = append(out, GroupStats{Keys: keys, Aggs: make([]AggStats, len(s.Aggregates))})
		}
	}
	return out, nil
}

// selectPartitions keeps the groups that pass partition selection
// (Selector), or takes them as selected already (the caller ran sel over
// every group), and sorts them by key so the output order says nothing
// about the input order.
func selectPartitions(s Spec, groups []GroupStats, sel *Selector) ([]GroupStats, int, error) {
	kept := groups
	if sel == nil {
		var err error
		if sel, err = s.NewSelector(); err != nil {
			return nil, 0, err
		}
		kept = nil
		for _, g := range groups {
			keep, err := sel.Keep(g)
			if err != nil {
				return nil, 0, err
			}
			if keep {
				kept = append(kept, g)
			}
		}
	}
	kept = slices.Clone(kept)
	slices.SortFunc(kept, func(a, b GroupStats) int { return compareKeys(a.Keys, b.Keys) })
	return kept, sel.notReleased, nil
}

// Selector decides, one group at a time, whether a group's key may be
// released: with public domains, whether every key lies in its domain
// (others are never released: that they occur would be news); otherwise
// the library's pre-aggregation partition selection, fed with the group's
// distinct patient count, with a pre-threshold equal to the small-cell
// threshold. The sandbox runs it as it reads the groups, so it holds only
// the kept ones, and how many there are is the outcome of DP selection,
// not an exact count (a cap on groups then decides on it, not on data).
type Selector struct {
	s       Spec
	p       budgetPlan
	domains []map[string]bool
	seen    map[string]bool
	// notReleased counts the keys partition selection dropped.
	notReleased int
}

// NewSelector returns the Selector of a valid Spec.
func (s Spec) NewSelector() (*Selector, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	sel := &Selector{s: s, p: s.plan(), seen: make(map[string]bool)}
	if !sel.p.selection {
		sel.domains = s.domainSets()
	}
	return sel, nil
}

// domainSets is, per group column, the set of its domain's keys, with
// TotalKey where a grouping set totals over the column.
func (s Spec) domainSets() []map[string]bool {
	tot := s.totalled()
	out := make([]map[string]bool, len(s.Groups))
	for i, g := range s.Groups {
		d := make(map[string]bool, len(g.Domain)+1)
		for _, v := range g.Domain {
			d[v] = true
		}
		d[TotalKey] = tot[i]
		out[i] = d
	}
	return out
}

// checkClosed fails when a key of a column with a closed domain
// (GroupSpec.Closed) lies outside it. The message names the column only.
func (s Spec) checkClosed(keys []*string, domains []map[string]bool) error {
	for i, g := range s.Groups {
		if g.Closed && i < len(keys) && (keys[i] == nil || !domains[i][*keys[i]]) {
			return fmt.Errorf("group column %q has a key outside its closed domain: the keys derived from the query and the data's disagree", g.Name)
		}
	}
	return nil
}

// PublicDomain reports whether keys come from public domains: then at
// most the cross product of the domains is kept, whatever the data.
func (sel *Selector) PublicDomain() bool { return !sel.p.selection }

// Keep reports whether g's key may be released. A key seen before is an
// error (a query's groups are distinct).
func (sel *Selector) Keep(g GroupStats) (bool, error) {
	if len(g.Keys) != len(sel.s.Groups) {
		return false, fmt.Errorf("a group has %d keys, the spec has %d group columns", len(g.Keys), len(sel.s.Groups))
	}
	k := keyString(g.Keys)
	if sel.seen[k] {
		return false, errors.New("a group repeats the keys of an earlier group")
	}
	sel.seen[k] = true
	if !sel.p.selection {
		if err := sel.s.checkClosed(g.Keys, sel.domains); err != nil {
			return false, err
		}
		for i, key := range g.Keys {
			if key == nil || !sel.domains[i][*key] {
				return false, nil
			}
		}
		return sel.s.setOf(g.Keys) >= 0, nil
	}
	ps, err := dpagg.NewPreAggSelectPartition(&dpagg.PreAggSelectPartitionOptions{
		Epsilon:                  sel.p.selEps,
		Delta:                    sel.p.selDelta,
		PreThreshold:             int64(sel.s.Threshold),
		MaxPartitionsContributed: int64(sel.s.MaxGroupsPerPatient),
	})
	if err != nil {
		return false, fmt.Errorf("partition selection: %w", err)
	}
	if err := ps.IncrementBy(g.Patients); err != nil {
		return false, fmt.Errorf("partition selection: %w", err)
	}
	keep, err := ps.ShouldKeepPartition()
	if err != nil {
		return false, fmt.Errorf("partition selection: %w", err)
	}
	if !keep {
		sel.notReleased++
	}
	return keep, nil
}

// compareKeys orders key tuples column by column, NULL first.
func compareKeys(a, b []*string) int {
	for i := range a {
		switch {
		case a[i] == nil && b[i] == nil:
			continue
		case a[i] == nil:
			return -1
		case b[i] == nil:
			return 1
		}
		if c := cmp.Compare(*a[i], *b[i]); c != 0 {
			return c
		}
	}
	return 0
}

// addNoise computes the exact value of every planned statistic of g and
// adds noise to it; a quantile tree's noise is on its nodes, which it
// reads (addQuantiles) or, for a federated part, keeps (addTreeNodes).
// Dominance flags, the only other use of exact values, are computed here
// too so that nothing exact survives this function.
func addNoise(s Spec, p budgetPlan, g GroupStats, nz noise.Noise, partial bool) (noisyGroup, error) {
	out := noisyGroup{
		keys:      g.Keys,
		stats:     make([]float64, len(p.stats)),
		dominance: make([][]string, len(s.Aggregates)),
	}
	for i, st := range p.stats {
		var x float64
		if st.role == roleTree {
			continue // noised node by node by the library (addQuantiles)
		}
		if st.role == roleSuppress {
			x = float64(g.Patients)
		} else {
			a, spec := g.Aggs[st.agg], s.Aggregates[st.agg]
			switch st.role {
			case roleValue:
				x = a.Count
				if spec.Kind == AggSum {
					x = a.Sum
				}
			case roleCount:
				x = a.Count
			case roleNormSum:
				x = a.Sum // Σ(x−m): centred by the rewrite (AggStats)
			case roleNormSumSq:
				x = a.SumSq // Σ(x−m)²
			}
		}
		v, err := nz.AddNoiseFloat64(x, st.l0, st.lInf, st.eps, st.delta)
		if err != nil {
			return noisyGroup{}, fmt.Errorf("noise on %s: %w", st.name, err)
		}
		out.stats[i] = v
	}
	addTrees := addQuantiles
	if partial {
		addTrees = addTreeNodes
	}
	if err := addTrees(s, p, g, nz, &out); err != nil {
		return noisyGroup{}, err
	}
	for i, a := range s.Aggregates {
		if a.Kind.UsesTop() {
			sum := g.Aggs[i].Sum
			if a.Kind.Centred() {
				sum += a.Midpoint() * g.Aggs[i].Count
			}
			out.dominance[i] = Dominance(sum, g.Aggs[i].Top1, g.Aggs[i].Top2)
		}
	}
	return out, nil
}

// addQuantiles builds each quantile tree of g from its exact histogram
// with the library's noise and reads every quantile of it (with its
// interval, from the tree's already noisy counts and the noisy count of
// its values in out.stats) into out.quantiles. The tree, which holds exact
// counts, does not outlive this function.
func addQuantiles(s Spec, p budgetPlan, g GroupStats, nz noise.Noise, out *noisyGroup) error {
	trees := map[int]*dpagg.BoundedQuantiles{}
	for i, a := range s.Aggregates {
		if a.Kind != AggQuantile {
			continue
		}
		if out.quantiles == nil {
			out.quantiles = make([][3]float64, len(s.Aggregates))
		}
		idx := p.aggStats[i]
		count, tree := idx[0], p.stats[idx[1]]
		bq, ok := trees[a.Tree]
		if !ok {
			var err error
			if bq, err = newTree(s, p.tree, tree, a, g.Aggs[tree.agg].Hist, nz); err != nil {
				return err
			}
			trees[a.Tree] = bq
		}
		v, lo, hi, err := quantileRelease(bq.Result, a, p.tree, p.scale(tree), out.stats[count])
		if err != nil {
			return err
		}
		out.quantiles[i] = [3]float64{v, lo, hi}
	}
	return nil
}

// addTreeNodes is addQuantiles for a federated part: the noisy count of
// every node of each quantile tree of g (noisyTreeNodes) into out.trees,
// in Spec.TreeOwners order.
func addTreeNodes(s Spec, p budgetPlan, g GroupStats, nz noise.Noise, out *noisyGroup) error {
	for _, i := range s.TreeOwners() {
		b, err := noisyTreeNodes(s, p.tree, p.stats[p.aggStats[i][1]], g.Aggs[i].Hist, nz)
		if err != nil {
			return fmt.Errorf("quantile tree of %s: %w", s.Aggregates[i].Name, err)
		}
		out.trees = append(out.trees, b)
	}
	return nil
}

// postProcess builds the released table from noisy groups. It costs no
// budget: every decision here is a function of noisy values (and the
// dominance flags, which only annotate).
func postProcess(s Spec, p budgetPlan, groups []noisyGroup) (*Result, error) {
	res := &Result{Columns: s.Columns(), Rows: make([][]Cell, 0, len(groups))}

	primary := make([]bool, len(groups))
	ranking := make([]float64, len(groups))
	keys := make([][]*string, len(groups))
	for i, g := range groups {
		ranking[i] = g.stats[p.suppress]
		primary[i] = ranking[i] < p.release
		keys[i] = g.keys
	}
	secondary := make([]bool, len(groups))
	if s.Margins {
		var err error
		if len(s.Sets) > 0 {
			secondary = s.suppressTotals(keys, ranking, primary)
		} else if secondary, err = SecondarySuppress(keys, ranking, primary); err != nil {
			return nil, err
		}
	}

	r := &res.Report
	rule := s.rounding()
	roundErr := float64(s.RoundingBase) / 2
	if rule == RoundingMidpoint6 {
		roundErr = 4.5 // 1 (from a noisy value just above 0.5) released as 5
	}
	for gi, g := range groups {
		row := make([]Cell, 0, len(s.Groups)+len(s.Aggregates))
		for _, k := range g.keys {
			if k == nil {
				row = append(row, Cell{Null: true})
			} else {
				row = append(row, Cell{Key: *k})
			}
		}
		suppressed := primary[gi] || secondary[gi]
		if suppressed {
			r.GroupsSuppressed++
		} else {
			r.GroupsReleased++
		}
		for ai, a := range s.Aggregates {
			if a.Hidden {
				continue // a ratio's part, not a column
			}
			if suppressed {
				row = append(row, Cell{Suppressed: true, Secondary: secondary[gi] && !primary[gi]})
				if primary[gi] {
					r.CellsSuppressed++
				} else {
					r.CellsSecondary++
				}
				continue
			}
			var cell Cell
			var err error
			if a.Kind == AggQuantile {
				q := g.quantiles[ai]
				cell.setValue(q[0], q[1], q[2])
				err = checkFinite(a, q[:]...)
			} else if a.Kind == AggRatio {
				if cell, err = ratioCell(s, p, ai, g.stats); cell.Suppressed {
					r.CellsSuppressed++
				}
			} else {
				cell, err = releaseCell(s, p, a, p.aggStats[ai], g.stats, rule, roundErr)
			}
			if err != nil {
				return nil, err
			}
			if cell.Rounded {
				r.CellsRounded++
			}
			if len(g.dominance[ai]) > 0 {
				cell.Dominance = g.dominance[ai]
				r.CellsDominanceFlags++
			}
			row = append(row, cell)
		}
		res.Rows = append(res.Rows, row)
	}
	return res, nil
}

// releaseCell post-processes the noisy statistics of one aggregate in one
// released group: clamps impossible values, rounds counts and attaches the
// 95% confidence interval of the noise.
func releaseCell(s Spec, p budgetPlan, a AggSpec, idx []int, stats []float64, rule string, roundErr float64) (Cell, error) {
	var cell Cell
	switch a.Kind {
	case AggCount, AggCountPatients:
		st := p.stats[idx[0]]
		v := RoundCount(stats[idx[0]], s.RoundingBase, rule)
		cell.Rounded = s.RoundingBase > 1 || rule == RoundingMidpoint6
		h, err := p.halfWidth(st, CIAlpha)
		if err != nil {
			return Cell{}, err
		}
		// Centred on the released value, widened by the most rounding can
		// move it: centring on the noisy value would undo the rounding.
		cell.setValue(v, math.Max(0, v-h-roundErr), v+h+roundErr)
	case AggSum:
		st := p.stats[idx[0]]
		v := stats[idx[0]]
		lo, hi := sumRange(a)
		v = clamp(v, lo, hi)
		ci, err := p.declaredNoise().ComputeConfidenceIntervalFloat64(v, st.l0, st.lInf, st.eps, st.delta, CIAlpha)
		if err != nil {
			return Cell{}, fmt.Errorf("confidence interval of %s: %w", st.name, err)
		}
		cell.setValue(v, clamp(ci.LowerBound, lo, hi), clamp(ci.UpperBound, lo, hi))
	case AggMean:
		v, lo, hi, err := meanInterval(p, a, idx, stats)
		if err != nil {
			return Cell{}, err
		}
		cell.setValue(v, lo, hi)
	case AggVariance, AggStddev:
		v, lo, hi, err := varianceInterval(p, a, idx, stats)
		if err != nil {
			return Cell{}, err
		}
		if a.Kind == AggStddev {
			v, lo, hi = math.Sqrt(v), math.Sqrt(lo), math.Sqrt(hi)
		}
		cell.setValue(v, lo, hi)
	default:
		return Cell{}, errors.New("unknown aggregate kind")
	}
	return cell, checkFinite(a, *cell.Value, *cell.CILow, *cell.CIHigh)
}

// checkFinite refuses to release a non-finite value (nor can JSON encode
// one); it can only come from statistics far outside what the bounds
// allow.
func checkFinite(a AggSpec, vs ...float64) error {
	for _, v := range vs {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return fmt.Errorf("aggregate %q: released value is not finite", a.Name)
		}
	}
	return nil
}

func (c *Cell) setValue(v, lo, hi float64) {
	c.Value, c.CILow, c.CIHigh = &v, &lo, &hi
}

// sumRange is the range a bounded sum can take: a sum of non-negative
// values cannot be negative, nor a sum of non-positive values positive.
func sumRange(a AggSpec) (lo, hi float64) {
	lo, hi = math.Inf(-1), math.Inf(1)
	if a.Lower >= 0 {
		lo = 0
	}
	if a.Upper <= 0 {
		hi = 0
	}
	return lo, hi
}

func clamp(v, lo, hi float64) float64 { return math.Min(math.Max(v, lo), hi) }

// meanInterval is the noisy mean (noisy midpoint-shifted sum over the noisy
// count, at least 1, plus the midpoint, clamped into the bounds, as the
// library's BoundedMean.Result) and its 95% interval from the intervals of
// numerator and denominator at α/2 each (the library's BoundedMean
// confidence interval with a fixed split).
func meanInterval(p budgetPlan, a AggSpec, idx []int, stats []float64) (v, lo, hi float64, err error) {
	m := a.Midpoint()
	count, sum := stats[idx[0]], stats[idx[1]]
	v = clamp(sum/math.Max(1, count)+m, a.Lower, a.Upper)
	num, err := ciAt(p, p.stats[idx[1]], sum, CIAlpha/2)
	if err != nil {
		return 0, 0, 0, err
	}
	den, err := ciAt(p, p.stats[idx[0]], count, 1-(1-CIAlpha)/(1-CIAlpha/2))
	if err != nil {
		return 0, 0, 0, err
	}
	dLo, dHi := math.Max(1, den.LowerBound), math.Max(1, den.UpperBound)
	lo = num.LowerBound / dHi
	if num.LowerBound < 0 {
		lo = num.LowerBound / dLo
	}
	hi = num.UpperBound / dLo
	if num.UpperBound < 0 {
		hi = num.UpperBound / dHi
	}
	return v, clamp(lo+m, a.Lower, a.Upper), clamp(hi+m, a.Lower, a.Upper), nil
}

// varianceInterval is the noisy variance (as the library's
// BoundedVariance.Result: mean of squares minus squared mean of the
// midpoint-shifted noisy statistics, clamped to [0, (upper−lower)²/4]) and
// a 95% interval by interval arithmetic over the three statistics' own
// intervals at α/3 each (union bound).
func varianceInterval(p budgetPlan, a AggSpec, idx []int, stats []float64) (v, lo, hi float64, err error) {
	maxVar := (a.Upper - a.Lower) * (a.Upper - a.Lower) / 4
	count, sum, sumsq := stats[idx[0]], stats[idx[1]], stats[idx[2]]
	c := math.Max(1, count)
	mean := sum / c
	v = clamp(sumsq/c-mean*mean, 0, maxVar)

	alpha := CIAlpha / 3
	var cis [3]noise.ConfidenceInterval
	for j := range cis {
		if cis[j], err = ciAt(p, p.stats[idx[j]], stats[idx[j]], alpha); err != nil {
			return 0, 0, 0, err
		}
	}
	cLo, cHi := math.Max(1, cis[0].LowerBound), math.Max(1, cis[0].UpperBound)
	sLo, sHi := cis[1].LowerBound, cis[1].UpperBound
	qLo, qHi := math.Max(0, cis[2].LowerBound), math.Max(0, cis[2].UpperBound)
	// s²/c ranges over the quotient of the squares' interval by the count's.
	msqLo, msqHi := qLo/cHi, qHi/cLo
	// (s/c)² ranges over the square of the mean's interval.
	mLo, mHi := divInterval(sLo, sHi, cLo, cHi)
	m2Lo, m2Hi := 0.0, math.Max(mLo*mLo, mHi*mHi)
	if mLo > 0 || mHi < 0 {
		m2Lo = math.Min(mLo*mLo, mHi*mHi)
	}
	return v, clamp(msqLo-m2Hi, 0, maxVar), clamp(msqHi-m2Lo, 0, maxVar), nil
}

// divInterval divides [a, b] by [c, d] with 1 ≤ c ≤ d.
func divInterval(a, b, c, d float64) (lo, hi float64) {
	q := []float64{a / c, a / d, b / c, b / d}
	return slices.Min(q), slices.Max(q)
}

func ciAt(p budgetPlan, st stat, noisy, alpha float64) (noise.ConfidenceInterval, error) {
	ci, err := p.declaredNoise().ComputeConfidenceIntervalFloat64(noisy, st.l0, st.lInf, st.eps, st.delta, alpha)
	if err != nil {
		return noise.ConfidenceInterval{}, fmt.Errorf("confidence interval of %s: %w", st.name, err)
	}
	return ci, nil
}
