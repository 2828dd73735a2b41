package queries

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// optedOutHeavy gives patient 999, who is in the opt-out table, many rows
// with extreme values in every patient table, so that counting any of them
// would change some statistic.
const optedOutHeavy = `
INSERT INTO clinical_events SELECT 999, DATE '2023-01-01' + INTERVAL (i) DAY, ['44054006', '999791000000106', '60621009'][1 + i % 3], 1000 + i FROM range(60) t(i);
INSERT INTO medications SELECT 999, DATE '2023-01-01' + INTERVAL (i) DAY, ['s1', 'a1'][1 + i % 2] FROM range(60) t(i);
INSERT INTO hospital_admissions SELECT 999, DATE '2022-01-01' + INTERVAL (i) DAY, DATE '2022-01-02' + INTERVAL (i) DAY, 'I50.9', 'elective' FROM range(20) t(i);
INSERT INTO vaccinations SELECT 999, DATE '2023-09-01' + INTERVAL (i) DAY, 'influenza' FROM range(20) t(i);
`

// TestOptOutNeverCounted: an opted-out patient's rows have no effect on
// any compiled query, on every path (direct, run-time checked, bounded):
// each accepted corpus query and typical query returns exactly the same
// statistics over the release snapshot of data holding that patient's many
// extreme rows as over data without them. The snapshot holds none of them,
// nor any row without a patient id. And a NULL in the opt-out table fails
// the snapshot, naming the problem, instead of opting nobody out.
func TestOptOutNeverCounted(t *testing.T) {
	p := MustParser(t)
	cat := MustLoadTestCatalog(t)
	var deleteOptedOut []string
	for _, tb := range cat.Tables {
		if !tb.Public && tb.Name != cat.Policy.OptOutTable {
			deleteOptedOut = append(deleteOptedOut, fmt.Sprintf("DELETE FROM %s WHERE %s IN (SELECT %s FROM %s)",
				QuoteIdent(tb.Name), QuoteIdent(cat.PrivacyUnit), QuoteIdent(cat.PrivacyUnit), QuoteIdent(cat.Policy.OptOutTable)))
		}
	}
	nullRows := `INSERT INTO clinical_events VALUES (NULL, DATE '2023-01-01', '44054006', 5);
INSERT INTO medications VALUES (NULL, DATE '2023-01-01', 's1');`
	with := MustTestDB(t, cat, smallData, optedOutHeavy, nullRows)
	without := MustTestDB(t, cat, append([]string{smallData, optedOutHeavy}, deleteOptedOut...)...)
	unique := MustTestDB(t, cat, smallData, optedOutHeavy, nullRows, "ALTER TABLE patients ADD PRIMARY KEY (patient_id)")

	for _, db := range []*sql.DB{with, unique} {
		for _, tb := range cat.Tables {
			if tb.Public || tb.Name == cat.Policy.OptOutTable {
				continue
			}
			var n int
			if err := db.QueryRow(fmt.Sprintf("SELECT count(*) FROM %s WHERE %s = 999 OR %s IS NULL", QuoteIdent(tb.Name), QuoteIdent(cat.PrivacyUnit), QuoteIdent(cat.PrivacyUnit))).Scan(&n); err != nil {
				t.Fatal(err)
			}
			if n != 0 {
				t.Errorf("the release snapshot's %s holds %d rows of the opted-out patient or without a patient id", tb.Name, n)
			}
		}
		if _, err := db.Exec("SELECT count(*) FROM " + QuoteIdent(cat.Policy.OptOutTable)); err == nil {
			t.Error("the release snapshot holds the opt-out table")
		}
	}

	var sqls []string
	for _, tt := range corpus {
		if tt.refuse == "" {
			sqls = append(sqls, tt.sql)
		}
	}
	for _, tq := range TypicalQueries {
		sqls = append(sqls, tq.SQL)
	}
	if len(sqls) < 20 {
		t.Fatalf("only %d accepted queries", len(sqls))
	}
	for _, q := range sqls {
		var plans []*Plan
		for _, opts := range []Options{{Seed: 3}, {Seed: 3, UniqueTables: []string{"patients"}}} {
			for _, fast := range []bool{true, false} {
				plan, err := p.compile(context.Background(), cat, q, opts, fast)
				if err != nil {
					t.Fatalf("compile %q: %v", q, err)
				}
				plans = append(plans, plan)
			}
		}
		for i, plan := range plans {
			db := with
			if i >= 2 {
				db = unique // UniqueTables holds only where the data enforces it
			}
			got, gotDropped := runPlan(t, db, plan)
			want, wantDropped := runPlan(t, without, plan)
			if diff := cmp.Diff(want, got, cmp.Transformer("sort", sortGroups)); diff != "" || gotDropped != wantDropped {
				t.Errorf("plan %d of %s: opted-out rows changed the result (dropped %d vs %d) (-deleted +opted out):\n%s", i, q, wantDropped, gotDropped, diff)
			}
		}
	}

	_, err := openTestDB(cat, smallData, `INSERT INTO optouts VALUES (NULL, 'unknown')`)
	if err == nil || !strings.Contains(err.Error(), "the opt-out table holds 1 NULL ids") {
		t.Errorf("a NULL opt-out id: %v, want the snapshot refused", err)
	}
}
