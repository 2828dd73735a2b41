package dp

import (
	"fmt"
	"math"
)

// Ratios. A ratio (AggRatio) is num/den of two other aggregates of the same
// query, its parts (AggSpec.Num and Den): a count, count_patients or sum
// over a count or count_patients, e.g. count(*) FILTER (WHERE …) /
// count(*). The parts are ordinary noisy statistics, planned and budgeted
// like any aggregate: released as columns of their own, or Hidden when the
// query releases only the ratio. The ratio itself has no statistic and no
// budget: its value and interval are post-processing of the parts' noisy
// values,
//
//	value = num~ / max(1, den~)
//
// (num~ clamped to what the numerator can take: a count is never negative),
// clamped to ≥ 0 for a non-negative numerator and into [0, 1] for a
// proportion (AggSpec.Proportion). Its 95% interval divides the numerator's
// interval by the denominator's, each at α/2 (union bound), as meanInterval
// does. A ratio is withheld (Suppressed) when its noisy denominator is below
// the release threshold, whatever its group: a rate over a handful of
// patients is noise, and the rule reads only the noisy denominator.

// RatioReport says how a ratio column was derived: its numerator and
// denominator are the statistics of those names in Report.Noise.
type RatioReport struct {
	Column      string `json:"column"`
	Numerator   string `json:"numerator"`
	Denominator string `json:"denominator"`
	// Proportion: the ratio is clamped into [0, 1].
	Proportion bool `json:"proportion,omitempty"`
}

// checkRatios refuses a ratio whose parts are not aggregates of the Spec
// of the kinds a ratio divides, and a hidden aggregate no ratio reads
// (it would spend budget on nothing released).
func (s Spec) checkRatios() error {
	read := make([]bool, len(s.Aggregates))
	for _, a := range s.Aggregates {
		if a.Kind != AggRatio {
			if a.Num != 0 || a.Den != 0 || a.Proportion {
				return fmt.Errorf("aggregate %q: only a ratio has a numerator and a denominator", a.Name)
			}
			continue
		}
		if a.Hidden || a.PatientCount {
			return fmt.Errorf("ratio %q cannot be hidden or a patient count", a.Name)
		}
		part := func(i int, what string, kinds ...AggKind) (AggSpec, error) {
			if i < 1 || i > len(s.Aggregates) {
				return AggSpec{}, fmt.Errorf("ratio %q: its %s is aggregate %d, which the query does not have", a.Name, what, i)
			}
			p := s.Aggregates[i-1]
			for _, k := range kinds {
				if p.Kind == k {
					read[i-1] = true
					return p, nil
				}
			}
			return AggSpec{}, fmt.Errorf("ratio %q: its %s %q is a %s; a ratio divides a count, count_patients or sum by a count or count_patients", a.Name, what, p.Name, p.Kind)
		}
		num, err := part(a.Num, "numerator", AggCount, AggCountPatients, AggSum)
		if err != nil {
			return err
		}
		den, err := part(a.Den, "denominator", AggCount, AggCountPatients)
		if err != nil {
			return err
		}
		if a.Num == a.Den {
			return fmt.Errorf("ratio %q divides an aggregate by itself", a.Name)
		}
		if a.Proportion && num.Kind != den.Kind {
			return fmt.Errorf("ratio %q: a proportion divides a count by a count of the same kind", a.Name)
		}
	}
	for i, a := range s.Aggregates {
		if a.Hidden && !read[i] {
			return fmt.Errorf("aggregate %q is hidden but no ratio reads it", a.Name)
		}
	}
	return nil
}

// planRatios gives every ratio its parts' statistics (numerator first):
// the parts' own, so a ratio adds none.
func planRatios(s Spec, p *budgetPlan) {
	for i, a := range s.Aggregates {
		if a.Kind == AggRatio {
			p.aggStats[i] = []int{p.aggStats[a.Num-1][0], p.aggStats[a.Den-1][0]}
		}
	}
}

// ratioRange is the range a ratio's numerator can take, and the ratio's.
func ratioRange(s Spec, a AggSpec) (numLo, numHi, lo, hi float64) {
	numLo, numHi = 0, math.Inf(1)
	if num := s.Aggregates[a.Num-1]; num.Kind == AggSum {
		numLo, numHi = sumRange(num)
	}
	lo, hi = math.Inf(-1), math.Inf(1)
	if numLo >= 0 {
		lo = 0
	}
	if numHi <= 0 {
		hi = 0
	}
	if a.Proportion {
		hi = 1
	}
	return numLo, numHi, lo, hi
}

