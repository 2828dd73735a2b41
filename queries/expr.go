package queries

import (
	"encoding/json"
	"fmt"
	"math"
	"sort"
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

// exprOperators are the parser's operator node types an expression may
// use, and their SQL.
var exprOperators = map[string]string{
	"OPERATOR_NOT":         "NOT",
	"OPERATOR_IS_NULL":     "IS NULL",
	"OPERATOR_IS_NOT_NULL": "IS NOT NULL",
	"COMPARE_IN":           "IN",
	"COMPARE_NOT_IN":       "NOT IN",
	"OPERATOR_COALESCE":    "coalesce",
}

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

// castTypes are the types an expression may be cast to (TIMESTAMP is a
// date kind with val.ts set).
var castTypes = map[string]kind{
	"VARCHAR": kText, "INTEGER": kNum, "BIGINT": kNum, "SMALLINT": kNum, "DOUBLE": kNum, "FLOAT": kNum,
	"DATE": kDate, "BOOLEAN": kBool, "INTERVAL": kInterval, "TIMESTAMP": kDate,
}

// expr validates an expression and returns its SQL over the views (every
// column qualified, every function name from the allowlist, never text
// copied from the submission except escaped literals) and what is known of
// its values. The SQL is total: it raises no error on any data (total.go).
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
		return c.cast(n, sc, m, d)
	case "COMPARISON":
		if err := knownKeys(n, "comparison", keysComparison); err != nil {
			return "", val{}, err
		}
		op, ok := comparisonOps[str(n, "type")]
		if !ok {
			return "", val{}, refuse("comparison "+strings.ToLower(str(n, "type")), pos(n), "")
		}
		parts, vals, err := c.sameKind(n, []obj{sub(n, "left"), sub(n, "right")}, "comparison "+op, sc, m, d)
		if err != nil {
			return "", val{}, err
		}
		return "(" + parts[0] + " " + op + " " + parts[1] + ")", val{kind: kBool, patient: vals[0].patient && vals[1].patient}, nil
	case "CONJUNCTION":
		if err := knownKeys(n, "AND/OR", keysChildren); err != nil {
			return "", val{}, err
		}
		op := map[string]string{"CONJUNCTION_AND": " AND ", "CONJUNCTION_OR": " OR "}[str(n, "type")]
		if op == "" {
			return "", val{}, refuse("logical operator", pos(n), "")
		}
		kids := list(n, "children")
		parts := make([]string, 0, len(kids))
		patient := true
		for _, k := range kids {
			ko, _ := k.(obj)
			s, v, err := c.condition(ko, sc, m, d, strings.TrimSpace(op))
			if err != nil {
				return "", val{}, err
			}
			parts = append(parts, s)
			patient = patient && v.patient
		}
		return "(" + strings.Join(parts, op) + ")", val{kind: kBool, patient: patient}, nil
	case "OPERATOR":
		return c.operator(n, sc, m, d)
	case "BETWEEN":
		if err := knownKeys(n, "BETWEEN", keysBetween); err != nil {
			return "", val{}, err
		}
		parts, vals, err := c.sameKind(n, []obj{sub(n, "input"), sub(n, "lower"), sub(n, "upper")}, "BETWEEN", sc, m, d)
		if err != nil {
			return "", val{}, err
		}
		return "(" + parts[0] + " BETWEEN " + parts[1] + " AND " + parts[2] + ")", val{kind: kBool, patient: vals[0].patient && vals[1].patient && vals[2].patient}, nil
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

// condition validates an expression used as a condition (WHERE, ON,
// FILTER, HAVING, CASE WHEN, AND, OR, NOT): it must be boolean, or DuckDB
// would convert it to one row by row, failing on some values.
func (c *compiler) condition(n obj, sc *scope, m exprMode, depth int, where string) (string, val, error) {
	s, v, err := c.expr(n, sc, m, depth)
	if err != nil {
		return "", val{}, err
	}
	if v.kind != kBool && v.kind != kNull {
		return "", val{}, refuse(v.kind.String()+" as a condition in "+where, pos(n), "write a comparison, e.g. x = 'a' or x IS NOT NULL")
	}
	return s, v, nil
}

// sameKind validates operands that DuckDB compares or merges (comparison,
// IN, BETWEEN, coalesce, CASE results, least, greatest, nullif) and returns
// their SQL converted to one kind (unify, coerce).
func (c *compiler) sameKind(n obj, ops []obj, what string, sc *scope, m exprMode, d int) ([]string, []val, error) {
	if len(ops) > maxInList+1 {
		return nil, nil, refuse(fmt.Sprintf("a list of %d values", len(ops)), pos(n), fmt.Sprintf("at most %d are allowed", maxInList))
	}
	parts := make([]string, len(ops))
	vals := make([]val, len(ops))
	for i, o := range ops {
		s, v, err := c.expr(o, sc, m, d)
		if err != nil {
			return nil, nil, err
		}
		parts[i], vals[i] = s, v
	}
	k, ts, why, ok := unify(vals)
	if !ok {
		return nil, nil, refuse(what+" of "+why, pos(n), "compare and combine values of one kind; convert one with CAST(… AS …) (an interval can only be added to or subtracted from a date)")
	}
	for i := range parts {
		s, err := coerce(parts[i], vals[i], k, ts, pos(ops[i]))
		if err != nil {
			return nil, nil, err
		}
		parts[i] = s
		if vals[i].kind == kText && vals[i].isConst && k != kText {
			vals[i] = val{kind: k, ts: ts, lo: math.Inf(-1), hi: math.Inf(1), patient: true}
		}
	}
	return parts, vals, nil
}

// cast validates CAST and TRY_CAST, both emitted as TRY_CAST.
func (c *compiler) cast(n obj, sc *scope, m exprMode, d int) (string, val, error) {
	if err := knownKeys(n, "CAST", keysCast); err != nil {
		return "", val{}, err
	}
	ct := sub(n, "cast_type")
	id := str(ct, "id")
	k, ok := castTypes[id]
	if !ok || !isEmpty(ct["type_info"]) {
		return "", val{}, refuse("CAST to "+strings.ToLower(id), pos(n), "cast to VARCHAR, INTEGER, BIGINT, DOUBLE, DATE, TIMESTAMP, BOOLEAN or INTERVAL")
	}
	ts := id == "TIMESTAMP"
	child := sub(n, "child")
	if k == kInterval && str(child, "class") != "CONSTANT" {
		return "", val{}, refuse("CAST to INTERVAL of a column", pos(n), "intervals must be literals such as INTERVAL 1 YEAR")
	}
	s, v, err := c.expr(child, sc, m, d)
	if err != nil {
		return "", val{}, err
	}
	switch {
	case v.kind == kInterval:
		return "", val{}, refuse("CAST of an interval", pos(n), "an interval can only be added to or subtracted from a date")
	case k == kDate && (v.kind == kNum || v.kind == kBool), (k == kNum || k == kBool) && v.kind == kDate:
		// DuckDB has no such cast: refused here rather than by DuckDB.
		return "", val{}, refuse("CAST of "+v.kind.String()+" to "+strings.ToLower(id), pos(n), "dates convert to and from text only")
	}
	out := val{kind: k, ts: ts, lo: math.Inf(-1), hi: math.Inf(1), patient: v.patient}
	// TRY_CAST, never CAST: a cast that fails yields NULL, on every row.
	sql := fmt.Sprintf("TRY_CAST(%s AS %s)", s, id)
	switch {
	case k == kDate && v.kind == kText && v.isConst:
		if lit, ok := dateLiteralSQL(v.constText, ts); ok {
			out.isConst, out.constText = true, v.constText
			return lit, out, nil
		}
		// Another spelling DuckDB may accept: converted by DuckDB, then
		// held to the date band like any other date.
		sql = inBand(sql, ts)
	case k == kDate && v.kind != kDate && v.kind != kNull:
		sql = inBand(sql, ts)
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
	return sql, out, nil
}

// isCurrentDate reports whether n is the bare name current_date, which
// DuckDB reads as the function unless a column has that name.
func isCurrentDate(n obj) bool {
	names := list(n, "column_names")
	if len(names) != 1 {
		return false
	}
	s, _ := names[0].(string)
	return strings.EqualFold(s, "current_date")
}

func (c *compiler) columnRef(n obj, sc *scope, m exprMode) (string, val, error) {
	if isCurrentDate(n) {
		if _, _, err := c.resolve(n, sc); err != nil {
			return "current_date", val{kind: kDate, patient: true}, nil
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
	var kids []obj
	for _, k := range list(n, "children") {
		ko, _ := k.(obj)
		kids = append(kids, ko)
	}
	if exprOperators[t] == "" {
		return "", val{}, refuse("operator "+strings.ToLower(strings.TrimPrefix(t, "OPERATOR_")), pos(n), "")
	}
	switch t {
	case "OPERATOR_NOT":
		if len(kids) == 1 {
			s, v, err := c.condition(kids[0], sc, m, d, "NOT")
			if err != nil {
				return "", val{}, err
			}
			return "(NOT " + s + ")", val{kind: kBool, patient: v.patient}, nil
		}
	case "OPERATOR_IS_NULL", "OPERATOR_IS_NOT_NULL":
		if len(kids) == 1 {
			s, v, err := c.expr(kids[0], sc, m, d)
			if err != nil {
				return "", val{}, err
			}
			op := " IS NULL)"
			if t == "OPERATOR_IS_NOT_NULL" {
				op = " IS NOT NULL)"
			}
			return "(" + s + op, val{kind: kBool, patient: v.patient}, nil
		}
	case "COMPARE_IN", "COMPARE_NOT_IN":
		if len(kids) >= 2 {
			parts, vals, err := c.sameKind(n, kids, "IN", sc, m, d)
			if err != nil {
				return "", val{}, err
			}
			patient := true
			for _, v := range vals {
				patient = patient && v.patient
			}
			op := " IN ("
			if t == "COMPARE_NOT_IN" {
				op = " NOT IN ("
			}
			return "(" + parts[0] + op + strings.Join(parts[1:], ", ") + "))", val{kind: kBool, patient: patient}, nil
		}
	case "OPERATOR_COALESCE":
		if len(kids) >= 1 {
			parts, vals, err := c.sameKind(n, kids, "coalesce", sc, m, d)
			if err != nil {
				return "", val{}, err
			}
			return "coalesce(" + strings.Join(parts, ", ") + ")", merged(vals), nil
		}
	}
	return "", val{}, refuse("operator "+strings.ToLower(strings.TrimPrefix(t, "OPERATOR_")), pos(n), "")
}

// merged is what is known of "one of vals" (CASE results, coalesce),
// operands already converted to one kind by sameKind.
func merged(vals []val) val {
	k, ts, _, _ := unify(vals)
	var u val
	for i, v := range vals {
		if i == 0 {
			u = v
		} else {
			u = union(u, v)
		}
	}
	u.isConst = false
	if k != kNull {
		u.kind, u.ts = k, ts
	}
	return u
}

func (c *compiler) caseExpr(n obj, sc *scope, m exprMode, d int) (string, val, error) {
	if err := knownKeys(n, "CASE", keysCase); err != nil {
		return "", val{}, err
	}
	checks := list(n, "case_checks")
	if len(checks) == 0 || len(checks) > maxInList {
		return "", val{}, refuse("CASE", pos(n), "it needs between 1 and 1000 WHEN branches")
	}
	var whens []string
	var results []obj
	patient := true
	for _, ck := range checks {
		chk, _ := ck.(obj)
		for k := range chk {
			if k != "when_expr" && k != "then_expr" {
				return "", val{}, refuse("CASE with "+k, pos(n), "")
			}
		}
		w, wv, err := c.condition(sub(chk, "when_expr"), sc, m, d, "CASE WHEN")
		if err != nil {
			return "", val{}, err
		}
		patient = patient && wv.patient
		whens = append(whens, w)
		results = append(results, sub(chk, "then_expr"))
	}
	hasElse := false
	if e := sub(n, "else_expr"); e != nil && !(str(e, "class") == "CONSTANT" && isNullConst(e)) {
		results = append(results, e)
		hasElse = true
	}
	parts, vals, err := c.sameKind(n, results, "CASE results", sc, m, d)
	if err != nil {
		return "", val{}, err
	}
	var b strings.Builder
	b.WriteString("CASE")
	for i, w := range whens {
		b.WriteString(" WHEN " + w + " THEN " + parts[i])
	}
	if hasElse {
		b.WriteString(" ELSE " + parts[len(parts)-1])
	}
	b.WriteString(" END")
	for _, v := range vals {
		patient = patient && v.patient
	}
	out := merged(vals)
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
	var kids []obj
	for _, k := range list(n, "children") {
		ko, _ := k.(obj)
		kids = append(kids, ko)
	}
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
		s, _ := sub(kids[0], "value")["value"].(string)
		if str(kids[0], "class") != "CONSTANT" || !datePartNames[strings.ToLower(s)] {
			return "", val{}, refuse(name+" with this unit", pos(n), "the first argument must be a literal such as 'month' or 'year'")
		}
	}
	switch emit {
	case "least", "greatest", "nullif":
		// Operands of one kind, converted like a comparison's.
		if emit == "nullif" && len(kids) != 2 || len(kids) == 0 {
			return "", val{}, refuse(fmt.Sprintf("%s with %d arguments", name, len(kids)), pos(n), "")
		}
		parts, vals, err := c.sameKind(n, kids, name, sc, m, d+1)
		if err != nil {
			return "", val{}, err
		}
		return emit + "(" + strings.Join(parts, ", ") + ")", leastGreatest(emit, vals), nil
	}
	args := make([]string, len(kids))
	vals := make([]val, len(kids))
	patient := true
	for i, k := range kids {
		s, v, err := c.expr(k, sc, m, d+1)
		if err != nil {
			return "", val{}, err
		}
		args[i], vals[i] = s, v
		patient = patient && v.patient
	}
	f := fn{c: c, n: n, name: name, args: args, vals: vals}
	out, sql, err := f.total(emit)
	if err != nil {
		return "", val{}, err
	}
	out.patient = patient
	return sql, out, nil
}

// fn is one call of an allowlisted scalar function, its arguments
// compiled: total emits it in a form that raises no error (total.go).
type fn struct {
	c    *compiler
	n    obj
	name string
	args []string
	vals []val
}

// arity refuses a call without between lo and hi arguments.
func (f fn) arity(lo, hi int) error {
	if len(f.args) < lo || len(f.args) > hi {
		return refuse(fmt.Sprintf("%s with %d arguments", f.name, len(f.args)), pos(f.n), "")
	}
	return nil
}

// as converts argument i to kind k (a string literal is parsed; NULL is
// anything) or refuses it.
func (f fn) as(i int, k kind) (string, error) {
	v := f.vals[i]
	switch {
	case v.kind == k:
		return f.args[i], nil
	case v.kind == kNull:
		// Typed, so DuckDB can choose among a function's overloads.
		return "CAST(NULL AS " + castTarget(k, false) + ")", nil
	case v.kind == kText && v.isConst:
		return coerce(f.args[i], v, k, false, pos(f.n))
	}
	return "", refuse(fmt.Sprintf("%s of %s (argument %d)", f.name, v.kind, i+1), pos(f.n), fmt.Sprintf("it takes %s there", k))
}

// all converts every argument to the kinds given, position by position
// (the last kind repeats), and returns the call's argument list.
func (f fn) all(kinds ...kind) (string, error) {
	out := make([]string, len(f.args))
	for i := range f.args {
		k := kinds[min(i, len(kinds)-1)]
		s, err := f.as(i, k)
		if err != nil {
			return "", err
		}
		out[i] = s
	}
	return strings.Join(out, ", "), nil
}

// total returns what is known of the call's values and its total SQL.
func (f fn) total(emit string) (val, string, error) {
	out := unbounded(kNum)
	switch emit {
	case "+", "-", "*", "/", "//", "%":
		return f.arithmetic(emit)
	case "abs":
		if err := f.arity(1, 1); err != nil {
			return val{}, "", err
		}
		a, err := f.all(kNum)
		if err != nil {
			return val{}, "", err
		}
		// abs of the smallest integer overflows.
		if v := f.vals[0]; v.kind == kNum {
			out.hi = math.Max(math.Abs(v.lo), math.Abs(v.hi))
			out.lo = 0
			if !(v.lo < 0 && v.hi > 0) {
				out.lo = math.Min(math.Abs(v.lo), math.Abs(v.hi))
			}
		}
		return out, tryExpr("abs(" + a + ")"), nil
	case "round", "floor", "ceil", "trunc":
		hi := 1
		if emit == "round" {
			hi = 2
		}
		if err := f.arity(1, hi); err != nil {
			return val{}, "", err
		}
		a, err := f.all(kNum)
		if err != nil {
			return val{}, "", err
		}
		if len(f.args) == 1 {
			if v := f.vals[0]; v.kind == kNum {
				out.lo, out.hi = math.Floor(v.lo), math.Ceil(v.hi)
			}
			return out, emit + "(" + a + ")", nil
		}
		// round(x, n): to n ≥ 0 decimals the value stays within the
		// integers around its bounds; to tens or more it may not.
		if v := f.vals[0]; v.kind == kNum && f.vals[1].isConst && f.vals[1].lo >= 0 {
			out.lo, out.hi = math.Floor(v.lo), math.Ceil(v.hi)
		}
		if _, err := f.as(1, kNum); err != nil {
			return val{}, "", err
		}
		// The number of decimals as INTEGER, whatever its type, so the
		// call always binds.
		// In DOUBLE: DuckDB rounds a DECIMAL only to a constant number of
		// decimals.
		return out, tryExpr("round(TRY_CAST(" + f.args[0] + " AS DOUBLE), TRY_CAST(" + f.args[1] + " AS INTEGER))"), nil
	case "sign":
		if err := f.arity(1, 1); err != nil {
			return val{}, "", err
		}
		a, err := f.all(kNum)
		if err != nil {
			return val{}, "", err
		}
		out.lo, out.hi = -1, 1
		return out, "sign(" + a + ")", nil
	case "sqrt", "ln", "log10", "log2", "log", "exp":
		if err := f.arity(1, 2); err != nil {
			return val{}, "", err
		}
		if len(f.args) == 2 && emit != "log" {
			return val{}, "", refuse(f.name+" with 2 arguments", pos(f.n), "")
		}
		if _, err := f.all(kNum); err != nil {
			return val{}, "", err
		}
		x := "TRY_CAST(" + f.args[len(f.args)-1] + " AS DOUBLE)"
		switch {
		case emit == "exp":
			// Overflows to +Inf, never to an error.
			return out, "exp(" + x + ")", nil
		case emit == "sqrt":
			return out, "CASE WHEN " + x + " >= 0 THEN sqrt(" + x + ") END", nil
		case len(f.args) == 2:
			// log(b, x) divides by ln(b): b = 1 fails.
			b := "TRY_CAST(" + f.args[0] + " AS DOUBLE)"
			return out, "CASE WHEN " + b + " > 0 AND " + b + " <> 1 AND " + x + " > 0 THEN log(" + b + ", " + x + ") END", nil
		}
		return out, "CASE WHEN " + x + " > 0 THEN " + emit + "(" + x + ") END", nil
	case "date_trunc":
		if err := f.arity(2, 2); err != nil {
			return val{}, "", err
		}
		if _, err := f.as(1, kDate); err != nil {
			return val{}, "", err
		}
		// Inside the date band every date converts to a TIMESTAMP.
		return val{kind: kDate, ts: true}, "date_trunc(" + f.args[0] + ", " + f.dateArg(1) + ")", nil
	case "date_part":
		if err := f.arity(2, 2); err != nil {
			return val{}, "", err
		}
		if _, err := f.as(1, kDate); err != nil {
			return val{}, "", err
		}
		return out, "date_part(" + f.args[0] + ", " + f.dateArg(1) + ")", nil
	case "date_diff", "date_sub":
		if err := f.arity(3, 3); err != nil {
			return val{}, "", err
		}
		for i := 1; i <= 2; i++ {
			if _, err := f.as(i, kDate); err != nil {
				return val{}, "", err
			}
		}
		return out, emit + "(" + f.args[0] + ", " + f.dateArg(1) + ", " + f.dateArg(2) + ")", nil
	case "year", "month", "quarter", "day", "week", "dayofweek", "isodow", "dayofyear":
		if err := f.arity(1, 1); err != nil {
			return val{}, "", err
		}
		if _, err := f.as(0, kDate); err != nil {
			return val{}, "", err
		}
		switch emit {
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
		case "year":
			out.lo, out.hi = 1, 9999
		}
		return out, emit + "(" + f.dateArg(0) + ")", nil
	case "make_date":
		if err := f.arity(3, 3); err != nil {
			return val{}, "", err
		}
		if _, err := f.all(kNum); err != nil {
			return val{}, "", err
		}
		// BIGINT arguments, whatever their type, so the call always binds.
		return val{kind: kDate}, inBand(tryExpr("make_date("+f.castArgs(0, "BIGINT")+")"), false), nil
	case "current_date":
		if err := f.arity(0, 0); err != nil {
			return val{}, "", err
		}
		return val{kind: kDate}, "current_date", nil
	case "to_years", "to_months", "to_days", "to_weeks":
		if err := f.arity(1, 1); err != nil {
			return val{}, "", err
		}
		if _, err := f.all(kNum); err != nil {
			return val{}, "", err
		}
		return val{kind: kInterval}, tryExpr(emit + "(" + f.castArgs(0, "INTEGER") + ")"), nil
	case "lower", "upper", "trim", "length":
		hi := 1
		if emit == "trim" {
			hi = 2
		}
		if err := f.arity(1, hi); err != nil {
			return val{}, "", err
		}
		a, err := f.all(kText)
		if err != nil {
			return val{}, "", err
		}
		if emit == "length" {
			out.lo = 0
			return out, "length(" + a + ")", nil
		}
		return val{kind: kText}, emit + "(" + a + ")", nil
	case "substr", "substring", "left", "right":
		lo, hi := 2, 3
		if emit == "left" || emit == "right" {
			hi = 2
		}
		if err := f.arity(lo, hi); err != nil {
			return val{}, "", err
		}
		if _, err := f.all(kText, kNum); err != nil {
			return val{}, "", err
		}
		s0, _ := f.as(0, kText)
		// Offsets and lengths beyond ±2^32 fail; integer literals within
		// are taken as they are, anything else (as BIGINT, so the call
		// always binds) may fail on some row.
		for _, v := range f.vals[1:] {
			if !intLiteralWithin(v, 1<<32-1) {
				return val{kind: kText}, tryExpr(emit + "(" + s0 + ", " + f.castArgs(1, "BIGINT") + ")"), nil
			}
		}
		return val{kind: kText}, emit + "(" + s0 + ", " + strings.Join(f.args[1:], ", ") + ")", nil
	case "starts_with", "prefix", "suffix", "contains", "~~", "!~~", "~~*", "!~~*", "^@":
		if err := f.arity(2, 2); err != nil {
			return val{}, "", err
		}
		if _, err := f.all(kText); err != nil {
			return val{}, "", err
		}
		a0, _ := f.as(0, kText)
		a1, _ := f.as(1, kText)
		if strings.HasPrefix(emit, "~") || strings.HasPrefix(emit, "!") || emit == "^@" {
			return val{kind: kBool}, "(" + a0 + " " + emit + " " + a1 + ")", nil
		}
		return val{kind: kBool}, emit + "(" + a0 + ", " + a1 + ")", nil
	}
	return val{}, "", refuse("function "+f.name, pos(f.n), "")
}

// castArgs is the arguments from i on, each TRY_CAST to typ, joined.
func (f fn) castArgs(i int, typ string) string {
	out := make([]string, 0, len(f.args)-i)
	for _, a := range f.args[i:] {
		out = append(out, "TRY_CAST("+a+" AS "+typ+")")
	}
	return strings.Join(out, ", ")
}

// dateArg is argument i, a date (checked by as), as SQL: a string literal
// becomes a DATE literal.
func (f fn) dateArg(i int) string {
	s, _ := f.as(i, kDate)
	return s
}

// arithmetic emits + - * / // % on numbers, dates and intervals.
func (f fn) arithmetic(op string) (val, string, error) {
	isOp, _ := f.n["is_operator"].(bool)
	if !isOp && len(f.args) != 2 {
		return val{}, "", refuse("operator "+op, pos(f.n), "")
	}
	out := unbounded(kNum)
	if len(f.args) == 1 && op == "-" {
		a, err := f.all(kNum)
		if err != nil {
			return val{}, "", err
		}
		v := f.vals[0]
		out.lo, out.hi = -v.hi, -v.lo
		// Negating the smallest integer overflows.
		return out, tryExpr("(-" + a + ")"), nil
	}
	if len(f.args) != 2 {
		return val{}, "", refuse("operator "+op, pos(f.n), "")
	}
	a, b := f.vals[0], f.vals[1]
	if a.kind == kNull || b.kind == kNull {
		// NULL whatever the other operand (DuckDB could not always
		// choose the operator's types for it).
		return val{kind: kNull}, "NULL", nil
	}
	num := func(v val) bool { return v.kind == kNum }
	date := func(v val) bool { return v.kind == kDate }
	expr := "(" + f.args[0] + " " + op + " " + f.args[1] + ")"
	switch {
	case num(a) && num(b):
		out.lo, out.hi = arith(op, a, b)
		// Integer and decimal arithmetic overflows; division by zero
		// gives ±Inf or NULL, // and % overflow for the smallest integer.
		return out, tryExpr(expr), nil
	case op == "-" && date(a) && date(b):
		if a.ts || b.ts {
			return val{}, "", refuse("subtracting timestamps", pos(f.n), "use date_diff('day', a, b)")
		}
		// Days between two dates of the band: never out of range.
		return out, expr, nil
	case (op == "+" || op == "-") && date(a) && !a.ts && num(b):
		// Days added to a date (as INTEGER, the only type DuckDB adds):
		// out of range for large numbers, outside the band for others.
		return val{kind: kDate}, inBand(tryExpr("("+f.args[0]+" "+op+" TRY_CAST("+f.args[1]+" AS INTEGER))"), false), nil
	case op == "+" && num(a) && date(b) && !b.ts:
		return val{kind: kDate}, inBand(tryExpr("(TRY_CAST("+f.args[0]+" AS INTEGER) + "+f.args[1]+")"), false), nil
	case (op == "+" || op == "-") && date(a) && b.kind == kInterval, op == "+" && a.kind == kInterval && date(b):
		return val{kind: kDate, ts: true}, inBand(tryExpr(expr), true), nil
	}
	return val{}, "", refuse(fmt.Sprintf("operator %s on %s and %s", op, a.kind, b.kind), pos(f.n), "numbers combine with numbers; a date takes + or - a number of days or an interval, and - another date")
}

// leastGreatest is what is known of least/greatest/nullif of vals.
func leastGreatest(emit string, vals []val) val {
	out := merged(vals)
	if emit == "nullif" {
		out = vals[0]
		out.isConst = false
		return out
	}
	out.hasDomain, out.domain = false, nil
	if out.kind != kNum {
		return out
	}
	// DuckDB's least and greatest skip NULL arguments.
	first := true
	for _, v := range vals {
		switch {
		case v.kind == kNull:
			continue
		case v.kind != kNum:
			out.lo, out.hi = math.Inf(-1), math.Inf(1)
			return out
		case first:
			out.lo, out.hi, first = v.lo, v.hi, false
		case emit == "least":
			out.lo, out.hi = math.Min(out.lo, v.lo), math.Min(out.hi, v.hi)
		default:
			out.lo, out.hi = math.Max(out.lo, v.lo), math.Max(out.hi, v.hi)
		}
	}
	if first {
		out.lo, out.hi = math.Inf(-1), math.Inf(1)
	}
	return out
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
