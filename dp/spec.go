package dp

import (
	"errors"
	"fmt"
	"math"
	"strings"

	"github.com/google/differential-privacy/go/v3/noise"
)

// Budget-split constants. They are part of what a query costs, so changing
// them changes every future query's accuracy; docs/privacy.md explains them.
const (
	// SelectionEpsilonShare is the share of ε given to DP partition
	// selection when a group column has no public domain. Selection needs
	// roughly ln(1/δ)/ε patients above the pre-threshold before a key is
	// likely to appear, so it gets a large fixed share; the statistics share
	// the rest equally.
	SelectionEpsilonShare = 0.5
	// SelectionDeltaShareGaussian is the share of δ given to partition
	// selection when the statistics use Gaussian noise (which needs δ too).
	// With Laplace noise partition selection gets all of δ.
	SelectionDeltaShareGaussian = 0.5

	// MaxDelta is the exclusive upper limit on a query's δ.
	MaxDelta = 1e-5
	// MaxDomainGroups caps the cross product of public domains a query may
	// release, so a Spec cannot ask Protect for an unbounded table.
	MaxDomainGroups = 1_000_000

	// MaxEpsilon is the largest total ε a Spec may carry: ten times the most
	// a catalog may allow per query. Beyond it noise scales are too small
	// to mean anything and the library's samplers are not exercised there.
	MaxEpsilon = 100
	// MaxAbsBound caps the magnitude of an aggregate's clamping bounds, so
	// that sums of bounded values over any realistic number of rows, and
	// their noise, stay finite: a statistic that overflowed would fail the
	// run on some data and not on other data.
	MaxAbsBound = 1e15
	// minShareEpsilon is the least ε the library accepts for one
	// mechanism (checks.CheckEpsilonVeryStrict): every statistic's share,
	// and partition selection's, must reach it.
	minShareEpsilon = 0x1p-50

	// CIAlpha is the confidence level (1 − CIAlpha) of reported intervals.
	CIAlpha = 0.05
	// accuracyReferenceRows is the group size at which the accuracy of a
	// mean, variance or standard deviation is quoted before the query runs;
	// their error scales roughly as 1/N.
	accuracyReferenceRows = 1000
)

// statRole is what a noisy statistic measures.
type statRole int

const (
	roleValue     statRole = iota // count, count_patients or sum: released as is
	roleCount                     // rows under a mean or variance, values of a quantile tree
	roleNormSum                   // Σ(x−m), m the midpoint of the bounds
	roleNormSumSq                 // Σ(x−m)²
	roleSuppress                  // hidden patient count used only to suppress
	roleTree                      // a quantile tree (quantile.go): its nodes' noise
)

// stat is one noisy statistic and its share of the budget.
type stat struct {
	name  string // column name, or column/part, or "suppression_count"
	agg   int    // index in Spec.Aggregates; -1 for the hidden count
	role  statRole
	l0    int64
	lInf  float64
	eps   float64
	delta float64
}

// budgetPlan is how a valid Spec spends its budget: one entry per noisy
// statistic, plus partition selection when needed.
type budgetPlan struct {
	mechanism string
	// tree is the shape of the quantile trees the plan's tree statistics
	// describe: siteTree (plan), fedTree (partialPlan, federatedPlan).
	tree  treeShape
	stats []stat
	// aggStats[i] lists the indexes in stats belonging to aggregate i.
	aggStats [][]int
	// suppress is the index in stats of the noisy count suppression uses.
	suppress int
	// release is the least noisy patient count a group needs to be released
	// (releaseThreshold); NaN when the library refused the parameters,
	// which checkNoise reports.
	release float64
	// selection is true when keys must pass DP partition selection.
	selection bool
	selEps    float64
	selDelta  float64
}

