package web

import (
	"html/template"
	"strings"
)

// sqlKeywords are highlighted as keywords; matching is case-insensitive.
// Read-only after initialisation.
var sqlKeywords = wordSet(`select from where group by order having limit offset join inner left right full outer cross on using
		as and or not in is null between like ilike case when then else end with distinct all union intersect except
		count sum avg stddev variance var_samp var_pop stddev_samp stddev_pop median quantile_cont cast date interval
		true false asc desc exists filter over partition recursive min max lateral values insert update delete create drop
		attach copy pragma install load`)

func wordSet(words string) map[string]bool {
	m := map[string]bool{}
	for _, w := range strings.Fields(words) {
		m[w] = true
	}
	return m
}

// highlightSQL renders SQL as escaped text with keywords, strings, numbers
// and comments wrapped in spans. Every byte of the input passes through
// template.HTMLEscapeString; only the span tags are ours. This is the one
// place web builds template.HTML, and it never comes from user text
// unescaped.
func highlightSQL(sql string) template.HTML {
	var b strings.Builder
	span := func(class, text string) {
		b.WriteString(`<span class="`)
		b.WriteString(class)
		b.WriteString(`">`)
		b.WriteString(template.HTMLEscapeString(text))
		b.WriteString(`</span>`)
	}
	i := 0
	for i < len(sql) {
		c := sql[i]
		switch {
		case c == '\'' || c == '"':
			j := i + 1
			for j < len(sql) {
				if sql[j] == c {
					if j+1 < len(sql) && sql[j+1] == c { // doubled quote
						j += 2
						continue
					}
					j++
					break
				}
				j++
			}
			class := "s"
			if c == '"' {
				class = "i"
			}
			span(class, sql[i:j])
			i = j
		case c == '-' && i+1 < len(sql) && sql[i+1] == '-':
			j := strings.IndexByte(sql[i:], '\n')
			if j < 0 {
				j = len(sql) - i
			}
			span("c", sql[i:i+j])
			i += j
		case c == '/' && i+1 < len(sql) && sql[i+1] == '*':
			j := strings.Index(sql[i+2:], "*/")
			end := len(sql)
			if j >= 0 {
				end = i + 2 + j + 2
			}
			span("c", sql[i:end])
			i = end
		case c >= '0' && c <= '9':
			j := i
			for j < len(sql) && (sql[j] >= '0' && sql[j] <= '9' || sql[j] == '.') {
				j++
			}
			span("n", sql[i:j])
			i = j
		case isIdentStart(c):
			j := i
			for j < len(sql) && (isIdentStart(sql[j]) || sql[j] >= '0' && sql[j] <= '9') {
				j++
			}
			word := sql[i:j]
			if sqlKeywords[strings.ToLower(word)] {
				span("k", word)
			} else {
				b.WriteString(template.HTMLEscapeString(word))
			}
			i = j
		default:
			j := i + 1
			for j < len(sql) && !isTokenStart(sql, j) {
				j++
			}
			b.WriteString(template.HTMLEscapeString(sql[i:j]))
			i = j
		}
	}
	return template.HTML(b.String())
}

func isIdentStart(c byte) bool {
	return c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= 0x80
}

func isTokenStart(s string, i int) bool {
	c := s[i]
	return c == '\'' || c == '"' || c >= '0' && c <= '9' || isIdentStart(c) ||
		(c == '-' && i+1 < len(s) && s[i+1] == '-') || (c == '/' && i+1 < len(s) && s[i+1] == '*')
}
