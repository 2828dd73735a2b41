package queries

import (
	"context"
	"database/sql"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// uniqueTables reads db's unique columns (UniqueColumnsSQL) and returns
// the tables whose privacy-unit column is among them.
func uniqueTables(tb testing.TB, db *sql.DB, cat *Catalog) []string {
	tb.Helper()
	cols, err := ReadUniqueColumns(context.Background(), db)
	if err != nil {
		tb.Fatal(err)
	}
	return UniqueTablesFrom(cols, cat)
}

// TestUniqueColumnsSQL: only a constraint DuckDB enforces on the privacy-unit
// column alone, and excluding NULL, makes a table unique per patient.
func TestUniqueColumnsSQL(t *testing.T) {
	cat := MustLoadTestCatalog(t)
	for _, tt := range []struct {
		name  string
		setup []string
		want  []string
	}{
		{name: "none", want: nil},
		{name: "primary key", setup: []string{"ALTER TABLE patients ADD PRIMARY KEY (patient_id)"}, want: []string{"patients"}},
		{name: "unique and not null", setup: []string{
			"CREATE TABLE demo (patient_id BIGINT UNIQUE NOT NULL, x INTEGER)",
		}, want: []string{"demo"}},
		{name: "unique but nullable", setup: []string{"CREATE TABLE demo (patient_id BIGINT UNIQUE, x INTEGER)"}, want: nil},
		{name: "not null only", setup: []string{"CREATE TABLE demo (patient_id BIGINT NOT NULL, x INTEGER)"}, want: nil},
		{name: "composite key", setup: []string{"CREATE TABLE demo (patient_id BIGINT, d DATE, PRIMARY KEY (patient_id, d))"}, want: nil},
		{name: "key on another column", setup: []string{"CREATE TABLE demo (id BIGINT PRIMARY KEY, patient_id BIGINT NOT NULL)"}, want: nil},
		{name: "other schema", setup: []string{"CREATE SCHEMA s", "CREATE TABLE s.patients (patient_id BIGINT PRIMARY KEY)"}, want: nil},
		{name: "case of the column", setup: []string{`CREATE TABLE demo ("Patient_ID" BIGINT PRIMARY KEY)`}, want: []string{"demo"}},
		{name: "two keyed tables, sorted", setup: []string{
			"ALTER TABLE patients ADD PRIMARY KEY (patient_id)",
			"CREATE TABLE demo (patient_id BIGINT UNIQUE NOT NULL, id BIGINT PRIMARY KEY)",
		}, want: []string{"demo", "patients"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			// The site's data, before the release snapshot.
			db, err := openSourceDB(cat, tt.setup...)
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			if diff := cmp.Diff(tt.want, uniqueTables(t, db, cat)); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

// TestSnapshotKeysChecked: a release snapshot records a table's privacy
// unit as a key (SnapshotKeysTable) only when its copy holds each patient
// at most once, whatever the data's constraints said: the CAST to the
// catalog's type could merge two ids. Here the builder is told patients is
// unique while two of its rows share an id.
func TestSnapshotKeysChecked(t *testing.T) {
	cat := MustLoadTestCatalog(t)
	for _, tt := range []struct {
		name  string
		setup []string
		want  []string
	}{
		{name: "one row per patient", setup: []string{smallData}, want: []string{"patients"}},
		{name: "an id twice", setup: []string{smallData, "INSERT INTO patients SELECT * FROM patients LIMIT 1"}, want: nil},
		{name: "empty", want: []string{"patients"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			db, err := openSourceDB(cat, tt.setup...)
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			if got := uniqueTables(t, db, cat); got != nil {
				t.Fatalf("the source declares keys %v; this test needs none", got)
			}
			stmts := []string{"ATTACH ':memory:' AS tre_release"}
			for _, st := range ReleaseStatements(cat, "tre_release", []string{"patients"}) {
				stmts = append(stmts, st.SQL)
			}
			for _, s := range append(stmts, "USE tre_release") {
				if _, err := db.Exec(s); err != nil {
					t.Fatalf("%s: %v", s, err)
				}
			}
			if diff := cmp.Diff(tt.want, uniqueTables(t, db, cat)); diff != "" {
				t.Errorf("keys of the snapshot (-want +got):\n%s", diff)
			}
		})
	}
}

// TestUniquePathSameRows: with the patients table proven unique, queries
// over it and per-patient CTEs compile to the direct aggregate and return
// exactly the rows of the full bounding pipeline; queries that also read a
// table with many rows per patient, or a lookup table, stay bounded.
func TestUniquePathSameRows(t *testing.T) {
	p := MustParser(t)
	cat := MustLoadTestCatalog(t)
	dbs := map[string]*sql.DB{
		"small": MustTestDB(t, cat, smallData, "ALTER TABLE patients ADD PRIMARY KEY (patient_id)"),
		"empty": MustTestDB(t, cat, "ALTER TABLE patients ADD PRIMARY KEY (patient_id)"),
	}
	unique := uniqueTables(t, dbs["small"], cat)
	if diff := cmp.Diff([]string{"patients"}, unique); diff != "" {
		t.Fatalf("unique tables (-want +got):\n%s", diff)
	}
	for _, tt := range []struct {
		name   string
		sql    string
		direct bool
	}{
		{name: "denominator", sql: TypicalQueries[2].SQL, direct: true},
		{name: "t2d prevalence", sql: TypicalQueries[0].SQL, direct: true},
		{name: "flu uptake", sql: TypicalQueries[4].SQL, direct: true},
		{name: "hba1c", sql: TypicalQueries[5].SQL, direct: true},
		{name: "grouped, counted twice", sql: `SELECT region, count(*) AS n, count(DISTINCT patient_id) AS pts FROM patients GROUP BY region`, direct: true},
		{name: "event table joined", sql: TypicalQueries[3].SQL, direct: false},
		{name: "event table joined, ROLLUP of patient keys", sql: `SELECT p.sex, p.region, count(*) AS n, count(DISTINCT p.patient_id) AS pts FROM clinical_events e JOIN patients p ON p.patient_id = e.patient_id GROUP BY ROLLUP (p.sex, p.region)`, direct: false},
		{name: "lookup joined", sql: TypicalQueries[7].SQL, direct: false},
		{name: "event table alone", sql: `SELECT count(*) AS n FROM clinical_events`, direct: false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			plan, err := p.Compile(context.Background(), cat, tt.sql, Options{Seed: 42, UniqueTables: []string{"PATIENTS"}})
			if err != nil {
				t.Fatal(err)
			}
			if direct := !strings.Contains(plan.Rewritten, `"__tre_dup"`) && !strings.Contains(plan.Rewritten, `"__tre_kept"`); direct != tt.direct {
				t.Fatalf("direct path %v, want %v:\n%s", direct, tt.direct, plan.Rewritten)
			}
			// Keys of a unique table: one pair per patient, so a total
			// counts pairs, not distinct patients.
			if strings.Contains(tt.sql, "ROLLUP") && strings.Contains(plan.Rewritten, `count(DISTINCT "__pid")`) {
				t.Errorf("a distinct count of pairs where each patient has one:\n%s", plan.Rewritten)
			}
			full, err := p.compile(context.Background(), cat, tt.sql, Options{Seed: 42}, false)
			if err != nil {
				t.Fatal(err)
			}
			sameRowsAsFull(t, dbs, full, plan)
		})
	}
}
