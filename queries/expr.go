package queries

import (
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// exprMode says where an expression is and what it may contain.
type exprMode struct {
	clause string // for messages: "WHERE", "GROUP BY", "SELECT of CTE x", …
	inner  bool   // inside a per-patient query
	noAgg  bool   // aggregates are not allowed here
	inAgg  bool   // inside a per-patient aggregate's arguments
}

var comparisonOps = map[string]string{
	"COMPARE_EQUAL":                "=",
	"COMPARE_NOTEQUAL":             "<>",
	"COMPARE_LESSTHAN":             "<",
	"COMPARE_GREATERTHAN":          ">",
	"COMPARE_LESSTHANOREQUALTO":    "<=",
	"COMPARE_GREATERTHANOREQUALTO": ">=",
	"COMPARE_DISTINCT_FROM":        "IS DISTINCT FROM",
	"COMPARE_NOT_DISTINCT_FROM":    "IS NOT DISTINCT FROM",
}

// castTypes are the types an expression may be cast to.
var castTypes = map[string]kind{
	"VARCHAR": kText, "INTEGER": kNum, "BIGINT": kNum, "SMALLINT": kNum, "DOUBLE": kNum, "FLOAT": kNum,
	"DATE": kDate, "BOOLEAN": kBool, "INTERVAL": kInterval, "TIMESTAMP": kDate,
}

// expr validates an expression and returns its SQL over the views (every
// column qualified, every function name from the allowlist, never text
// copied from the submission except escaped literals) and what is known of
// its values.
func (c *compiler) expr(n obj, sc *scope, m exprMode, depth int) (string, val, error) {
	if n == nil {
		return "", val{}, refuse("an empty expression", -1, "")
	}
	if err := c.tick(n, depth); err != nil {
		return "", val{}, err
	}
	d := depth + 1
	switch cls := str(n, "class"); cls {
	case "COLUMN_REF":
		return c.columnRef(n, sc, m)
	case "CONSTANT":
		return constant(n)
	case "CAST":
		if err := knownKeys(n, "CAST", keysCast); err != nil {
			return "", val{}, err
		}
		ct := sub(n, "cast_type")
		id := str(ct, "id")
		k, ok := castTypes[id]
		if !ok || !isEmpty(ct["type_info"]) {
			return "", val{}, refuse("CAST to "+strings.ToLower(id), pos(n), "cast to VARCHAR, INTEGER, BIGINT, DOUBLE, DATE, BOOLEAN or INTERVAL")
		}
		child := sub(n, "child")
		if k == kInterval && str(child, "class") != "CONSTANT" {
			return "", val{}, refuse("CAST to INTERVAL of a column", pos(n), "intervals must be literals such as INTERVAL 1 YEAR")
		}
		s, v, err := c.expr(child, sc, m, d)
		if err != nil {
			return "", val{}, err
		}
		op := "CAST"
		if t, _ := n["try_cast"].(bool); t {
			op = "TRY_CAST"
		}
		out := val{kind: k, lo: math.Inf(-1), hi: math.Inf(1), patient: v.patient}
		switch {
		case k == kNum && v.kind == kNum:
			out.lo, out.hi = v.lo, v.hi
			if id != "DOUBLE" && id != "FLOAT" {
				out.lo, out.hi = math.Floor(v.lo), math.Ceil(v.hi)
			}
		case k == kText && v.isConst:
			out.isConst, out.constText, out.hasDomain, out.domain = true, v.constText, true, []string{v.constText}
		case k == kText:
			out.groupable = v.groupable
			out.hasDomain, out.domain = v.hasDomain, v.domain
		case k == kBool && v.isConst:
			out.isConst, out.constText = true, v.constText
		}
		return fmt.Sprintf("%s(%s AS %s)", op, s, id), out, nil
	case "COMPARISON":
		if err := knownKeys(n, "comparison", keysComparison); err != nil {
			return "", val{}, err
		}
		op, ok := comparisonOps[str(n, "type")]
		if !ok {
			return "", val{}, refuse("comparison "+strings.ToLower(str(n, "type")), pos(n), "")
		}
		l, lv, err := c.expr(sub(n, "left"), sc, m, d)
		if err != nil {
			return "", val{}, err
		}
		r, rv, err := c.expr(sub(n, "right"), sc, m, d)
		if err != nil {
			return "", val{}, err
		}
		return "(" + l + " " + op + " " + r + ")", val{kind: kBool, patient: lv.patient && rv.patient}, nil
	case "CONJUNCTION":
		if err := knownKeys(n, "AND/OR", keysChildren); err != nil {
			return "", val{}, err
		}
		op := map[string]string{"CONJUNCTION_AND": " AND ", "CONJUNCTION_OR": " OR "}[str(n, "type")]
		if op == "" {
			return "", val{}, refuse("logical operator", pos(n), "")
		}
		parts, v, err := c.children(n, sc, m, d)
		if err != nil {
			return "", val{}, err
		}
		return "(" + strings.Join(parts, op) + ")", val{kind: kBool, patient: v.patient}, nil
	case "OPERATOR":
		return c.operator(n, sc, m, d)
	case "BETWEEN":
		if err := knownKeys(n, "BETWEEN", keysBetween); err != nil {
			return "", val{}, err
		}
		x, xv, err := c.expr(sub(n, "input"), sc, m, d)
		if err != nil {
			return "", val{}, err
		}
		lo, lv, err := c.expr(sub(n, "lower"), sc, m, d)
		if err != nil {
			return "", val{}, err
		}
		hi, hv, err := c.expr(sub(n, "upper"), sc, m, d)
		if err != nil {
			return "", val{}, err
		}
		return "(" + x + " BETWEEN " + lo + " AND " + hi + ")", val{kind: kBool, patient: xv.patient && lv.patient && hv.patient}, nil
	case "CASE":
		return c.caseExpr(n, sc, m, d)
	case "FUNCTION":
		return c.function(n, sc, m, d)
	case "WINDOW":
		return "", val{}, refuse("window function "+strings.ToLower(str(n, "function_name")), pos(n), "window functions compare patients with each other")
	case "STAR":
		return "", val{}, refuse("* (star)", pos(n), "name the columns")
	case "SUBQUERY":
		return "", val{}, refuse("a subquery in an expression", pos(n), "derive per-patient values in a CTE grouped by patient_id and join it")
	case "LAMBDA":
		return "", val{}, refuse("a lambda", pos(n), "")
	case "PARAMETER":
		return "", val{}, refuse("a query parameter", pos(n), "write values as literals")
	case "COLLATE":
		return "", val{}, refuse("COLLATE", pos(n), "use lower() or upper()")
	default:
		return "", val{}, refuse("expression "+strings.ToLower(strings.ReplaceAll(cls, "_", " ")), pos(n), "")
	}
}

func (c *compiler) children(n obj, sc *scope, m exprMode, depth int) ([]string, val, error) {
	kids := list(n, "children")
	if len(kids) > maxInList {
		return nil, val{}, refuse(fmt.Sprintf("a list of %d values", len(kids)), pos(n), fmt.Sprintf("at most %d are allowed", maxInList))
	}
	out := make([]string, 0, len(kids))
	all := val{patient: true}
	for _, k := range kids {
		ko, _ := k.(obj)
		s, v, err := c.expr(ko, sc, m, depth)
		if err != nil {
			return nil, val{}, err
		}
		all.patient = all.patient && v.patient
		out = append(out, s)
	}
	return out, all, nil
}

func (c *compiler) columnRef(n obj, sc *scope, m exprMode) (string, val, error) {
	if names := list(n, "column_names"); len(names) == 1 {
		if s, _ := names[0].(string); strings.EqualFold(s, "current_date") {
			if _, _, err := c.resolve(n, sc); err != nil {
				return "current_date", val{kind: kDate, patient: true}, nil
			}
		}
	}
	rel, col, err := c.resolve(n, sc)
	if err != nil {
		return "", val{}, err
	}
	switch col.role {
	case RolePrivacyUnit:
		return "", val{}, refuse("column "+col.name+" in "+m.clause, pos(n), "it is the privacy unit: use it only to join tables, to group a per-patient CTE, or in count(DISTINCT "+col.name+")")
	case RoleForbidden:
		return "", val{}, refuse("column "+col.name, pos(n), "the dataset catalog forbids it in queries")
	}
	if m.inner && !m.inAgg && !m.noAgg {
		return "", val{}, refuse("column "+col.name+" in "+m.clause, pos(n), "in a per-patient query every other column must be inside an aggregate such as max, min, arg_max or count")
	}
	v := col.v
	if m.inner && m.inAgg {
		v.patient = false
	}
	return qualified(rel, col), v, nil
}

// constant emits a literal from its parsed value, never from the text.
func constant(n obj) (string, val, error) {
	if err := knownKeys(n, "literal", keysConstant); err != nil {
		return "", val{}, err
	}
	v := sub(n, "value")
	if null, _ := v["is_null"].(bool); null {
		return "NULL", val{kind: kNull, patient: true}, nil
	}
	typ := sub(v, "type")
	id := str(typ, "id")
	raw := v["value"]
	switch id {
	case "VARCHAR":
		s, ok := raw.(string)
		if !ok {
			break
		}
		return quoteString(s), val{kind: kText, isConst: true, constText: s, hasDomain: true, domain: []string{s}, patient: true, lo: math.Inf(-1), hi: math.Inf(1)}, nil
	case "INTEGER", "BIGINT", "SMALLINT", "TINYINT", "UINTEGER", "USMALLINT", "UTINYINT", "UBIGINT":
		num, ok := raw.(json.Number)
		if !ok {
			break
		}
		i, err := strconv.ParseInt(string(num), 10, 64)
		if err != nil {
			break
		}
		f := float64(i)
		s := strconv.FormatInt(i, 10)
		return s, val{kind: kNum, lo: f, hi: f, isConst: true, constText: s, hasDomain: true, domain: []string{s}, patient: true}, nil
	case "DOUBLE", "FLOAT":
		num, ok := raw.(json.Number)
		if !ok {
			break
		}
		f, err := strconv.ParseFloat(string(num), 64)
		if err != nil || math.IsInf(f, 0) || math.IsNaN(f) {
			break
		}
		return sqlDouble(f), val{kind: kNum, lo: f, hi: f, isConst: true, constText: fmtNum(f), patient: true}, nil
	case "DECIMAL":
		num, ok := raw.(json.Number)
		ti := sub(typ, "type_info")
		scale, sok := ti["scale"].(json.Number)
		if !ok || !sok {
			break
		}
		i, err := strconv.ParseInt(string(num), 10, 64)
		sc, err2 := strconv.Atoi(string(scale))
		if err != nil || err2 != nil || sc < 0 || sc > 18 {
			break
		}
		f := float64(i) / math.Pow10(sc)
		text := strconv.FormatFloat(f, 'f', sc, 64)
		return text, val{kind: kNum, lo: f, hi: f, isConst: true, constText: text, patient: true}, nil
	case "BOOLEAN":
		b, ok := raw.(bool)
		if !ok {
			break
		}
		return strings.ToUpper(strconv.FormatBool(b)), val{kind: kBool, isConst: true, constText: strconv.FormatBool(b), patient: true}, nil
	}
	return "", val{}, refuse("a literal of type "+strings.ToLower(id), pos(n), "use a string, an integer or a decimal number")
}

func (c *compiler) operator(n obj, sc *scope, m exprMode, d int) (string, val, error) {
	if err := knownKeys(n, "operator", keysChildren); err != nil {
		return "", val{}, err
	}
	t := str(n, "type")
	kids := list(n, "children")
	parts, v, err := c.children(n, sc, m, d)
	if err != nil {
		return "", val{}, err
	}
	b := val{kind: kBool, patient: v.patient}
	switch t {
	case "OPERATOR_NOT":
		if len(parts) == 1 {
			return "(NOT " + parts[0] + ")", b, nil
		}
	case "OPERATOR_IS_NULL":
		if len(parts) == 1 {
			return "(" + parts[0] + " IS NULL)", b, nil
		}
	case "OPERATOR_IS_NOT_NULL":
		if len(parts) == 1 {
			return "(" + parts[0] + " IS NOT NULL)", b, nil
		}
	case "COMPARE_IN", "COMPARE_NOT_IN":
		if len(parts) >= 2 {
			op := " IN ("
			if t == "COMPARE_NOT_IN" {
				op = " NOT IN ("
			}
			return "(" + parts[0] + op + strings.Join(parts[1:], ", ") + "))", b, nil
		}
	case "OPERATOR_COALESCE":
		if len(kids) >= 1 {
			var u val
			for i, k := range kids {
				ko, _ := k.(obj)
				_, kv, _ := c.exprInfo(ko, sc, m, d)
				if i == 0 {
					u = kv
				} else {
					u = union(u, kv)
				}
			}
			u.isConst = false
			return "coalesce(" + strings.Join(parts, ", ") + ")", u, nil
		}
	}
	return "", val{}, refuse("operator "+strings.ToLower(strings.TrimPrefix(t, "OPERATOR_")), pos(n), "")
}

// exprInfo re-derives an already validated child's value info.
func (c *compiler) exprInfo(n obj, sc *scope, m exprMode, d int) (string, val, error) {
	nodes := c.nodes
	s, v, err := c.expr(n, sc, m, d)
	c.nodes = nodes
	return s, v, err
}

func (c *compiler) caseExpr(n obj, sc *scope, m exprMode, d int) (string, val, error) {
	if err := knownKeys(n, "CASE", keysCase); err != nil {
		return "", val{}, err
	}
	var b strings.Builder
	b.WriteString("CASE")
	var out val
	first := true
	patient := true
	checks := list(n, "case_checks")
	if len(checks) == 0 || len(checks) > maxInList {
		return "", val{}, refuse("CASE", pos(n), "it needs between 1 and 1000 WHEN branches")
	}
	for _, ck := range checks {
		chk, _ := ck.(obj)
		for k := range chk {
			if k != "when_expr" && k != "then_expr" {
				return "", val{}, refuse("CASE with "+k, pos(n), "")
			}
		}
		w, wv, err := c.expr(sub(chk, "when_expr"), sc, m, d)
		if err != nil {
			return "", val{}, err
		}
		t, tv, err := c.expr(sub(chk, "then_expr"), sc, m, d)
		if err != nil {
			return "", val{}, err
		}
		patient = patient && wv.patient && tv.patient
		if first {
			out, first = tv, false
		} else {
			out = union(out, tv)
		}
		b.WriteString(" WHEN " + w + " THEN " + t)
	}
	if e := sub(n, "else_expr"); e != nil && !(str(e, "class") == "CONSTANT" && isNullConst(e)) {
		s, ev, err := c.expr(e, sc, m, d)
		if err != nil {
			return "", val{}, err
		}
		patient = patient && ev.patient
		out = union(out, ev)
		b.WriteString(" ELSE " + s)
	}
	b.WriteString(" END")
	out.isConst = false
	out.patient = patient
	return b.String(), out, nil
}

func isNullConst(n obj) bool {
	null, _ := sub(n, "value")["is_null"].(bool)
	return null
}

// scalarFuncs are the allowed scalar functions and the SQL name emitted.
var scalarFuncs = map[string]string{
	"+": "+", "-": "-", "*": "*", "/": "/", "//": "//", "%": "%",
	"abs": "abs", "round": "round", "floor": "floor", "ceil": "ceil", "ceiling": "ceil", "trunc": "trunc",
	"least": "least", "greatest": "greatest", "nullif": "nullif", "sign": "sign",
	"sqrt": "sqrt", "ln": "ln", "log": "log", "log10": "log10", "log2": "log2", "exp": "exp",
	"date_trunc": "date_trunc", "datetrunc": "date_trunc", "year": "year", "month": "month", "quarter": "quarter",
	"day": "day", "week": "week", "dayofweek": "dayofweek", "isodow": "isodow", "dayofyear": "dayofyear",
	"date_part": "date_part", "datepart": "date_part", "date_diff": "date_diff", "datediff": "date_diff",
	"date_sub": "date_sub", "make_date": "make_date", "current_date": "current_date", "today": "current_date",
	"to_years": "to_years", "to_months": "to_months", "to_days": "to_days", "to_weeks": "to_weeks",
	"lower": "lower", "upper": "upper", "trim": "trim", "substr": "substr", "substring": "substring",
	"left": "left", "right": "right", "length": "length", "starts_with": "starts_with", "prefix": "prefix",
	"suffix": "suffix", "contains": "contains", "~~": "~~", "!~~": "!~~", "~~*": "~~*", "!~~*": "!~~*", "^@": "^@",
}

var datePartNames = map[string]bool{"year": true, "quarter": true, "month": true, "week": true, "day": true, "isodow": true, "dow": true, "doy": true, "dayofweek": true, "dayofyear": true, "days": true, "months": true, "years": true}

func (c *compiler) function(n obj, sc *scope, m exprMode, d int) (string, val, error) {
	name := strings.ToLower(str(n, "function_name"))
	if err := c.checkFunctionNode(n, name); err != nil {
		return "", val{}, err
	}
	if innerAggs[name] || outerAggs[name] != "" || refusedAggregates[name] != "" {
		return c.innerAggregate(n, name, sc, m, d)
	}
	emit, ok := scalarFuncs[name]
	if !ok {
		return "", val{}, refuse("function "+name, pos(n), "it is not on the list of functions tre allows (see docs/sql.md)")
	}
	if !isEmpty(n["filter"]) || !isEmpty(n["order_bys"]) {
		return "", val{}, refuse("FILTER or ORDER BY on function "+name, pos(n), "")
	}
	if dist, _ := n["distinct"].(bool); dist {
		return "", val{}, refuse("DISTINCT in function "+name, pos(n), "")
	}
	kids := list(n, "children")
	if len(kids) > 8 {
		return "", val{}, refuse("function "+name+" with this many arguments", pos(n), "")
	}
	// Date-part names are literals checked against a list, so a computed
	// string cannot be smuggled in.
	switch emit {
	case "date_trunc", "date_part", "date_diff", "date_sub":
		if len(kids) == 0 {
			break
		}
		first, _ := kids[0].(obj)
		s, _ := sub(first, "value")["value"].(string)
		if str(first, "class") != "CONSTANT" || !datePartNames[strings.ToLower(s)] {
			return "", val{}, refuse(name+" with this unit", pos(n), "the first argument must be a literal such as 'month' or 'year'")
		}
	}
	args := make([]string, 0, len(kids))
	vals := make([]val, 0, len(kids))
	patient := true
	for _, k := range kids {
		ko, _ := k.(obj)
		s, v, err := c.expr(ko, sc, m, d+1)
		if err != nil {
			return "", val{}, err
		}
		patient = patient && v.patient
		args = append(args, s)
		vals = append(vals, v)
	}
	out := unbounded(kNum)
	out.patient = patient
	isOp, _ := n["is_operator"].(bool)
	switch emit {
	case "+", "-", "*", "/", "//", "%":
		if !isOp && len(args) != 2 {
			break
		}
		if len(args) == 1 && emit == "-" {
			v := vals[0]
			out.kind = v.kind
			out.lo, out.hi = -v.hi, -v.lo
			return "(-" + args[0] + ")", out, nil
		}
		if len(args) != 2 {
			return "", val{}, refuse("operator "+emit, pos(n), "")
		}
		a, b := vals[0], vals[1]
		switch {
		case a.kind == kDate && b.kind == kDate && emit == "-":
			out.kind = kNum
		case a.kind == kDate || b.kind == kDate:
			out.kind = kDate
		case a.kind == kNum && b.kind == kNum:
			out.lo, out.hi = arith(emit, a, b)
		}
		return "(" + args[0] + " " + emit + " " + args[1] + ")", out, nil
	case "abs":
		if len(vals) == 1 && vals[0].kind == kNum {
			v := vals[0]
			out.hi = math.Max(math.Abs(v.lo), math.Abs(v.hi))
			out.lo = 0
			if v.lo < 0 && v.hi > 0 {
				out.lo = 0
			} else {
				out.lo = math.Min(math.Abs(v.lo), math.Abs(v.hi))
			}
		}
	case "round", "floor", "ceil", "trunc":
		if len(vals) >= 1 && vals[0].kind == kNum {
			out.lo, out.hi = math.Floor(vals[0].lo), math.Ceil(vals[0].hi)
		}
	case "least", "greatest":
		if len(vals) == 0 {
			break
		}
		out.lo, out.hi = vals[0].lo, vals[0].hi
		for _, v := range vals[1:] {
			if v.kind != kNum {
				out = unbounded(kAny)
				break
			}
			if emit == "least" {
				out.lo, out.hi = math.Min(out.lo, v.lo), math.Min(out.hi, v.hi)
			} else {
				out.lo, out.hi = math.Max(out.lo, v.lo), math.Max(out.hi, v.hi)
			}
		}
		if vals[0].kind != kNum {
			out = unbounded(vals[0].kind)
		}
		out.patient = patient
	case "nullif":
		if len(vals) == 2 {
			out = vals[0]
			out.isConst = false
		}
	case "sign":
		out.lo, out.hi = -1, 1
	case "date_trunc", "date_sub", "make_date", "current_date":
		out.kind = kDate
	case "month":
		out.lo, out.hi, out.hasDomain, out.domain = 1, 12, true, intDomain(1, 12)
	case "quarter":
		out.lo, out.hi, out.hasDomain, out.domain = 1, 4, true, intDomain(1, 4)
	case "day":
		out.lo, out.hi = 1, 31
	case "dayofweek":
		out.lo, out.hi = 0, 6
	case "isodow":
		out.lo, out.hi = 1, 7
	case "week":
		out.lo, out.hi = 1, 53
	case "dayofyear":
		out.lo, out.hi = 1, 366
	case "to_years", "to_months", "to_days", "to_weeks":
		out.kind = kInterval
	case "lower", "upper", "trim", "substr", "substring", "left", "right":
		out.kind = kText
	case "~~", "!~~", "~~*", "!~~*", "^@", "starts_with", "prefix", "suffix", "contains":
		out.kind = kBool
		if len(args) != 2 {
			return "", val{}, refuse("operator "+name, pos(n), "")
		}
		if strings.HasPrefix(emit, "~") || strings.HasPrefix(emit, "!") || emit == "^@" {
			return "(" + args[0] + " " + emit + " " + args[1] + ")", out, nil
		}
	}
	if emit == "current_date" && len(args) == 0 {
		return "current_date", out, nil
	}
	return emit + "(" + strings.Join(args, ", ") + ")", out, nil
}

func intDomain(lo, hi int) []string {
	out := make([]string, 0, hi-lo+1)
	for i := lo; i <= hi; i++ {
		out = append(out, strconv.Itoa(i))
	}
	return out
}

// arith is interval arithmetic on bounds; unknown results are unbounded.
func arith(op string, a, b val) (float64, float64) {
	inf := math.Inf(1)
	switch op {
	case "+":
		return a.lo + b.lo, a.hi + b.hi
	case "-":
		return a.lo - b.hi, a.hi - b.lo
	case "*":
		p := []float64{a.lo * b.lo, a.lo * b.hi, a.hi * b.lo, a.hi * b.hi}
		lo, hi := inf, -inf
		for _, x := range p {
			if math.IsNaN(x) {
				return -inf, inf
			}
			lo, hi = math.Min(lo, x), math.Max(hi, x)
		}
		return lo, hi
	case "/":
		if b.isConst && b.lo != 0 {
			x, y := a.lo/b.lo, a.hi/b.lo
			return math.Min(x, y), math.Max(x, y)
		}
	}
	return -inf, inf
}

// innerAggregate handles an aggregate inside an expression: allowed only
// in a per-patient query (where only the outer aggregate is released).
func (c *compiler) innerAggregate(n obj, name string, sc *scope, m exprMode, d int) (string, val, error) {
	if !m.inner || m.noAgg || m.inAgg {
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
		s, _, err := c.expr(f, sc, fm, d+1)
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
		if i == 0 {
			first = v
		}
		args = append(args, s)
	}
	out := first
	out.isConst = false
	switch name {
	case "count_star":
		return "count(*)" + filter, val{kind: kNum, lo: 0, hi: math.Inf(1)}, nil
	case "count":
		out = val{kind: kNum, lo: 0, hi: math.Inf(1)}
	case "sum":
		out = unbounded(kNum)
		if first.kind == kNum && first.lo >= 0 {
			out.lo = 0
		}
	case "bool_or", "bool_and":
		out = val{kind: kBool}
	}
	if first.kind == kBool && (name == "max" || name == "min") {
		out = val{kind: kBool}
	}
	prefix := name
	if name == "mean" {
		prefix = "avg"
	}
	if distinct {
		if name != "count" {
			return "", val{}, refuse(name+"(DISTINCT …)", pos(n), "DISTINCT is only supported in count")
		}
		prefix = "count(DISTINCT "
		return prefix + args[0] + ")" + filter, out, nil
	}
	return prefix + "(" + strings.Join(args, ", ") + ")" + filter, out, nil
}
