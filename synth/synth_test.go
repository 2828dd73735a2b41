package synth

import (
	"context"
	"database/sql"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/nhs-tre/tre/queries"
)

// MustGenerate writes a dataset of n patients into a temporary directory and
// returns its path.
func MustGenerate(tb testing.TB, n int, seed int64) string {
	tb.Helper()
	out := filepath.Join(tb.TempDir(), "gp.duckdb")
	if _, err := Generate(context.Background(), Options{Out: out, Patients: n, Seed: seed, MemoryLimit: "1GB"}); err != nil {
		tb.Fatalf("generate %d patients: %v", n, err)
	}
	return out
}

// MustOpen opens a generated dataset read-only.
func MustOpen(tb testing.TB, path string) *sql.DB {
	tb.Helper()
	db, err := sql.Open("duckdb", path+"?access_mode=read_only")
	if err != nil {
		tb.Fatalf("open %s: %v", path, err)
	}
	tb.Cleanup(func() { db.Close() })
	return db
}

// MustFloat runs a query returning one number.
func MustFloat(tb testing.TB, db *sql.DB, q string) float64 {
	tb.Helper()
	var v sql.NullFloat64
	if err := db.QueryRow(q).Scan(&v); err != nil {
		tb.Fatalf("%s: %v", q, err)
	}
	if !v.Valid {
		tb.Fatalf("%s: NULL", q)
	}
	return v.Float64
}

// TestDataset100k generates 100,000 patients once with a fixed seed and
// checks the shape and the distributions against England, each with a
// stated tolerance. Tolerances are about four standard errors of the
// sampling noise at this size plus the gap between the model and the
// published figure, so the test fails on a real change, not on chance.
func TestDataset100k(t *testing.T) {
	path := MustGenerate(t, 100_000, 20240601)
	db := MustOpen(t, path)

	t.Run("schema", func(t *testing.T) { testSchema(t, db) })
	t.Run("keys and dates", func(t *testing.T) { testKeysAndDates(t, db) })
	t.Run("shares", func(t *testing.T) { testShares(t, db) })
	t.Run("gradients", func(t *testing.T) { testGradients(t, db) })
	t.Run("measurements", func(t *testing.T) { testMeasurements(t, db) })
	t.Run("medications", func(t *testing.T) { testMedications(t, db) })
	t.Run("outliers and rare", func(t *testing.T) { testOutliers(t, db) })
	t.Run("catalog", func(t *testing.T) { testCatalogFile(t, path, db) })
}

