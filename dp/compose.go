package dp

import "math"

// budgetTolerance is the relative slack Fits allows, so a budget spent in
// several float64 additions is not refused for rounding error.
const budgetTolerance = 1e-9

// ComposeBasic is the (ε, δ) of running all the given queries on the same
// data: ε and δ add up (basic sequential composition). It is always valid,
// including for adaptively chosen queries; the broker's ledger charges it.
func ComposeBasic(costs ...Cost) Cost {
	var c Cost
	for _, x := range costs {
		c.Epsilon += x.Epsilon
		c.Delta += x.Delta
	}
	return c
}

// ComposeAdvanced is a tighter bound on the same composition, reported
// alongside the basic one: the advanced composition theorem (Dwork,
// Rothblum and Vadhan 2010; Dwork and Roth, The Algorithmic Foundations of
// Differential Privacy, Thm 3.20) in its form for different ε_i. For every
// deltaPrime in (0, 1), the adaptive composition of (ε_i, δ_i)-DP
// mechanisms is (ε', δ' + Σδ_i)-DP with
//
//	ε' = √(2·ln(1/δ')·Σε_i²) + Σ ε_i·(e^ε_i − 1).
//
// It pays off for many small-ε queries; when it is not smaller than the
// basic ε, the basic cost is returned (with no δ' added), so the result is
// never worse than ComposeBasic. A deltaPrime outside (0, 1) also gives
// the basic cost, which needs no δ'.
func ComposeAdvanced(costs []Cost, deltaPrime float64) Cost {
	basic := ComposeBasic(costs...)
	if math.IsNaN(deltaPrime) || deltaPrime <= 0 || deltaPrime >= 1 {
		return basic
	}
	var sumSq, sumExp float64
	for _, c := range costs {
		sumSq += c.Epsilon * c.Epsilon
		sumExp += c.Epsilon * math.Expm1(c.Epsilon)
	}
	eps := math.Sqrt(2*math.Log(1/deltaPrime)*sumSq) + sumExp
	if !(eps < basic.Epsilon) {
		return basic
	}
	return Cost{Epsilon: eps, Delta: basic.Delta + deltaPrime}
}

// Add is c + o under basic composition.
func (c Cost) Add(o Cost) Cost { return ComposeBasic(c, o) }

// Sub is what remains of budget c after spending o; it may be negative.
func (c Cost) Sub(o Cost) Cost { return Cost{Epsilon: c.Epsilon - o.Epsilon, Delta: c.Delta - o.Delta} }

// Fits reports whether c can be spent from remaining, allowing a relative
// tolerance of 1e-9 (and 1e-300 absolute) for float64 rounding in budgets
// built up by many additions.
func (c Cost) Fits(remaining Cost) bool {
	return le(c.Epsilon, remaining.Epsilon) && le(c.Delta, remaining.Delta)
}

func le(x, limit float64) bool {
	if math.IsNaN(x) || math.IsNaN(limit) {
		return false
	}
	return x <= limit+budgetTolerance*math.Max(math.Abs(limit), math.Abs(x))+1e-300
}
