package queries

import (
	"context"
	"errors"
	"strings"
	"testing"
)

// FuzzCompile: the validator never panics, refuses with a *Refusal, and
// anything it accepts compiles to SQL that reads only the catalog's views,
// and the opt-out table once, to filter.
func FuzzCompile(f *testing.F) {
	for _, tt := range corpus {
		if len(tt.sql) < 2000 {
			f.Add(tt.sql)
		}
	}
	for _, tq := range TypicalQueries {
		f.Add(tq.SQL)
	}
	p := MustParser(f)
	cat := MustLoadTestCatalog(f)
	views := make(map[string]bool)
	for _, t := range cat.Tables {
		views[ViewName(t.Name)] = true
	}
	f.Fuzz(func(t *testing.T, sqlText string) {
		plan, err := p.Compile(context.Background(), cat, sqlText, Options{Seed: 7})
		if err != nil {
			var r *Refusal
			if !errors.As(err, &r) {
				t.Fatalf("error is not a refusal: %v", err)
			}
			if !strings.HasPrefix(r.Message, "refused: ") {
				t.Fatalf("refusal message %q", r.Message)
			}
			return
		}
		checkReadsOnlyViews(t, p, cat, plan.Rewritten, views)
	})
}

// checkReadsOnlyViews parses rewritten SQL with DuckDB and fails if it
// reads anything but the views and its own CTEs, or the opt-out table other
// than once, in the input stage's opt-out filter.
func checkReadsOnlyViews(t *testing.T, p *Parser, cat *Catalog, rewritten string, views map[string]bool) {
	t.Helper()
	root, err := p.parse(context.Background(), rewritten)
	if err != nil {
		t.Fatal(err)
	}
	if e, _ := root["error"].(bool); e {
		t.Fatalf("rewritten SQL does not parse: %v\n%s", root["error_message"], rewritten)
	}
	if n := len(list(root, "statements")); n != 1 {
		t.Fatalf("rewritten SQL has %d statements", n)
	}
	ctes := map[string]bool{}
	optOutReads := 0
	var walk func(v any)
	walk = func(v any) {
		switch x := v.(type) {
		case obj:
			if m, ok := x["map"].([]any); ok {
				for _, e := range m {
					if eo, ok := e.(obj); ok {
						ctes[str(eo, "key")] = true
					}
				}
			}
			switch str(x, "type") {
			case "BASE_TABLE":
				name := str(x, "table_name")
				if str(x, "schema_name") != "" || str(x, "catalog_name") != "" {
					t.Fatalf("rewritten SQL reads qualified table %q:\n%s", name, rewritten)
				}
				if strings.EqualFold(name, cat.Policy.OptOutTable) {
					optOutReads++
					break
				}
				if !views[name] && !strings.HasPrefix(name, "cte_") && !strings.HasPrefix(name, "__tre_") {
					t.Fatalf("rewritten SQL reads %q, not a view:\n%s", name, rewritten)
				}
			case "TABLE_FUNCTION":
				t.Fatalf("rewritten SQL calls a table function:\n%s", rewritten)
			}
			for _, e := range x {
				walk(e)
			}
		case []any:
			for _, e := range x {
				walk(e)
			}
		}
	}
	walk(root)
	_ = ctes
	// The opt-out table is read exactly once: by the opt-out filter of the
	// input stage, through which every row of every path passes.
	input, _, _ := strings.Cut(rewritten, `"__tre_base" AS`)
	if optOutReads != 1 || !strings.Contains(input, " NOT IN (SELECT "+quoteIdent(cat.PrivacyUnit)+" FROM "+quoteIdent(cat.Policy.OptOutTable)+")") {
		t.Fatalf("opt-out table read %d times, or not by the input stage's filter:\n%s", optOutReads, rewritten)
	}
}
