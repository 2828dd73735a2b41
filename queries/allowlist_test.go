package queries

import "sort"

// Allowlist names every construct an expression may use: what the tests of
// a total language (TestTotalExpressions, and the sandbox's
// TestTotalFunctions) must each cover with a case, so that a new entry
// without one fails them.
type Allowlist struct {
	Functions       []string // scalar functions and operators, by the parser's name
	Casts           []string // CAST target types
	Comparisons     []string // comparison operators, as SQL
	Operators       []string // NOT, IS NULL, IN, coalesce …, and AND, OR, BETWEEN, CASE
	InnerAggregates []string // aggregates of per-patient CTEs and subqueries
	OuterAggregates []string // released aggregates
}

// AllowedExpressions returns the Allowlist, each list sorted.
func AllowedExpressions() Allowlist {
	var a Allowlist
	for k := range scalarFuncs {
		a.Functions = append(a.Functions, k)
	}
	for k := range castTypes {
		a.Casts = append(a.Casts, k)
	}
	for _, v := range comparisonOps {
		a.Comparisons = append(a.Comparisons, v)
	}
	for _, v := range exprOperators {
		a.Operators = append(a.Operators, v)
	}
	a.Operators = append(a.Operators, "AND", "OR", "BETWEEN", "CASE")
	for k := range innerAggs {
		a.InnerAggregates = append(a.InnerAggregates, k)
	}
	for k := range outerAggs {
		a.OuterAggregates = append(a.OuterAggregates, k)
	}
	for _, l := range [][]string{a.Functions, a.Casts, a.Comparisons, a.Operators, a.InnerAggregates, a.OuterAggregates} {
		sort.Strings(l)
	}
	return a
}
