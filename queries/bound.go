package queries

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// dateRange is what a query's WHERE proves about a date column: every input
// row has lo ≤ value ≤ hi, compared by calendar day. Only the bounds found
// are set.
type dateRange struct {
	lo, hi       time.Time
	hasLo, hasHi bool
	// first is the first day a row can have (set with lo): lo, except
	// after a strict x > d on a DATE column, where it is the next day. lo
	// keeps d, the widened bound the groups-per-patient bound has always
	// used; the public keys of a date bucket (bucketKeys) start at first,
	// so x > DATE '2022-12-31' adds no empty December.
	first time.Time
}

// atLeast records the lower bound t, whose first possible day is first.
func (r *dateRange) atLeast(t, first time.Time) {
	if !r.hasLo || first.After(r.first) {
		r.first = first
	}
	if !r.hasLo || t.After(r.lo) {
		r.lo = t
	}
	r.hasLo = true
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
			r := get(col.sql)
			switch op {
			case "COMPARE_GREATERTHAN":
				// A DATE after d is from the next day on; a TIMESTAMP
				// after midnight of d may still be on d.
				first := lit
				if !col.ts {
					first = lit.AddDate(0, 0, 1)
				}
				r.atLeast(lit, first)
			case "COMPARE_GREATERTHANOREQUALTO":
				r.atLeast(lit, lit)
			case "COMPARE_LESSTHAN":
				r.atMost(lit.AddDate(0, 0, -1))
			case "COMPARE_LESSTHANOREQUALTO":
				r.atMost(lit)
			case "COMPARE_EQUAL":
				r.atLeast(lit, lit)
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
				r := get(col.sql)
				r.atLeast(lo, lo)
				r.atMost(hi)
			}
		}
	}
	return out
}

// dateCol is a date column a query names.
type dateCol struct {
	sql  string // qualified SQL, the key of whereRanges
	name string // as a researcher writes it: alias.column
	ts   bool   // a TIMESTAMP, not a DATE
}

