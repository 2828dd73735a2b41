package sandbox

import (
	"context"
	"database/sql"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/nhs-tre/tre/queries"
)

// TestUniqueTablesLockedDown: the child reads the tables the data declares
// unique per patient on its locked-down connection, and its compilation of
// a patients query then has no run-time check or bounding stages.
func TestUniqueTablesLockedDown(t *testing.T) {
	cat := MustCatalog(t)
	const patientsQuery = `SELECT sex, count(*) AS n FROM patients GROUP BY sex`
	for _, tt := range []struct {
		name   string
		alter  []string
		want   []string
		direct bool
	}{
		{name: "no constraints", want: nil},
		{name: "primary key", alter: []string{"ALTER TABLE patients ADD PRIMARY KEY (patient_id)"}, want: []string{"patients"}, direct: true},
		{name: "key on another column", alter: []string{"ALTER TABLE dmd_codes ADD PRIMARY KEY (dmd_code)"}, want: nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			data := MustFixture(t, 40)
			if len(tt.alter) > 0 {
				db, err := sql.Open("duckdb", data)
				if err != nil {
					t.Fatal(err)
				}
				for _, s := range tt.alter {
					if _, err := db.Exec(s); err != nil {
						t.Fatal(err)
					}
				}
				db.Close()
			}
			ldb := mustLocked(t, data, cat)
			ctx := context.Background()
			got, err := UniqueTables(ctx, ldb.conn, cat)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("unique tables (-want +got):\n%s", diff)
			}
			// The keys the child read while opening the data say the same.
			if diff := cmp.Diff(tt.want, queries.UniqueTablesFrom(ldb.keys, cat)); diff != "" {
				t.Errorf("unique tables from the keys read at open (-want +got):\n%s", diff)
			}
			plan, err := compile(ctx, ldb, cat, patientsQuery, queries.Options{Seed: 1})
			if err != nil {
				t.Fatal(err)
			}
			if direct := !strings.Contains(plan.Rewritten, `"__tre_dup"`); direct != tt.direct {
				t.Errorf("direct path %v, want %v:\n%s", direct, tt.direct, plan.Rewritten)
			}
			if _, _, _, err := runPlan(ctx, ldb, plan, 100); err != nil {
				t.Fatalf("run: %v", err)
			}
		})
	}
}
