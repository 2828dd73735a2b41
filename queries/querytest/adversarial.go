// Package querytest holds the adversarial dataset and the expression
// templates with which the tests of queries and sandbox prove the query
// language total: no accepted expression raises a run-time error on any
// data. It is imported by tests only and imports nothing of tre.
package querytest

import (
	"fmt"
	"math/rand/v2"
	"regexp"
	"sort"
	"strings"
)

// CatalogYAML describes the adversarial dataset: one patient table whose
// columns hold extreme values of every type a query can see, and an
// opt-out table.
const CatalogYAML = `dataset: adversarial
privacy_unit: patient_id
policy:
  max_groups_per_patient: 4
  max_rows_per_group: 3
  optout_table: optouts
  default_epsilon: 1.0
  max_epsilon: 2.0
tables:
  - name: adversarial
    columns:
      - {name: patient_id, type: BIGINT, role: privacy_unit}
      - {name: i1, type: INTEGER, role: numeric, bounds: [-1e15, 1e15]}
      - {name: i2, type: INTEGER, role: numeric, bounds: [-1e15, 1e15]}
      - {name: i3, type: INTEGER, role: numeric, bounds: [-1e15, 1e15]}
      - {name: b1, type: BIGINT, role: numeric, bounds: [-1e15, 1e15]}
      - {name: b2, type: BIGINT, role: numeric, bounds: [-1e15, 1e15]}
      - {name: b3, type: BIGINT, role: numeric, bounds: [-1e15, 1e15]}
      - {name: f1, type: DOUBLE, role: numeric, bounds: [-1e15, 1e15]}
      - {name: f2, type: DOUBLE, role: numeric, bounds: [-1e15, 1e15]}
      - {name: f3, type: DOUBLE, role: numeric, bounds: [-1e15, 1e15]}
      - {name: c1, type: "DECIMAL(18,3)", role: numeric, bounds: [-1e15, 1e15]}
      - {name: c2, type: "DECIMAL(18,3)", role: numeric, bounds: [-1e15, 1e15]}
      - {name: c3, type: "DECIMAL(18,3)", role: numeric, bounds: [-1e15, 1e15]}
      - {name: h1, type: SMALLINT, role: numeric, bounds: [-1e15, 1e15]}
      - {name: h2, type: SMALLINT, role: numeric, bounds: [-1e15, 1e15]}
      - {name: h3, type: SMALLINT, role: numeric, bounds: [-1e15, 1e15]}
      - {name: s1, type: VARCHAR, role: code}
      - {name: s2, type: VARCHAR, role: code}
      - {name: s3, type: VARCHAR, role: code}
      - {name: d1, type: DATE, role: date}
      - {name: d2, type: DATE, role: date}
      - {name: d3, type: DATE, role: date}
      - {name: t1, type: TIMESTAMP, role: date}
      - {name: t2, type: TIMESTAMP, role: date}
      - {name: t3, type: TIMESTAMP, role: date}
      - {name: o1, type: BOOLEAN, role: categorical}
      - {name: o2, type: BOOLEAN, role: categorical}
      - {name: o3, type: BOOLEAN, role: categorical}
  - name: optouts
    columns:
      - {name: patient_id, type: BIGINT, role: privacy_unit}
`

