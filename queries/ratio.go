package queries

import (
	"fmt"
	"strings"

	"github.com/nhs-tre/tre/dp"
)

// Ratios and rates. An outer SELECT item that divides one released
// aggregate by another, num / den, is released as a dp ratio
// (dp.AggRatio): num a count(*), count(x), count(DISTINCT patient_id)
// (FILTER allowed) or sum(x); den a count(*), count(x) or count(DISTINCT
// patient_id) (FILTER allowed). Both parts are ordinary aggregates of the
// query, planned and budgeted as such: a part the query also releases as a
// column (the same aggregate, FILTER and bounds) is that column's
// statistic; any other is added as a hidden aggregate (dp.AggSpec.Hidden),
// computed by the rewrite like a column but never released. The ratio
// itself has no statistics in the rewrite (zeros in its layout columns):
// dp computes it from its parts' noisy values.

// ratioHint is the advice of every refusal of arithmetic on aggregates.
const ratioHint = "only one aggregate divided by another is released (a ratio, e.g. count(*) FILTER (WHERE …) / count(*)); release other combinations as their own columns and combine them after release"

// ratioItem compiles the SELECT item num / den, item a FUNCTION "/" with an
// aggregate inside, into a ratio aggregate of q whose parts resolveRatios
// settles.
func (c *compiler) ratioItem(item obj, sc *scope, q *query, alias string) error {
	kids := list(item, "children")
	if len(kids) != 2 {
		return refuse("arithmetic on aggregates", pos(item), ratioHint)
	}
	var parts [2]aggregate
	for i, k := range kids {
		ko, _ := k.(obj)
		fn := strings.ToLower(str(ko, "function_name"))
		if str(ko, "class") != "FUNCTION" || outerAggs[fn] == "" {
			switch {
			case isLiteral(ko) && i == 1:
				return refuse("division of an aggregate by a constant", pos(ko), "a ratio divides two aggregates; release the aggregate and scale it after release")
			case isLiteral(ko):
				return refuse("a constant divided by an aggregate", pos(ko), "a ratio divides two aggregates")
			case !containsAggregate(ko):
				return refuse("a ratio of an aggregate and a row expression", pos(ko), "both sides of a ratio must be aggregates, e.g. sum(x) / count(*)")
			case str(ko, "class") == "FUNCTION" && refusedAggregates[fn] != "":
				return refuse("aggregate "+fn, pos(ko), refusedAggregates[fn])
			}
			return refuse("nested arithmetic on aggregates", pos(ko), ratioHint)
		}
		a, err := c.aggregate(ko, sc)
		if err != nil {
			return err
		}
		parts[i] = a
	}
	num, den := parts[0], parts[1]
	switch {
	case num.kind != aggCountRows && num.kind != aggCountPatients && num.spec.Kind != dp.AggSum:
		return refuse("a ratio with "+string(num.spec.Kind)+" as numerator", pos(item), "a ratio's numerator is count(…), count(DISTINCT "+c.cat.PrivacyUnit+") or sum(…)")
	case den.kind != aggCountRows && den.kind != aggCountPatients:
		return refuse("a ratio with "+string(den.spec.Kind)+" as denominator", pos(item), "a ratio's denominator is count(…) or count(DISTINCT "+c.cat.PrivacyUnit+"); for sum(x) / count(x) use avg(x)")
	case sameAggregate(num, den):
		return refuse("a ratio of an aggregate to itself", pos(item), "")
	}
	if alias == "" {
		alias = "ratio"
	}
	q.aggs = append(q.aggs, aggregate{
		spec:  dp.AggSpec{Name: alias, Kind: dp.AggRatio},
		kind:  aggRatio,
		parts: []aggregate{num, den},
	})
	return nil
}

// sameAggregate reports whether a and b compute the same statistic: the
// same aggregate of the same argument (FILTER included) and bounds.
func sameAggregate(a, b aggregate) bool {
	return a.kind == b.kind && a.spec.Kind == b.spec.Kind && a.arg == b.arg && a.pu == b.pu && a.whole == b.whole &&
		a.spec.Lower == b.spec.Lower && a.spec.Upper == b.spec.Upper
}

// resolveRatios makes every ratio's parts aggregates of q: an aggregate
// released as a column that is the same statistic, or one added before
// for another ratio, or else a new hidden aggregate named after the
// ratio. Hidden parts go at the end, so columns keep their order.
func (c *compiler) resolveRatios(q *query) {
	n := len(q.aggs)
	for i := range n {
		if q.aggs[i].kind != aggRatio {
			continue
		}
		var idx [2]int
		for p, part := range q.aggs[i].parts {
			idx[p] = -1
			for j, a := range q.aggs {
				if a.kind != aggRatio && sameAggregate(a, part) {
					idx[p] = j
					break
				}
			}
			if idx[p] < 0 {
				part.spec.Name = q.aggs[i].spec.Name + []string{"/numerator", "/denominator"}[p]
				part.spec.Hidden = true
				q.aggs = append(q.aggs, part)
				idx[p] = len(q.aggs) - 1
			}
		}
		q.aggs[i].spec.Num, q.aggs[i].spec.Den = idx[0]+1, idx[1]+1
		q.aggs[i].parts = nil
	}
}

// proportions marks the ratios whose numerator counts a subset of what
// the denominator counts, so dp clamps them into [0, 1]: rows over every
// row (count(*) without FILTER), or patients over the patient count of
// the patient each row belongs to. The parts are computed from the same
// bounded rows of each patient, so the subset holds after bounding.
func proportions(q *query) {
	for i := range q.aggs {
		r := &q.aggs[i]
		if r.kind != aggRatio {
			continue
		}
		num, den := q.aggs[r.spec.Num-1], q.aggs[r.spec.Den-1]
		r.spec.Proportion = num.kind == den.kind &&
			((den.kind == aggCountRows && den.whole) || (den.kind == aggCountPatients && den.spec.PatientCount))
	}
}

// writeZeros writes the layout columns of an aggregate without statistics
// of its own (a ratio).
func writeZeros(b *strings.Builder, name string) {
	for _, s := range []string{"count", "sum", "sumsq", "top1", "top2"} {
		fmt.Fprintf(b, `, CAST(0 AS DOUBLE) AS "%s__%s"`, name, s)
	}
}
