// Package sandboxtest builds what a neighbouring-datasets test needs:
// synthetic datasets that differ from one another in one patient alone (the
// target), and the corpus of queries, ordinary and hostile, to run on them.
// The sandbox's own neighbouring test and the end-to-end one in cmd/tre run
// the same corpus over the same datasets; a test then requires that
// everything a researcher sees but the noisy values is the same on every
// dataset.
//
// It writes synthetic data only (package synth), never reads real data, and
// is for tests.
package sandboxtest

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	_ "github.com/duckdb/duckdb-go/v2" // the data files' driver
	"gopkg.in/yaml.v3"

	"github.com/nhs-tre/tre/job"
	"github.com/nhs-tre/tre/queries"
	"github.com/nhs-tre/tre/synth"
)

// Target is the patient the datasets differ in, with the attributes that
// single them out (the quasi-identifiers of issue 15's reproducers).
type Target struct {
	PatientID   int64
	DateOfBirth string // YYYY-MM-DD, the first of a month as synth writes it
	Sex         string
	Ethnicity   string
	Region      string
	IMDQuintile int
}

// QI returns an SQL predicate, over the patients table under alias, that
// holds for the target and for no other patient of any of the datasets.
func (t Target) QI(alias string) string {
	return fmt.Sprintf("(%[1]s.date_of_birth = DATE '%[2]s' AND %[1]s.sex = '%[3]s' AND %[1]s.ethnicity = '%[4]s' AND %[1]s.region = '%[5]s' AND %[1]s.imd_quintile = %[6]d)",
		alias, t.DateOfBirth, t.Sex, t.Ethnicity, t.Region, t.IMDQuintile)
}

// Depression is the SNOMED CT code the "changed" dataset gives the target
// (issue 15's reproducers ask whether one person has it).
const Depression = "35489007"

// Dataset is one data file with its catalog.
type Dataset struct {
	// Name says how the dataset differs from the base: "base", "removed",
	// "changed" or "opted_out".
	Name string
	// Data and Catalog are the files an agent or sandbox opens; Dataset is
	// the catalog's dataset name ("neighbour_" + Name), distinct for each.
	Data, Catalog, Dataset string
}

// Neighbourhood is a base dataset D and its neighbours D′.
type Neighbourhood struct {
	Target Target
	// Base is D: synthetic patients and the target, who has a few BMI
	// readings, no depression code, and has not opted out.
	Base Dataset
	// Neighbours differ from Base in the target alone:
	//   - removed: the target is not in the data at all;
	//   - changed: the target also has a depression code and thirty more
	//     BMI readings (more than any per-patient bound keeps);
	//   - opted_out: as changed, and the target opted out (national data
	//     opt-out), so no query may count them.
	Neighbours []Dataset
}

// All returns the base and its neighbours, base first.
func (n *Neighbourhood) All() []Dataset { return append([]Dataset{n.Base}, n.Neighbours...) }

// Build generates patients synthetic patients (seed) once under dir and
// writes the base dataset and its neighbours beside them.
func Build(ctx context.Context, dir string, patients int, seed int64) (*Neighbourhood, error) {
	synthPath := filepath.Join(dir, "synth.duckdb")
	if _, err := synth.Generate(ctx, synth.Options{Out: synthPath, Patients: patients, Seed: seed, Threads: 2}); err != nil {
		return nil, fmt.Errorf("generate synthetic data: %w", err)
	}
	target, err := pickTarget(ctx, synthPath)
	if err != nil {
		return nil, err
	}
	withTarget := []string{
		fmt.Sprintf(`INSERT INTO patients (patient_id, date_of_birth, sex, ethnicity, region, imd_quintile, practice_id,
			registration_start, registration_end, date_of_death)
			VALUES (%d, DATE '%s', '%s', '%s', '%s', %d, 'S10001', DATE '2005-04-01', NULL, NULL)`,
			target.PatientID, target.DateOfBirth, target.Sex, target.Ethnicity, target.Region, target.IMDQuintile),
		readings(target.PatientID, "2021-01-11", 3, 27.5),
	}
	changed := append(append([]string{}, withTarget...),
		fmt.Sprintf("INSERT INTO clinical_events VALUES (%d, DATE '2021-03-04', '%s', NULL)", target.PatientID, Depression),
		readings(target.PatientID, "2021-04-01", 30, 31.0),
	)
	optedOut := append(append([]string{}, changed...),
		fmt.Sprintf("INSERT INTO optouts VALUES (%d, 'ndop')", target.PatientID))

	n := &Neighbourhood{Target: target}
	for _, d := range []struct {
		name  string
		stmts []string
	}{{"base", withTarget}, {"removed", nil}, {"changed", changed}, {"opted_out", optedOut}} {
		ds, err := writeDataset(ctx, dir, synthPath, d.name, d.stmts)
		if err != nil {
			return nil, err
		}
		if d.name == "base" {
			n.Base = ds
		} else {
			n.Neighbours = append(n.Neighbours, ds)
		}
	}
	return n, nil
}

