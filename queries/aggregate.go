package queries

import (
	"fmt"
	"math"
	"strings"

	"github.com/nhs-tre/tre/dp"
)

func containsAggregate(n obj) bool {
	found := false
	var walk func(v any)
	walk = func(v any) {
		switch x := v.(type) {
		case obj:
			if str(x, "class") == "FUNCTION" {
				name := strings.ToLower(str(x, "function_name"))
				if outerAggs[name] != "" || innerAggs[name] || refusedAggregates[name] != "" {
					found = true
				}
			}
			if str(x, "class") == "WINDOW" {
				found = true
			}
			for _, e := range x {
				walk(e)
			}
		case []any:
			for _, e := range x {
				walk(e)
			}
		}
	}
	walk(n)
	return found
}

// Outer (released) aggregates and their dp kinds.
var outerAggs = map[string]dp.AggKind{
	"count_star":    dp.AggCount,
	"count":         dp.AggCount,
	"sum":           dp.AggSum,
	"avg":           dp.AggMean,
	"mean":          dp.AggMean,
	"stddev":        dp.AggStddev,
	"stddev_samp":   dp.AggStddev,
	"var_samp":      dp.AggVariance,
	"variance":      dp.AggVariance,
	"median":        dp.AggQuantile,
	"quantile_cont": dp.AggQuantile,
}

// refusedAggregates explain why an aggregate may not be released.
var refusedAggregates = map[string]string{
	"min":                   "an extreme value belongs to one patient; use min inside a per-patient CTE grouped by patient_id",
	"max":                   "an extreme value belongs to one patient; use max inside a per-patient CTE grouped by patient_id",
	"arg_max":               "it returns one patient's value; use it inside a per-patient CTE grouped by patient_id",
	"arg_min":               "it returns one patient's value; use it inside a per-patient CTE grouped by patient_id",
	"max_by":                "it returns one patient's value; use it inside a per-patient CTE grouped by patient_id",
	"min_by":                "it returns one patient's value; use it inside a per-patient CTE grouped by patient_id",
	"list":                  "it releases individual values",
	"array_agg":             "it releases individual values",
	"string_agg":            "it releases individual values",
	"group_concat":          "it releases individual values",
	"listagg":               "it releases individual values",
	"any_value":             "it releases an individual value",
	"first":                 "it releases an individual value",
	"last":                  "it releases an individual value",
	"mode":                  "it releases an individual value",
	"histogram":             "it releases individual values",
	"quantile":              "a discrete quantile is one patient's value; use quantile_cont(x, q) or median(x)",
	"quantile_disc":         "a discrete quantile is one patient's value; use quantile_cont(x, q) or median(x)",
	"approx_count_distinct": "only count(DISTINCT patient_id) is supported",
	"stddev_pop":            "use stddev (sample)",
	"var_pop":               "use variance (sample)",
	"bit_and":               "it releases individual values",
	"bit_or":                "it releases individual values",
	"bool_and":              "use avg of a 0/1 CASE expression",
	"bool_or":               "use count(DISTINCT patient_id) with a WHERE condition",
	"product":               "products have no bounded sensitivity",
	"entropy":               "not supported",
	"kurtosis":              "not supported",
	"skewness":              "not supported",
	"corr":                  "not supported",
	"covar_samp":            "not supported",
	"covar_pop":             "not supported",
	"regr_slope":            "not supported",
}

// innerAggs are allowed inside per-patient queries only.
var innerAggs = map[string]bool{
	"count_star": true, "count": true, "sum": true, "avg": true, "mean": true, "min": true, "max": true,
	"arg_max": true, "arg_min": true, "max_by": true, "min_by": true, "bool_or": true, "bool_and": true,
	"median": true,
}

// aggregate validates one released aggregate and records the relations
// it reads.
func (c *compiler) aggregate(n obj, sc *scope) (aggregate, error) {
	var a aggregate
	var err error
	reads := c.reading(func() { a, err = c.releasedAggregate(n, sc) })
	a.reads = reads
	return a, err
}

