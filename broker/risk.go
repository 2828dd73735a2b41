package broker

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/nhs-tre/tre/queries"
)

// Risk flag kinds.
const (
	RiskRepeat           = "repeat"
	RiskDifferencing     = "differencing"
	RiskNarrowPopulation = "narrow_population"
)

// Thresholds of the narrow-population heuristic. They are deliberately
// simple: the flag asks a reviewer to look, it refuses nothing.
const (
	// narrowEqualities equality predicates (col = literal) narrow a population
	// enough to flag on their own; one fewer is enough when one of them is on
	// a clinical code column.
	narrowEqualities = 4
	// narrowDateDays: a date range shorter than this is flagged.
	narrowDateDays = 31
)

// hashString is the hex SHA-256 of s.
func hashString(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// shapeHash identifies a plan's shape: its dataset and the compiler's
// canonical text of what it releases and from what, without its WHERE
// conditions (queries.Plan.Shape: output names, aliases, layout and
// literal formatting left out). Two queries with the same shape whose
// predicates differ by one can be subtracted from each other.
func shapeHash(dataset, shape string) string {
	return hashString(dataset + "\x00" + shape)
}

// PredicateKeys returns the keys the differencing lookup matches on, for a
// query of the given shape with the given predicates. set identifies the
// shape with the set of distinct predicates; keys holds set and one key per
// predicate for the set without it.
//
// Two queries of one shape differ by exactly one added, removed or changed
// predicate (differsByOnePredicate) exactly when their predicate sets differ
// and their keys intersect: if B = A+x then B without x is A; if B = A-x then
// A without x is B; if x in A was changed to y, A without x is B without y.
// Conversely, a shared key means each set is the other with at most one
// predicate removed and at most one added. So the store can find the most
// recent such query with an index lookup per key, whatever the project's
// size, instead of the service comparing predicate lists one by one.
func PredicateKeys(shapeHash string, predicates []string) (set string, keys []string) {
	preds := slices.Clone(predicates)
	slices.Sort(preds)
	preds = slices.Compact(preds)
	set = predicateSetKey(shapeHash, preds, -1)
	keys = make([]string, 0, len(preds)+1)
	keys = append(keys, set)
	for i := range preds {
		keys = append(keys, predicateSetKey(shapeHash, preds, i))
	}
	return set, keys
}

// predicateSetKey hashes a shape and sorted distinct predicates, leaving out
// the one at index skip (none when skip < 0). Every string is length-prefixed
// so no two different sets encode alike.
func predicateSetKey(shapeHash string, sorted []string, skip int) string {
	h := sha256.New()
	var n [binary.MaxVarintLen64]byte
	write := func(s string) {
		h.Write(n[:binary.PutUvarint(n[:], uint64(len(s)))])
		h.Write([]byte(s))
	}
	write(shapeHash)
	for i, p := range sorted {
		if i != skip {
			write(p)
		}
	}
	return hex.EncodeToString(h.Sum(nil))
}

// differsByOnePredicate reports whether two predicate sets differ by exactly
// one added, removed or changed conjunct, and describes the difference.
func differsByOnePredicate(a, b []string) (string, bool) {
	onlyA := setMinus(a, b)
	onlyB := setMinus(b, a)
	switch {
	case len(onlyA) == 1 && len(onlyB) == 0:
		return fmt.Sprintf("adds the condition %s", onlyA[0]), true
	case len(onlyA) == 0 && len(onlyB) == 1:
		return fmt.Sprintf("removes the condition %s", onlyB[0]), true
	case len(onlyA) == 1 && len(onlyB) == 1:
		return fmt.Sprintf("changes the condition %s to %s", onlyB[0], onlyA[0]), true
	}
	return "", false
}

func setMinus(a, b []string) []string {
	var out []string
	for _, x := range a {
		if !slices.Contains(b, x) && !slices.Contains(out, x) {
			out = append(out, x)
		}
	}
	return out
}

var (
	// equalityRE matches `column = literal` (either side), the column
	// possibly qualified and quoted.
	equalityRE = regexp.MustCompile(`^(?:([a-z_][\w."]*)\s*=\s*((?:date\s*)?'[^']*'|-?[\d.]+)|((?:date\s*)?'[^']*'|-?[\d.]+)\s*=\s*([a-z_][\w."]*))$`)
	// dateBoundRE matches `column OP date-literal`.
	dateBoundRE = regexp.MustCompile(`^([a-z_][\w."]*)\s*(>=|>|<=|<)\s*(?:date\s*)?'(\d{4}-\d{2}-\d{2})'(?:\s*::\s*date)?$`)
	// betweenRE matches `column BETWEEN date AND date`.
	betweenRE = regexp.MustCompile(`^([a-z_][\w."]*)\s+between\s+(?:date\s*)?'(\d{4}-\d{2}-\d{2})'(?:\s*::\s*date)?\s+and\s+(?:date\s*)?'(\d{4}-\d{2}-\d{2})'(?:\s*::\s*date)?$`)
)

// narrowPopulation applies the narrow-population heuristic to a plan's
// normalised predicates: at least narrowEqualities equality filters (one
// fewer if one is on a code column), or a date range shorter than
// narrowDateDays days. It returns a reason, or "".
func narrowPopulation(cat *queries.Catalog, preds []string) string {
	equalities, codeEq := 0, ""
	lower := map[string]time.Time{}
	upper := map[string]time.Time{}
	for _, p := range preds {
		s := strings.ToLower(strings.TrimSpace(p))
		for strings.HasPrefix(s, "(") && strings.HasSuffix(s, ")") {
			s = strings.TrimSpace(s[1 : len(s)-1])
		}
		if m := equalityRE.FindStringSubmatch(s); m != nil {
			equalities++
			col := m[1] + m[4]
			if isCodeColumn(cat, col) {
				codeEq = col
			}
			continue
		}
		if m := betweenRE.FindStringSubmatch(s); m != nil {
			lo, err1 := time.Parse(time.DateOnly, m[2])
			hi, err2 := time.Parse(time.DateOnly, m[3])
			if err1 == nil && err2 == nil {
				lower[m[1]], upper[m[1]] = lo, hi
			}
			continue
		}
		if m := dateBoundRE.FindStringSubmatch(s); m != nil {
			d, err := time.Parse(time.DateOnly, m[3])
			if err != nil {
				continue
			}
			if m[2][0] == '>' {
				lower[m[1]] = d
			} else {
				upper[m[1]] = d
			}
		}
	}
	if equalities >= narrowEqualities || (codeEq != "" && equalities >= narrowEqualities-1) {
		return fmt.Sprintf("%d equality conditions narrow the population to very few patients", equalities)
	}
	cols := make([]string, 0, len(lower))
	for c := range lower {
		cols = append(cols, c)
	}
	slices.Sort(cols)
	for _, col := range cols {
		hi, ok := upper[col]
		if !ok {
			continue
		}
		if days := hi.Sub(lower[col]).Hours() / 24; days < narrowDateDays {
			return fmt.Sprintf("the date range on %s spans %.0f days (under %d)", col, days, narrowDateDays)
		}
	}
	return ""
}

// isCodeColumn reports whether a (possibly table-qualified, quoted) column
// name is a code column in cat.
func isCodeColumn(cat *queries.Catalog, col string) bool {
	if cat == nil {
		return false
	}
	col = strings.ReplaceAll(col, `"`, "")
	table, name := "", col
	if i := strings.LastIndexByte(col, '.'); i >= 0 {
		table, name = col[:i], col[i+1:]
		if j := strings.LastIndexByte(table, '.'); j >= 0 {
			table = table[j+1:]
		}
	}
	for i := range cat.Tables {
		t := &cat.Tables[i]
		if table != "" && !strings.EqualFold(t.Name, table) {
			continue
		}
		if c := t.Column(name); c != nil && c.Role == queries.RoleCode {
			return true
		}
	}
	return false
}