// values are the adversarial values of each placeholder kind (SQL), NULL
// included. The data holds every combination of the values of a kind's
// columns 1, 2 and 3 (every pair across kinds too), so an expression over
// columns meets every adversarial value and pair of values.
var values = map[byte][]string{
	'i': {"0", "1", "-1", "2", "12", "13", "31", "45", "100", "2147483647", "-2147483648", "NULL"},
	'b': {"0", "1", "-1", "4294967295", "4294967296", "-4294967297", "2147483648", "9223372036854775807", "-9223372036854775808", "NULL"},
	'f': {"0", "-0.0", "1", "-1", "0.5", "1e308", "-1e308", "5e-324", "2.5e9", "'nan'", "'inf'", "'-inf'", "NULL"},
	'c': {"0", "1", "-1", "0.001", "999999999999999.999", "-999999999999999.999", "NULL"},
	'h': {"0", "1", "-1", "32767", "-32768", "NULL"},
	's': {"''", "'abc'", "'%'", "'_'", `'\'`, `'a\'`, "'é'", "'2020-01-01'", "'nan'", "'1e400'", "' 12 '", "'true'", "repeat('x', 100000)", "'I50.1'", "NULL"},
	'd': {"'2020-01-01'", "'0001-01-01'", "'9999-12-31'", "'2000-02-29'", "'1970-01-01'", "'infinity'", "'-infinity'", "'5881580-07-10'", "'-5877641-06-25'", "NULL"},
	't': {"'2020-01-01 12:34:56'", "'0001-01-01 00:00:00'", "'9999-12-31 23:59:59.999999'", "'infinity'", "'-infinity'", "'294247-01-10 04:00:54'", "'290309-12-22 (BC) 00:00:00'", "NULL"},
	'o': {"true", "false", "NULL"},
}

// types are the DuckDB types of the placeholder kinds.
var types = map[byte]string{'i': "INTEGER", 'b': "BIGINT", 'f': "DOUBLE", 'c': "DECIMAL(18,3)", 'h': "SMALLINT", 's': "VARCHAR", 'd': "DATE", 't': "TIMESTAMP", 'o': "BOOLEAN"}

// literals are the extreme literals each placeholder position is also
// tried with, as a researcher could write them.
var literals = map[byte][]string{
	'i': {"0", "-1", "2147483647", "-2147483648"},
	'b': {"9223372036854775807", "-9223372036854775807", "4294967296"},
	'f': {"1e308", "-1e308", "CAST('nan' AS DOUBLE)", "CAST('inf' AS DOUBLE)", "CAST('-inf' AS DOUBLE)"},
	'c': {"0.5", "999999999999999.999"},
	'h': {"-32768"},
	's': {"''", "'abc'", `'\'`, "'%'", "'2020-01-01'"},
	'd': {"DATE '0001-01-01'", "DATE '9999-12-31'", "CAST('infinity' AS DATE)", "CAST('5881580-07-10' AS DATE)", "CAST('x' AS DATE)"},
	't': {"TIMESTAMP '9999-12-31 23:59:59'", "CAST('infinity' AS TIMESTAMP)", "CAST('294247-01-10 04:00:54' AS TIMESTAMP)"},
	'o': {"TRUE", "FALSE"},
}

// side is how many values each column kind cycles through: the row count
// is side³.
const side = 15

// SourceSQL returns the statements that fill the adversarial dataset's
// tables (created by the caller from the catalog): every combination of
// the values of columns 1, 2 and 3 of each kind, patients sharing rows so
// per-patient aggregates see several values, one opted-out patient and
// rows without a patient id.
func SourceSQL() []string {
	var cols []string
	kinds := []byte{'i', 'b', 'f', 'c', 'h', 's', 'd', 't', 'o'}
	for _, k := range kinds {
		vals := values[k]
		typed := make([]string, len(vals))
		for i, v := range vals {
			typed[i] = fmt.Sprintf("CAST(%s AS %s)", v, types[k])
		}
		list := "[" + strings.Join(typed, ", ") + "]"
		for j, stride := range []int{1, side, side * side} {
			cols = append(cols, fmt.Sprintf("%s[1 + (r // %d) %% %d] AS %c%d", list, stride, len(vals), k, j+1))
		}
	}
	fill := fmt.Sprintf("INSERT INTO adversarial SELECT CASE WHEN r %% 101 = 100 THEN NULL ELSE r %% 89 END AS patient_id, %s FROM range(%d) t(r)",
		strings.Join(cols, ", "), side*side*side)
	return []string{fill, "INSERT INTO optouts VALUES (7)"}
}