func (c *compiler) releasedAggregate(n obj, sc *scope) (aggregate, error) {
	name := strings.ToLower(str(n, "function_name"))
	if err := c.checkFunctionNode(n, name); err != nil {
		return aggregate{}, err
	}
	if !isEmpty(n["order_bys"]) {
		return aggregate{}, refuse("ORDER BY inside "+name, pos(n), "")
	}
	args := list(n, "children")
	distinct, _ := n["distinct"].(bool)
	var filter string
	if f := sub(n, "filter"); f != nil {
		s, _, err := c.condition(f, sc, exprMode{clause: "FILTER", noAgg: true}, 1, "FILTER")
		if err != nil {
			return aggregate{}, err
		}
		filter = s
	}
	withFilter := func(s string) string {
		if filter == "" {
			return s
		}
		return "CASE WHEN " + filter + " THEN " + s + " END"
	}
	a := aggregate{spec: dp.AggSpec{Kind: outerAggs[name]}}
	switch name {
	case "count_star":
		a.kind = aggCountRows
		a.whole = filter == ""
		if filter != "" {
			a.arg = withFilter("1")
		}
		return a, nil
	case "count":
		if len(args) != 1 {
			return aggregate{}, refuse("count with several arguments", pos(n), "")
		}
		arg, _ := args[0].(obj)
		if psql, isPU, err := c.privacyUnitRef(arg, sc); err != nil {
			return aggregate{}, err
		} else if isPU {
			if filter == "" {
				a.pu = psql
			}
			if !distinct {
				a.kind = aggCountRows
				a.arg = withFilter("CASE WHEN " + psql + " IS NOT NULL THEN 1 END")
				return a, nil
			}
			a.kind = aggCountPatients
			a.spec.Kind = dp.AggCountPatients
			a.arg = withFilter("CASE WHEN " + psql + " IS NOT NULL THEN 1 END")
			if psql == "" {
				a.arg = ""
			}
			return a, nil
		}
		if distinct {
			return aggregate{}, refuse("count(DISTINCT …) of a column other than "+c.cat.PrivacyUnit, pos(n), "only count(DISTINCT "+c.cat.PrivacyUnit+") is supported")
		}
		s, _, err := c.expr(arg, sc, exprMode{clause: name, noAgg: true}, 1)
		if err != nil {
			return aggregate{}, err
		}
		a.kind = aggCountRows
		a.arg = withFilter("CASE WHEN " + s + " IS NOT NULL THEN 1 END")
		return a, nil
	}
	if distinct {
		return aggregate{}, refuse(name+"(DISTINCT …)", pos(n), "DISTINCT is only supported in count(DISTINCT "+c.cat.PrivacyUnit+")")
	}
	if name == "quantile_cont" {
		rank, err := quantileRank(n, args)
		if err != nil {
			return aggregate{}, err
		}
		a.spec.Rank, args = rank, args[:1]
	} else if name == "median" {
		a.spec.Rank = 0.5
	}
	if len(args) != 1 {
		return aggregate{}, refuse(name+" with several arguments", pos(n), "")
	}
	arg, _ := args[0].(obj)
	s, v, err := c.expr(arg, sc, exprMode{clause: name, noAgg: true}, 1)
	if err != nil {
		return aggregate{}, err
	}
	switch v.kind {
	case kBool:
		s, v.lo, v.hi = "CAST("+s+" AS INTEGER)", 0, 1
		v.kind = kNum
	case kNull:
		return aggregate{}, refuse(name+" of NULL", pos(n), "")
	}
	if v.bounded() && v.lo == v.hi {
		// sum(1) and the like: widen to include 0 so the bounds are an
		// interval dp accepts; the value still lies inside.
		v.lo, v.hi = math.Min(v.lo, 0), math.Max(v.hi, 0)
		if v.lo == v.hi {
			return aggregate{}, refuse(name+" of the constant 0", pos(arg), "")
		}
	}
	if !v.bounded() {
		return aggregate{}, refuse(name+" of an expression without bounds", pos(arg), "its values cannot be bounded from the catalog; use a numeric column or wrap it in greatest(lower, least(upper, …))")
	}
	if math.Max(math.Abs(v.lo), math.Abs(v.hi)) > dp.MaxAbsBound {
		return aggregate{}, refuse(fmt.Sprintf("%s of values bounded by [%s, %s]", name, fmtNum(v.lo), fmtNum(v.hi)), pos(arg), fmt.Sprintf("bounds must lie within ±%g; narrow them with greatest(lower, least(upper, …))", dp.MaxAbsBound))
	}
	a.kind = aggValue
	if a.spec.Kind == dp.AggQuantile {
		a.kind = aggQuantile
	}
	a.spec.Lower, a.spec.Upper = v.lo, v.hi
	a.arg = withFilter("CAST(" + s + " AS DOUBLE)")
	return a, nil
}

