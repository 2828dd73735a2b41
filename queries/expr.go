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
		if op == "=" {
			c.noteCodelists(vals)
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
			if t == "COMPARE_IN" {
				c.noteCodelists(vals)
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
