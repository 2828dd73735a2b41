package queries

import (
	"encoding/json"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
)

// obj is one node of DuckDB's JSON AST.
type obj = map[string]any

func str(n obj, k string) string {
	s, _ := n[k].(string)
	return s
}

func sub(n obj, k string) obj {
	o, _ := n[k].(obj)
	return o
}

func list(n obj, k string) []any {
	l, _ := n[k].([]any)
	return l
}

// pos is the node's byte offset in the SQL, -1 when DuckDB did not record
// one (it writes 2^64-1).
func pos(n obj) int {
	num, ok := n["query_location"].(json.Number)
	if !ok {
		return -1
	}
	v, err := strconv.ParseInt(string(num), 10, 64)
	if err != nil || v < 0 || v > maxSQLBytes {
		return -1
	}
	return int(v)
}

// isEmpty reports whether a JSON value is the parser's default (absent).
func isEmpty(v any) bool {
	switch x := v.(type) {
	case nil:
		return true
	case string:
		return x == ""
	case bool:
		return !x
	case []any:
		return len(x) == 0
	case obj:
		if len(x) == 0 {
			return true
		}
		// An ORDER_MODIFIER without orders and an empty cte_map are defaults.
		if t, _ := x["type"].(string); t == "ORDER_MODIFIER" && len(list(x, "orders")) == 0 && len(x) <= 2 {
			return true
		}
		if m, ok := x["map"].([]any); ok && len(m) == 0 && len(x) == 1 {
			return true
		}
	case json.Number:
		return x == "0"
	}
	return false
}

// knownKeys refuses a node carrying a field this validator does not know
// with a non-default value: a newer DuckDB adding syntax is refused until
// someone has looked at it (fail closed).
func knownKeys(n obj, what string, keys map[string]bool) error {
	for k, v := range n {
		if keys[k] || commonKeys[k] {
			continue
		}
		if !isEmpty(v) {
			return refuse(what+" with "+strings.ReplaceAll(k, "_", " "), pos(n), "this SQL feature is not supported")
		}
	}
	return nil
}

var commonKeys = map[string]bool{"class": true, "type": true, "alias": true, "query_location": true}

func set(keys ...string) map[string]bool {
	m := make(map[string]bool, len(keys))
	for _, k := range keys {
		m[k] = true
	}
	return m
}

var (
	keysSelectNode = set("modifiers", "cte_map", "select_list", "from_table", "where_clause", "group_expressions", "group_sets", "aggregate_handling", "having", "sample", "qualify")
	keysStatement  = set("node", "named_param_map")
	keysColumnRef  = set("column_names")
	keysConstant   = set("value")
	keysFunction   = set("function_name", "schema", "children", "filter", "order_bys", "distinct", "is_operator", "export_state", "catalog")
	keysComparison = set("left", "right")
	keysChildren   = set("children")
	keysBetween    = set("input", "lower", "upper")
	keysCase       = set("case_checks", "else_expr")
	keysCast       = set("child", "cast_type", "try_cast")
	keysBaseTable  = set("sample", "schema_name", "table_name", "column_name_alias", "catalog_name", "at_clause")
	keysJoin       = set("sample", "left", "right", "condition", "join_type", "ref_type", "using_columns", "delim_flipped", "duplicate_eliminated_columns")
	keysSubquery   = set("sample", "subquery", "column_name_alias")
	keysCTE        = set("aliases", "query", "materialized", "key_targets")
	keysOrder      = set("type", "null_order", "expression")
)

// kind is the type of a value as far as validation needs it.
type kind uint8

const (
	kAny kind = iota
	kNum
	kText
	kDate
	kBool
	kInterval
	kNull
)

// val is what the compiler knows about an expression's values.
type val struct {
	kind kind
	// ts marks a date kind that is a TIMESTAMP rather than a DATE.
	ts bool
	// lo and hi bound a numeric value (±Inf when unknown).
	lo, hi float64
	// domain is the public, finite set of non-NULL values when hasDomain.
	domain    []string
	hasDomain bool
	// groupable: a categorical or code value that may be a group on its own.
	groupable bool
	// patient: the value is a function of the patient alone (one value per
	// patient), so grouping by it puts each patient in one group.
	patient bool
	// isConst and constText describe a literal.
	isConst   bool
	constText string
	// codelistName marks the codelist column of CodelistsTable.
	codelistName bool
}

func unbounded(k kind) val { return val{kind: k, lo: math.Inf(-1), hi: math.Inf(1)} }

func (v val) bounded() bool {
	return v.kind == kNum && !math.IsInf(v.lo, 0) && !math.IsInf(v.hi, 0) && !math.IsNaN(v.lo) && !math.IsNaN(v.hi)
}

// union is the value set of "either a or b" (CASE branches, coalesce).
func union(a, b val) val {
	if a.kind == kNull {
		b.isConst = false
		return b
	}
	if b.kind == kNull {
		a.isConst = false
		return a
	}
	out := val{kind: a.kind, ts: a.ts || b.ts, patient: a.patient && b.patient}
	if a.kind != b.kind {
		out.kind = kAny
	}
	out.lo, out.hi = math.Min(a.lo, b.lo), math.Max(a.hi, b.hi)
	if a.hasDomain && b.hasDomain {
		out.hasDomain = true
		out.domain = mergeDomain(a.domain, b.domain)
	}
	out.groupable = a.groupable && b.groupable
	return out
}

func mergeDomain(a, b []string) []string {
	out := make([]string, 0, len(a)+len(b))
	seen := make(map[string]bool, len(a)+len(b))
	for _, s := range append(append([]string{}, a...), b...) {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

func sortStrings(s []string) { sort.Strings(s) }

// fmtNum formats a bound or literal for SQL and messages.
func fmtNum(f float64) string {
	if f == math.Trunc(f) && math.Abs(f) < 1e15 {
		return strconv.FormatFloat(f, 'f', -1, 64)
	}
	return strconv.FormatFloat(f, 'g', -1, 64)
}

// sqlDouble is a DOUBLE literal.
func sqlDouble(f float64) string {
	return fmt.Sprintf("CAST(%s AS DOUBLE)", fmtNum(f))
}