// quantileRank reads the rank of quantile_cont(x, q): a literal number
// strictly between 0 and 1. A list of ranks is refused: write one
// quantile_cont per rank (they share one tree and one cost).
func quantileRank(n obj, args []any) (float64, error) {
	const why = "the rank must be a literal number strictly between 0 and 1, e.g. quantile_cont(x, 0.25); write one quantile_cont per rank"
	if len(args) != 2 {
		return 0, refuse(fmt.Sprintf("quantile_cont with %d arguments", len(args)), pos(n), why)
	}
	q, _ := args[1].(obj)
	if str(q, "class") != "CONSTANT" {
		return 0, refuse("quantile_cont with a computed rank", pos(q), why)
	}
	_, v, err := constant(q)
	if err != nil || v.kind != kNum || !(v.lo > 0 && v.lo < 1) {
		return 0, refuse("quantile_cont rank", pos(q), why)
	}
	return v.lo, nil
}

// hoister collects the aggregates of one per-patient query. They are
// computed in an inner query and the per-patient query's expressions read
// them as columns of it: DuckDB refuses try() around an aggregate, and the
// expressions need try() to be total (total.go).
type hoister struct {
	sqls  []string
	index map[string]string
}

// column returns the inner query's column holding the aggregate aggSQL.
func (h *hoister) column(aggSQL string) string {
	if col, ok := h.index[aggSQL]; ok {
		return col
	}
	col := fmt.Sprintf(`"__tre_agg"."__ia%d"`, len(h.sqls))
	h.sqls = append(h.sqls, aggSQL)
	h.index[aggSQL] = col
	return col
}

// inline replaces, in s, every column of the inner query by what it holds:
// the aggregate's SQL, and gsql for the patient.
func (h *hoister) inline(s, gsql string) string {
	for i := len(h.sqls) - 1; i >= 0; i-- {
		s = strings.ReplaceAll(s, fmt.Sprintf(`"__tre_agg"."__ia%d"`, i), h.sqls[i])
	}
	return strings.ReplaceAll(s, `"__tre_agg"."__pid"`, gsql)
}

