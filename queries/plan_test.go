package queries

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite testdata/golden files")

// TestRewriteGolden pins the rewritten SQL and the spec of every typical
// query. Run with -update after an intended change and review the diff.
func TestRewriteGolden(t *testing.T) {
	p := MustParser(t)
	cat := MustLoadTestCatalog(t)
	for _, tq := range TypicalQueries {
		t.Run(tq.Name, func(t *testing.T) {
			plan := mustCompile(t, p, cat, tq.SQL)
			spec, err := json.MarshalIndent(struct {
				Spec     any `json:"spec"`
				Cost     any `json:"cost"`
				Accuracy any `json:"accuracy"`
			}{plan.Spec, plan.Cost, plan.Accuracy}, "", "  ")
			if err != nil {
				t.Fatal(err)
			}
			got := "-- " + tq.Name + "\n" + plan.Rewritten + "\n\n" + string(spec) + "\n"
			path := filepath.Join("testdata", "golden", tq.Name+".golden")
			if *update {
				if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("read golden file (run go test -run TestRewriteGolden -update): %v", err)
			}
			if diff := cmp.Diff(string(want), got); diff != "" {
				t.Errorf("rewrite changed (-want +got):\n%s", diff)
			}
		})
	}
}

func TestPlanBudget(t *testing.T) {
	p := MustParser(t)
	cat := MustLoadTestCatalog(t)
	ctx := context.Background()
	public := `SELECT region, sex, count(*) AS n FROM patients GROUP BY region, sex`
	private := `SELECT snomed_code, count(*) AS n FROM clinical_events GROUP BY snomed_code`
	tests := []struct {
		name      string
		sql       string
		eps       float64
		wantEps   float64
		wantDelta float64
		refuse    string
	}{
		{name: "default epsilon", sql: public, wantEps: 1},
		{name: "chosen epsilon", sql: public, eps: 0.25, wantEps: 0.25},
		{name: "max epsilon", sql: public, eps: 2, wantEps: 2},
		{name: "above max", sql: public, eps: 2.5, refuse: "at most 2 per query"},
		{name: "negative", sql: public, eps: -1, refuse: "finite number above 0"},
		{name: "nan", sql: public, eps: math.NaN(), refuse: "finite number above 0"},
		{name: "inf", sql: public, eps: math.Inf(1), refuse: "finite number above 0"},
		{name: "min epsilon", sql: public, eps: 0.01, wantEps: 0.01},
		{name: "below min", sql: public, eps: 0.0099, refuse: "needs at least 0.01 per query"},
		{name: "tiny", sql: public, eps: 1e-9, refuse: "needs at least 0.01 per query"},
		{name: "below 2^-50", sql: public, eps: math.Exp2(-60), refuse: "needs at least 0.01 per query"},
		{name: "smallest float", sql: public, eps: math.SmallestNonzeroFloat64, refuse: "needs at least 0.01 per query"},
		{name: "huge", sql: public, eps: math.MaxFloat64, refuse: "at most 2 per query"},
		{name: "partition selection costs delta", sql: private, wantEps: 1, wantDelta: 1e-6},
		{name: "no group by costs no delta", sql: `SELECT count(*) FROM medications`, wantEps: 1},
		{name: "cross product too large", sql: `SELECT p.region, p.ethnicity, p.sex, p.imd_quintile, v.vaccine, a.admission_method, count(*)
			FROM patients p JOIN vaccinations v USING (patient_id) JOIN hospital_admissions a USING (patient_id)
			GROUP BY p.region, p.ethnicity, p.sex, p.imd_quintile, v.vaccine, a.admission_method`, refuse: "more than 10,000 combinations"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			plan, err := p.Compile(ctx, cat, tt.sql, Options{Epsilon: tt.eps})
			if tt.refuse != "" {
				var r *Refusal
				if !errors.As(err, &r) || !strings.Contains(r.Message, tt.refuse) {
					t.Fatalf("got %v, want refusal containing %q", err, tt.refuse)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if plan.Spec.Epsilon != tt.wantEps || plan.Cost.Epsilon != tt.wantEps || plan.Cost.Delta != tt.wantDelta {
				t.Errorf("spec ε %v, cost %+v; want ε %v δ %v", plan.Spec.Epsilon, plan.Cost, tt.wantEps, tt.wantDelta)
			}
			if len(plan.Accuracy) != len(plan.Spec.Aggregates) {
				t.Errorf("%d accuracy entries for %d aggregates", len(plan.Accuracy), len(plan.Spec.Aggregates))
			}
		})
	}
}

func TestPlanSpec(t *testing.T) {
	p := MustParser(t)
	cat := MustLoadTestCatalog(t)
	plan := mustCompile(t, p, cat, TypicalQueries[5].SQL) // HbA1c share by region
	want := `{"groups":[{"name":"region","domain":["North East","North West","Yorkshire and The Humber","East Midlands","West Midlands","East of England","London","South East","South West"]}],` +
		`"aggregates":[{"name":"diabetics_with_hba1c","kind":"count","patient_count":true},{"name":"share_below_58","kind":"mean","upper":1}],` +
		`"max_groups_per_patient":1,"max_rows_per_group":1,"epsilon":1,"delta":0.000001,"threshold":10,"rounding_base":5,"rounding":"nearest"}`
	got, _ := json.Marshal(plan.Spec)
	if diff := cmp.Diff(want, string(got)); diff != "" {
		t.Errorf("spec (-want +got):\n%s", diff)
	}
	if plan.Dataset != "nhs_gp_synthetic" || len(plan.SQLHash) != 64 || plan.SQL != TypicalQueries[5].SQL {
		t.Errorf("plan header: %q %q", plan.Dataset, plan.SQLHash)
	}
	// Bounds of a per-patient arg_max come from the catalog bounds of
	// numeric_value; greatest/least narrow them.
	plan = mustCompile(t, p, cat, `WITH b AS (SELECT patient_id, arg_max(numeric_value, date) AS bmi FROM clinical_events GROUP BY patient_id)
		SELECT avg(bmi) AS wide, avg(greatest(12, least(70, bmi))) AS narrow FROM b`)
	if a := plan.Spec.Aggregates[0]; a.Lower != 0 || a.Upper != 200 {
		t.Errorf("wide spec %+v, want [0, 200]", a)
	}
	if a := plan.Spec.Aggregates[1]; a.Lower != 12 || a.Upper != 70 {
		t.Errorf("narrow spec %+v, want [12, 70]", a)
	}
}

func TestNormalizedAndPredicates(t *testing.T) {
	p := MustParser(t)
	cat := MustLoadTestCatalog(t)
	a := mustCompile(t, p, cat, `SELECT region, count(*) FROM patients p WHERE p.sex = 'female' AND p.imd_quintile IN (1, 2) GROUP BY region`)
	b := mustCompile(t, p, cat, "select REGION,   COUNT(*)\nfrom patients p\nwhere p.sex='female' and p.imd_quintile in (1,2)\ngroup by region")
	c := mustCompile(t, p, cat, `SELECT region, count(*) FROM patients q WHERE q.imd_quintile IN (1, 2) AND q.sex = 'male' GROUP BY region`)
	if a.Normalized != b.Normalized {
		t.Errorf("layout changed the normalized form:\n%s\n%s", a.Normalized, b.Normalized)
	}
	if a.Normalized == c.Normalized {
		t.Error("different literal, same normalized form")
	}
	if strings.Contains(a.Normalized, "query_location") {
		t.Error("normalized form keeps positions")
	}
	want := []string{`(patients.imd_quintile IN (1, 2))`, `(patients.sex = 'female')`}
	if diff := cmp.Diff(want, a.Predicates); diff != "" {
		t.Errorf("predicates (-want +got):\n%s", diff)
	}
	// A renamed alias and reordered conjuncts give the same predicates.
	if diff := cmp.Diff([]string{`(patients.imd_quintile IN (1, 2))`, `(patients.sex = 'male')`}, c.Predicates); diff != "" {
		t.Errorf("predicates (-want +got):\n%s", diff)
	}
}

func TestPredicatesForm(t *testing.T) {
	p := MustParser(t)
	cat := MustLoadTestCatalog(t)
	plan := mustCompile(t, p, cat, `SELECT count(*) FROM medications m WHERE m.date >= DATE '2023-01-01' AND m.dmd_code = 'say "hi"' AND m.date < '2023-02-01'::DATE`)
	want := []string{`(medications.date < DATE '2023-02-01')`, `(medications.date >= DATE '2023-01-01')`, `(medications.dmd_code = 'say "hi"')`}
	if diff := cmp.Diff(want, plan.Predicates); diff != "" {
		t.Errorf("predicates (-want +got):\n%s", diff)
	}
}

func TestPredicatesOfCTEs(t *testing.T) {
	p := MustParser(t)
	cat := MustLoadTestCatalog(t)
	plan := mustCompile(t, p, cat, `WITH d AS (SELECT patient_id, 1 AS x FROM clinical_events e WHERE e.snomed_code = '44054006' AND e.date >= DATE '2020-01-01' GROUP BY patient_id)
		SELECT count(*) FROM d JOIN patients p USING (patient_id) WHERE p.sex = 'female'`)
	want := []string{
		`(patients.sex = 'female')`,
		`in derived1: (clinical_events.date >= DATE '2020-01-01')`,
		`in derived1: (clinical_events.snomed_code = 44054006)`,
	}
	if diff := cmp.Diff(want, plan.Predicates); diff != "" {
		t.Errorf("predicates (-want +got):\n%s", diff)
	}
}

func TestViewStatements(t *testing.T) {
	cat := MustLoadTestCatalog(t)
	views := ViewStatements(cat)
	all := strings.Join(views, "\n")
	if strings.Contains(all, "practice_id") || strings.Contains(all, `"kind"`) {
		t.Errorf("forbidden column exposed:\n%s", all)
	}
	if strings.Contains(all, ViewName("optouts")) {
		t.Errorf("opt-out table exposed:\n%s", all)
	}
	if strings.Contains(all, `"optouts"`) {
		t.Errorf("a view reads the opt-out table (compiled queries filter opt-outs themselves):\n%s", all)
	}
	want := `CREATE OR REPLACE TEMP VIEW "tre_view_medications" AS SELECT "patient_id", "date", "dmd_code" FROM "medications"`
	found := false
	for _, v := range views {
		found = found || v == want
	}
	if !found {
		t.Errorf("no view %s in\n%s", want, all)
	}
	if !strings.Contains(all+"\n", `CREATE OR REPLACE TEMP VIEW "tre_view_dmd_codes" AS SELECT "dmd_code", "name", "drug_class" FROM "dmd_codes"`+"\n") {
		t.Errorf("public table view missing or filtered:\n%s", all)
	}
}

func TestCompileConcurrent(t *testing.T) {
	p := MustParser(t)
	cat := MustLoadTestCatalog(t)
	want := mustCompile(t, p, cat, TypicalQueries[0].SQL).Rewritten
	errs := make(chan error, 8)
	for range 8 {
		go func() {
			for range 20 {
				plan, err := p.Compile(context.Background(), cat, TypicalQueries[0].SQL, Options{Seed: 42})
				if err == nil && plan.Rewritten != want {
					err = errors.New("different rewrite under concurrency")
				}
				if err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range 8 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

// BenchmarkCompile measures Compile on the typical queries. Each iteration
// appends a distinct comment, so the text differs and the parse cache
// misses, as for new submissions; "cached" repeats texts.
func BenchmarkCompile(b *testing.B) {
	p := MustParser(b)
	cat := MustLoadTestCatalog(b)
	ctx := context.Background()
	for _, tq := range TypicalQueries {
		b.Run(tq.Name, func(b *testing.B) {
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				i++
				if _, err := p.Compile(ctx, cat, tq.SQL+"\n-- "+strconv.Itoa(i), Options{}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	var n atomic.Int64
	b.Run("parallel_mix", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				i := int(n.Add(1))
				if _, err := p.Compile(ctx, cat, TypicalQueries[i%len(TypicalQueries)].SQL+"\n-- "+strconv.Itoa(i), Options{}); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
	b.Run("parallel_mix_cached", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			i := 0
			for pb.Next() {
				if _, err := p.Compile(ctx, cat, TypicalQueries[i%len(TypicalQueries)].SQL, Options{}); err != nil {
					b.Error(err)
					return
				}
				i++
			}
		})
	})
}

func TestParserLockedDown(t *testing.T) {
	p := MustParser(t)
	if _, err := p.db.Exec("SET enable_external_access = true"); err == nil {
		t.Fatal("parser database configuration is not locked")
	}
	var v string
	if err := p.db.QueryRow("SELECT current_setting('enable_external_access')::VARCHAR").Scan(&v); err != nil || v != "false" {
		t.Fatalf("enable_external_access = %q (%v), want false", v, err)
	}
}

// TestCanonicalForm checks what the risk flags compare: queries that ask
// the same question however they are written and named have one Normalized
// form; queries that ask another question do not; one condition more or
// less keeps the Shape.
func TestCanonicalForm(t *testing.T) {
	p := MustParser(t)
	cat := MustLoadTestCatalog(t)
	const base = `SELECT sex, count(*) AS n FROM patients WHERE imd_quintile >= 2 AND region IN ('London', 'North East') GROUP BY sex`
	same := []struct{ name, sql string }{
		{"renamed output", `SELECT sex AS s, count(*) AS n_again FROM patients WHERE imd_quintile >= 2 AND region IN ('London', 'North East') GROUP BY 1`},
		{"layout, case and a comment", "select  SEX,\n COUNT(*) as N -- total\n from PATIENTS where IMD_QUINTILE >= 2 and REGION in ('London', 'North East') group by SEX"},
		{"conjuncts swapped", `SELECT sex, count(*) AS n FROM patients WHERE region IN ('London', 'North East') AND imd_quintile >= 2 GROUP BY sex`},
		{"IN list reordered", `SELECT sex, count(*) AS n FROM patients WHERE imd_quintile >= 2 AND region IN ('North East', 'London') GROUP BY sex`},
		{"literal as a decimal", `SELECT sex, count(*) AS n FROM patients WHERE imd_quintile >= 2.0 AND region IN ('London', 'North East') GROUP BY sex`},
		{"literal in exponent form", `SELECT sex, count(*) AS n FROM patients WHERE imd_quintile >= 0.2e1 AND region IN ('London', 'North East') GROUP BY sex`},
		{"literal as a string", `SELECT sex, count(*) AS n FROM patients WHERE imd_quintile >= '2' AND region IN ('London', 'North East') GROUP BY sex`},
		{"table alias", `SELECT p.sex, count(*) AS n FROM patients AS p WHERE p.imd_quintile >= 2 AND p.region IN ('London', 'North East') GROUP BY p.sex`},
		// imd_quintile is a number: a string compared with it is converted
		// when the query is compiled (total.go), '02' to 2.
		{"a string with a leading zero compared with a number", `SELECT sex, count(*) AS n FROM patients WHERE imd_quintile >= '02' AND region IN ('London', 'North East') GROUP BY sex`},
	}
	want := mustCompile(t, p, cat, base)
	for _, tt := range same {
		t.Run(tt.name, func(t *testing.T) {
			got := mustCompile(t, p, cat, tt.sql)
			if got.Normalized != want.Normalized {
				t.Errorf("normalized forms differ:\n%s\n%s", want.Normalized, got.Normalized)
			}
			if diff := cmp.Diff(want.Predicates, got.Predicates); diff != "" {
				t.Errorf("predicates (-want +got):\n%s", diff)
			}
		})
	}
	other := []struct{ name, sql string }{
		{"another value", `SELECT sex, count(*) AS n FROM patients WHERE imd_quintile >= 3 AND region IN ('London', 'North East') GROUP BY sex`},
		{"another group", `SELECT region, count(*) AS n FROM patients WHERE imd_quintile >= 2 AND region IN ('London', 'North East') GROUP BY region`},
		{"another aggregate", `SELECT sex, count(DISTINCT patient_id) AS n FROM patients WHERE imd_quintile >= 2 AND region IN ('London', 'North East') GROUP BY sex`},
		{"a code with a leading zero", `SELECT sex, count(*) AS n FROM patients WHERE imd_quintile >= 2 AND region IN ('London', 'North East', '02') GROUP BY sex`},
	}
	for _, tt := range other {
		t.Run(tt.name, func(t *testing.T) {
			if got := mustCompile(t, p, cat, tt.sql); got.Normalized == want.Normalized {
				t.Errorf("another question has the same normalized form:\n%s", got.Normalized)
			}
		})
	}
	t.Run("one condition fewer keeps the shape", func(t *testing.T) {
		got := mustCompile(t, p, cat, `SELECT sex, count(*) AS n_2 FROM patients WHERE region IN ('North East', 'London') GROUP BY sex`)
		if got.Shape != want.Shape || got.Normalized == want.Normalized {
			t.Errorf("shape %q vs %q; normalized equal %v", got.Shape, want.Shape, got.Normalized == want.Normalized)
		}
	})
	t.Run("renamed CTE, columns and alias", func(t *testing.T) {
		a := mustCompile(t, p, cat, `WITH latest AS (SELECT patient_id, max(numeric_value) AS v FROM clinical_events WHERE snomed_code = '123' GROUP BY patient_id)
			SELECT p.sex, count(*) AS n FROM patients p JOIN latest l ON l.patient_id = p.patient_id WHERE l.v > 100 GROUP BY p.sex`)
		b := mustCompile(t, p, cat, `WITH peak AS (SELECT patient_id, max(numeric_value) AS highest FROM clinical_events WHERE snomed_code = '123' GROUP BY patient_id)
			SELECT patients.sex, count(*) AS total FROM patients JOIN peak USING (patient_id) WHERE peak.highest > 100.0 GROUP BY 1`)
		if a.Normalized != b.Normalized {
			t.Errorf("normalized forms differ:\n%s\n%s", a.Normalized, b.Normalized)
		}
	})
}

// TestSpecBoundsFromQuery: k and C below the catalog's (k = 4, C = 3) when
// the query and the catalog prove them, and the aggregate suppression
// decides on; all facts of the query and catalog, never of the data, so
// the broker's Spec is the sandbox's (compiled here with and without the
// data's proofs).
func TestSpecBoundsFromQuery(t *testing.T) {
	p := MustParser(t)
	cat := MustLoadTestCatalog(t)
	for _, tt := range []struct {
		name         string
		sql          string
		k, c         int
		patientCount []bool
	}{
		{name: "no GROUP BY, one row per patient", sql: `SELECT count(*) AS n FROM patients`, k: 1, c: 1, patientCount: []bool{true}},
		{name: "no GROUP BY, events", sql: `SELECT count(*) AS n FROM clinical_events`, k: 1, c: 3, patientCount: []bool{false}},
		{name: "patient keys", sql: `SELECT region, sex, count(*) AS n FROM patients GROUP BY region, sex`, k: 1, c: 1, patientCount: []bool{true}},
		{name: "patient count of events", sql: `SELECT snomed_code, count(DISTINCT patient_id) AS n, count(*) AS rows FROM clinical_events GROUP BY snomed_code`, k: 4, c: 3, patientCount: []bool{true, false}},
		{name: "filtered patient count", sql: `SELECT count(DISTINCT patient_id) FILTER (WHERE snomed_code = 'x') AS n FROM clinical_events`, k: 1, c: 3, patientCount: []bool{false}},
		{name: "a quarter's months", sql: `SELECT date_trunc('month', date) AS m, count(*) AS n FROM medications WHERE date >= DATE '2023-01-01' AND date < DATE '2023-04-01' GROUP BY m`, k: 3, c: 3, patientCount: []bool{false}},
		{name: "per-patient CTE joined", sql: `WITH c AS (SELECT patient_id, max(numeric_value) AS v FROM clinical_events GROUP BY patient_id)
			SELECT p.sex, count(*) AS n, avg(c.v) AS mean_v FROM c JOIN patients p ON p.patient_id = c.patient_id GROUP BY p.sex`, k: 1, c: 1, patientCount: []bool{true, false}},
		{name: "count of a left-joined id", sql: `SELECT count(DISTINCT m.patient_id) AS n FROM patients p LEFT JOIN medications m ON m.patient_id = p.patient_id`, k: 1, c: 3, patientCount: []bool{false}},
		{name: "unbounded keys", sql: `SELECT snomed_code, count(*) AS n FROM clinical_events GROUP BY snomed_code`, k: 4, c: 3, patientCount: []bool{false}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var specs []string
			for _, opts := range []Options{{}, {UniqueTables: []string{"patients"}}} {
				plan, err := p.Compile(context.Background(), cat, tt.sql, opts)
				if err != nil {
					t.Fatal(err)
				}
				s := plan.Spec
				if s.MaxGroupsPerPatient != tt.k || s.MaxRowsPerGroup != tt.c {
					t.Errorf("k = %d, C = %d, want %d, %d", s.MaxGroupsPerPatient, s.MaxRowsPerGroup, tt.k, tt.c)
				}
				var pc []bool
				for _, a := range s.Aggregates {
					pc = append(pc, a.PatientCount)
				}
				if diff := cmp.Diff(tt.patientCount, pc); diff != "" {
					t.Errorf("patient counts (-want +got):\n%s", diff)
				}
				b, _ := json.Marshal(s)
				specs = append(specs, string(b))
			}
			if specs[0] != specs[1] {
				t.Errorf("the data's proofs changed the Spec:\n%s\n%s", specs[0], specs[1])
			}
		})
	}
}