// Template is one expression shape: placeholders {k1}…{k3} stand for
// column k1…k3 of kind k (i INTEGER, b BIGINT, f DOUBLE, c DECIMAL, h
// SMALLINT, s VARCHAR, d DATE, t TIMESTAMP, o BOOLEAN), or for an extreme
// literal of that kind. Result is the kind of its value as a placeholder
// letter ('f' any number, 's', 'd', 'o'), or 0 when it cannot stand for a
// placeholder.
type Template struct {
	// Name is the Allowlist entry the template exercises.
	Name   string
	Expr   string
	Result byte
}

// Templates cover every entry of the compiler's allowlist (queries'
// TestTemplatesCoverAllowlist checks) with adversarial argument types.
var Templates = func() []Template {
	var t []Template
	add := func(name string, result byte, exprs ...string) {
		for _, e := range exprs {
			t = append(t, Template{Name: name, Expr: e, Result: result})
		}
	}
	for _, op := range []string{"+", "-", "*", "/", "//", "%"} {
		for _, pair := range [][2]string{{"i1", "i2"}, {"b1", "b2"}, {"f1", "f2"}, {"c1", "c2"}, {"h1", "h2"}, {"i1", "f2"}, {"b1", "c2"}, {"h1", "b2"}} {
			add(op, 'f', fmt.Sprintf("{%s} %s {%s}", pair[0], op, pair[1]))
		}
	}
	add("-", 'f', "-{i1}", "-{b1}", "-{f1}", "-{c1}", "-{h1}")
	add("-", 'f', "{d1} - {d2}")
	add("+", 'd', "{d1} + {i2}", "{i1} + {d2}", "{d1} + {b2}", "{d1} + {f2}", "{d1} + INTERVAL 1 YEAR", "{t1} + INTERVAL '2 days'", "{d1} + INTERVAL 1000000 YEAR")
	add("-", 'd', "{d1} - {i2}", "{d1} - {b2}", "{d1} - INTERVAL 1 MONTH", "{t1} - INTERVAL '3 hours'")
	for _, f := range []string{"abs", "floor", "ceil", "ceiling", "trunc", "round", "sign", "sqrt", "ln", "log", "log10", "log2", "exp"} {
		for _, k := range []string{"i1", "b1", "f1", "c1", "h1"} {
			add(f, 'f', fmt.Sprintf("%s({%s})", f, k))
		}
	}
	add("round", 'f', "round({f1}, {i2})", "round({c1}, {i2})", "round({f1}, {b2})", "round({i1}, {f2})")
	add("log", 'f', "log({f1}, {f2})", "log({i1}, {c2})")
	for _, f := range []string{"least", "greatest"} {
		add(f, 'f', f+"({i1}, {f2})", f+"({c1}, {b2}, {h3})")
		add(f, 's', f+"({s1}, {s2})")
		add(f, 'd', f+"({d1}, {t2})", f+"({d1}, '2020-01-01')")
	}
	add("nullif", 'f', "nullif({i1}, {i2})", "nullif({f1}, {c2})")
	add("nullif", 's', "nullif({s1}, {s2})")
	add("nullif", 'd', "nullif({d1}, {t2})")
	for _, f := range []string{"date_trunc", "datetrunc"} {
		add(f, 'd', f+"('month', {d1})", f+"('year', {t1})", f+"('quarter', {d1})", f+"('week', {t1})", f+"('day', {d1})")
	}
	for _, f := range []string{"year", "month", "quarter", "day", "week", "dayofweek", "isodow", "dayofyear"} {
		add(f, 'f', f+"({d1})", f+"({t1})")
	}
	for _, f := range []string{"date_part", "datepart"} {
		add(f, 'f', f+"('year', {d1})", f+"('doy', {t1})", f+"('dow', {d1})")
	}
	for _, f := range []string{"date_diff", "datediff", "date_sub"} {
		add(f, 'f', f+"('day', {d1}, {d2})", f+"('year', {t1}, {d2})", f+"('month', {d1}, {t2})", f+"('week', {t1}, {t2})")
	}
	add("make_date", 'd', "make_date({i1}, {i2}, {i3})", "make_date({b1}, {b2}, {b3})", "make_date({f1}, {f2}, {f3})", "make_date({h1}, {i2}, {c3})")
	add("current_date", 'd', "current_date")
	add("today", 'd', "today()")
	for _, f := range []string{"to_years", "to_months", "to_days", "to_weeks"} {
		add(f, 'd', "{d1} + "+f+"({i2})", "{t1} - "+f+"({b2})", "{d1} + "+f+"({f2})")
	}
	for _, f := range []string{"lower", "upper", "trim"} {
		add(f, 's', f+"({s1})")
	}
	add("trim", 's', "trim({s1}, {s2})")
	add("length", 'f', "length({s1})")
	for _, f := range []string{"substr", "substring"} {
		add(f, 's', f+"({s1}, {i2})", f+"({s1}, {b2}, {b3})", f+"({s1}, {f2}, {i3})", f+"({s1}, 1, 3)")
	}
	for _, f := range []string{"left", "right"} {
		add(f, 's', f+"({s1}, {b2})", f+"({s1}, {i2})", f+"({s1}, {f2})", f+"({s1}, 3)")
	}
	for _, f := range []string{"starts_with", "prefix", "suffix", "contains"} {
		add(f, 'o', f+"({s1}, {s2})")
	}
	add("~~", 'o', "{s1} LIKE {s2}", "{s1} ~~ {s2}")
	add("!~~", 'o', "{s1} NOT LIKE {s2}")
	add("~~*", 'o', "{s1} ILIKE {s2}")
	add("!~~*", 'o', "{s1} NOT ILIKE {s2}")
	add("^@", 'o', "{s1} ^@ {s2}")
	// Every cast the compiler accepts: to text from anything, to numbers
	// and booleans from numbers, text and booleans, to dates from text and
	// dates.
	numeric := []string{"i1", "b1", "f1", "c1", "h1", "s1", "o1"}
	casts := []struct {
		typ  string
		res  byte
		from []string
	}{
		{"VARCHAR", 's', []string{"i1", "b1", "f1", "c1", "h1", "s1", "d1", "t1", "o1"}},
		{"INTEGER", 'f', numeric}, {"BIGINT", 'f', numeric}, {"SMALLINT", 'f', numeric}, {"DOUBLE", 'f', numeric}, {"FLOAT", 'f', numeric},
		{"BOOLEAN", 'o', numeric},
		{"DATE", 'd', []string{"s1", "d1", "t1"}}, {"TIMESTAMP", 'd', []string{"s1", "d1", "t1"}},
	}
	for _, c := range casts {
		for _, k := range c.from {
			add(c.typ, c.res, fmt.Sprintf("CAST({%s} AS %s)", k, c.typ), fmt.Sprintf("TRY_CAST({%s} AS %s)", k, c.typ))
		}
	}
	add("INTERVAL", 'd', "{d1} + CAST('3 months' AS INTERVAL)", "{t1} - CAST('1000000 years' AS INTERVAL)", "{d1} + CAST('x' AS INTERVAL)")
	for _, op := range []string{"=", "<>", "<", ">", "<=", ">=", "IS DISTINCT FROM", "IS NOT DISTINCT FROM"} {
		for _, pair := range [][2]string{{"{i1}", "{f2}"}, {"{c1}", "{b2}"}, {"{s1}", "{s2}"}, {"{d1}", "{t2}"}, {"{o1}", "{o2}"}, {"{i1}", "'5'"}, {"{d1}", "'2020-01-01'"}, {"{t1}", "'2020-01-01 10:00'"}, {"{o1}", "'true'"}, {"'7'", "{h1}"}} {
			add(op, 'o', pair[0]+" "+op+" "+pair[1])
		}
	}
	add("NOT", 'o', "NOT {o1}")
	add("IS NULL", 'o', "{s1} IS NULL", "{d1} IS NULL")
	add("IS NOT NULL", 'o', "{f1} IS NOT NULL", "{t1} IS NOT NULL")
	add("IN", 'o', "{i1} IN (1, {i2}, '3')", "{s1} IN ('a', {s2})", "{d1} IN ({t2}, DATE '2020-01-01')", "{f1} IN ({c2}, {b3})")
	add("NOT IN", 'o', "{b1} NOT IN ({h2}, 4294967296)", "{s1} NOT IN ({s2})")
	add("coalesce", 'f', "coalesce({i1}, {f2}, 0)")
	add("coalesce", 'd', "coalesce({d1}, {t2})", "coalesce({d1}, '2020-01-01')")
	add("coalesce", 's', "coalesce({s1}, '')")
	add("AND", 'o', "{o1} AND {o2}")
	add("OR", 'o', "{o1} OR {o2}")
	add("BETWEEN", 'o', "{f1} BETWEEN {i2} AND {c3}", "{d1} BETWEEN {t2} AND '2020-01-01'", "{s1} BETWEEN 'a' AND {s2}")
	add("CASE", 'f', "CASE WHEN {o1} THEN {i2} ELSE {f3} END")
	add("CASE", 'd', "CASE WHEN {o1} THEN {d2} WHEN {o2} THEN {t3} END", "CASE WHEN {o1} THEN {d2} ELSE '2020-01-01' END")
	add("CASE", 's', "CASE WHEN {o1} THEN {s2} ELSE 'x' END")
	sort.SliceStable(t, func(i, j int) bool { return t[i].Name < t[j].Name })
	return t
}()