// dateColumn is the date column n names, if it names one.
func (c *compiler) dateColumn(n obj, sc *scope) (dateCol, bool) {
	if str(n, "class") != "COLUMN_REF" {
		return dateCol{}, false
	}
	rel, col, err := c.resolve(n, sc)
	if err != nil || col.role != RoleDate {
		return dateCol{}, false
	}
	return dateCol{sql: qualified(rel, col), name: rel.alias + "." + col.name, ts: col.v.ts}, true
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

// dateBucket is a group key that buckets a date column: date_trunc(unit,
// col) when trunc, else year(col), quarter(col) or month(col) (unit the
// function's name). unit is lower case without a plural s.
type dateBucket struct {
	unit  string
	trunc bool
	col   dateCol
}

// bucketOf reads group key n as a date bucket of a date column.
func (c *compiler) bucketOf(n obj, sc *scope) (dateBucket, bool) {
	if str(n, "class") != "FUNCTION" {
		return dateBucket{}, false
	}
	kids := list(n, "children")
	var b dateBucket
	var colNode obj
	switch name := strings.ToLower(str(n, "function_name")); name {
	case "date_trunc", "datetrunc":
		if len(kids) != 2 {
			return dateBucket{}, false
		}
		first, _ := kids[0].(obj)
		if str(first, "class") != "CONSTANT" {
			return dateBucket{}, false
		}
		u, _ := sub(first, "value")["value"].(string)
		b.unit, b.trunc = strings.TrimSuffix(strings.ToLower(u), "s"), true
		colNode, _ = kids[1].(obj)
	case "year", "quarter", "month":
		if len(kids) != 1 {
			return dateBucket{}, false
		}
		b.unit = name
		colNode, _ = kids[0].(obj)
	default:
		return dateBucket{}, false
	}
	col, ok := c.dateColumn(colNode, sc)
	b.col = col
	return b, ok
}

// bucketCount bounds how many distinct values group key n takes over input
// rows that satisfy ranges: a year, quarter or month bucket of a date column
// the WHERE bounds on both sides. 0 means no bound is known.
func (c *compiler) bucketCount(n obj, sc *scope, ranges map[string]*dateRange) int {
	b, ok := c.bucketOf(n, sc)
	if !ok {
		return 0
	}
	r := ranges[b.col.sql]
	if r == nil || !r.hasLo || !r.hasHi || r.hi.Before(r.lo) {
		return 0
	}
	months := (r.hi.Year()-r.lo.Year())*12 + int(r.hi.Month()) - int(r.lo.Month()) + 1
	quarters := (r.hi.Year()-r.lo.Year())*4 + (int(r.hi.Month())-1)/3 - (int(r.lo.Month())-1)/3 + 1
	years := r.hi.Year() - r.lo.Year() + 1
	switch b.unit {
	case "year":
		return years
	case "quarter":
		if !b.trunc {
			return min(quarters, 4)
		}
		return quarters
	case "month":
		if !b.trunc {
			return min(months, 12)
		}
		return months
	}
	return 0
}

// maxBucketKeys caps the public keys of one date bucket (bucketKeys): 600
// months are 50 years.
const maxBucketKeys = 600

// bucketKeys is the public domain of date bucket b over the rows r allows,
// for a federated query grouping by it (issue 21): every month, quarter or
// year that a day from r.first to r.hi falls in, in order, each written as
// DuckDB writes the key the rewrite releases (groupKey casts date_trunc to
// a DATE, so 'YYYY-MM-DD'; year() is a BIGINT, so '2023'). It reads only
// the query's WHERE bounds, never the data, so every site and the broker
// derive the same keys; the WHERE keeps every row inside them. When there
// is no such domain, why says what to change.
func bucketKeys(b dateBucket, r *dateRange) (keys []string, why string) {
	name := b.col.name
	var step int // months
	switch {
	case b.trunc && b.unit == "month":
		step = 1
	case b.trunc && b.unit == "quarter":
		step = 3
	case b.unit == "year":
		step = 12
	default:
		return nil, "a query over several sites may group a date only by date_trunc('month', …), date_trunc('quarter', …), date_trunc('year', …), year(…), quarter(…) or month(…)"
	}
	plural := map[int]string{1: "months", 3: "quarters", 12: "years"}[step]
	example := name + " >= DATE '2023-01-01' AND " + name + " < DATE '2024-01-01'"
	switch {
	case r == nil || (!r.hasLo && !r.hasHi):
		return nil, "every site must release the same " + plural + ", so they come from the query: bound " + name + " on both sides in WHERE, e.g. " + example
	case !r.hasLo:
		return nil, "every site must release the same " + plural + ", so they come from the query: add a lower bound on " + name + " to WHERE, e.g. " + name + " >= DATE '2023-01-01'"
	case !r.hasHi:
		return nil, "every site must release the same " + plural + ", so they come from the query: add an upper bound on " + name + " to WHERE, e.g. " + name + " < DATE '2024-01-01'"
	case r.hi.Before(r.first):
		return nil, "the WHERE bounds on " + name + " leave no day to group"
	}
	// Months since year 0 of the first and last bucket.
	start := r.first.Year()*12 + int(r.first.Month()) - 1
	end := r.hi.Year()*12 + int(r.hi.Month()) - 1
	start -= start % step
	end -= end % step
	if n := (end-start)/step + 1; n > maxBucketKeys {
		return nil, fmt.Sprintf("the WHERE bounds on %s span %d %s; a query over several sites may release at most %d: narrow the range", name, n, plural, maxBucketKeys)
	}
	for m := start; m <= end; m += step {
		if b.trunc {
			keys = append(keys, fmt.Sprintf("%04d-%02d-01", m/12, m%12+1))
		} else {
			keys = append(keys, strconv.Itoa(m/12))
		}
	}
	return keys, ""
}