// readings inserts count BMI readings of value for patient id, one a week
// from date.
func readings(id int64, date string, count int, value float64) string {
	return fmt.Sprintf(`INSERT INTO clinical_events
		SELECT %d, DATE '%s' + CAST(7 * i AS INTEGER), '60621009', %g FROM range(%d) AS r(i)`, id, date, value, count)
}

// pickTarget returns a new patient whose quasi-identifiers no patient of
// the synthetic data shares.
func pickTarget(ctx context.Context, path string) (Target, error) {
	db, err := sql.Open("duckdb", path+"?access_mode=read_only")
	if err != nil {
		return Target{}, err
	}
	defer db.Close()
	var maxID int64
	if err := db.QueryRowContext(ctx, "SELECT max(patient_id) FROM patients").Scan(&maxID); err != nil {
		return Target{}, fmt.Errorf("read patient ids: %w", err)
	}
	t := Target{PatientID: maxID + 1001, Sex: "female", Ethnicity: "Mixed", Region: "North East", IMDQuintile: 2}
	for year := 1931; year < 1960; year++ {
		t.DateOfBirth = fmt.Sprintf("%d-05-01", year)
		var n int
		err := db.QueryRowContext(ctx, `SELECT count(*) FROM patients WHERE date_of_birth = CAST(? AS DATE) AND sex = ?
			AND ethnicity = ? AND region = ? AND imd_quintile = ?`, t.DateOfBirth, t.Sex, t.Ethnicity, t.Region, t.IMDQuintile).Scan(&n)
		if err != nil {
			return Target{}, fmt.Errorf("look for a unique target: %w", err)
		}
		if n == 0 {
			return t, nil
		}
	}
	return Target{}, fmt.Errorf("no unused quasi-identifier combination for the target")
}

// writeDataset copies the synthetic data to dir/name.duckdb, runs stmts on
// the copy and writes its catalog under the dataset name neighbour_<name>.
func writeDataset(ctx context.Context, dir, synthPath, name string, stmts []string) (Dataset, error) {
	d := Dataset{Name: name, Data: filepath.Join(dir, name+".duckdb"), Catalog: filepath.Join(dir, name+".catalog.yaml"), Dataset: "neighbour_" + name}
	if err := copyFile(synthPath, d.Data); err != nil {
		return d, err
	}
	db, err := sql.Open("duckdb", d.Data)
	if err != nil {
		return d, err
	}
	for _, s := range stmts {
		if _, err := db.ExecContext(ctx, s); err != nil {
			db.Close()
			return d, fmt.Errorf("%s: %w\n%s", name, err, s)
		}
	}
	// A checkpoint leaves no WAL beside the file: the sandbox refuses one.
	if _, err := db.ExecContext(ctx, "CHECKPOINT"); err != nil {
		db.Close()
		return d, fmt.Errorf("%s: checkpoint: %w", name, err)
	}
	if err := db.Close(); err != nil {
		return d, err
	}
	cat := synth.Catalog()
	cat.Dataset = d.Dataset
	return d, writeCatalog(d.Catalog, cat)
}

func copyFile(from, to string) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

func writeCatalog(path string, cat *queries.Catalog) error {
	data, err := yaml.Marshal(cat)
	if err != nil {
		return fmt.Errorf("encode catalog: %w", err)
	}
	return os.WriteFile(path, data, 0o644)
}

// Query is one query of the corpus.
type Query struct {
	// Name says what the query tries ("reproducer 1: cast error", …).
	Name string
	SQL  string
}

