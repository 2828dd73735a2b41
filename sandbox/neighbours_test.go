package sandbox

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/nhs-tre/tre/dp"
	"github.com/nhs-tre/tre/queries"
	"github.com/nhs-tre/tre/sandbox/synth"
)

// The neighbouring-datasets test (issue 15): for a corpus of realistic and
// hostile queries, everything a researcher can see of a run except the
// noisy values must be the same on a dataset D and on each neighbour D′
// that differs from it in one patient: the outcome (result, or the error
// code), the released table's layout, its keys under public domains, its
// suppression and rounding marks, and the researcher's report. Noise is
// the one thing that may differ, so the child replaces it with a fixed
// offset (a test hook, as the DP library's own tests do): a large positive
// one releases every cell, a large negative one suppresses every cell, and
// either way the marks are then functions of the query alone. Keys chosen
// by DP partition selection are noisy outputs too (the library's own
// randomness, no hook): for those queries the rows are left out of the
// comparison, never the layout or the report.

// neighbourCorpus are the queries compared; {QI} is a condition on the
// patients table p that holds for exactly the patient a neighbour differs
// in (and for nobody else): their quasi-identifiers.
func neighbourCorpus() []string {
	const events = "FROM clinical_events e JOIN patients p ON p.patient_id = e.patient_id"
	corpus := []string{
		// The four reproducers of the issue.
		`SELECT count(*) AS n ` + events + ` WHERE CAST(CASE WHEN {QI} AND e.snomed_code = '35489007' THEN 'x' ELSE '1' END AS INTEGER) = 1`,
		`SELECT count(*) AS n, sum(CASE WHEN {QI} AND e.snomed_code = '35489007' THEN 1 ELSE 0 END) AS s ` + events,
		`SELECT date_trunc('day', a.date) AS d, count(*) AS n FROM clinical_events a JOIN clinical_events b ON a.patient_id = b.patient_id JOIN patients p ON p.patient_id = a.patient_id WHERE {QI} GROUP BY d`,
		`WITH c AS (SELECT count(*) AS patient_id, patient_id FROM patients GROUP BY patient_id) SELECT count(*) AS n FROM c`,
		// Run-time errors as an oracle.
		`SELECT count(*) AS n ` + events + ` WHERE ln(CASE WHEN {QI} AND e.snomed_code = '35489007' THEN 0 ELSE 1 END) = 0`,
		`SELECT count(*) AS n ` + events + ` WHERE sqrt(CASE WHEN {QI} THEN -1 ELSE 1 END) > 0`,
		`SELECT count(*) AS n ` + events + ` WHERE log(CASE WHEN {QI} THEN 1 ELSE 2 END, 5) > 0`,
		`SELECT count(*) AS n ` + events + ` WHERE make_date(2020, CASE WHEN {QI} THEN 13 ELSE 1 END, 1) IS NOT NULL`,
		`SELECT count(*) AS n ` + events + ` WHERE abs(CASE WHEN {QI} THEN 9223372036854775807 ELSE 0 END + 1) > 0`,
		`SELECT count(*) AS n ` + events + ` WHERE (CASE WHEN {QI} THEN -2147483648 ELSE 1 END) // -1 > 0`,
		`SELECT count(*) AS n ` + events + ` WHERE 7 % CASE WHEN {QI} THEN 0 ELSE 2 END = 1`,
		`SELECT count(*) AS n, avg(greatest(0, least(1, 1 / CASE WHEN {QI} THEN 0 ELSE 1 END))) AS m ` + events,
		`SELECT count(*) AS n ` + events + ` WHERE exp(CASE WHEN {QI} THEN 1000 ELSE 0 END) > 0`,
		`SELECT count(*) AS n ` + events + ` WHERE round(e.numeric_value, CASE WHEN {QI} THEN 2147483647 ELSE 1 END) > 0`,
		`SELECT count(*) AS n ` + events + ` WHERE substr(e.snomed_code, CASE WHEN {QI} THEN 9223372036854775807 ELSE 1 END) = 'x'`,
		`SELECT count(*) AS n ` + events + ` WHERE left(e.snomed_code, CASE WHEN {QI} THEN -9223372036854775807 ELSE 1 END) = 'x'`,
		`SELECT count(*) AS n ` + events + ` WHERE e.date + CASE WHEN {QI} THEN 2000000000 ELSE 0 END > DATE '2020-01-01'`,
		`SELECT count(*) AS n ` + events + ` WHERE e.date + to_years(CASE WHEN {QI} THEN 100000000 ELSE 0 END) > DATE '2020-01-01'`,
		`SELECT count(*) AS n ` + events + ` WHERE CAST(CASE WHEN {QI} THEN 'garbage' ELSE '2020-01-01' END AS DATE) IS NOT NULL`,
		`SELECT count(*) AS n ` + events + ` WHERE date_trunc('month', CASE WHEN {QI} THEN CAST('5881580-07-10' AS DATE) ELSE e.date END) IS NOT NULL`,
		`SELECT count(*) AS n ` + events + ` WHERE CAST(CASE WHEN {QI} THEN 1e300 ELSE 1 END AS INTEGER) = 1`,
		`SELECT count(*) AS n ` + events + ` WHERE e.snomed_code = 5`,
		`SELECT count(*) AS n ` + events + ` WHERE NOT e.snomed_code`,
		`WITH c AS (SELECT e.patient_id, sum(CASE WHEN e.snomed_code = '35489007' THEN 9223372036854775807 ELSE 1 END) AS s, median(e.numeric_value) AS md FROM clinical_events e GROUP BY e.patient_id)
		 SELECT count(*) AS n FROM c JOIN patients p ON p.patient_id = c.patient_id WHERE {QI} AND ln(c.s) > 0 AND c.md > 0`,
		// Groups before selection, work and time.
		`SELECT e.snomed_code AS c, count(*) AS n ` + events + ` WHERE {QI} GROUP BY c`,
		`SELECT count(*) AS n FROM clinical_events a JOIN clinical_events b ON a.patient_id = b.patient_id JOIN clinical_events c ON c.patient_id = a.patient_id
		 JOIN clinical_events d ON d.patient_id = a.patient_id JOIN patients p ON p.patient_id = a.patient_id WHERE {QI}`,
		// Opt-out bypass attempts.
		`WITH c AS (SELECT m.patient_id, count(*) AS k FROM patients p LEFT JOIN medications m ON m.patient_id = p.patient_id GROUP BY m.patient_id) SELECT count(*) AS n FROM c`,
		`SELECT count(DISTINCT m.patient_id) AS n FROM patients p LEFT JOIN medications m ON m.patient_id = p.patient_id WHERE {QI}`,
		`WITH c AS (SELECT p.patient_id, count(e.date) AS k FROM patients p LEFT JOIN clinical_events e ON e.patient_id = p.patient_id GROUP BY p.patient_id)
		 SELECT count(*) AS n, avg(least(c.k, 100)) AS mean_k FROM c JOIN patients p ON p.patient_id = c.patient_id WHERE {QI}`,
		// One patient's quasi-identifiers.
		`SELECT count(*) AS n FROM patients p WHERE {QI}`,
		`SELECT p.sex, count(*) AS n, avg(e.numeric_value) AS m, stddev(e.numeric_value) AS sd ` + events + ` WHERE {QI} GROUP BY p.sex`,
		`SELECT p.region, count(DISTINCT p.patient_id) AS n FROM patients p WHERE {QI} GROUP BY p.region`,
		`SELECT p.sex, count(*) AS n ` + events + ` WHERE {QI} AND e.snomed_code = '35489007' GROUP BY p.sex`,
	}
	for _, tq := range queries.TypicalQueries {
		corpus = append(corpus, tq.SQL)
	}
	return corpus
}