// Validate reports whether s can be protected; the error names the problem.
func (s Spec) Validate() error {
	if math.IsNaN(s.Epsilon) || math.IsInf(s.Epsilon, 0) || s.Epsilon <= 0 {
		return fmt.Errorf("epsilon must be a finite number above 0, got %v", s.Epsilon)
	}
	if s.Epsilon > MaxEpsilon {
		return fmt.Errorf("epsilon must be at most %v, got %v", MaxEpsilon, s.Epsilon)
	}
	if math.IsNaN(s.Delta) || math.IsInf(s.Delta, 0) || s.Delta < 0 || s.Delta >= MaxDelta {
		return fmt.Errorf("delta must be at least 0 and below %g, got %v", MaxDelta, s.Delta)
	}
	if s.MaxGroupsPerPatient < 1 {
		return fmt.Errorf("max_groups_per_patient (k) must be at least 1, got %d", s.MaxGroupsPerPatient)
	}
	if s.MaxRowsPerGroup < 1 {
		return fmt.Errorf("max_rows_per_group (C) must be at least 1, got %d", s.MaxRowsPerGroup)
	}
	if s.Threshold < 0 {
		return fmt.Errorf("threshold must be at least 0, got %d", s.Threshold)
	}
	if s.RoundingBase < 1 {
		return fmt.Errorf("rounding_base must be at least 1, got %d", s.RoundingBase)
	}
	switch s.Rounding {
	case "", RoundingNearest:
	case RoundingMidpoint6:
		if s.RoundingBase != 5 {
			return fmt.Errorf("rounding %q needs rounding_base 5, got %d", RoundingMidpoint6, s.RoundingBase)
		}
	default:
		return fmt.Errorf("rounding must be %q or %q, got %q", RoundingNearest, RoundingMidpoint6, s.Rounding)
	}
	switch s.Mechanism {
	case "", MechanismLaplace:
	case MechanismGaussian:
		if s.Delta <= 0 {
			return errors.New("gaussian noise needs delta above 0")
		}
	default:
		return fmt.Errorf("mechanism must be %q or %q, got %q", MechanismLaplace, MechanismGaussian, s.Mechanism)
	}

	domainGroups := 1.0
	for i, g := range s.Groups {
		if g.Name == "" {
			return fmt.Errorf("group column %d has no name", i+1)
		}
		if g.Closed && len(g.Domain) == 0 {
			return fmt.Errorf("group column %q: a closed domain needs values", g.Name)
		}
		seen := make(map[string]bool, len(g.Domain))
		for _, v := range g.Domain {
			if seen[v] {
				return fmt.Errorf("group column %q: domain lists a value twice", g.Name)
			}
			seen[v] = true
		}
		domainGroups *= float64(len(g.Domain))
	}
	if s.needsSelection() {
		if s.Delta <= 0 {
			return errors.New("delta must be above 0: a group column has no public domain, so keys need DP partition selection")
		}
	} else if s.Delta <= 0 {
		return errors.New("delta must be above 0: it is the most probability with which a public-domain cell of one patient may be released")
	} else if domainGroups > MaxDomainGroups {
		return fmt.Errorf("the group columns' public domains give %.0f groups, more than the %d allowed", domainGroups, MaxDomainGroups)
	}

	if len(s.Aggregates) == 0 {
		return errors.New("a query must release at least one aggregate")
	}
	for i, a := range s.Aggregates {
		if a.Name == "" {
			return fmt.Errorf("aggregate %d has no name", i+1)
		}
		switch a.Kind {
		case AggCount, AggCountPatients, AggRatio:
			continue
		case AggSum, AggMean, AggVariance, AggStddev, AggQuantile:
		default:
			return fmt.Errorf("aggregate %q: unknown kind %q", a.Name, a.Kind)
		}
		if a.PatientCount {
			return fmt.Errorf("aggregate %q: only a count can be the patient count", a.Name)
		}
		if math.IsNaN(a.Lower) || math.IsInf(a.Lower, 0) || math.IsNaN(a.Upper) || math.IsInf(a.Upper, 0) {
			return fmt.Errorf("aggregate %q: bounds must be finite", a.Name)
		}
		if a.Lower >= a.Upper {
			return fmt.Errorf("aggregate %q: lower bound %v must be below upper bound %v", a.Name, a.Lower, a.Upper)
		}
		if math.Max(math.Abs(a.Lower), math.Abs(a.Upper)) > MaxAbsBound {
			return fmt.Errorf("aggregate %q: bounds must lie within ±%g", a.Name, MaxAbsBound)
		}
	}
	if err := s.checkTrees(); err != nil {
		return err
	}
	if err := s.checkSets(); err != nil {
		return err
	}
	if err := s.checkRatios(); err != nil {
		return err
	}
	return s.checkNoise()
}