func testSchema(t *testing.T, db *sql.DB) {
	want := map[string][]string{
		"patients": {"patient_id BIGINT", "date_of_birth DATE", "sex VARCHAR", "ethnicity VARCHAR", "region VARCHAR", "imd_quintile INTEGER",
			"practice_id VARCHAR", "registration_start DATE", "registration_end DATE", "date_of_death DATE"},
		"clinical_events":     {"patient_id BIGINT", "date DATE", "snomed_code VARCHAR", "numeric_value DOUBLE"},
		"medications":         {"patient_id BIGINT", "date DATE", "dmd_code VARCHAR"},
		"hospital_admissions": {"patient_id BIGINT", "admission_date DATE", "discharge_date DATE", "primary_diagnosis VARCHAR", "admission_method VARCHAR"},
		"vaccinations":        {"patient_id BIGINT", "date DATE", "vaccine VARCHAR"},
		"optouts":             {"patient_id BIGINT", "kind VARCHAR"},
		"snomed_codes":        {"snomed_code VARCHAR", "term VARCHAR", "condition VARCHAR"},
		"dmd_codes":           {"dmd_code VARCHAR", "name VARCHAR", "drug_class VARCHAR"},
	}
	rows, err := db.Query(`SELECT table_name, column_name || ' ' || data_type FROM information_schema.columns
		WHERE table_schema = 'main' ORDER BY table_name, ordinal_position`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	got := map[string][]string{}
	for rows.Next() {
		var tbl, col string
		if err := rows.Scan(&tbl, &col); err != nil {
			t.Fatal(err)
		}
		got[tbl] = append(got[tbl], col)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("schema (-want +got):\n%s", diff)
	}
}

func testKeysAndDates(t *testing.T, db *sql.DB) {
	// Each query counts violations; all must be zero.
	tests := []struct {
		name, query string
	}{
		{"duplicate patient ids", "SELECT count(*) - count(DISTINCT patient_id) FROM patients"},
		{"non-positive patient ids", "SELECT count(*) FROM patients WHERE patient_id <= 0"},
		{"birth not first of month", "SELECT count(*) FROM patients WHERE day(date_of_birth) <> 1"},
		{"bad vocabulary", `SELECT count(*) FROM patients WHERE sex NOT IN ('female','male','unknown')
			OR ethnicity NOT IN ('White','Mixed','Asian','Black','Other','Unknown')
			OR region NOT IN ('North East','North West','Yorkshire and The Humber','East Midlands','West Midlands','East of England','London','South East','South West')
			OR imd_quintile NOT BETWEEN 1 AND 5 OR practice_id IS NULL`},
		{"registration before birth", "SELECT count(*) FROM patients WHERE registration_start < date_of_birth"},
		{"registration ends before it starts", "SELECT count(*) FROM patients WHERE registration_end < registration_start OR registration_end > DATE '2024-12-31'"},
		{"death outside registration", "SELECT count(*) FROM patients WHERE date_of_death < registration_start OR date_of_death > DATE '2024-12-31' OR date_of_death <> registration_end"},
		{"birth after index date", "SELECT count(*) FROM patients WHERE date_of_birth > DATE '2024-12-31'"},
		{"orphan optouts", "SELECT count(*) FROM optouts WHERE patient_id NOT IN (SELECT patient_id FROM patients) OR kind NOT IN ('type1','ndop')"},
		{"duplicate optout rows", "SELECT count(*) - count(DISTINCT (patient_id, kind)) FROM optouts"},
		{"unknown snomed codes", "SELECT count(*) FROM clinical_events WHERE snomed_code NOT IN (SELECT snomed_code FROM snomed_codes)"},
		{"unknown dmd codes", "SELECT count(*) FROM medications WHERE dmd_code NOT IN (SELECT dmd_code FROM dmd_codes)"},
		{"measurement without value", `SELECT count(*) FROM clinical_events e JOIN snomed_codes s USING (snomed_code)
			WHERE (s.condition IN ('hba1c','bmi','systolic_blood_pressure','egfr')) <> (e.numeric_value IS NOT NULL)`},
		{"values outside catalog bounds", "SELECT count(*) FROM clinical_events WHERE numeric_value < 0 OR numeric_value > 200"},
		{"bad admissions", `SELECT count(*) FROM hospital_admissions WHERE discharge_date < admission_date
			OR admission_method NOT IN ('elective','emergency','maternity','transfer') OR primary_diagnosis IS NULL`},
		{"bad vaccines", "SELECT count(*) FROM vaccinations WHERE vaccine NOT IN ('influenza','covid19','pneumococcal','shingles','mmr')"},
	}
	for _, table := range []struct{ name, date string }{
		{"clinical_events", "date"}, {"medications", "date"}, {"hospital_admissions", "admission_date"},
		{"hospital_admissions", "discharge_date"}, {"vaccinations", "date"},
	} {
		tests = append(tests, struct{ name, query string }{
			table.name + "." + table.date + " outside the patient's record",
			fmt.Sprintf(`SELECT count(*) FROM %s e LEFT JOIN patients p USING (patient_id)
				WHERE p.patient_id IS NULL OR e.%[2]s IS NULL OR e.%[2]s < p.date_of_birth
				OR e.%[2]s < greatest(p.registration_start, DATE '2020-01-01')
				OR e.%[2]s > coalesce(p.date_of_death, p.registration_end, DATE '2024-12-31')
				OR e.%[2]s > DATE '2024-12-31'`, table.name, table.date),
		})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if n := MustFloat(t, db, tt.query); n != 0 {
				t.Errorf("%v violations", n)
			}
		})
	}
	if n := MustFloat(t, db, "SELECT count(*) FROM patients"); n != 100_000 {
		t.Errorf("patients = %v, want 100000", n)
	}
}