// Corpus returns the queries a neighbouring-datasets test runs: issue 15's
// four reproducers and variants of them written against t, and ordinary
// queries a researcher would send. Whether each is accepted, fails or
// succeeds is for the engine to decide; a test requires only that the
// answer looks the same, noisy values aside, on every dataset.
func Corpus(t Target) []Query {
	qi := t.QI("p")
	join := "FROM clinical_events e JOIN patients p ON p.patient_id = e.patient_id"
	has := qi + " AND e.snomed_code = '" + Depression + "'"
	return []Query{
		// 1. Runtime errors as an oracle.
		{"reproducer 1: cast error", "SELECT count(*) AS n " + join + " WHERE CAST(CASE WHEN " + has + " THEN 'x' ELSE '1' END AS INTEGER) = 1"},
		{"reproducer 1: ln(0)", "SELECT count(*) AS n " + join + " WHERE ln(CASE WHEN " + has + " THEN 0 ELSE 1 END) = 0"},
		{"reproducer 1: make_date", "SELECT count(*) AS n " + join + " WHERE make_date(2020, CASE WHEN " + has + " THEN 13 ELSE 1 END, 1) > DATE '2019-01-01'"},
		{"reproducer 1: integer overflow", "SELECT count(*) AS n " + join + " WHERE abs(CASE WHEN " + has + " THEN 9223372036854775807 ELSE 0 END + 1) > 0"},
		{"reproducer 1: error in a per-patient CTE", "WITH pp AS (SELECT e.patient_id, count(*) AS k " + join +
			" WHERE CAST(CASE WHEN " + has + " THEN 'x' ELSE '1' END AS INTEGER) = 1 GROUP BY e.patient_id) SELECT count(*) AS n FROM pp"},
		// 2. Exact dominance flags.
		{"reproducer 2: dominance", "SELECT count(*) AS n, sum(CASE WHEN " + has + " THEN 1 ELSE 0 END) AS s " + join},
		// 3. Exact report counters: rows dropped by bounding, partitions not
		// released, group counts before selection.
		{"reproducer 3: rows dropped by bounding", "SELECT p.sex, count(*) AS n " + join + " WHERE " + qi + " GROUP BY p.sex"},
		{"reproducer 3: day-bucketed self-join", "SELECT date_trunc('month', e.date) AS m, count(*) AS n FROM clinical_events e " +
			"JOIN clinical_events f ON f.patient_id = e.patient_id JOIN patients p ON p.patient_id = e.patient_id WHERE " + qi + " GROUP BY date_trunc('month', e.date)"},
		// 4. Opt-out bypass through an ambiguous patient id.
		{"reproducer 4: opt-out bypass", "WITH c AS (SELECT count(*) AS patient_id, patient_id FROM patients GROUP BY patient_id) SELECT count(*) AS n FROM c"},
		// Ordinary questions, some of which the target is in.
		{"typical: diabetes by region", "SELECT p.region, count(DISTINCT p.patient_id) AS n " + join + " WHERE e.snomed_code = '44054006' GROUP BY p.region"},
		{"typical: mean BMI by sex", "SELECT p.sex, avg(e.numeric_value) AS mean_bmi " + join + " WHERE e.snomed_code = '60621009' GROUP BY p.sex"},
		{"typical: depression by IMD quintile", "SELECT p.imd_quintile, count(DISTINCT p.patient_id) AS n " + join +
			" WHERE e.snomed_code = '" + Depression + "' GROUP BY p.imd_quintile"},
		{"hostile: count of the target", "SELECT count(*) AS n FROM patients p WHERE " + qi},
		// Ratios: released from their parts' noisy values.
		{"ratio: depression share by region", "SELECT p.region, count(DISTINCT p.patient_id) FILTER (WHERE e.snomed_code = '" + Depression +
			"') / count(DISTINCT p.patient_id) AS share " + join + " GROUP BY p.region"},
		{"ratio: the target's rows per patient", "SELECT count(*) / count(DISTINCT p.patient_id) AS rows_per_patient " + join + " WHERE " + qi},
	}
}