// checkNoise refuses a Spec whose budget split gives some statistic, or
// partition selection, less ε than the library accepts, or a noise scale
// that is not a finite positive number: Protect and Accuracy then never
// fail on a Spec that passed Validate.
func (s Spec) checkNoise() error {
	p := s.plan()
	if p.selection && p.selEps < minShareEpsilon {
		return fmt.Errorf("epsilon %v is too small: partition selection's share %v is below 2^-50", s.Epsilon, p.selEps)
	}
	for _, st := range p.stats {
		if st.eps < minShareEpsilon {
			return fmt.Errorf("epsilon %v is too small: each of the %d noisy statistics gets %v, below 2^-50", s.Epsilon, len(p.stats), st.eps)
		}
		if p.mechanism == MechanismGaussian && !(st.delta > 0 && st.delta < 1) {
			return fmt.Errorf("delta %v is too small for gaussian noise on %d statistics", s.Delta, len(p.stats))
		}
		if sc := p.scale(st); !(sc > 0) || math.IsInf(sc, 0) {
			return fmt.Errorf("the noise on %s would not have a finite scale (epsilon %v, delta %v)", st.name, s.Epsilon, s.Delta)
		}
	}
	if math.IsNaN(p.release) || math.IsInf(p.release, 0) {
		return fmt.Errorf("no release threshold for a cell of one patient at delta %v with epsilon %v over %d noisy statistics", s.Delta, s.Epsilon, len(p.stats))
	}
	return nil
}

// needsSelection reports whether keys must pass DP partition selection: some
// group column has no public domain. A query without GROUP BY needs none.
func (s Spec) needsSelection() bool {
	for _, g := range s.Groups {
		if len(g.Domain) == 0 {
			return true
		}
	}
	return false
}

func (s Spec) mechanism() string {
	if s.Mechanism == "" {
		return MechanismLaplace
	}
	return s.Mechanism
}

func (s Spec) rounding() string {
	if s.Rounding == "" {
		return RoundingNearest
	}
	return s.Rounding
}

// plan splits the budget of a valid Spec. The split:
//
//   - partition selection, when needed, takes SelectionEpsilonShare of ε and
//     all of δ (Laplace) or SelectionDeltaShareGaussian of δ (Gaussian);
//   - the rest of ε (and, for Gaussian noise, the rest of δ) is split
//     equally across the noisy statistics: one for a count, count_patients
//     or sum; two (row count, sum) for a mean; three (row count, sum, sum of
//     squares) for a variance or standard deviation; plus one hidden noisy
//     count of the group's distinct patients, which small-cell suppression
//     decides on, unless an aggregate is exactly that count
//     (AggSpec.PatientCount); two for each quantile tree (the noisy count of
//     its values, which its intervals are computed from, and the tree
//     itself, whatever number of ranks read it).
//
// Sensitivities, with k = MaxGroupsPerPatient (L0) and C = MaxRowsPerGroup:
// count L∞ = C; count_patients L∞ = 1; sum L∞ = C·max(|lower|, |upper|);
// for means and variances the values are shifted by the midpoint m of the
// bounds, as the library's BoundedMean and BoundedVariance do, so the sum
// has L∞ = C·(upper−lower)/2 and the sum of squares C·((upper−lower)/2)².
// A quantile tree's nodes have L0 = h·k (a value counts in one node of
// each of the tree's h levels: QuantileTreeHeight, or FederatedTreeHeight
// in a partialPlan) and L∞ = C, as the library's BoundedQuantiles sets
// them (treePartitions).
func (s Spec) plan() budgetPlan { return s.planFor(siteTree) }

// partialPlan is the plan of a site's part of a federated query: plan,
// but for the federated tree shape, which every node of goes to the broker.
// Its statistics are plan's, in the same order, with the same ε and δ.
func (s Spec) partialPlan() budgetPlan { return s.planFor(fedTree) }

