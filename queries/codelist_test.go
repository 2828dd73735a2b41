package queries

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
)

// TestCodelistNames checks the compiler knows the public table codelists:
// a join by code needs no bounds, the plan names every codelist compared
// with its codelist column (= or IN, on either side, in ON or WHERE, in a
// CTE), and a query reading the table without naming one is refused.
func TestCodelistNames(t *testing.T) {
	p := MustParser(t)
	cat := MustLoadTestCatalog(t)
	join := "SELECT p.sex, count(*) FROM patients p JOIN clinical_events e ON e.patient_id = p.patient_id " +
		"JOIN codelists cl ON cl.code = e.snomed_code"
	ok := []struct {
		sql  string
		want []string
	}{
		{join + " AND cl.codelist = 'b/asthma/1' GROUP BY p.sex", []string{"b/asthma/1"}},
		{join + " WHERE 'a/copd/2' = cl.codelist GROUP BY p.sex", []string{"a/copd/2"}},
		{join + " WHERE cl.codelist IN ('b/asthma/1', 'a/copd/2') GROUP BY p.sex", []string{"a/copd/2", "b/asthma/1"}},
		{"SELECT cl.codelist, count(*) FROM clinical_events e JOIN codelists cl ON cl.code = e.snomed_code " +
			"WHERE cl.codelist IN ('b/asthma/1', 'a/copd/2') GROUP BY cl.codelist", []string{"a/copd/2", "b/asthma/1"}},
		{"WITH asthma AS (SELECT e.patient_id, count(*) AS n FROM clinical_events e JOIN codelists cl ON cl.code = e.snomed_code " +
			"AND cl.codelist = 'b/asthma/1' GROUP BY e.patient_id) SELECT p.sex, count(*) FROM patients p JOIN asthma a ON a.patient_id = p.patient_id GROUP BY p.sex",
			[]string{"b/asthma/1"}},
		{"SELECT p.sex, count(*) FROM patients p GROUP BY p.sex", nil},
	}
	for _, tc := range ok {
		plan, err := p.Compile(context.Background(), cat, tc.sql, Options{Seed: 1})
		if err != nil {
			t.Errorf("compile %s: %v", tc.sql, err)
			continue
		}
		if !slices.Equal(plan.Codelists, tc.want) {
			t.Errorf("%s: codelists %v, want %v", tc.sql, plan.Codelists, tc.want)
		}
		if len(tc.want) > 0 && !strings.Contains(plan.Rewritten, `"tre_view_codelists"`) {
			t.Errorf("%s: the rewrite does not read the codelists view:\n%s", tc.sql, plan.Rewritten)
		}
	}
	refused := []string{
		join + " GROUP BY p.sex",
		join + " WHERE cl.codelist <> 'b/asthma/1' GROUP BY p.sex",
		join + " WHERE cl.codelist NOT IN ('b/asthma/1') GROUP BY p.sex",
	}
	for _, sql := range refused {
		_, err := p.Compile(context.Background(), cat, sql, Options{Seed: 1})
		if err == nil || !strings.Contains(err.Error(), "codelists table without a codelist name") {
			t.Errorf("%s: %v, want refused for naming no codelist", sql, err)
		}
	}
}

// TestCodelistSwapIsOnePredicate checks two queries differing only in the
// codelist they name (in ON or in WHERE) share a shape and differ by one
// predicate: the broker's differencing check flags the swap.
func TestCodelistSwapIsOnePredicate(t *testing.T) {
	p := MustParser(t)
	cat := MustLoadTestCatalog(t)
	for _, tmpl := range []string{
		"SELECT p.sex, count(*) FROM patients p JOIN clinical_events e ON e.patient_id = p.patient_id JOIN codelists cl ON cl.code = e.snomed_code AND cl.codelist = '%s' GROUP BY p.sex",
		"SELECT p.sex, count(*) FROM patients p JOIN clinical_events e ON e.patient_id = p.patient_id JOIN codelists cl ON cl.code = e.snomed_code WHERE cl.codelist = '%s' GROUP BY p.sex",
	} {
		a, err := p.Compile(context.Background(), cat, fmt.Sprintf(tmpl, "org/asthma/1"), Options{Seed: 1})
		if err != nil {
			t.Fatal(err)
		}
		b, err := p.Compile(context.Background(), cat, fmt.Sprintf(tmpl, "org/asthma/2"), Options{Seed: 1})
		if err != nil {
			t.Fatal(err)
		}
		if a.Shape != b.Shape || a.Normalized == b.Normalized {
			t.Errorf("%s: shapes differ or normalised texts equal:\n%s\n%s", tmpl, a.Normalized, b.Normalized)
		}
		var onlyA, onlyB []string
		for _, x := range a.Predicates {
			if !slices.Contains(b.Predicates, x) {
				onlyA = append(onlyA, x)
			}
		}
		for _, x := range b.Predicates {
			if !slices.Contains(a.Predicates, x) {
				onlyB = append(onlyB, x)
			}
		}
		if !slices.Equal(onlyA, []string{"codelist 'org/asthma/1'"}) || !slices.Equal(onlyB, []string{"codelist 'org/asthma/2'"}) {
			t.Errorf("%s: predicates differ by %v and %v, want one codelist each", tmpl, onlyA, onlyB)
		}
	}
}

// TestCodelistsTableReserved checks a catalog may not declare a table
// named codelists.
func TestCodelistsTableReserved(t *testing.T) {
	cat := MustLoadTestCatalog(t)
	cat.Tables = append(cat.Tables, Table{Name: "Codelists", Public: true, Columns: []Column{{Name: "code", Type: "VARCHAR", Role: RoleCode}}})
	if err := cat.Validate(); err == nil || !strings.Contains(err.Error(), "reserved") {
		t.Fatalf("validate: %v, want the name refused as reserved", err)
	}
}
