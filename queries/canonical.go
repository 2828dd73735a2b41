package queries

import (
	"encoding/json"
	"fmt"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// The broker's risk flags (a repeat of an earlier query, a query that
// differs from one by a single condition) compare queries by what they ask,
// not by how they are written. Plan.Shape, Plan.Normalized and
// Plan.Predicates are built from the compiled query, never from the
// submitted text, in a canonical form:
//   - output names (AS n, AS n_again) are left out, and per-patient CTEs
//     and subqueries are named by their order and their columns by
//     position, so renaming any of them changes nothing;
//   - relations are named by their table, not their alias (a table's
//     second use in one FROM is table#2);
//   - layout and comments are gone (the text is rendered from DuckDB's
//     parse), WHERE conjuncts and IN lists are sorted, group columns and
//     aggregates are sorted;
//   - numbers have one form (18, 18.0 and 1.8e1 are 18) and a string
//     literal that is a number is that number ('2' and 2 compare equal).
// Over-matching only asks a reviewer to look; under-matching lets a
// differencing attack through unflagged, so the form errs towards equal.

// canonicalNames maps each relation's alias, and each per-patient CTE's
// name, to how canonical text names the relation.
func canonicalNames(rels []*relation) map[string]*canonRel {
	names := make(map[string]*canonRel, len(rels))
	uses := map[string]int{}
	for _, r := range rels {
		name := r.canon
		if name == "" {
			name = strings.ToLower(r.table)
			if uses[name]++; uses[name] > 1 {
				name += "#" + strconv.Itoa(uses[name])
			}
		}
		names[r.alias] = &canonRel{name: name, rel: r}
		if r.derived {
			// The CTE's own name where the rewrite reads it.
			names["cte_"+strings.ToLower(r.table)] = names[r.alias]
		}
	}
	return names
}

type canonRel struct {
	name string
	rel  *relation
}

// column returns the canonical name of one of the relation's columns: its
// position for a per-patient CTE or subquery, whose column names the
// researcher chose, else its name.
func (c *canonRel) column(name string) string {
	if c.rel.derived {
		for i, col := range c.rel.cols {
			if strings.EqualFold(col.name, name) && col.role != RolePrivacyUnit {
				return "c" + strconv.Itoa(i+1)
			}
		}
	}
	return strings.ToLower(name)
}

// token is one lexical unit of SQL the compiler rendered.
type token struct {
	kind byte // 'q' quoted identifier, 's' string literal, 'n' number, 'w' word, 'p' punctuation or space
	text string
}

// lexSQL splits SQL the compiler rendered into tokens. It needs to know
// only quoting and numbers: everything else is kept as it is.
func lexSQL(s string) []token {
	var out []token
	for i := 0; i < len(s); {
		ch := s[i]
		switch {
		case ch == '"' || ch == '\'':
			j := i + 1
			for j < len(s) {
				if s[j] == ch {
					if j+1 < len(s) && s[j+1] == ch {
						j += 2
						continue
					}
					break
				}
				j++
			}
			end := min(j+1, len(s))
			kind := byte('q')
			if ch == '\'' {
				kind = 's'
			}
			out = append(out, token{kind, s[i:end]})
			i = end
		case ch >= '0' && ch <= '9' || ch == '.' && i+1 < len(s) && s[i+1] >= '0' && s[i+1] <= '9':
			j := i
			for j < len(s) && (s[j] >= '0' && s[j] <= '9' || s[j] == '.') {
				j++
			}
			if j < len(s) && (s[j] == 'e' || s[j] == 'E') {
				k := j + 1
				if k < len(s) && (s[k] == '+' || s[k] == '-') {
					k++
				}
				if k < len(s) && s[k] >= '0' && s[k] <= '9' {
					for j = k; j < len(s) && s[j] >= '0' && s[j] <= '9'; j++ {
					}
				}
			}
			out = append(out, token{'n', s[i:j]})
			i = j
		case isWordByte(ch):
			j := i
			for j < len(s) && isWordByte(s[j]) {
				j++
			}
			out = append(out, token{'w', s[i:j]})
			i = j
		default:
			out = append(out, token{'p', s[i : i+1]})
			i++
		}
	}
	return out
}

func isWordByte(ch byte) bool {
	return ch == '_' || ch >= 'a' && ch <= 'z' || ch >= 'A' && ch <= 'Z' || ch >= '0' && ch <= '9' || ch >= 0x80
}

// unquote returns a quoted identifier's or literal's content.
func unquote(t token) string {
	q := t.text[:1]
	return strings.ReplaceAll(strings.TrimSuffix(t.text[1:], q), q+q, q)
}

// canonicalNumber writes a number in one form, or returns false.
func canonicalNumber(s string) (string, bool) {
	f, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
	if err != nil || math.IsInf(f, 0) || math.IsNaN(f) {
		return "", false
	}
	if f == math.Trunc(f) && math.Abs(f) < 1<<53 {
		return strconv.FormatInt(int64(f), 10), true
	}
	return strconv.FormatFloat(f, 'g', -1, 64), true
}

// leadingZero reports whether a literal is a code such as '0123' rather
// than a number: its leading zero means something.
func leadingZero(v string) bool {
	v = strings.TrimPrefix(v, "-")
	return len(v) > 1 && v[0] == '0' && v[1] >= '0' && v[1] <= '9'
}

// numberCastRe matches a number the parser cast to a numeric type, as
// DuckDB does with 0.2e1 (CAST(2 AS DOUBLE)): canonical text keeps the
// number.
var numberCastRe = regexp.MustCompile(`(?:TRY_)?CAST\((-?[0-9][0-9.e+-]*) AS (?:DOUBLE|FLOAT|REAL|INTEGER|BIGINT|SMALLINT|TINYINT|HUGEINT|DECIMAL(?:\(\d+, ?\d+\))?)\)`)

// canonicalText renders SQL the compiler produced over rels in the
// canonical form described above.
func canonicalText(s string, rels []*relation) string {
	var b strings.Builder
	writeCanonicalTokens(&b, lexSQL(s), canonicalNames(rels))
	out := numberCastRe.ReplaceAllString(b.String(), "$1")
	return dateCastRe.ReplaceAllString(out, "DATE '$1'")
}

func writeCanonicalTokens(b *strings.Builder, toks []token, names map[string]*canonRel) {
	next := func(i int) int { // the index of the next token that is not a space
		for i++; i < len(toks) && toks[i].kind == 'p' && toks[i].text == " "; i++ {
		}
		return i
	}
	for i := 0; i < len(toks); i++ {
		t := toks[i]
		switch t.kind {
		case 'q':
			v := unquote(t)
			// A relation qualifying a column: "p"."sex" → patients.sex.
			if r := names[strings.ToLower(v)]; r != nil && i+2 < len(toks) && toks[i+1].text == "." && toks[i+2].kind == 'q' {
				b.WriteString(r.name + "." + r.column(unquote(toks[i+2])))
				i += 2
				continue
			}
			if r := names[strings.ToLower(v)]; r != nil {
				b.WriteString(r.name) // a CTE where the rewrite reads it
				continue
			}
			b.WriteString(plainIdent(v))
		case 's':
			if v := unquote(t); !leadingZero(v) && v == strings.TrimSpace(v) {
				if n, ok := canonicalNumber(v); ok {
					b.WriteString(n)
					continue
				}
			}
			b.WriteString(t.text)
		case 'n':
			if n, ok := canonicalNumber(t.text); ok {
				b.WriteString(n)
			} else {
				b.WriteString(t.text)
			}
		case 'w':
			j := next(i)
			switch up := strings.ToUpper(t.text); {
			case up == "AS" && j < len(toks) && toks[j].kind == 'q':
				// A relation's alias names the relation; an output's name
				// is left out.
				if r := names[strings.ToLower(unquote(toks[j]))]; r != nil {
					b.WriteString("AS " + r.name)
				} else if b.Len() > 0 && strings.HasSuffix(b.String(), " ") {
					trimTrailingSpace(b)
				}
				i = j
			case up == "IN" && j < len(toks) && toks[j].text == "(":
				end, items := splitList(toks, j)
				parts := make([]string, len(items))
				for k, it := range items {
					var ib strings.Builder
					writeCanonicalTokens(&ib, it, names)
					parts[k] = strings.TrimSpace(ib.String())
				}
				slices.Sort(parts)
				b.WriteString("IN (" + strings.Join(parts, ", ") + ")")
				i = end
			default:
				b.WriteString(t.text)
			}
		default:
			b.WriteString(t.text)
		}
	}
}

// trimTrailingSpace drops the builder's last space (before a dropped AS).
func trimTrailingSpace(b *strings.Builder) {
	s := strings.TrimSuffix(b.String(), " ")
	b.Reset()
	b.WriteString(s)
}

// splitList splits the parenthesised list opening at toks[open] into its
// top-level comma-separated items and returns the index of its closing
// parenthesis.
func splitList(toks []token, open int) (int, [][]token) {
	var items [][]token
	depth, start := 0, open+1
	for i := open; i < len(toks); i++ {
		switch toks[i].text {
		case "(":
			depth++
		case ")":
			depth--
			if depth == 0 {
				return i, append(items, toks[start:i])
			}
		case ",":
			if depth == 1 {
				items = append(items, toks[start:i])
				start = i + 1
			}
		}
	}
	return len(toks) - 1, append(items, toks[start:])
}

// plainIdent drops the quotes of an identifier that needs none.
func plainIdent(v string) string {
	if identRe.MatchString(v) {
		return strings.ToLower(v)
	}
	return QuoteIdent(v)
}

// shape is the canonical text of what a query releases and from what,
// without its outer WHERE: the relations it reads, its per-patient CTEs and
// subqueries, its groups and its aggregates, each set sorted.
func (c *compiler) shape(q *query, sc *scope) string {
	var b strings.Builder
	from := q.from
	for _, d := range c.derived {
		// A FROM subquery is compared by its shape below, and its WHERE
		// conjuncts as predicates.
		from = strings.ReplaceAll(from, "("+d.body+")", QuoteIdent(d.canon))
	}
	// Relations join only on the privacy unit: ON (a.pu = b.pu), in
	// either order, is USING (pu).
	joinOn := regexp.MustCompile(`ON \([^ ()]+\.` + regexp.QuoteMeta(c.idx.pu) + ` = [^ ()]+\.` + regexp.QuoteMeta(c.idx.pu) + `\)`)
	from = joinOn.ReplaceAllString(canonicalText(from, sc.rels), "USING ("+c.idx.pu+")")
	fmt.Fprintf(&b, "from %s\n", from)
	for _, d := range c.derived {
		fmt.Fprintf(&b, "%s: %s\n", d.canon, d.shape)
	}
	groups := make([]string, len(q.groups))
	for i, g := range q.groups {
		groups[i] = "group " + canonicalText(g.sql, sc.rels)
	}
	slices.Sort(groups)
	aggs := make([]string, len(q.aggs))
	text := func(a aggregate) string {
		spec := a.spec
		spec.Name = "" // the output name
		js, _ := json.Marshal(spec)
		return fmt.Sprintf("aggregate %s of (%s) patient (%s)", js, canonicalText(a.arg, sc.rels), canonicalText(a.pu, sc.rels))
	}
	for i, a := range q.aggs {
		aggs[i] = text(a)
		if a.kind == aggRatio {
			// By what it divides, not by where its parts are listed.
			aggs[i] = "ratio (" + text(q.aggs[a.spec.Num-1]) + ") / (" + text(q.aggs[a.spec.Den-1]) + ")"
		}
	}
	slices.Sort(aggs)
	for _, s := range append(groups, aggs...) {
		b.WriteString(s + "\n")
	}
	b.WriteString(c.setsShape(q, sc))
	return b.String()
}

// derivedQuery is a per-patient CTE or subquery as canonical text sees it.
type derivedQuery struct {
	canon string // derived1, derived2, … in order
	body  string // its SQL as the rewrite has it
	shape string // its canonical text without its WHERE
}
