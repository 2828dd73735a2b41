package queries

import (
	"context"
	"database/sql"
	"errors"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/duckdb/duckdb-go/v2"

	"github.com/nhs-tre/tre/queries/querytest"
)

// MustAdversarialDB is the adversarial dataset's release snapshot in an
// in-memory database, with its catalog.
func MustAdversarialDB(tb testing.TB) (*Catalog, *sql.DB) {
	tb.Helper()
	cat, err := ParseCatalog("adversarial.yaml", []byte(querytest.CatalogYAML))
	if err != nil {
		tb.Fatal(err)
	}
	return cat, MustTestDB(tb, cat, querytest.SourceSQL()...)
}

// TestTemplatesCoverAllowlist: every function, cast, comparison, operator
// and aggregate an expression may use has a template that the sandbox's
// TestTotalFunctions evaluates on adversarial values in the real child, and
// FuzzTotal composes. A new allowlist entry without one
// fails this test.
func TestTemplatesCoverAllowlist(t *testing.T) {
	have := map[string]bool{}
	for _, tt := range querytest.Templates {
		have[tt.Name] = true
	}
	inner := map[string]bool{}
	for _, tt := range querytest.InnerAggregates {
		inner[tt.Name] = true
	}
	outer := map[string]bool{}
	for _, tt := range querytest.OuterAggregates {
		outer[tt.Name] = true
	}
	a := AllowedExpressions()
	for _, l := range []struct {
		what  string
		names []string
		have  map[string]bool
	}{
		{"function", a.Functions, have}, {"cast to", a.Casts, have}, {"comparison", a.Comparisons, have},
		{"operator", a.Operators, have}, {"per-patient aggregate", a.InnerAggregates, inner}, {"released aggregate", a.OuterAggregates, outer},
	} {
		for _, n := range l.names {
			if !l.have[n] {
				t.Errorf("%s %s has no template in querytest", l.what, n)
			}
		}
	}
}

// runTotal compiles q and runs its rewrite, returning a refusal or any
// error of DuckDB.
func runTotal(p *Parser, cat *Catalog, db *sql.DB, q string) error {
	plan, err := p.Compile(context.Background(), cat, q, Options{Seed: 1})
	if err != nil {
		return err
	}
	rows, err := db.Query(plan.Rewritten)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
	}
	return rows.Err()
}

// FuzzTotal builds random expressions from the allowlist's templates,
// nested, over the adversarial columns and extreme literals; whatever the
// compiler accepts must run on the adversarial release snapshot without a
// run-time error. A binder error (a type combination DuckDB has no
// function for) depends on the query alone, never on data, and is
// tolerated; every other error fails.
func FuzzTotal(f *testing.F) {
	for _, s := range []uint64{1, 2, 3, 42, 1 << 40} {
		f.Add(s, uint8(2))
	}
	p := MustParser(f)
	cat, db := MustAdversarialDB(f)
	f.Fuzz(func(t *testing.T, seed uint64, depth uint8) {
		r := rand.New(rand.NewPCG(seed, seed>>7))
		var exprs []string
		for _, k := range []byte{'f', 's', 'd', 'o'} {
			exprs = append(exprs, querytest.Random(r, k, int(depth%4)))
		}
		for _, q := range querytest.Queries(exprs, true, len(exprs)) {
			err := runTotal(p, cat, db, q)
			var ref *Refusal
			var de *duckdb.Error
			switch {
			case err == nil, errors.As(err, &ref):
			case errors.As(err, &de) && slices.Contains([]duckdb.ErrorType{duckdb.ErrorTypeBinder}, de.Type):
			default:
				t.Fatalf("%v\n%s", err, q)
			}
		}
	})
}