// within reports a failure when got is not within tol of want.
func within(t *testing.T, name string, got, want, tol float64) {
	t.Helper()
	if math.Abs(got-want) > tol {
		t.Errorf("%s = %.4f, want %.4f ± %.4f", name, got, want, tol)
	}
}

const ageAtIndex = "date_diff('year', date_of_birth, DATE '2024-12-31')" // birthdays are the 1st of a month, so all have passed by 31 December

// prevalenceSQL is the share of patients (optionally only adults) with a
// diagnosis code recorded.
func prevalenceSQL(code, where string) string {
	return fmt.Sprintf(`SELECT avg((patient_id IN (SELECT patient_id FROM clinical_events WHERE snomed_code = '%s'))::INTEGER)
		FROM (SELECT *, %s AS age FROM patients) WHERE %s`, code, ageAtIndex, where)
}

func testShares(t *testing.T, db *sql.DB) {
	tests := []struct {
		name           string
		query          string
		want, tolerate float64
	}{
		// Age structure (ONS mid-2022 England: 18.5% aged 65+, 20.9% under 18).
		{"aged 65+", "SELECT avg((" + ageAtIndex + " >= 65)::INTEGER) FROM patients", 0.185, 0.01},
		{"under 18", "SELECT avg((" + ageAtIndex + " < 18)::INTEGER) FROM patients", 0.209, 0.01},
		{"aged 85+", "SELECT avg((" + ageAtIndex + " >= 85)::INTEGER) FROM patients", 0.025, 0.005},
		{"female", "SELECT avg((sex = 'female')::INTEGER) FROM patients", 0.505, 0.01},
		{"sex unknown", "SELECT avg((sex = 'unknown')::INTEGER) FROM patients", 0.0005, 0.0005},
		// Regions (ONS mid-2022 shares), ±1 percentage point.
		{"London", "SELECT avg((region = 'London')::INTEGER) FROM patients", 0.157, 0.01},
		{"South East", "SELECT avg((region = 'South East')::INTEGER) FROM patients", 0.163, 0.01},
		{"North West", "SELECT avg((region = 'North West')::INTEGER) FROM patients", 0.13, 0.01},
		{"North East", "SELECT avg((region = 'North East')::INTEGER) FROM patients", 0.047, 0.005},
		{"East of England", "SELECT avg((region = 'East of England')::INTEGER) FROM patients", 0.112, 0.01},
		// Ethnicity among recorded (Census 2021), ±1 point; 4% unknown.
		{"White", "SELECT avg((ethnicity = 'White')::INTEGER) FROM patients WHERE ethnicity <> 'Unknown'", 0.81, 0.01},
		{"Asian", "SELECT avg((ethnicity = 'Asian')::INTEGER) FROM patients WHERE ethnicity <> 'Unknown'", 0.096, 0.01},
		{"Black", "SELECT avg((ethnicity = 'Black')::INTEGER) FROM patients WHERE ethnicity <> 'Unknown'", 0.042, 0.005},
		{"ethnicity unknown", "SELECT avg((ethnicity = 'Unknown')::INTEGER) FROM patients", 0.04, 0.005},
		{"Black in London", "SELECT avg((ethnicity = 'Black')::INTEGER) FROM patients WHERE region = 'London' AND ethnicity <> 'Unknown'", 0.135, 0.015},
		{"IMD quintile 1", "SELECT avg((imd_quintile = 1)::INTEGER) FROM patients", 0.2, 0.02},
		{"IMD quintile 5", "SELECT avg((imd_quintile = 5)::INTEGER) FROM patients", 0.2, 0.02},
		// Recorded prevalence (QOF 2022–23): ±1 point for the common,
		// ±0.5 for the less common.
		{"hypertension", prevalenceSQL("38341003", "true"), 0.14, 0.01},
		{"type 2 diabetes (adults)", prevalenceSQL("44054006", "age >= 18"), 0.07, 0.01},
		{"asthma", prevalenceSQL("195967001", "true"), 0.065, 0.01},
		{"COPD", prevalenceSQL("13645005", "true"), 0.02, 0.005},
		{"coronary heart disease", prevalenceSQL("53741008", "true"), 0.03, 0.005},
		{"atrial fibrillation", prevalenceSQL("49436004", "true"), 0.02, 0.005},
		{"depression (adults)", prevalenceSQL("35489007", "age >= 18"), 0.13, 0.01},
		{"heart failure", prevalenceSQL("84114007", "true"), 0.011, 0.004},
		// Opt-outs: about 5% of patients, ±0.5 point.
		{"opted out", "SELECT count(DISTINCT patient_id) / (SELECT count(*) FROM patients) FROM optouts", 0.05, 0.005},
		{"type 1 among opted out", "SELECT count(*) FILTER (kind = 'type1') / count(DISTINCT patient_id) FROM optouts", 0.55, 0.05},
		// Deaths over five years (~0.9% a year) and leavers.
		{"died in window", "SELECT avg((date_of_death IS NOT NULL)::INTEGER) FROM patients", 0.045, 0.015},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			within(t, tt.name, MustFloat(t, db, tt.query), tt.want, tt.tolerate)
		})
	}
}