// innerAggregate handles an aggregate inside an expression: allowed only
// in a per-patient query (where only the outer aggregate is released).
func (c *compiler) innerAggregate(n obj, name string, sc *scope, m exprMode, d int) (string, val, error) {
	if !m.inner || m.noAgg || m.inAgg || c.hoist == nil {
		if why, bad := refusedAggregates[name]; bad && !m.inner {
			return "", val{}, refuse("aggregate "+name, pos(n), why)
		}
		if m.inAgg {
			return "", val{}, refuse("an aggregate inside an aggregate", pos(n), "")
		}
		return "", val{}, refuse("aggregate "+name+" in "+m.clause, pos(n), "aggregates belong in SELECT (released) or in a per-patient CTE")
	}
	if !innerAggs[name] {
		return "", val{}, refuse("aggregate "+name+" in "+m.clause, pos(n), "per-patient queries may use count, sum, avg, min, max, arg_max, arg_min, bool_or, bool_and and median")
	}
	if !isEmpty(n["order_bys"]) {
		return "", val{}, refuse("ORDER BY inside "+name, pos(n), "")
	}
	am := m
	am.inAgg = true
	var filter string
	if f := sub(n, "filter"); f != nil {
		fm := m
		fm.noAgg, fm.inAgg = true, true
		s, _, err := c.condition(f, sc, fm, d+1, "FILTER")
		if err != nil {
			return "", val{}, err
		}
		filter = " FILTER (WHERE " + s + ")"
	}
	kids := list(n, "children")
	distinct, _ := n["distinct"].(bool)
	want := map[string]int{"count_star": 0, "arg_max": 2, "arg_min": 2, "max_by": 2, "min_by": 2}
	nargs, ok := want[name]
	if !ok {
		nargs = 1
	}
	if len(kids) != nargs {
		return "", val{}, refuse(fmt.Sprintf("%s with %d arguments", name, len(kids)), pos(n), fmt.Sprintf("it takes %d", nargs))
	}
	args := make([]string, 0, len(kids))
	var first val
	for i, k := range kids {
		ko, _ := k.(obj)
		s, v, err := c.expr(ko, sc, am, d+1)
		if err != nil {
			return "", val{}, err
		}
		if v.kind == kInterval || v.kind == kAny {
			return "", val{}, refuse(fmt.Sprintf("%s of %s", name, v.kind), pos(ko), "")
		}
		if i == 0 {
			first = v
		}
		args = append(args, s)
	}
	kindIs := func(ks ...kind) error {
		for _, k := range append(ks, kNull) {
			if first.kind == k {
				return nil
			}
		}
		return refuse(fmt.Sprintf("%s of %s", name, first.kind), pos(n), "")
	}
	out := first
	out.isConst = false
	prefix := name
	switch name {
	case "count_star":
		return c.hoist.column("count(*)" + filter), val{kind: kNum, lo: 0, hi: math.Inf(1)}, nil
	case "count":
		out = val{kind: kNum, lo: 0, hi: math.Inf(1)}
	case "sum", "avg", "mean":
		// In DOUBLE: a sum overflows to ±Inf, an integer sum would fail.
		if err := kindIs(kNum, kBool); err != nil {
			return "", val{}, err
		}
		args[0] = "TRY_CAST(" + args[0] + " AS DOUBLE)"
		if name == "sum" {
			out = unbounded(kNum)
			if first.kind == kNum && first.lo >= 0 {
				out.lo = 0
			}
		} else {
			prefix = "avg"
			if first.kind == kBool {
				out = val{kind: kNum, lo: 0, hi: 1}
			}
		}
	case "median":
		// In DOUBLE for numbers: the midpoint of two decimals may not fit.
		if err := kindIs(kNum, kDate); err != nil {
			return "", val{}, err
		}
		if first.kind == kNum {
			args[0] = "TRY_CAST(" + args[0] + " AS DOUBLE)"
		}
	case "bool_or", "bool_and":
		if err := kindIs(kBool); err != nil {
			return "", val{}, err
		}
		out = val{kind: kBool}
	}
	if first.kind == kBool && (name == "max" || name == "min") {
		out = val{kind: kBool}
	}
	if distinct {
		if name != "count" {
			return "", val{}, refuse(name+"(DISTINCT …)", pos(n), "DISTINCT is only supported in count")
		}
		return c.hoist.column("count(DISTINCT " + args[0] + ")" + filter), out, nil
	}
	return c.hoist.column(prefix + "(" + strings.Join(args, ", ") + ")" + filter), out, nil
}
