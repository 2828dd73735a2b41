package queries

import (
	"context"
	"errors"
	"strings"
	"testing"
)

// TestRefusalSuggestsNames: a mistyped table, alias or column gets the
// closest name in scope; a name far from every candidate gets none, and
// the opt-out list is never suggested.
func TestRefusalSuggestsNames(t *testing.T) {
	p := MustParser(t)
	cat := MustLoadTestCatalog(t)
	tests := []struct {
		name, sql, want string
	}{
		{name: "table", sql: `SELECT count(*) FROM patient`, want: "only catalog tables may be read (see the dataset catalog) (did you mean patients?)"},
		{name: "qualified column", sql: `SELECT p.sexx, count(*) AS n FROM patients p GROUP BY p.sexx`, want: "table p has no such column (did you mean p.sex?)"},
		{name: "bare column", sql: `SELECT count(*) FROM patients p JOIN clinical_events e ON e.patient_id = p.patient_id WHERE snomed_cod = '1'`, want: "(did you mean e.snomed_code?)"},
		{name: "alias", sql: `SELECT q.sex, count(*) AS n FROM patients p GROUP BY q.sex`, want: "no table in FROM is called q (did you mean p?)"},
		{name: "case differs only", sql: `SELECT count(*) FROM Patientz`, want: "(did you mean patients?)"},
		{name: "nothing close", sql: `SELECT count(*) FROM gp_notes`, want: "only catalog tables may be read (see the dataset catalog)"},
		{name: "opt-out list never suggested", sql: `SELECT count(*) FROM optout`, want: "only catalog tables may be read (see the dataset catalog)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := p.Compile(context.Background(), cat, tt.sql, Options{Seed: 1})
			var r *Refusal
			if !errors.As(err, &r) {
				t.Fatalf("error %v, want a refusal", err)
			}
			if !strings.HasSuffix(r.Message, tt.want) {
				t.Errorf("refusal %q does not end with %q", r.Message, tt.want)
			}
		})
	}
}

func TestEditDistance(t *testing.T) {
	tests := []struct {
		a, b string
		want int
	}{
		{"", "", 0}, {"abc", "", 3}, {"sex", "sexx", 1}, {"kitten", "sitting", 3}, {"région", "region", 1},
	}
	for _, tt := range tests {
		if got := editDistance(tt.a, tt.b); got != tt.want {
			t.Errorf("editDistance(%q, %q) = %d, want %d", tt.a, tt.b, got, tt.want)
		}
	}
}