// InnerAggregates are the per-patient aggregates' templates, evaluated as
// the aggregate of a per-patient CTE.
var InnerAggregates = []Template{
	{Name: "count_star", Expr: "count(*)"},
	{Name: "count", Expr: "count({s1})"}, {Name: "count", Expr: "count(DISTINCT {t1})"},
	{Name: "sum", Expr: "sum({i1})"}, {Name: "sum", Expr: "sum({b1})"}, {Name: "sum", Expr: "sum({f1})"}, {Name: "sum", Expr: "sum({c1})"}, {Name: "sum", Expr: "sum({o1})"},
	{Name: "avg", Expr: "avg({b1})"}, {Name: "avg", Expr: "avg({f1})"}, {Name: "avg", Expr: "avg({c1})"}, {Name: "avg", Expr: "avg({o1})"},
	{Name: "mean", Expr: "mean({h1})"},
	{Name: "min", Expr: "min({s1})"}, {Name: "min", Expr: "min({f1})"}, {Name: "min", Expr: "min({t1})"}, {Name: "min", Expr: "min({o1})"},
	{Name: "max", Expr: "max({d1})"}, {Name: "max", Expr: "max({c1})"}, {Name: "max", Expr: "max({s1})"},
	{Name: "arg_max", Expr: "arg_max({f1}, {d2})"}, {Name: "arg_max", Expr: "arg_max({s1}, {f2})"},
	{Name: "arg_min", Expr: "arg_min({d1}, {s2})"},
	{Name: "max_by", Expr: "max_by({c1}, {t2})"},
	{Name: "min_by", Expr: "min_by({o1}, {b2})"},
	{Name: "bool_or", Expr: "bool_or({o1})"},
	{Name: "bool_and", Expr: "bool_and({o1})"},
	{Name: "median", Expr: "median({b1})"}, {Name: "median", Expr: "median({f1})"}, {Name: "median", Expr: "median({c1})"}, {Name: "median", Expr: "median({d1})"}, {Name: "median", Expr: "median({t1})"},
}