func testGradients(t *testing.T, db *sql.DB) {
	tests := []struct {
		name          string
		higher, lower string
		minRatio      float64
	}{
		{"T2D most vs least deprived", prevalenceSQL("44054006", "age >= 18 AND imd_quintile = 1"), prevalenceSQL("44054006", "age >= 18 AND imd_quintile = 5"), 1.4},
		{"COPD most vs least deprived", prevalenceSQL("13645005", "imd_quintile = 1"), prevalenceSQL("13645005", "imd_quintile = 5"), 2},
		{"CHD most vs least deprived", prevalenceSQL("53741008", "imd_quintile = 1"), prevalenceSQL("53741008", "imd_quintile = 5"), 1.3},
		{"T2D 65+ vs 18-64", prevalenceSQL("44054006", "age >= 65"), prevalenceSQL("44054006", "age BETWEEN 18 AND 64"), 2},
		{"hypertension 65+ vs 18-64", prevalenceSQL("38341003", "age >= 65"), prevalenceSQL("38341003", "age BETWEEN 18 AND 64"), 3},
		{"AF 75+ vs 18-64", prevalenceSQL("49436004", "age >= 75"), prevalenceSQL("49436004", "age BETWEEN 18 AND 64"), 10},
		{"T2D Asian vs White", prevalenceSQL("44054006", "age >= 18 AND ethnicity = 'Asian'"), prevalenceSQL("44054006", "age >= 18 AND ethnicity = 'White'"), 1.5},
		{"CHD men vs women", prevalenceSQL("53741008", "sex = 'male'"), prevalenceSQL("53741008", "sex = 'female'"), 1.8},
		{"Q1 share North East vs South East", "SELECT avg((imd_quintile = 1)::INTEGER) FROM patients WHERE region = 'North East'",
			"SELECT avg((imd_quintile = 1)::INTEGER) FROM patients WHERE region = 'South East'", 3},
		{"flu uptake 65+ vs 18-64", `SELECT avg((patient_id IN (SELECT patient_id FROM vaccinations WHERE vaccine = 'influenza'))::INTEGER) FROM (SELECT *, ` + ageAtIndex + ` AS age FROM patients) WHERE age >= 70`,
			`SELECT avg((patient_id IN (SELECT patient_id FROM vaccinations WHERE vaccine = 'influenza'))::INTEGER) FROM (SELECT *, ` + ageAtIndex + ` AS age FROM patients) WHERE age BETWEEN 25 AND 60`, 2},
		{"HF admissions 75+ vs under 75", `SELECT count(*) / (SELECT count(*) FROM patients WHERE ` + ageAtIndex + ` >= 75) FROM hospital_admissions JOIN patients USING (patient_id) WHERE primary_diagnosis LIKE 'I50%' AND ` + ageAtIndex + ` >= 75`,
			`SELECT count(*) / (SELECT count(*) FROM patients WHERE ` + ageAtIndex + ` < 75) FROM hospital_admissions JOIN patients USING (patient_id) WHERE primary_diagnosis LIKE 'I50%' AND ` + ageAtIndex + ` < 75`, 10},
		{"antibiotics January vs July", "SELECT count(*) FROM medications JOIN dmd_codes USING (dmd_code) WHERE drug_class = 'antibiotic' AND month(date) = 1",
			"SELECT count(*) FROM medications JOIN dmd_codes USING (dmd_code) WHERE drug_class = 'antibiotic' AND month(date) = 7", 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hi, lo := MustFloat(t, db, tt.higher), MustFloat(t, db, tt.lower)
			if lo <= 0 || hi/lo < tt.minRatio {
				t.Errorf("ratio %.3f / %.3f = %.2f, want at least %.2f", hi, lo, hi/lo, tt.minRatio)
			}
		})
	}
}

