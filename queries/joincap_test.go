package queries

import (
	"context"
	"database/sql"
	"strings"
	"testing"
)

// TestJoinCap: a join of m ≥ 2 event tables keeps at most ⌊W^(1/m)⌋ rows of
// each patient per table, so one patient adds at most W joined rows; a
// query over one event table, or event tables joined with per-patient
// relations only, is not capped.
func TestJoinCap(t *testing.T) {
	p := MustParser(t)
	cat := MustLoadTestCatalog(t)
	small := *cat
	small.Policy.MaxJoinRowsPerPatient = 4
	// Patient 101 has 40 events; every other patient a few.
	db := MustTestDB(t, cat, smallData, `INSERT INTO clinical_events SELECT 101, DATE '2022-01-01' + INTERVAL (i) DAY, '44054006', i FROM range(36) t(i)`)
	selfJoin := `SELECT count(*) AS n FROM clinical_events a JOIN clinical_events b ON a.patient_id = b.patient_id`
	for _, tt := range []struct {
		name    string
		cat     *Catalog
		sql     string
		cap     string // "" for none
		dropped int64
	}{
		// 101's 40 × 40 joined rows, bounded to C = 3: 1,597 dropped, plus
		// 102's 3 × 3 − 3 and none of 103's one.
		{name: "self-join, default W", cat: cat, sql: selfJoin, cap: "__tre_cap_clinical_events_1000", dropped: 1597 + 6},
		// W = 4: two event tables keep 2 rows each, 4 joined rows per
		// patient: 1 dropped for 101 and for 102, none for 103.
		{name: "self-join, W = 4", cat: &small, sql: selfJoin, cap: "__tre_cap_clinical_events_2", dropped: 1 + 1},
		{name: "three tables, W = 4", cat: &small, sql: `SELECT count(*) AS n FROM clinical_events a JOIN clinical_events b ON a.patient_id = b.patient_id JOIN medications m ON m.patient_id = a.patient_id`,
			cap: "__tre_cap_clinical_events_1"},
		{name: "one event table", cat: &small, sql: `SELECT count(*) AS n FROM clinical_events e JOIN patients p ON p.patient_id = e.patient_id`},
		{name: "event table and a per-patient CTE", cat: &small, sql: `WITH x AS (SELECT patient_id, count(*) AS k FROM medications GROUP BY patient_id)
			SELECT count(*) AS n FROM clinical_events e JOIN x ON x.patient_id = e.patient_id`},
		{name: "inside a per-patient CTE", cat: &small, sql: `WITH x AS (SELECT a.patient_id, count(*) AS k FROM clinical_events a JOIN medications b ON a.patient_id = b.patient_id GROUP BY a.patient_id)
			SELECT count(*) AS n FROM x`, cap: "__tre_cap_clinical_events_2"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			plan, err := p.Compile(context.Background(), tt.cat, tt.sql, Options{Seed: 5})
			if err != nil {
				t.Fatal(err)
			}
			if got := strings.Contains(plan.Rewritten, "__tre_cap_"); got != (tt.cap != "") || (tt.cap != "" && !strings.Contains(plan.Rewritten, `"`+tt.cap+`"`)) {
				t.Fatalf("cap %q expected:\n%s", tt.cap, plan.Rewritten)
			}
			_, dropped := runPlan(t, db, plan)
			if tt.dropped != 0 && dropped != tt.dropped {
				t.Errorf("dropped %d rows, want %d", dropped, tt.dropped)
			}
			full := compileFull(t, p, tt.cat, tt.sql, Options{Seed: 5})
			sameRowsAsFull(t, map[string]*sql.DB{"capped": db}, full, plan)
		})
	}
}