// neighbourData builds D (synthetic data) and its neighbours, and returns
// their paths and the {QI} condition.
func neighbourData(t *testing.T) (map[string]string, string) {
	t.Helper()
	dir := t.TempDir()
	d := filepath.Join(dir, "d.duckdb")
	if _, err := synth.Generate(context.Background(), synth.Options{Out: d, Patients: 1500, Seed: 15, MemoryLimit: "512MB", Threads: 2}); err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("duckdb", d+"?access_mode=READ_ONLY")
	if err != nil {
		t.Fatal(err)
	}
	// P: a patient with events, not opted out, alone with their date of
	// birth, sex, region, ethnicity and deprivation quintile.
	var pid, imd int64
	var dob, sex, region, eth string
	err = db.QueryRow(`SELECT p.patient_id, strftime(p.date_of_birth, '%Y-%m-%d'), p.sex, p.region, p.ethnicity, p.imd_quintile FROM patients p
		WHERE p.patient_id NOT IN (SELECT patient_id FROM optouts) AND p.patient_id IN (SELECT patient_id FROM clinical_events)
		AND (SELECT count(*) FROM patients q WHERE q.date_of_birth = p.date_of_birth AND q.sex = p.sex AND q.region = p.region AND q.ethnicity = p.ethnicity AND q.imd_quintile = p.imd_quintile) = 1
		ORDER BY p.patient_id LIMIT 1`).Scan(&pid, &dob, &sex, &region, &eth, &imd)
	db.Close()
	if err != nil {
		t.Fatalf("no patient with unique quasi-identifiers: %v", err)
	}
	qi := func(dob, sex, region, eth string, imd int64) string {
		return fmt.Sprintf("(p.date_of_birth = DATE '%s' AND p.sex = '%s' AND p.region = '%s' AND p.ethnicity = '%s' AND p.imd_quintile = %d)", dob, sex, region, eth, imd)
	}
	// X, a patient D does not hold, with quasi-identifiers nobody has.
	const x = 900_000_001
	cond := "(" + qi(dob, sex, region, eth, imd) + " OR " + qi("1901-02-01", "unknown", region, eth, imd) + ")"

	heavy := func(id int64) []string {
		return []string{
			fmt.Sprintf(`INSERT INTO clinical_events (patient_id, date, snomed_code, numeric_value) SELECT %d, DATE '2023-01-01' + INTERVAL (i) DAY, '35489007', 1e300 FROM range(400) t(i)`, id),
			fmt.Sprintf(`INSERT INTO medications (patient_id, date, dmd_code) SELECT %d, DATE '2023-01-01' + INTERVAL (i) DAY, dmd_code FROM (SELECT dmd_code FROM medications LIMIT 1), range(300) t(i)`, id),
			fmt.Sprintf(`INSERT INTO hospital_admissions SELECT %d, DATE '2022-01-01', DATE '2022-01-09', 'I50.0', 'emergency'`, id),
		}
	}
	paths := map[string]string{"D": d}
	for name, stmts := range map[string][]string{
		"D+X (a patient added)": append([]string{fmt.Sprintf(`INSERT INTO patients SELECT * REPLACE (%d AS patient_id, DATE '1901-02-01' AS date_of_birth, 'unknown' AS sex) FROM patients WHERE patient_id = %d`, x, pid)}, heavy(x)...),
		"D, P changed":          heavy(pid),
		"D, P opted out":        {fmt.Sprintf(`INSERT INTO optouts SELECT %d, kind FROM optouts LIMIT 1`, pid)},
	} {
		p := filepath.Join(dir, strings.NewReplacer(" ", "_", ",", "", "+", "plus", "(", "", ")", "").Replace(name)+".duckdb")
		mustCopyFile(t, d, p)
		mustExecFile(t, p, stmts...)
		paths[name] = p
	}
	return paths, cond
}