func testMeasurements(t *testing.T, db *sql.DB) {
	t2d := "patient_id IN (SELECT patient_id FROM clinical_events WHERE snomed_code = '44054006')"
	ht := "patient_id IN (SELECT patient_id FROM clinical_events WHERE snomed_code = '38341003')"
	value := func(agg, code, where string) string {
		return fmt.Sprintf("SELECT %s FROM clinical_events WHERE snomed_code = '%s' AND %s", agg, code, where)
	}
	tests := []struct {
		name           string
		query          string
		want, tolerate float64
	}{
		{"HbA1c mean, diabetes", value("avg(numeric_value)", codeHbA1c, t2d), 58, 3},
		{"HbA1c sd, diabetes", value("stddev(numeric_value)", codeHbA1c, t2d), 15, 3},
		{"HbA1c mean, others", value("avg(numeric_value)", codeHbA1c, "NOT "+t2d), 36, 2},
		{"BMI mean", value("avg(numeric_value)", codeBMI, "true"), 27.5, 1},
		{"BMI sd", value("stddev(numeric_value)", codeBMI, "true"), 5.5, 1},
		{"BMI right skew (mean - median)", value("avg(numeric_value) - median(numeric_value)", codeBMI, "true"), 0.6, 0.5},
		{"systolic BP mean", value("avg(numeric_value)", codeSBP, "patient_id NOT IN (SELECT patient_id FROM clinical_events GROUP BY 1 HAVING count(*) > 300)"), 130, 4},
		{"systolic BP sd", value("stddev(numeric_value)", codeSBP, "true"), 17, 3},
		{"systolic BP, hypertension minus others", value("avg(numeric_value) FILTER ("+ht+") - avg(numeric_value) FILTER (NOT "+ht+")", codeSBP, "true"), 15, 6},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			within(t, tt.name, MustFloat(t, db, tt.query), tt.want, tt.tolerate)
		})
	}
	young := MustFloat(t, db, `SELECT avg(numeric_value) FROM clinical_events JOIN patients USING (patient_id) WHERE snomed_code = '`+codeEGFR+`' AND `+ageAtIndex+` BETWEEN 18 AND 39`)
	old := MustFloat(t, db, `SELECT avg(numeric_value) FROM clinical_events JOIN patients USING (patient_id) WHERE snomed_code = '`+codeEGFR+`' AND `+ageAtIndex+` >= 75`)
	if old >= young-20 {
		t.Errorf("eGFR mean 75+ = %.1f, 18-39 = %.1f: want a fall of at least 20 with age", old, young)
	}
}