func (s Spec) planFor(tree treeShape) budgetPlan {
	p := budgetPlan{
		mechanism: s.mechanism(),
		tree:      tree,
		aggStats:  make([][]int, len(s.Aggregates)),
		suppress:  -1,
		selection: s.needsSelection(),
	}
	// Each grouping set is a grouping of the same bounded rows: a patient
	// is in at most k cells of each (margins.go).
	k := int64(s.MaxGroupsPerPatient) * int64(s.setCount())
	c := float64(s.MaxRowsPerGroup)
	trees := map[int]int{} // quantile tree → its first aggregate
	add := func(agg int, name string, role statRole, lInf float64) int {
		p.stats = append(p.stats, stat{name: name, agg: agg, role: role, l0: k, lInf: s.setsLInf(agg, lInf)})
		if agg >= 0 {
			p.aggStats[agg] = append(p.aggStats[agg], len(p.stats)-1)
		}
		return len(p.stats) - 1
	}
	for i, a := range s.Aggregates {
		half := (a.Upper - a.Lower) / 2
		switch a.Kind {
		case AggCount, AggCountPatients:
			lInf := c
			if a.Kind == AggCountPatients {
				lInf = 1
			}
			j := add(i, a.Name, roleValue, lInf)
			if a.PatientCount && p.suppress < 0 {
				p.suppress = j
			}
		case AggSum:
			add(i, a.Name, roleValue, c*math.Max(math.Abs(a.Lower), math.Abs(a.Upper)))
		case AggMean, AggVariance, AggStddev:
			add(i, a.Name+"/count", roleCount, c)
			add(i, a.Name+"/sum", roleNormSum, c*half)
			if a.Kind.UsesSumSq() {
				add(i, a.Name+"/sumsq", roleNormSumSq, c*half*half)
			}
		case AggQuantile:
			if j, ok := trees[a.Tree]; ok {
				p.aggStats[i] = p.aggStats[j]
				continue
			}
			trees[a.Tree] = i
			add(i, a.Name+"/count", roleCount, c)
			j := add(i, a.Name+"/tree", roleTree, c)
			p.stats[j].l0 = int64(tree.height) * k
		}
	}
	planRatios(s, &p)
	if p.suppress < 0 {
		p.suppress = add(-1, "suppression_count", roleSuppress, 1)
	}

	statEps, statDelta := s.Epsilon, 0.0
	if p.selection {
		p.selEps = s.Epsilon * SelectionEpsilonShare
		statEps = s.Epsilon - p.selEps
		p.selDelta = s.Delta
	}
	if p.mechanism == MechanismGaussian {
		statDelta = s.Delta
		if p.selection {
			p.selDelta = s.Delta * SelectionDeltaShareGaussian
			statDelta = s.Delta - p.selDelta
		}
	}
	n := float64(len(p.stats))
	for i := range p.stats {
		p.stats[i].eps = statEps / n
		p.stats[i].delta = statDelta / n
	}
	p.release = s.releaseThreshold(p)
	return p
}

// releaseThreshold is the least noisy distinct-patient count a group needs
// for its statistics to be released.
//
// With DP partition selection it is T: the library's selection has already
// kept a key one patient creates with probability at most δ. A public-domain
// cell passes through no selection, so the noisy count alone decides, and
// with threshold T a cell of one or two patients would be released with
// probability ½·e^{−(T−n)/b}, a few percent at ε = 1. The threshold is
// therefore raised to the library's Laplace (or Gaussian) thresholding
// point for the suppression count (Noise.Threshold with L0 = k, L∞ = 1 and
// the count's ε, δ share): a cell of one patient is then released with
// probability at most δ, exactly as a key created by one patient under
// partition selection. It depends on the Spec alone (not on data), and it
// is post-processing of the noisy count, so it costs no budget: δ here is
// a release probability, not a privacy loss.
func (s Spec) releaseThreshold(p budgetPlan) float64 {
	t := float64(s.Threshold)
	if p.selection {
		return t
	}
	st := p.stats[p.suppress]
	lib, err := p.declaredNoise().Threshold(st.l0, st.lInf, st.eps, st.delta, s.Delta)
	if err != nil {
		return math.NaN()
	}
	return math.Max(t, lib)
}

// declaredNoise is the library noise for the plan's mechanism.
func (p budgetPlan) declaredNoise() noise.Noise {
	if p.mechanism == MechanismGaussian {
		return noise.Gaussian()
	}
	return noise.Laplace()
}

// Cost is the (ε, δ) the query spends. δ is charged only when something
// uses it (partition selection or Gaussian noise); a public-domain query
// with Laplace noise costs δ = 0 whatever Spec.Delta says. Cost is
// meaningful only for a Spec that passes Validate.
func (s Spec) Cost() Cost {
	p := s.plan()
	c := Cost{Epsilon: s.Epsilon}
	if p.selection {
		c.Delta = s.Delta
	}
	if p.mechanism == MechanismGaussian {
		c.Delta = s.Delta
	}
	return c
}

