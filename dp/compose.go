package dp

import "math"

// budgetTolerance is the relative slack of budget comparisons, so a budget
// spent in many float64 additions is not refused for rounding error.
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

// Add is c + o under basic composition.
func (c Cost) Add(o Cost) Cost { return ComposeBasic(c, o) }

// Sub is what remains of budget c after spending o; it may be negative.
func (c Cost) Sub(o Cost) Cost { return Cost{Epsilon: c.Epsilon - o.Epsilon, Delta: c.Delta - o.Delta} }

// Fits reports whether c can be spent on top of used (spent and reserved)
// without overspending budget: Within for ε and for δ. It is the ledger's
// one budget formula: the broker approves a query, and lets a budget be
// lowered, only when it holds.
func (c Cost) Fits(used, budget Cost) bool {
	return Within(used.Epsilon, c.Epsilon, budget.Epsilon) && Within(used.Delta, c.Delta, budget.Delta)
}

// Within reports whether used+cost stays within budget, allowing a relative
// tolerance of 1e-9 of the budget (and 1e-18 absolute, for a budget of 0)
// for float64 rounding in budgets built up by many additions. NaN never
// fits.
func Within(used, cost, budget float64) bool {
	if math.IsNaN(used) || math.IsNaN(cost) || math.IsNaN(budget) {
		return false
	}
	return !(used+cost > budget*(1+budgetTolerance)+budgetTolerance*1e-9)
}

// Same reports whether c and o are the same cost within the budget
// tolerance: a query recompiled against its catalog must cost what was
// approved.
func (c Cost) Same(o Cost) bool {
	near := func(x, y float64) bool { return math.Abs(x-y) <= budgetTolerance*math.Max(math.Abs(y), 1e-12) }
	return near(c.Epsilon, o.Epsilon) && near(c.Delta, o.Delta)
}