func mustCopyFile(t *testing.T, from, to string) {
	t.Helper()
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(to)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

// researcherView is everything a researcher sees of a run but the noisy
// values, as JSON: the error code, or ForResearcher with every value and
// interval reduced to whether it is there, and under DP partition
// selection no rows (their keys are noisy) and no counts of them.
func researcherView(t *testing.T, res *dp.Result, err error) string {
	t.Helper()
	if err != nil {
		return "error " + ErrorCode(err)
	}
	v := res.ForResearcher()
	type cell struct {
		Key                                     string
		Null, Value, Suppressed, Secondary, Rnd bool
	}
	var rows [][]cell
	for _, row := range v.Rows {
		var r []cell
		for _, c := range row {
			if (c.Value == nil) != (c.CILow == nil) || (c.Value == nil) != (c.CIHigh == nil) {
				t.Errorf("a cell with a value but no interval, or the reverse: %+v", c)
			}
			r = append(r, cell{c.Key, c.Null, c.Value != nil, c.Suppressed, c.Secondary, c.Rounded})
		}
		rows = append(rows, r)
	}
	rep := v.Report
	if rep.PartitionSelection == dp.SelectionPreThreshold {
		rows = nil
		rep.GroupsReleased, rep.GroupsSuppressed, rep.CellsSuppressed, rep.CellsSecondary, rep.CellsRounded = 0, 0, 0, 0, 0
	}
	b, err := json.Marshal(struct {
		Columns []dp.Column
		Rows    [][]cell
		Report  dp.ResearcherReport
	}{v.Columns, rows, rep})
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestNeighbouringDatasets runs the corpus through the real sandbox child
// on D and on each neighbour, with every cell released (noise +1e6) and
// with every cell suppressed (noise −1e6), and requires the researcher's
// view to be identical: no query, however hostile, shows a researcher
// anything about the one patient but through noise. D runs twice in the
// first pass, so a view that varies from run to run on the same data is
// caught too.
func TestNeighbouringDatasets(t *testing.T) {
	if testing.Short() {
		t.Skip("runs ~370 sandbox jobs")
	}
	paths, cond := neighbourData(t)
	runners := map[string]*Runner{}
	for name, p := range paths {
		cfg := testConfig(t, p)
		var err error
		if cfg.Catalog, err = queries.LoadCatalog(synth.CatalogPath(paths["D"])); err != nil {
			t.Fatal(err)
		}
		runners[name] = MustRunner(t, cfg)
	}
	corpus := neighbourCorpus()
	errors := 0
	for _, offset := range []float64{1e6, -1e6} {
		for i, tmpl := range corpus {
			q := strings.ReplaceAll(tmpl, "{QI}", cond)
			j := noiseJob(Job{QueryID: fmt.Sprintf("n%d", i), SQL: q, SQLHash: queries.SQLHash(q), Epsilon: 1}, offset)
			views := map[string]string{}
			var mu sync.Mutex
			var wg sync.WaitGroup
			run := func(name string, r *Runner) {
				defer wg.Done()
				res, err := r.Run(context.Background(), j)
				v := researcherView(t, res, err)
				mu.Lock()
				views[name] = v
				mu.Unlock()
			}
			for name, r := range runners {
				wg.Add(1)
				go run(name, r)
			}
			if offset > 0 {
				wg.Add(1)
				go run("D, again", runners["D"])
			}
			wg.Wait()
			want := views["D"]
			if strings.HasPrefix(want, "error ") && want != "error "+CodeRefused {
				t.Errorf("query %d failed with %s on D, want a result or a refusal:\n%s", i, want, q)
			}
			if strings.HasPrefix(want, "error ") {
				errors++
			}
			for name, got := range views {
				if got != want {
					t.Errorf("noise %+g, query %d: what the researcher sees differs on %q from D:\n  D:   %s\n  %s: %s\nquery: %s", offset, i, name, want, name, got, q)
				}
			}
		}
	}
	// The corpus is meant to run, but for the refusals it contains on
	// purpose (the opt-out bypasses and type errors).
	if errors > 10 {
		t.Errorf("%d runs refused; the corpus should mostly run", errors)
	}
}