// scale is the standard deviation of the noise on st.
func (p budgetPlan) scale(st stat) float64 {
	if p.mechanism == MechanismGaussian {
		return noise.SigmaForGaussian(st.l0, st.lInf, st.eps, st.delta)
	}
	return math.Sqrt2 * float64(st.l0) * st.lInf / st.eps
}

// halfWidth is the half-width of the (1−alpha) interval of the noise on st,
// from the library.
func (p budgetPlan) halfWidth(st stat, alpha float64) (float64, error) {
	ci, err := p.declaredNoise().ComputeConfidenceIntervalFloat64(0, st.l0, st.lInf, st.eps, st.delta, alpha)
	if err != nil {
		return 0, fmt.Errorf("confidence interval of %s: %w", st.name, err)
	}
	return (ci.UpperBound - ci.LowerBound) / 2, nil
}

// Accuracy is the expected 95% half-width of every aggregate's noise, known
// before the query runs. Counts and sums come straight from the library's
// confidence interval. A mean, variance or standard deviation depends on the
// group size N, unknown beforehand, so it is quoted for N = 1000 values with
// a first-order bound whose parts each get an equal share of α (Bonferroni):
//
//	mean:     (h_sum + D·h_count) / N
//	variance: (h_sumsq + 2D·h_sum + 2D²·h_count) / N
//	stddev:   √(variance half-width)   (since |√a − √b| ≤ √|a − b|)
//
// with D = (upper − lower)/2 and h the half-widths of the midpoint-shifted
// statistics. A quantile is quoted the same way (quantileAccuracy).
func (s Spec) Accuracy() ([]Accuracy, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	return s.accuracy(s.plan())
}

// accuracy is Accuracy for the budget plan p (FederatedAccuracy passes
// the plan of the sites' combined noise).
func (s Spec) accuracy(p budgetPlan) (_ []Accuracy, err error) {
	out := make([]Accuracy, len(s.Aggregates))
	for i, a := range s.Aggregates {
		idx := p.aggStats[i]
		out[i].Column = a.Name
		out[i].ReleaseThreshold = p.release
		if a.Kind == AggRatio {
			if out[i], err = s.ratioAccuracy(p, i); err != nil {
				return nil, err
			}
			continue
		}
		if a.Kind == AggQuantile {
			out[i].HalfWidth95 = quantileAccuracy(p, a, p.stats[idx[1]])
			out[i].Note = fmt.Sprintf("approximate, for %d values spread evenly over the bounds; the rank error shrinks about as 1/N for N values", accuracyReferenceRows)
			continue
		}
		if a.Kind == AggCount || a.Kind == AggCountPatients || a.Kind == AggSum {
			h, err := p.halfWidth(p.stats[idx[0]], CIAlpha)
			if err != nil {
				return nil, err
			}
			out[i].HalfWidth95 = h
			if a.Kind != AggSum && s.RoundingBase > 1 {
				out[i].Note = fmt.Sprintf("noise only; released counts are also rounded to a multiple of %d", s.RoundingBase)
			}
			continue
		}
		alpha := CIAlpha / float64(len(idx))
		hs := make([]float64, len(idx))
		for j, si := range idx {
			h, err := p.halfWidth(p.stats[si], alpha)
			if err != nil {
				return nil, err
			}
			hs[j] = h
		}
		d := (a.Upper - a.Lower) / 2
		n := float64(accuracyReferenceRows)
		switch a.Kind {
		case AggMean:
			out[i].HalfWidth95 = (hs[1] + d*hs[0]) / n
		case AggVariance:
			out[i].HalfWidth95 = (hs[2] + 2*d*hs[1] + 2*d*d*hs[0]) / n
		case AggStddev:
			out[i].HalfWidth95 = math.Sqrt((hs[2] + 2*d*hs[1] + 2*d*d*hs[0]) / n)
		}
		out[i].Note = fmt.Sprintf("approximate, for a group of %d values; shrinks about as 1/N for N values", accuracyReferenceRows)
		if a.Kind == AggStddev {
			out[i].Note = fmt.Sprintf("approximate upper bound, for a group of %d values; shrinks about as 1/√N", accuracyReferenceRows)
		}
	}
	if note := s.setsNote(); note != "" {
		for i := range out {
			out[i].Note = strings.TrimPrefix(out[i].Note+"; "+note, "; ")
		}
	}
	return s.released(out), nil
}