// ratioCell is the released cell of ratio ai in a released group, from
// the group's noisy statistics: withheld when the noisy denominator is
// below the release threshold.
func ratioCell(s Spec, p budgetPlan, ai int, stats []float64) (Cell, error) {
	a := s.Aggregates[ai]
	idx := p.aggStats[ai]
	if stats[idx[1]] < p.release {
		return Cell{Suppressed: true}, nil
	}
	v, lo, hi, err := ratioInterval(s, p, a, idx, stats)
	if err != nil {
		return Cell{}, err
	}
	var cell Cell
	cell.setValue(v, lo, hi)
	return cell, checkFinite(a, v, lo, hi)
}

// ratioInterval is a ratio's value and 95% interval from its parts' noisy
// values: the numerator's interval at α/2 over the denominator's at the
// rest (as meanInterval), the denominator at least 1.
func ratioInterval(s Spec, p budgetPlan, a AggSpec, idx []int, stats []float64) (v, lo, hi float64, err error) {
	numLo, numHi, rLo, rHi := ratioRange(s, a)
	num, den := stats[idx[0]], stats[idx[1]]
	v = clamp(clamp(num, numLo, numHi)/math.Max(1, den), rLo, rHi)
	nci, err := ciAt(p, p.stats[idx[0]], num, CIAlpha/2)
	if err != nil {
		return 0, 0, 0, err
	}
	dci, err := ciAt(p, p.stats[idx[1]], den, 1-(1-CIAlpha)/(1-CIAlpha/2))
	if err != nil {
		return 0, 0, 0, err
	}
	lo, hi = divInterval(clamp(nci.LowerBound, numLo, numHi), clamp(nci.UpperBound, numLo, numHi),
		math.Max(1, dci.LowerBound), math.Max(1, dci.UpperBound))
	return v, clamp(lo, rLo, rHi), clamp(hi, rLo, rHi), nil
}

// ratioAccuracy is a ratio's expected 95% half-width before the query
// runs. It depends on the unknown denominator D and ratio r: to first
// order (h_num + r·h_den)/D, each part's half-width at α/2, quoted for
// D = 1000 and r = 1 for a count over a count (a proportion is at most 1),
// r = max(|lower|, |upper|) of the summed values for a sum over a count.
func (s Spec) ratioAccuracy(p budgetPlan, i int) (Accuracy, error) {
	a := s.Aggregates[i]
	idx := p.aggStats[i]
	hn, err := p.halfWidth(p.stats[idx[0]], CIAlpha/2)
	if err != nil {
		return Accuracy{}, err
	}
	hd, err := p.halfWidth(p.stats[idx[1]], CIAlpha/2)
	if err != nil {
		return Accuracy{}, err
	}
	r, what := 1.0, "a ratio of 1"
	if num := s.Aggregates[a.Num-1]; num.Kind == AggSum {
		r = math.Max(math.Abs(num.Lower), math.Abs(num.Upper))
		what = fmt.Sprintf("a ratio of %g (the largest value summed)", r)
	}
	return Accuracy{
		Column:           a.Name,
		HalfWidth95:      (hn + r*hd) / accuracyReferenceRows,
		ReleaseThreshold: p.release,
		Note: fmt.Sprintf("approximate, for a denominator of %d and %s; shrinks about as 1/D for a denominator D; withheld when the noisy denominator is below %.4g",
			accuracyReferenceRows, what, p.release),
	}, nil
}

// released drops the accuracy of hidden aggregates (ratios' parts that are
// not columns): one entry per released column, in order.
func (s Spec) released(acc []Accuracy) []Accuracy {
	out := acc[:0]
	for i, a := range s.Aggregates {
		if !a.Hidden {
			out = append(out, acc[i])
		}
	}
	return out
}

// ratioReports lists how each ratio column is derived (Report.Ratios).
func (s Spec) ratioReports() []RatioReport {
	var out []RatioReport
	for _, a := range s.Aggregates {
		if a.Kind == AggRatio && a.Num >= 1 && a.Num <= len(s.Aggregates) && a.Den >= 1 && a.Den <= len(s.Aggregates) {
			out = append(out, RatioReport{
				Column:      a.Name,
				Numerator:   s.Aggregates[a.Num-1].Name,
				Denominator: s.Aggregates[a.Den-1].Name,
				Proportion:  a.Proportion,
			})
		}
	}
	return out
}
