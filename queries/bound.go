package queries

import (
	"strings"
	"time"
)

// dateRange is what a query's WHERE proves about a date column: every input
// row has lo ≤ value ≤ hi, compared by calendar day. Only the bounds found
// are set.
type dateRange struct {
	lo, hi       time.Time
	hasLo, hasHi bool
}

func (r *dateRange) atLeast(t time.Time) {
	if !r.hasLo || t.After(r.lo) {
		r.lo, r.hasLo = t, true
	}
}

func (r *dateRange) atMost(t time.Time) {
	if !r.hasHi || t.Before(r.hi) {
		r.hi, r.hasHi = t, true
	}
}

// whereRanges collects the bounds that top-level WHERE conjuncts comparing a
// date column with a date literal put on that column, keyed by the column's
// qualified SQL. Every input row satisfies every conjunct, and a comparison
// is never true for NULL. Bounds are widened, never narrowed, where the
// column could hold times of day: x > d keeps d, x < d ends the day before.
func (c *compiler) whereRanges(conjs []obj, sc *scope) map[string]*dateRange {
	out := make(map[string]*dateRange)
	get := func(col string) *dateRange {
		if out[col] == nil {
			out[col] = &dateRange{}
		}
		return out[col]
	}
	for _, n := range conjs {
		switch str(n, "class") {
		case "COMPARISON":
			op := str(n, "type")
			col, ok := c.dateColumn(sub(n, "left"), sc)
			lit, okLit := dateLiteral(sub(n, "right"))
			if !ok || !okLit {
				// literal op column: flip the comparison.
				col, ok = c.dateColumn(sub(n, "right"), sc)
				lit, okLit = dateLiteral(sub(n, "left"))
				op = map[string]string{
					"COMPARE_GREATERTHAN": "COMPARE_LESSTHAN", "COMPARE_GREATERTHANOREQUALTO": "COMPARE_LESSTHANOREQUALTO",
					"COMPARE_LESSTHAN": "COMPARE_GREATERTHAN", "COMPARE_LESSTHANOREQUALTO": "COMPARE_GREATERTHANOREQUALTO",
					"COMPARE_EQUAL": "COMPARE_EQUAL",
				}[op]
			}
			if !ok || !okLit {
				continue
			}
			r := get(col)
			switch op {
			case "COMPARE_GREATERTHAN", "COMPARE_GREATERTHANOREQUALTO":
				r.atLeast(lit)
			case "COMPARE_LESSTHAN":
				r.atMost(lit.AddDate(0, 0, -1))
			case "COMPARE_LESSTHANOREQUALTO":
				r.atMost(lit)
			case "COMPARE_EQUAL":
				r.atLeast(lit)
				r.atMost(lit)
			}
		case "BETWEEN":
			if str(n, "type") != "COMPARE_BETWEEN" {
				continue
			}
			col, ok := c.dateColumn(sub(n, "input"), sc)
			lo, okLo := dateLiteral(sub(n, "lower"))
			hi, okHi := dateLiteral(sub(n, "upper"))
			if ok && okLo && okHi {
				r := get(col)
				r.atLeast(lo)
				r.atMost(hi)
			}
		}
	}
	return out
}

// dateColumn is the qualified SQL of n when n names a date column.
func (c *compiler) dateColumn(n obj, sc *scope) (string, bool) {
	if str(n, "class") != "COLUMN_REF" {
		return "", false
	}
	rel, col, err := c.resolve(n, sc)
	if err != nil || col.role != RoleDate {
		return "", false
	}
	return qualified(rel, col), true
}

// dateLiteral reads DATE 'YYYY-MM-DD', CAST('…' AS DATE) or a bare
// 'YYYY-MM-DD' string (which DuckDB casts to the column's type).
func dateLiteral(n obj) (time.Time, bool) {
	if str(n, "class") == "CAST" {
		if str(sub(n, "cast_type"), "id") != "DATE" {
			return time.Time{}, false
		}
		n = sub(n, "child")
	}
	if str(n, "class") != "CONSTANT" {
		return time.Time{}, false
	}
	s, ok := sub(n, "value")["value"].(string)
	if !ok {
		return time.Time{}, false
	}
	t, err := time.Parse("2006-01-02", s)
	return t, err == nil
}

// bucketCount bounds how many distinct values group key n takes over input
// rows that satisfy ranges: a year, quarter or month bucket of a date column
// the WHERE bounds on both sides. 0 means no bound is known.
func (c *compiler) bucketCount(n obj, sc *scope, ranges map[string]*dateRange) int {
	if str(n, "class") != "FUNCTION" {
		return 0
	}
	kids := list(n, "children")
	var unit string
	var colNode obj
	name := strings.ToLower(str(n, "function_name"))
	trunc := name == "date_trunc" || name == "datetrunc"
	switch name {
	case "date_trunc", "datetrunc":
		if len(kids) != 2 {
			return 0
		}
		first, _ := kids[0].(obj)
		if str(first, "class") != "CONSTANT" {
			return 0
		}
		u, _ := sub(first, "value")["value"].(string)
		unit = strings.TrimSuffix(strings.ToLower(u), "s")
		colNode, _ = kids[1].(obj)
	case "year", "quarter", "month":
		if len(kids) != 1 {
			return 0
		}
		unit = name
		colNode, _ = kids[0].(obj)
	default:
		return 0
	}
	col, ok := c.dateColumn(colNode, sc)
	r := ranges[col]
	if !ok || r == nil || !r.hasLo || !r.hasHi || r.hi.Before(r.lo) {
		return 0
	}
	months := (r.hi.Year()-r.lo.Year())*12 + int(r.hi.Month()) - int(r.lo.Month()) + 1
	quarters := (r.hi.Year()-r.lo.Year())*4 + (int(r.hi.Month())-1)/3 - (int(r.lo.Month())-1)/3 + 1
	years := r.hi.Year() - r.lo.Year() + 1
	switch unit {
	case "year":
		return years
	case "quarter":
		if !trunc {
			return min(quarters, 4)
		}
		return quarters
	case "month":
		if !trunc {
			return min(months, 12)
		}
		return months
	}
	return 0
}
