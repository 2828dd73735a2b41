package queries

import (
	"math"
	"strconv"
	"strings"
	"time"
)

// A total query language: no accepted expression raises a run-time error
// that depends on the data. DuckDB raises errors on some values (ln(0), an
// integer overflow, a string that does not convert, a date out of range),
// and an error that occurs for one patient's rows and not another's tells a
// researcher something about that patient, even with no result: the error
// is an oracle. Worse, DuckDB does not raise an error for a failing
// constant expression when it plans the query: it evaluates it again per
// row, so `WHERE <one patient> AND CAST('x' AS INTEGER) = 1` fails only if
// that patient exists. Hence every partial operation is emitted in a form
// that yields NULL (or a value) on every input, whatever its arguments:
//
//   - casts are TRY_CAST, and a string literal compared with a number, date
//     or boolean is converted here, at compile time, or refused;
//   - operations DuckDB evaluates with a possible error but no cheap exact
//     guard (integer arithmetic that may overflow, make_date, substr with
//     computed offsets, date arithmetic) are wrapped in try(), which makes
//     an erroring row NULL; try() costs nothing on rows that do not fail;
//   - functions with a cheap exact domain (ln, log, sqrt) get a CASE guard
//     instead, because try() re-evaluates a whole vector row by row once a
//     row in it fails, which is slow where failures are common (logarithms
//     of zeros);
//   - operands of comparisons, IN, BETWEEN, CASE results, coalesce, least,
//     greatest and nullif must have one kind, so DuckDB never casts a
//     column at run time (text compared with a number casts the text);
//   - conditions (WHERE, ON, FILTER, HAVING, CASE WHEN, AND, OR, NOT) must
//     be boolean: DuckDB would cast other values to BOOLEAN per row;
//   - every DATE and TIMESTAMP value lies in the band [0001-01-01,
//     9999-12-31] or is NULL: the release snapshot nulls data outside it,
//     date literals outside it are refused, and date arithmetic and casts
//     to a date are nulled outside it. Inside the band DATE and TIMESTAMP
//     convert into each other and every date function is total, so
//     date_trunc, year, date_diff and comparisons need no wrapper;
//   - intervals appear only as the right operand of date ± interval;
//   - aggregates inside per-patient queries sum and average in DOUBLE
//     (which overflows to ±Inf, never to an error), and are computed in an
//     inner query so that expressions over them can use try() (DuckDB
//     refuses try() around an aggregate).
//
// A test evaluates every allowlisted function and operator on adversarial
// values in the real sandbox child (sandbox TestTotalFunctions) and a fuzz
// target builds random expressions from the allowlist (FuzzTotal).

// The date band: every date or timestamp an expression sees lies in it or
// is NULL.
const (
	dateBandLo = "0001-01-01"
	dateBandHi = "9999-12-31"
)

// dateBandSQL bounds a DATE (ts false) or TIMESTAMP (ts true) value, each in
// its own type so that comparing never converts the value.
func dateBandSQL(ts bool) (lo, hi string) {
	if ts {
		return "TIMESTAMP '" + dateBandLo + " 00:00:00'", "TIMESTAMP '" + dateBandHi + " 23:59:59.999999'"
	}
	return "DATE '" + dateBandLo + "'", "DATE '" + dateBandHi + "'"
}

// inBand is s, a DATE or TIMESTAMP expression that may fall outside the
// date band (or fail: s may contain try()), NULL outside it.
func inBand(s string, ts bool) string {
	lo, hi := dateBandSQL(ts)
	return "CASE WHEN " + s + " BETWEEN " + lo + " AND " + hi + " THEN " + s + " END"
}

// tryExpr makes an erroring row NULL (see the comment at the top).
func tryExpr(s string) string { return "try(" + s + ")" }

// kindOfType maps a catalog column's declared DuckDB type to a kind, and
// says whether a date kind is a TIMESTAMP. The release snapshot casts every
// column to its declared type, so this is the type the query sees.
func kindOfType(t string) (kind, bool) {
	base := strings.ToUpper(strings.TrimSpace(t))
	if i := strings.IndexByte(base, '('); i >= 0 {
		base = strings.TrimSpace(base[:i])
	}
	switch base {
	case "VARCHAR", "TEXT", "STRING", "CHAR", "BPCHAR":
		return kText, false
	case "TINYINT", "SMALLINT", "INTEGER", "INT", "INT1", "INT2", "INT4", "INT8", "BIGINT", "HUGEINT",
		"UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT", "UHUGEINT", "LONG", "SHORT",
		"DOUBLE", "FLOAT", "FLOAT4", "FLOAT8", "REAL", "DOUBLE PRECISION", "DECIMAL", "NUMERIC":
		return kNum, false
	case "DATE":
		return kDate, false
	case "TIMESTAMP", "DATETIME", "TIMESTAMP_US", "TIMESTAMP WITHOUT TIME ZONE":
		return kDate, true
	case "BOOLEAN", "BOOL", "LOGICAL":
		return kBool, false
	}
	return kAny, false
}

