package sandboxtest

import (
	"context"
	"database/sql"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/nhs-tre/tre/queries"
)

// TestNeighbours: each neighbour differs from the base in the target's rows
// alone, and the target's quasi-identifiers single them out.
func TestNeighbours(t *testing.T) {
	if testing.Short() {
		t.Skip("generates synthetic data; skipped with -short")
	}
	ctx := context.Background()
	n, err := Build(ctx, t.TempDir(), 800, 5)
	if err != nil {
		t.Fatal(err)
	}
	type counts struct {
		Patients, Events, Optouts        int
		TargetPatients, TargetEvents, QI int
		TargetDepression, TargetOptedOut int
		OthersEvents, OthersOptouts      int
	}
	read := func(d Dataset) counts {
		t.Helper()
		db, err := sql.Open("duckdb", d.Data+"?access_mode=read_only")
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		var c counts
		id := n.Target.PatientID
		for _, q := range []struct {
			dst  *int
			sql  string
			args []any
		}{
			{&c.Patients, "SELECT count(*) FROM patients", nil},
			{&c.Events, "SELECT count(*) FROM clinical_events", nil},
			{&c.Optouts, "SELECT count(*) FROM optouts", nil},
			{&c.TargetPatients, "SELECT count(*) FROM patients WHERE patient_id = ?", []any{id}},
			{&c.TargetEvents, "SELECT count(*) FROM clinical_events WHERE patient_id = ?", []any{id}},
			{&c.QI, "SELECT count(*) FROM patients p WHERE " + n.Target.QI("p"), nil},
			{&c.TargetDepression, "SELECT count(*) FROM clinical_events WHERE patient_id = ? AND snomed_code = ?", []any{id, Depression}},
			{&c.TargetOptedOut, "SELECT count(*) FROM optouts WHERE patient_id = ?", []any{id}},
			{&c.OthersEvents, "SELECT count(*) FROM clinical_events WHERE patient_id <> ?", []any{id}},
			{&c.OthersOptouts, "SELECT count(*) FROM optouts WHERE patient_id <> ?", []any{id}},
		} {
			if err := db.QueryRowContext(ctx, q.sql, q.args...).Scan(q.dst); err != nil {
				t.Fatalf("%s: %s: %v", d.Name, q.sql, err)
			}
		}
		if cat, err := queries.LoadCatalog(d.Catalog); err != nil || cat.Dataset != d.Dataset {
			t.Errorf("%s: catalog %v, %v", d.Name, cat, err)
		}
		return c
	}
	base := read(n.Base)
	if base.TargetPatients != 1 || base.QI != 1 || base.TargetEvents != 3 || base.TargetDepression != 0 || base.TargetOptedOut != 0 {
		t.Fatalf("base: %+v", base)
	}
	want := map[string]func(c *counts){
		"removed": func(c *counts) {
			c.Patients, c.Events, c.TargetPatients, c.TargetEvents, c.QI = base.Patients-1, base.Events-3, 0, 0, 0
		},
		"changed": func(c *counts) {
			c.Events, c.TargetEvents, c.TargetDepression = base.Events+31, 34, 1
		},
		"opted_out": func(c *counts) {
			c.Events, c.TargetEvents, c.TargetDepression, c.Optouts, c.TargetOptedOut = base.Events+31, 34, 1, base.Optouts+1, 1
		},
	}
	for _, d := range n.Neighbours {
		w := base
		want[d.Name](&w)
		if diff := cmp.Diff(w, read(d)); diff != "" {
			t.Errorf("%s differs from the base in more than the target (-want +got):\n%s", d.Name, diff)
		}
	}
	if len(Corpus(n.Target)) == 0 {
		t.Error("empty corpus")
	}
}
