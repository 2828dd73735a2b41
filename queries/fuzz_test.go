package queries

import (
	"context"
	"errors"
	"strings"
	"testing"
)

// FuzzCompile: the validator never panics, refuses with a *Refusal, and
// anything it accepts compiles to SQL that reads only the catalog's views,
// never the opt-out table.
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
// reads anything but the views and its own CTEs: no qualified name (the
// release snapshot's metadata), no table function, never the opt-out table
// (the release snapshot holds none; opted-out patients are not in it).
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
	var walk func(v any)
	walk = func(v any) {
		switch x := v.(type) {
		case obj:
			switch str(x, "type") {
			case "BASE_TABLE":
				name := str(x, "table_name")
				if str(x, "schema_name") != "" || str(x, "catalog_name") != "" {
					t.Fatalf("rewritten SQL reads qualified table %q:\n%s", name, rewritten)
				}
				if strings.EqualFold(name, cat.Policy.OptOutTable) {
					t.Fatalf("rewritten SQL reads the opt-out table:\n%s", rewritten)
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
}