// OuterAggregates are released aggregates' templates over the adversarial
// columns ({x} is one of them, clamped to bounds where the aggregate needs
// bounds).
var OuterAggregates = []Template{
	{Name: "count_star", Expr: "count(*)"},
	{Name: "count", Expr: "count({s1})"},
	{Name: "sum", Expr: "sum(greatest(-1e15, least(1e15, {f1})))"}, {Name: "sum", Expr: "sum({o1})"}, {Name: "sum", Expr: "sum({i1})"},
	{Name: "avg", Expr: "avg({c1})"}, {Name: "mean", Expr: "mean({b1})"},
	{Name: "stddev", Expr: "stddev({h1})"}, {Name: "stddev_samp", Expr: "stddev_samp(greatest(-1e15, least(1e15, {f1})))"},
	{Name: "variance", Expr: "variance({i1})"}, {Name: "var_samp", Expr: "var_samp({o1})"},
	{Name: "median", Expr: "median({c1})"}, {Name: "median", Expr: "median(greatest(-1e15, least(1e15, {f1})))"},
	{Name: "quantile_cont", Expr: "quantile_cont({i1}, 0.25)"}, {Name: "quantile_cont", Expr: "quantile_cont({o1}, 0.9)"},
}

var placeholderRe = regexp.MustCompile(`\{([ibfchsdto])([123])\}`)

