package queries

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// parserQualified are the functions DuckDB's parser itself qualifies with
// the schema main (the SQL-standard forms TRIM(…) and SUBSTRING(…)). The
// compiler emits every function unqualified, so main.trim is the builtin.
var parserQualified = map[string]bool{"trim": true, "substring": true}

// checkFunctionNode refuses schema-qualified names and unknown fields.
func (c *compiler) checkFunctionNode(n obj, name string) error {
	if err := knownKeys(n, "function "+name, keysFunction); err != nil {
		return err
	}
	if s, cat := str(n, "schema"), str(n, "catalog"); (s != "" || cat != "") && !(s == "main" && cat == "" && parserQualified[name]) {
		return refuse("function "+strings.Trim(cat+"."+s+"."+name, "."), pos(n), "functions may not be schema-qualified")
	}
	if e, _ := n["export_state"].(bool); e {
		return refuse("EXPORT_STATE on "+name, pos(n), "")
	}
	return nil
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
	switch emit {
	case "+", "-", "*", "/", "//", "%":
		return f.arithmetic(emit)
	case "abs":
		return f.absolute()
	case "round", "floor", "ceil", "trunc":
		return f.rounding(emit)
	case "sign":
		return f.signum()
	case "sqrt", "ln", "log10", "log2", "log", "exp":
		return f.logExp(emit)
	case "date_trunc":
		return f.dateTrunc()
	case "date_part":
		return f.datePart()
	case "date_diff", "date_sub":
		return f.dateDiff(emit)
	case "year", "month", "quarter", "day", "week", "dayofweek", "isodow", "dayofyear":
		return f.dateField(emit)
	case "make_date":
		return f.makeDate()
	case "current_date":
		return f.currentDate()
	case "to_years", "to_months", "to_days", "to_weeks":
		return f.toInterval(emit)
	case "lower", "upper", "trim", "length":
		return f.textFunc(emit)
	case "substr", "substring", "left", "right":
		return f.substring(emit)
	case "starts_with", "prefix", "suffix", "contains", "~~", "!~~", "~~*", "!~~*", "^@":
		return f.textMatch(emit)
	}
	return val{}, "", refuse("function "+f.name, pos(f.n), "")
}

// absolute is total for abs: bounded by the argument's bounds.
func (f fn) absolute() (val, string, error) {
	out := unbounded(kNum)
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
}

// rounding is total for round, floor, ceil and trunc.
func (f fn) rounding(emit string) (val, string, error) {
	out := unbounded(kNum)
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
}

// signum is total for sign.
func (f fn) signum() (val, string, error) {
	out := unbounded(kNum)
	if err := f.arity(1, 1); err != nil {
		return val{}, "", err
	}
	a, err := f.all(kNum)
	if err != nil {
		return val{}, "", err
	}
	out.lo, out.hi = -1, 1
	return out, "sign(" + a + ")", nil
}

// logExp is total for sqrt, the logarithms and exp: NULL where undefined, never an error.
func (f fn) logExp(emit string) (val, string, error) {
	out := unbounded(kNum)
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
}

// dateTrunc is total for date_trunc.
func (f fn) dateTrunc() (val, string, error) {
	if err := f.arity(2, 2); err != nil {
		return val{}, "", err
	}
	if _, err := f.as(1, kDate); err != nil {
		return val{}, "", err
	}
	// Inside the date band every date converts to a TIMESTAMP.
	return val{kind: kDate, ts: true}, "date_trunc(" + f.args[0] + ", " + f.dateArg(1) + ")", nil
}

// datePart is total for date_part.
func (f fn) datePart() (val, string, error) {
	out := unbounded(kNum)
	if err := f.arity(2, 2); err != nil {
		return val{}, "", err
	}
	if _, err := f.as(1, kDate); err != nil {
		return val{}, "", err
	}
	return out, "date_part(" + f.args[0] + ", " + f.dateArg(1) + ")", nil
}

// dateDiff is total for date_diff and date_sub.
func (f fn) dateDiff(emit string) (val, string, error) {
	out := unbounded(kNum)
	if err := f.arity(3, 3); err != nil {
		return val{}, "", err
	}
	for i := 1; i <= 2; i++ {
		if _, err := f.as(i, kDate); err != nil {
			return val{}, "", err
		}
	}
	return out, emit + "(" + f.args[0] + ", " + f.dateArg(1) + ", " + f.dateArg(2) + ")", nil
}

// dateField is total for year, month and the other fields of a date, with their ranges.
func (f fn) dateField(emit string) (val, string, error) {
	out := unbounded(kNum)
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
}

// makeDate is total for make_date.
func (f fn) makeDate() (val, string, error) {
	if err := f.arity(3, 3); err != nil {
		return val{}, "", err
	}
	if _, err := f.all(kNum); err != nil {
		return val{}, "", err
	}
	// BIGINT arguments, whatever their type, so the call always binds.
	return val{kind: kDate}, inBand(tryExpr("make_date("+f.castArgs(0, "BIGINT")+")"), false), nil
}

// currentDate is total for current_date.
func (f fn) currentDate() (val, string, error) {
	if err := f.arity(0, 0); err != nil {
		return val{}, "", err
	}
	return val{kind: kDate}, "current_date", nil
}

// toInterval is total for to_years, to_months, to_days and to_weeks.
func (f fn) toInterval(emit string) (val, string, error) {
	if err := f.arity(1, 1); err != nil {
		return val{}, "", err
	}
	if _, err := f.all(kNum); err != nil {
		return val{}, "", err
	}
	return val{kind: kInterval}, tryExpr(emit + "(" + f.castArgs(0, "INTEGER") + ")"), nil
}

// textFunc is total for lower, upper, trim and length.
func (f fn) textFunc(emit string) (val, string, error) {
	out := unbounded(kNum)
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
}

// substring is total for substr, substring, left and right.
func (f fn) substring(emit string) (val, string, error) {
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
}

// textMatch is total for starts_with, prefix, suffix, contains and the LIKE and ^@ operators.
func (f fn) textMatch(emit string) (val, string, error) {
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
