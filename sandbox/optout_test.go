package sandbox

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"os"
	"slices"
	"strconv"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/nhs-tre/tre/queries"
)

// mustLocked opens data the way the child does, locked down with the
// catalog's views.
func mustLocked(tb testing.TB, data string, cat *queries.Catalog) *lockedDB {
	tb.Helper()
	views, err := viewStatements(cat)
	if err != nil {
		tb.Fatal(err)
	}
	cc := &childConfig{DataPath: data, JobDir: tb.TempDir(), MemoryLimit: 256 << 20, Threads: 2, MaxExpressionDepth: 250, TempDirMaxSize: 1 << 30}
	if err := os.MkdirAll(cc.tempDir(), 0o700); err != nil {
		tb.Fatal(err)
	}
	ldb, err := openLocked(context.Background(), cc, views)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ldb.Close() })
	return ldb
}

// optOutHash computes the opt-out snapshot hash (queries.OptOutHashSQL) of
// a data file, as the snapshot builder does.
func optOutHash(tb testing.TB, data string, cat *queries.Catalog) string {
	tb.Helper()
	db, err := sql.Open("duckdb", data+"?access_mode=READ_ONLY")
	if err != nil {
		tb.Fatal(err)
	}
	defer db.Close()
	var h string
	if err := db.QueryRow(queries.OptOutHashSQL(cat)).Scan(&h); err != nil {
		tb.Fatal(err)
	}
	return h
}

// fixtureOptOuts returns the fixture's opted-out ids, read directly.
func fixtureOptOuts(tb testing.TB, data string) []int64 {
	tb.Helper()
	db, err := sql.Open("duckdb", data+"?access_mode=READ_ONLY")
	if err != nil {
		tb.Fatal(err)
	}
	defer db.Close()
	rows, err := db.Query("SELECT patient_id FROM optouts")
	if err != nil {
		tb.Fatal(err)
	}
	defer rows.Close()
	var ids []int64
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			tb.Fatal(err)
		}
		ids = append(ids, id)
	}
	if err := rows.Err(); err != nil {
		tb.Fatal(err)
	}
	return ids
}

// canonicalHash is the documented canonical form computed in Go: the
// distinct ids in ascending numeric order, each in decimal and followed by
// a newline, hashed with SHA-256.
func canonicalHash(ids []int64) string {
	ids = slices.Clone(ids)
	slices.Sort(ids)
	ids = slices.Compact(ids)
	h := sha256.New()
	for _, id := range ids {
		h.Write(strconv.AppendInt(nil, id, 10))
		h.Write([]byte{'\n'})
	}
	return hex.EncodeToString(h.Sum(nil))
}

// mustOptOutFile writes a small fixture whose opt-out table holds exactly
// the given ids (NULL for nil), inserted in the given order.
func mustOptOutFile(tb testing.TB, ids []*int64) string {
	tb.Helper()
	path := MustFixture(tb, 20)
	db, err := sql.Open("duckdb", path)
	if err != nil {
		tb.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec("DELETE FROM optouts"); err != nil {
		tb.Fatal(err)
	}
	for _, id := range ids {
		if _, err := db.Exec("INSERT INTO optouts VALUES (?, 'type1')", id); err != nil {
			tb.Fatal(err)
		}
	}
	return path
}

func ptr(v int64) *int64 { return &v }

func TestOptOutReportMatchesCanonicalForm(t *testing.T) {
	data := MustFixture(t, 400)
	cat := MustCatalog(t)
	ids := fixtureOptOuts(t, data)
	if len(ids) == 0 {
		t.Fatal("fixture has no opted-out patients")
	}
	got := optOutHash(t, data, cat)
	want := canonicalHash(ids)
	if got != want {
		t.Errorf("SnapshotHash = %s, want %s (SHA-256 of the canonical text computed in Go)", got, want)
	}
}

// TestOptOutReportSnapshots checks the hash depends on the set of ids only:
// not on row order, duplicates or NULLs, and changes when an id is added.
// The ids cross a digit boundary (9 < 10 < 100), where numeric and text
// order differ.
func TestOptOutReportSnapshots(t *testing.T) {
	cat := MustCatalog(t)
	base := []int64{100, 9, 10, 123456789012, 11}
	tests := []struct {
		name string
		rows []*int64
		want []int64
	}{
		{name: "insertion order", rows: []*int64{ptr(100), ptr(9), ptr(10), ptr(123456789012), ptr(11)}, want: base},
		{name: "reversed order", rows: []*int64{ptr(11), ptr(123456789012), ptr(10), ptr(9), ptr(100)}, want: base},
		{name: "duplicates and nulls", rows: []*int64{ptr(10), nil, ptr(9), ptr(100), ptr(10), ptr(11), nil, ptr(123456789012), ptr(9)}, want: base},
		{name: "one id added", rows: []*int64{ptr(100), ptr(9), ptr(10), ptr(123456789012), ptr(11), ptr(12)}, want: append(slices.Clone(base), 12)},
		{name: "empty", rows: nil, want: nil},
	}
	got := map[string]string{}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := optOutHash(t, mustOptOutFile(t, tt.rows), cat)
			if want := canonicalHash(tt.want); h != want {
				t.Errorf("SnapshotHash = %s, want %s", h, want)
			}
			got[tt.name] = h
		})
	}
	if diff := cmp.Diff(got["insertion order"], got["reversed order"]); diff != "" {
		t.Errorf("hash depends on row order (-insertion +reversed):\n%s", diff)
	}
	if got["one id added"] == got["insertion order"] {
		t.Error("adding an opted-out id did not change the hash")
	}
	if want := canonicalHash(nil); got["empty"] != want || want != "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" {
		t.Errorf("empty snapshot hash = %s, want SHA-256 of the empty text", got["empty"])
	}
}

// BenchmarkOptOutHash measures the opt-out snapshot hash, computed once
// per release snapshot, over as many distinct opted-out ids as the 1M- and
// 10M-patient synthetic files hold (58k, 574k), spread over ten digits.
func BenchmarkOptOutHash(b *testing.B) {
	cat := MustCatalog(b)
	for _, n := range []int{58_000, 574_000} {
		path := MustFixture(b, 20)
		db, err := sql.Open("duckdb", path)
		if err != nil {
			b.Fatal(err)
		}
		_, err = db.Exec("DELETE FROM optouts; INSERT INTO optouts SELECT DISTINCT 1000000000 + hash(i) % 9000000000, 'type1' FROM range(" + itoa(n) + ") t(i)")
		db.Close()
		if err != nil {
			b.Fatal(err)
		}
		b.Run(itoa(n), func(b *testing.B) {
			for b.Loop() {
				optOutHash(b, path, cat)
			}
		})
	}
}