// Expand returns the expressions a template stands for, over the table
// alias x: every placeholder a column; and each placeholder in turn each
// extreme literal of its kind (and NULL), the others columns.
func Expand(t Template) []string {
	col := func(k, n string) string { return "x." + k + n }
	all := placeholderRe.ReplaceAllStringFunc(t.Expr, func(m string) string {
		s := placeholderRe.FindStringSubmatch(m)
		return col(s[1], s[2])
	})
	out := []string{all}
	locs := placeholderRe.FindAllStringSubmatchIndex(t.Expr, -1)
	for i, loc := range locs {
		kind := t.Expr[loc[2]]
		for _, lit := range append(append([]string(nil), literals[kind]...), "NULL") {
			var b strings.Builder
			last := 0
			for j, l := range locs {
				b.WriteString(t.Expr[last:l[0]])
				if j == i {
					b.WriteString("(" + lit + ")")
				} else {
					b.WriteString(col(t.Expr[l[2]:l[3]], t.Expr[l[4]:l[5]]))
				}
				last = l[1]
			}
			b.WriteString(t.Expr[last:])
			out = append(out, b.String())
		}
	}
	return out
}

// OverAggregates rewrites an expression over columns x.k into one over
// per-patient aggregates max(x.k), for a per-patient CTE's SELECT.
func OverAggregates(expr string) string {
	return regexp.MustCompile(`\bx\.([ibfchsdto][123])\b`).ReplaceAllString(expr, "max(x.$1)")
}

// Queries packs expressions into queries over the adversarial table: each
// expression is evaluated on every row (inside a per-patient aggregate,
// which evaluates its argument on every input row), and, when
// overAggregates, also as an expression over per-patient aggregates (the
// hoisted path of per-patient CTEs). perQuery bounds the expressions of one
// query (the compiler's syntax-node limit applies).
func Queries(exprs []string, overAggregates bool, perQuery int) []string {
	var out []string
	for start := 0; start < len(exprs); start += perQuery {
		part := exprs[start:min(start+perQuery, len(exprs))]
		var inner, conds []string
		for i, e := range part {
			inner = append(inner, fmt.Sprintf("max(%s) AS v%d", e, i))
			conds = append(conds, fmt.Sprintf("c0.v%d IS NULL", i))
		}
		q := fmt.Sprintf("WITH c0 AS (SELECT x.patient_id, %s FROM adversarial x GROUP BY x.patient_id)", strings.Join(inner, ", "))
		from := "c0"
		if overAggregates {
			var hoisted, maxes []string
			for i, e := range part {
				hoisted = append(hoisted, fmt.Sprintf("%s AS w%d", OverAggregates(e), i))
				maxes = append(maxes, fmt.Sprintf("max(c1.w%d) AS m%d", i, i))
				conds = append(conds, fmt.Sprintf("c2.m%d IS NULL", i))
			}
			q += fmt.Sprintf(", c1 AS (SELECT x.patient_id, %s FROM adversarial x GROUP BY x.patient_id)", strings.Join(hoisted, ", "))
			q += fmt.Sprintf(", c2 AS (SELECT c1.patient_id, %s FROM c1 GROUP BY c1.patient_id)", strings.Join(maxes, ", "))
			from = "c0 JOIN c2 ON c2.patient_id = c0.patient_id"
		}
		out = append(out, q+" SELECT count(*) AS n FROM "+from+" WHERE "+strings.Join(conds, " OR "))
	}
	return out
}