// FullCorpus is Corpus and the engine's own hostile queries — every partial
// function used as an oracle on the target, self-join chains restricted to
// them, opt-out bypasses, groups that exist only for them — and the typical
// research queries (queries.TypicalQueries): what the sandbox's
// neighbouring test runs.
func FullCorpus(t Target) []Query {
	qi := t.QI("p")
	join := "FROM clinical_events e JOIN patients p ON p.patient_id = e.patient_id"
	has := qi + " AND e.snomed_code = '" + Depression + "'"
	when := func(cond, then, els string) string {
		return "CASE WHEN " + cond + " THEN " + then + " ELSE " + els + " END"
	}
	out := Corpus(t)
	for _, q := range []Query{
		{"oracle: sqrt(-1)", "SELECT count(*) AS n " + join + " WHERE sqrt(" + when(has, "-1", "1") + ") > 0"},
		{"oracle: log base 1", "SELECT count(*) AS n " + join + " WHERE log(" + when(has, "1", "2") + ", 5) > 0"},
		{"oracle: smallest integer // -1", "SELECT count(*) AS n " + join + " WHERE (" + when(has, "-2147483648", "1") + ") // -1 > 0"},
		{"oracle: % 0", "SELECT count(*) AS n " + join + " WHERE 7 % " + when(has, "0", "2") + " = 1"},
		{"oracle: 1 / 0", "SELECT count(*) AS n, avg(greatest(0, least(1, 1 / " + when(has, "0", "1") + "))) AS m " + join},
		{"oracle: exp overflow", "SELECT count(*) AS n " + join + " WHERE exp(" + when(has, "1000", "0") + ") > 0"},
		{"oracle: round to huge n", "SELECT count(*) AS n " + join + " WHERE round(e.numeric_value, " + when(has, "2147483647", "1") + ") > 0"},
		{"oracle: substr offset", "SELECT count(*) AS n " + join + " WHERE substr(e.snomed_code, " + when(has, "9223372036854775807", "1") + ") = 'x'"},
		{"oracle: left length", "SELECT count(*) AS n " + join + " WHERE left(e.snomed_code, " + when(has, "-9223372036854775807", "1") + ") = 'x'"},
		{"oracle: date + days", "SELECT count(*) AS n " + join + " WHERE e.date + " + when(has, "2000000000", "0") + " > DATE '2020-01-01'"},
		{"oracle: date + interval", "SELECT count(*) AS n " + join + " WHERE e.date + to_years(" + when(has, "100000000", "0") + ") > DATE '2020-01-01'"},
		{"oracle: cast to date", "SELECT count(*) AS n " + join + " WHERE CAST(" + when(has, "'garbage'", "'2020-01-01'") + " AS DATE) IS NOT NULL"},
		{"oracle: date out of range", "SELECT count(*) AS n " + join + " WHERE date_trunc('month', " + when(has, "CAST('5881580-07-10' AS DATE)", "e.date") + ") IS NOT NULL"},
		{"oracle: double to integer", "SELECT count(*) AS n " + join + " WHERE CAST(" + when(has, "1e300", "1") + " AS INTEGER) = 1"},
		{"oracle: text compared with a number", "SELECT count(*) AS n " + join + " WHERE e.snomed_code = 5"},
		{"oracle: NOT of text", "SELECT count(*) AS n " + join + " WHERE NOT e.snomed_code"},
		{"oracle: per-patient sum overflow and median", "WITH c AS (SELECT e.patient_id, sum(CASE WHEN e.snomed_code = '" + Depression +
			"' THEN 9223372036854775807 ELSE 1 END) AS s, median(e.numeric_value) AS md FROM clinical_events e GROUP BY e.patient_id) " +
			"SELECT count(*) AS n FROM c JOIN patients p ON p.patient_id = c.patient_id WHERE " + qi + " AND ln(c.s) > 0 AND c.md > 0"},
		{"groups: codes of the target", "SELECT e.snomed_code AS c, count(*) AS n " + join + " WHERE " + qi + " GROUP BY c"},
		{"work: self-join chain of the target", "SELECT count(*) AS n FROM clinical_events a JOIN clinical_events b ON a.patient_id = b.patient_id " +
			"JOIN clinical_events c ON c.patient_id = a.patient_id JOIN clinical_events d ON d.patient_id = a.patient_id JOIN patients p ON p.patient_id = a.patient_id WHERE " + qi},
		{"opt-out bypass: CTE grouped by a left-joined id", "WITH c AS (SELECT m.patient_id, count(*) AS k FROM patients p LEFT JOIN medications m ON m.patient_id = p.patient_id GROUP BY m.patient_id) SELECT count(*) AS n FROM c"},
		{"opt-out bypass: left-joined patients of the target", "SELECT count(DISTINCT m.patient_id) AS n FROM patients p LEFT JOIN medications m ON m.patient_id = p.patient_id WHERE " + qi},
		{"target: mean and sd", "SELECT p.sex, count(*) AS n, avg(e.numeric_value) AS m, stddev(e.numeric_value) AS sd " + join + " WHERE " + qi + " GROUP BY p.sex"},
		{"ratio: the target's readings over rows, by sex", "SELECT p.sex, sum(greatest(0, least(100, e.numeric_value))) / count(*) AS per_row, count(*) AS n " +
			join + " WHERE " + qi + " GROUP BY p.sex"},
		{"ratio: the target's depression share", "SELECT count(*) FILTER (WHERE e.snomed_code = '" + Depression + "') / count(*) AS share " + join + " WHERE " + qi},
		{"target: region", "SELECT p.region, count(DISTINCT p.patient_id) AS n FROM patients p WHERE " + qi + " GROUP BY p.region"},
		{"codelist: the target's codes by term", "SELECT cl.term, count(*) AS n " + join + " JOIN codelists cl ON cl.code = e.snomed_code AND cl.codelist = '" +
			CorpusCodelist.Name + "' WHERE " + qi + " GROUP BY cl.term"},
		{"codelist: depression by region", "SELECT p.region, count(DISTINCT p.patient_id) AS n " + join +
			" JOIN codelists cl ON cl.code = e.snomed_code WHERE cl.codelist IN ('" + CorpusCodelist.Name + "') GROUP BY p.region"},
		{"totals: ROLLUP of the target's sex and region", "SELECT p.sex, p.region, count(DISTINCT p.patient_id) AS n FROM patients p WHERE " + qi + " GROUP BY ROLLUP (p.sex, p.region)"},
		{"totals: CUBE of depression readings", "SELECT p.sex, p.imd_quintile, count(*) AS n, avg(greatest(0, least(50, e.numeric_value))) AS m " + join +
			" WHERE e.snomed_code = '" + Depression + "' GROUP BY CUBE (p.sex, p.imd_quintile)"},
		{"target: events per patient", "WITH c AS (SELECT p.patient_id, count(e.date) AS k FROM patients p LEFT JOIN clinical_events e ON e.patient_id = p.patient_id GROUP BY p.patient_id) " +
			"SELECT count(*) AS n, avg(least(c.k, 100)) AS mean_k FROM c JOIN patients p ON p.patient_id = c.patient_id WHERE " + qi},
		// Months and years: a federated query releases every one its WHERE
		// bounds allow (issue 21), the target's and the empty ones alike.
		{"months: the target's BMI readings by month", "SELECT date_trunc('month', e.date) AS month, count(*) AS n, avg(greatest(0, least(50, e.numeric_value))) AS m " +
			join + " WHERE " + qi + " AND e.snomed_code = '60621009' AND e.date >= DATE '2020-12-01' AND e.date < DATE '2021-07-01' GROUP BY month"},
		{"months: quarters of the target's readings after a day", "SELECT date_trunc('quarter', e.date) AS q, p.sex, count(DISTINCT p.patient_id) AS n " +
			join + " WHERE " + qi + " AND e.date > DATE '2020-12-31' AND e.date <= DATE '2021-12-31' GROUP BY q, p.sex"},
		{"months: years of the target's depression code", "SELECT year(e.date) AS y, count(DISTINCT p.patient_id) AS n " +
			join + " WHERE " + has + " AND e.date BETWEEN DATE '2019-01-01' AND DATE '2022-12-31' GROUP BY y"},
	} {
		out = append(out, q)
	}
	for _, tq := range queries.TypicalQueries {
		out = append(out, Query{"typical: " + tq.Name, tq.SQL})
	}
	return out
}

// corpusCodes are the codes of CorpusCodelist: depression, which only the
// changed neighbours give the target, and two common codes.
var corpusCodes = []job.CodelistCode{
	{Code: Depression, Term: "Depressive disorder"},
	{Code: "44054006", Term: "Diabetes mellitus type 2"},
	{Code: "60621009", Term: "Body mass index"},
}

// CorpusCodelist is the codelist the corpus's codelist queries join: a
// neighbouring test gives it to every job (the sandbox's) or uploads it to
// the broker first (end to end).
var CorpusCodelist = job.Codelist{Name: "tre-test/depression/1", Hash: job.CodelistHash(corpusCodes), Codes: corpusCodes}

// CSV is c in OpenCodelists' download format.
func CSV(c job.Codelist) string {
	var b strings.Builder
	b.WriteString("code,term\n")
	for _, code := range c.Codes {
		fmt.Fprintf(&b, "%s,%q\n", code.Code, code.Term)
	}
	return b.String()
}

// String names the target for test logs.
func (t Target) String() string {
	return strings.Join([]string{fmt.Sprint(t.PatientID), t.DateOfBirth, t.Sex, t.Ethnicity, t.Region, fmt.Sprint(t.IMDQuintile)}, " ")
}
