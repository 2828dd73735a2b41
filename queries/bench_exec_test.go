package queries

import (
	"context"
	"database/sql"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// BenchmarkProtectedVsRaw runs each typical query raw and rewritten on a
// `tre synth` database named by TRE_BENCH_DATA (its catalog beside it, as
// FILE.catalog.yaml). Skipped when unset.
func BenchmarkProtectedVsRaw(b *testing.B) {
	path := os.Getenv("TRE_BENCH_DATA")
	if path == "" {
		b.Skip("TRE_BENCH_DATA not set")
	}
	cat, err := LoadCatalog(strings.TrimSuffix(path, filepath.Ext(path)) + ".catalog.yaml")
	if err != nil {
		b.Fatal(err)
	}
	db, err := sql.Open("duckdb", path+"?access_mode=read_only")
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	for _, v := range ViewStatements(cat) {
		if _, err := db.Exec(v); err != nil {
			b.Fatal(err)
		}
	}
	unique := uniqueTables(b, db, cat)
	b.Logf("tables unique per patient: %v", unique)
	p := MustParser(b)
	drain := func(b *testing.B, q string) {
		rows, err := db.QueryContext(context.Background(), q)
		if err != nil {
			b.Fatalf("%v\n%s", err, q)
		}
		for rows.Next() {
		}
		if err := rows.Err(); err != nil {
			b.Fatal(err)
		}
		rows.Close()
	}
	for _, tq := range TypicalQueries {
		plan, err := p.Compile(context.Background(), cat, tq.SQL, Options{Seed: 1, UniqueTables: unique})
		if err != nil {
			b.Fatal(err)
		}
		b.Run(tq.Name+"/raw", func(b *testing.B) {
			for b.Loop() {
				drain(b, tq.SQL)
			}
		})
		b.Run(tq.Name+"/protected", func(b *testing.B) {
			for b.Loop() {
				drain(b, plan.Rewritten)
			}
		})
	}
}