// AggregateQueries returns queries evaluating the inner aggregates (in a
// per-patient CTE) and the outer ones (released) over the adversarial
// columns, and group keys of every groupable kind.
func AggregateQueries() []string {
	var inner []string
	for _, t := range InnerAggregates {
		inner = append(inner, fmt.Sprintf("%s AS a%d", Expand(t)[0], len(inner)))
	}
	var conds []string
	for i := range inner {
		conds = append(conds, fmt.Sprintf("c.a%d IS NULL", i))
	}
	out := []string{fmt.Sprintf("WITH c AS (SELECT x.patient_id, %s FROM adversarial x GROUP BY x.patient_id) SELECT count(*) AS n FROM c WHERE %s",
		strings.Join(inner, ", "), strings.Join(conds, " OR "))}
	var outer []string
	for _, t := range OuterAggregates {
		outer = append(outer, fmt.Sprintf("%s AS a%d", Expand(t)[0], len(outer)))
	}
	out = append(out, "SELECT "+strings.Join(outer, ", ")+" FROM adversarial x")
	for _, g := range []string{"date_trunc('month', x.d1)", "date_trunc('year', x.t1)", "year(x.d1)", "month(x.t1)", "quarter(x.d1)",
		"left(x.s1, 3)", "lower(x.s1)", "substr(x.s1, 2, 2)", "x.o1", "CASE WHEN x.f1 > 0 THEN 'pos' WHEN x.f1 <= 0 THEN 'not' END"} {
		out = append(out, fmt.Sprintf("SELECT %s AS g, count(*) AS n, avg(greatest(0, least(1, x.f1))) AS m FROM adversarial x GROUP BY g", g))
	}
	return out
}

// Accepted expands every template and keeps the expressions compiles
// accepts (compiles reports whether a query compiles), halving refused
// packs. An extreme literal may be refused (a string that is not a date
// compared with a date); a template over columns may not, and refused
// lists those.
func Accepted(compiles func(query string) bool) (exprs, refused []string) {
	var accept func(part []string) []string
	accept = func(part []string) []string {
		if len(part) == 0 {
			return nil
		}
		if compiles(Queries(part, true, len(part))[0]) {
			return part
		}
		if len(part) == 1 {
			return nil
		}
		h := len(part) / 2
		return append(accept(part[:h]), accept(part[h:])...)
	}
	for _, t := range Templates {
		all := Expand(t)
		ok := accept(all)
		if len(ok) == 0 || ok[0] != all[0] {
			refused = append(refused, t.Name+": "+t.Expr)
		}
		exprs = append(exprs, ok...)
	}
	return exprs, refused
}

// Random builds a random expression of the given result kind ('f', 's',
// 'd', 'o') from the templates, nesting up to depth levels, over the
// adversarial table alias x: what FuzzTotal compiles and runs.
func Random(r *rand.Rand, result byte, depth int) string {
	var cands []Template
	for _, t := range Templates {
		if t.Result == result {
			cands = append(cands, t)
		}
	}
	t := cands[r.IntN(len(cands))]
	return placeholderRe.ReplaceAllStringFunc(t.Expr, func(m string) string {
		s := placeholderRe.FindStringSubmatch(m)
		kind := s[1][0]
		switch n := r.IntN(6); {
		case depth > 0 && n < 2:
			return "(" + Random(r, resultOf(kind), depth-1) + ")"
		case n < 4:
			return "x." + string(kind) + fmt.Sprint(1+r.IntN(3))
		default:
			lits := append(append([]string(nil), literals[kind]...), "NULL")
			return lits[r.IntN(len(lits))]
		}
	})
}

// resultOf is the template result kind that may stand for a placeholder.
func resultOf(kind byte) byte {
	switch kind {
	case 's', 'o':
		return kind
	case 'd', 't':
		return 'd'
	}
	return 'f'
}