func testMedications(t *testing.T, db *sql.DB) {
	// Share of patients with a condition who were ever issued a class.
	share := func(cond, class string) string {
		return fmt.Sprintf(`SELECT avg((patient_id IN (SELECT patient_id FROM medications JOIN dmd_codes USING (dmd_code) WHERE drug_class = '%s'))::INTEGER)
			FROM (SELECT DISTINCT patient_id FROM clinical_events WHERE snomed_code = '%s')`, class, cond)
	}
	tests := []struct {
		name     string
		query    string
		min, max float64
	}{
		{"metformin in T2D", share("44054006", "metformin"), 0.7, 0.9},
		{"statin in CHD", share("53741008", "statin"), 0.7, 0.95},
		{"anticoagulant in AF", share("49436004", "anticoagulant"), 0.7, 0.9},
		{"antihypertensive in hypertension", share("38341003", "antihypertensive"), 0.7, 0.9},
		{"ICS in asthma", share("195967001", "inhaled_corticosteroid"), 0.45, 0.65},
		{"antidepressant in depression", share("35489007", "antidepressant"), 0.45, 0.65},
		{"metformin outside T2D", `SELECT count(*) FROM medications JOIN dmd_codes USING (dmd_code) WHERE drug_class = 'metformin'
			AND patient_id NOT IN (SELECT patient_id FROM clinical_events WHERE snomed_code = '44054006')`, 0, 0},
		{"monthly repeats: median issues per metformin patient", `SELECT median(n) FROM (SELECT patient_id, count(*) n FROM medications
			JOIN dmd_codes USING (dmd_code) WHERE drug_class = 'metformin' GROUP BY 1)`, 12, 66},
		{"antibiotic courses per patient-year", `SELECT count(*) / (SELECT sum(coalesce(registration_end, DATE '2024-12-31') - greatest(registration_start, DATE '2020-01-01') + 1) / 365.25 FROM patients)
			FROM medications JOIN dmd_codes USING (dmd_code) WHERE drug_class = 'antibiotic'`, 0.4, 0.8},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := MustFloat(t, db, tt.query)
			if got < tt.min || got > tt.max {
				t.Errorf("%s = %.3f, want within [%.3f, %.3f]", tt.name, got, tt.min, tt.max)
			}
		})
	}
}

func testOutliers(t *testing.T, db *sql.DB) {
	if n := MustFloat(t, db, "SELECT max(n) FROM (SELECT count(*) n FROM medications GROUP BY patient_id)"); n < 1000 {
		t.Errorf("most prescriptions for one patient = %v, want at least 1000", n)
	}
	if n := MustFloat(t, db, "SELECT max(n) FROM (SELECT count(*) n FROM clinical_events GROUP BY patient_id)"); n < 200 {
		t.Errorf("most clinical events for one patient = %v, want at least 200", n)
	}
	// A handful, not many: the outliers must stay outliers.
	if n := MustFloat(t, db, "SELECT count(*) FROM (SELECT patient_id FROM medications GROUP BY 1 HAVING count(*) >= 1000)"); n > 5 {
		t.Errorf("%v patients with 1000+ prescriptions, want a handful (≤ 5)", n)
	}
	// Fabry disease: ~1 in 50,000 → 2 of 100,000.
	if n := MustFloat(t, db, "SELECT count(DISTINCT patient_id) FROM clinical_events WHERE snomed_code = '16652001'"); n < 1 || n > 4 {
		t.Errorf("%v patients with Fabry disease, want 1..4", n)
	}
}

