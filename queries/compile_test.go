package queries

import (
	"context"
	"testing"
)

// MustParser returns a Parser closed at the end of the test.
func MustParser(tb testing.TB) *Parser {
	tb.Helper()
	p, err := NewParser()
	if err != nil {
		tb.Fatalf("new parser: %v", err)
	}
	tb.Cleanup(func() { p.Close() })
	return p
}

func TestTypicalQueriesCompile(t *testing.T) {
	p := MustParser(t)
	cat := MustLoadTestCatalog(t)
	for _, tq := range TypicalQueries {
		t.Run(tq.Name, func(t *testing.T) {
			plan, err := p.Compile(context.Background(), cat, tq.SQL, Options{Seed: 1})
			if err != nil {
				t.Fatalf("compile: %v", err)
			}
			if testing.Verbose() {
				t.Logf("spec %+v\ncost %+v\n%s", plan.Spec, plan.Cost, plan.Rewritten)
			}
		})
	}
}