func (k kind) String() string {
	switch k {
	case kNum:
		return "a number"
	case kText:
		return "text"
	case kDate:
		return "a date"
	case kBool:
		return "a condition"
	case kInterval:
		return "an interval"
	case kNull:
		return "NULL"
	}
	return "a value of unknown type"
}

// unify finds the one kind the operands of a comparison, IN, BETWEEN, CASE,
// coalesce, least, greatest or nullif share, so that DuckDB never casts an
// operand at run time. String literals take the kind of the other operands
// (coerce converts them here); NULL takes any. ok is false when operands of
// two kinds meet, or any is an interval or of unknown type; what then names
// the two kinds.
func unify(vals []val) (k kind, ts bool, what string, ok bool) {
	k = kNull
	for _, v := range vals {
		switch {
		case v.kind == kNull:
			continue
		case v.kind == kAny || v.kind == kInterval:
			return 0, false, v.kind.String(), false
		case v.kind == kText && v.isConst:
			continue // a literal: converted below
		}
		if k != kNull && k != v.kind {
			return 0, false, k.String() + " with " + v.kind.String(), false
		}
		k = v.kind
		ts = ts || v.ts
	}
	if k == kNull {
		for _, v := range vals {
			if v.kind == kText {
				return kText, false, "", true
			}
		}
	}
	return k, ts, "", true
}

// coerce returns the SQL of an operand converted to kind k (from unify): a
// string literal is parsed here and emitted as a literal of kind k, or
// refused when it is not one; anything else is already of kind k (or NULL).
func coerce(s string, v val, k kind, ts bool, p int) (string, error) {
	if !(v.kind == kText && v.isConst) || k == kText || k == kNull {
		return s, nil
	}
	text := v.constText
	switch k {
	case kNum:
		f, err := strconv.ParseFloat(strings.TrimSpace(text), 64)
		if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
			return "", refuse(quoteString(text)+" compared with a number", p, "it is not a finite number; write the number without quotes")
		}
		if f == math.Trunc(f) && math.Abs(f) < 1<<53 {
			return strconv.FormatInt(int64(f), 10), nil
		}
		return sqlDouble(f), nil
	case kDate:
		lit, ok := dateLiteralSQL(text, ts)
		if !ok {
			return "", refuse(quoteString(text)+" compared with a date", p, "write dates as 'YYYY-MM-DD' between "+dateBandLo+" and "+dateBandHi)
		}
		return lit, nil
	case kBool:
		switch strings.ToLower(strings.TrimSpace(text)) {
		case "true":
			return "TRUE", nil
		case "false":
			return "FALSE", nil
		}
		return "", refuse(quoteString(text)+" compared with a condition", p, "write TRUE or FALSE")
	}
	return "", refuse(quoteString(text)+" compared with "+k.String(), p, "")
}

// dateLiteralSQL parses a date ('YYYY-MM-DD') or, when ts, a timestamp
// ('YYYY-MM-DD[ HH:MM[:SS[.ffffff]]]') in the date band and returns it as a
// DATE or TIMESTAMP literal.
func dateLiteralSQL(text string, ts bool) (string, bool) {
	text = strings.TrimSpace(text)
	layouts := []string{"2006-01-02"}
	if ts {
		layouts = append(layouts, "2006-01-02 15:04", "2006-01-02 15:04:05", "2006-01-02 15:04:05.999999")
	}
	for _, l := range layouts {
		t, err := time.Parse(l, text)
		if err != nil || t.Year() < 1 || t.Year() > 9999 {
			continue
		}
		if ts {
			return "TIMESTAMP '" + t.Format("2006-01-02 15:04:05.999999") + "'", true
		}
		return "DATE '" + t.Format("2006-01-02") + "'", true
	}
	return "", false
}

// castTarget is the SQL type a kind is cast to when a value must become it.
func castTarget(k kind, ts bool) string {
	switch k {
	case kNum:
		return "DOUBLE"
	case kDate:
		if ts {
			return "TIMESTAMP"
		}
		return "DATE"
	case kBool:
		return "BOOLEAN"
	}
	return "VARCHAR"
}

// intLiteralWithin reports whether v is an integer literal with |value| ≤
// limit: the substring functions take such arguments as they are.
func intLiteralWithin(v val, limit float64) bool {
	return v.kind == kNum && v.isConst && v.lo == v.hi && v.lo == math.Trunc(v.lo) && math.Abs(v.lo) <= limit
}