func testCatalogFile(t *testing.T, path string, db *sql.DB) {
	data, err := os.ReadFile(CatalogPath(path))
	if err != nil {
		t.Fatal(err)
	}
	cat, err := queries.ParseCatalog(CatalogPath(path), data)
	if err != nil {
		t.Fatalf("written catalog does not load: %v", err)
	}
	// patients' primary key is what lets queries over it skip bounding.
	cols, err := queries.ReadUniqueColumns(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"patients"}, queries.UniqueTablesFrom(cols, cat)); diff != "" {
		t.Errorf("tables unique per patient (-want +got):\n%s", diff)
	}
	if cat.Dataset != DatasetName || cat.PrivacyUnit != "patient_id" || cat.Policy.OptOutTable != "optouts" {
		t.Errorf("catalog header = %q %q %q", cat.Dataset, cat.PrivacyUnit, cat.Policy.OptOutTable)
	}
	// Every table and column of the data is in the catalog with its type,
	// and every categorical domain covers the values present.
	for _, tbl := range cat.Tables {
		for _, col := range tbl.Columns {
			var typ string
			err := db.QueryRow("SELECT data_type FROM information_schema.columns WHERE table_name = ? AND column_name = ?", tbl.Name, col.Name).Scan(&typ)
			if err != nil {
				t.Errorf("catalog column %s.%s not in the data: %v", tbl.Name, col.Name, err)
				continue
			}
			if typ != col.Type {
				t.Errorf("%s.%s: catalog type %s, data type %s", tbl.Name, col.Name, col.Type, typ)
			}
			// The synthetic data's code columns list their whole
			// vocabulary as examples: every code present is one.
			allowed, what := col.Domain, "its domain"
			if len(col.Examples) > 0 {
				allowed, what = nil, "its example codes"
				for _, e := range col.Examples {
					allowed = append(allowed, e.Code)
				}
			}
			if len(allowed) == 0 {
				continue
			}
			rows, err := db.Query(fmt.Sprintf("SELECT DISTINCT %s::VARCHAR FROM %s WHERE %s IS NOT NULL", col.Name, tbl.Name, col.Name))
			if err != nil {
				t.Fatal(err)
			}
			var values []string
			for rows.Next() {
				var v string
				if err := rows.Scan(&v); err != nil {
					t.Fatal(err)
				}
				values = append(values, v)
			}
			rows.Close()
			sort.Strings(values)
			allowed = append([]string(nil), allowed...)
			sort.Strings(allowed)
			for _, v := range values {
				if i := sort.SearchStrings(allowed, v); i == len(allowed) || allowed[i] != v {
					t.Errorf("%s.%s has value %q outside %s", tbl.Name, col.Name, v, what)
				}
			}
		}
	}
	var nTables int
	if err := db.QueryRow("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'main'").Scan(&nTables); err != nil {
		t.Fatal(err)
	}
	if nTables != len(cat.Tables) {
		t.Errorf("data has %d tables, catalog %d", nTables, len(cat.Tables))
	}
}

// contentHash is a hash over every table's rows in a fixed order.
func contentHash(tb testing.TB, path string) string {
	tb.Helper()
	db := MustOpen(tb, path)
	var all string
	for _, tbl := range Catalog().Tables {
		table := tbl.Name
		var h string
		q := fmt.Sprintf("SELECT coalesce(md5(string_agg(CAST(t AS VARCHAR), chr(10) ORDER BY CAST(t AS VARCHAR))), '') FROM %s t", table)
		if err := db.QueryRow(q).Scan(&h); err != nil {
			tb.Fatalf("%s: %v", q, err)
		}
		all += table + ":" + h + "\n"
	}
	return all
}

func TestDeterministic(t *testing.T) {
	a := MustGenerate(t, 3000, 42)
	b := MustGenerate(t, 3000, 42)
	c := MustGenerate(t, 3000, 43)
	ha, hb, hc := contentHash(t, a), contentHash(t, b), contentHash(t, c)
	if diff := cmp.Diff(ha, hb); diff != "" {
		t.Errorf("same seed, different content (-first +second):\n%s", diff)
	}
	if ha == hc {
		t.Error("different seeds gave identical content")
	}
	ca, err := os.ReadFile(CatalogPath(a))
	if err != nil {
		t.Fatal(err)
	}
	cb, err := os.ReadFile(CatalogPath(b))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(string(ca), string(cb)); diff != "" {
		t.Errorf("catalogs differ:\n%s", diff)
	}
}

func TestGenerateFiles(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	out := filepath.Join(dir, "x.duckdb")
	var stages []string
	st, err := Generate(ctx, Options{Out: out, Patients: 500, Seed: 1, Progress: func(stage string, done, total int) {
		stages = append(stages, fmt.Sprintf("%s %d/%d", stage, done, total))
	}})
	if err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if diff := cmp.Diff([]string{"x.catalog.yaml", "x.duckdb"}, names); diff != "" {
		t.Errorf("files left in the output directory (-want +got):\n%s", diff)
	}
	wantStages := []string{"prepare 0/9", "patients 1/9", "clinical_events 2/9", "medications 3/9", "hospital_admissions 4/9",
		"vaccinations 5/9", "optouts 6/9", "lookups 7/9", "finish 8/9", "done 9/9"}
	if diff := cmp.Diff(wantStages, stages); diff != "" {
		t.Errorf("progress (-want +got):\n%s", diff)
	}
	rows := map[string]int64{}
	for _, s := range st.Stages {
		rows[s.Name] = s.Rows
	}
	if rows["patients"] != 500 || rows["medications"] == 0 || st.CatalogPath != filepath.Join(dir, "x.catalog.yaml") {
		t.Errorf("stats = %+v", st)
	}

	tests := []struct {
		name    string
		opts    Options
		wantErr bool
	}{
		{"existing file refused", Options{Out: out, Patients: 10}, true},
		{"existing file replaced with force", Options{Out: out, Patients: 10, Force: true}, false},
		{"no output", Options{Patients: 10}, true},
		{"zero patients", Options{Out: filepath.Join(dir, "y.duckdb")}, true},
		{"too many patients", Options{Out: filepath.Join(dir, "y.duckdb"), Patients: MaxPatients + 1}, true},
		{"bad memory limit", Options{Out: filepath.Join(dir, "y.duckdb"), Patients: 10, MemoryLimit: "1GB'; DROP"}, true},
		{"missing directory", Options{Out: filepath.Join(dir, "nope", "y.duckdb"), Patients: 10}, true},
		{"bad dataset name", Options{Out: filepath.Join(dir, "y.duckdb"), Patients: 10, Dataset: "gp site"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Generate(ctx, tt.opts)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, want error %v", err, tt.wantErr)
			}
		})
	}
	if n := MustFloat(t, MustOpen(t, out), "SELECT count(*) FROM patients"); n != 10 {
		t.Errorf("after forced replace: %v patients, want 10", n)
	}
	if _, err := os.Stat(filepath.Join(dir, "y.duckdb")); err == nil {
		t.Error("a refused run left y.duckdb behind")
	}

	// Sites publishing to one broker name their datasets apart.
	named := filepath.Join(dir, "z.duckdb")
	if _, err := Generate(ctx, Options{Out: named, Patients: 10, Dataset: "gp_site_b"}); err != nil {
		t.Fatal(err)
	}
	cat, err := queries.LoadCatalog(CatalogPath(named))
	if err != nil {
		t.Fatal(err)
	}
	if cat.Dataset != "gp_site_b" {
		t.Errorf("catalog dataset = %q, want gp_site_b", cat.Dataset)
	}
	if def, err := queries.LoadCatalog(CatalogPath(out)); err != nil {
		t.Error(err)
	} else if def.Dataset != DatasetName {
		t.Errorf("default catalog dataset = %q, want %s", def.Dataset, DatasetName)
	}
}

func TestGenerateCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	dir := t.TempDir()
	_, err := Generate(ctx, Options{Out: filepath.Join(dir, "x.duckdb"), Patients: 1000})
	if err == nil {
		t.Fatal("cancelled run succeeded")
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 0 {
		t.Errorf("cancelled run left %d entries behind", len(entries))
	}
}

func TestRiskTableHitsTargets(t *testing.T) {
	cells, err := riskTable()
	if err != nil {
		t.Fatal(err)
	}
	if len(cells) != maxAge*3*5*6 {
		t.Fatalf("%d cells", len(cells))
	}
	for _, c := range cells {
		for i, p := range c.p {
			if p < 0 || p > maxRisk || (conditions[i].adultsOnly && c.age < adultAge && p != 0) {
				t.Fatalf("cell %+v: condition %s probability %v", c, conditions[i].name, p)
			}
		}
	}
}
