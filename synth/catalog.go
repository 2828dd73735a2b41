package synth

import (
	"fmt"
	"os"
	"sort"

	"gopkg.in/yaml.v3"

	"github.com/nhs-tre/tre/queries"
)

// DatasetName is the catalog name of the synthetic dataset.
const DatasetName = "nhs_gp_synthetic"

// Policy is the disclosure-control policy written into the synthetic
// dataset's catalog.
//
// k = 12 groups per patient covers the typical questions without clipping
// honest ones: a breakdown by region (9), by IMD quintile (5), by sex × age
// band, or by year × month of a one-year window; a patient contributes to
// one group of a demographic breakdown, and to at most 12 of a monthly
// series. C = 5 rows per patient per group: most per-patient questions count
// patients or average one reading; 5 keeps a year of quarterly HbA1c or BP
// readings intact while the outliers (thousands of prescriptions) are cut
// to 5, so no one patient moves a cell. The small-cell threshold of 10 and
// rounding to 5 follow NHS England's and OpenSAFELY's output rules. ε 1.0
// per query by default, at most 2.0; δ 1e-6 for partition selection, well
// below 1/N for any realistic extract.
var Policy = queries.Policy{
	MaxGroupsPerPatient: 12,
	MaxRowsPerGroup:     5,
	SmallCellThreshold:  10,
	RoundingBase:        5,
	Rounding:            "nearest",
	OptOutTable:         "optouts",
	DefaultEpsilon:      1.0,
	MaxEpsilon:          2.0,
	Delta:               1e-6,
}

// numericBounds are the clamping bounds of numeric_value: they cover every
// plausible HbA1c (mmol/mol), BMI (kg/m²), systolic BP (mmHg) and eGFR
// (mL/min/1.73m²) reading.
var numericBounds = [2]float64{0, 200}

// Catalog returns the catalog describing the synthetic dataset.
func Catalog() *queries.Catalog {
	pu := func(desc string) queries.Column {
		return queries.Column{Name: "patient_id", Type: "BIGINT", Role: queries.RolePrivacyUnit, Description: desc}
	}
	date := func(name, desc string) queries.Column {
		return queries.Column{Name: name, Type: "DATE", Role: queries.RoleDate, Description: desc}
	}
	cat := func(name, desc string, domain []string) queries.Column {
		return queries.Column{Name: name, Type: "VARCHAR", Role: queries.RoleCategorical, Description: desc, Domain: domain}
	}
	code := func(name, desc, system string, examples []queries.CodeExample) queries.Column {
		return queries.Column{Name: name, Type: "VARCHAR", Role: queries.RoleCode, Description: desc, CodeSystem: system, Examples: examples}
	}
	imd := make([]string, 5)
	for i := range imd {
		imd[i] = fmt.Sprint(i + 1)
	}
	bounds := numericBounds
	c := &queries.Catalog{
		Dataset:     DatasetName,
		Description: "Synthetic primary-care records shaped like an NHS GP extract (tre synth). Entirely synthetic: no real patient data.",
		PrivacyUnit: "patient_id",
		Policy:      Policy,
		Tables: []queries.Table{
			{Name: "patients", Description: "One row per registered patient.", OnePerPatient: true, Columns: []queries.Column{
				pu("Pseudonymous patient identifier."),
				date("date_of_birth", "Month of birth (first of the month)."),
				cat("sex", "Recorded sex.", sexes[:]),
				cat("ethnicity", "Ethnic group (ONS 5 groups, or Unknown).", ethnicities[:]),
				cat("region", "English region of the practice.", regions[:]),
				{Name: "imd_quintile", Type: "INTEGER", Role: queries.RoleCategorical, Description: "Index of Multiple Deprivation quintile, 1 = most deprived.", Domain: imd},
				{Name: "practice_id", Type: "VARCHAR", Role: queries.RoleForbidden, Description: "Practice code: too identifying with small practices."},
				date("registration_start", "Start of the current registration."),
				date("registration_end", "End of registration (left the practice or died); NULL if still registered."),
				date("date_of_death", "Date of death; NULL if alive at the end of the extract."),
			}},
			{Name: "clinical_events", Description: "Coded primary-care events: diagnoses and measurements.", Columns: []queries.Column{
				pu("Pseudonymous patient identifier."),
				date("date", "Date the event was recorded."),
				code("snomed_code", "SNOMED CT concept (see snomed_codes).", "snomed", snomedExamples()),
				{Name: "numeric_value", Type: "DOUBLE", Role: queries.RoleNumeric, Description: "Value of a measurement (HbA1c mmol/mol, BMI kg/m2, systolic BP mmHg, eGFR mL/min/1.73m2); NULL for diagnoses.", Bounds: &bounds},
			}},
			{Name: "medications", Description: "Prescriptions issued in primary care.", Columns: []queries.Column{
				pu("Pseudonymous patient identifier."),
				date("date", "Date of issue."),
				code("dmd_code", "dm+d-shaped product code (see dmd_codes).", "dmd", dmdExamples()),
			}},
			{Name: "hospital_admissions", Description: "Hospital spells (HES-like).", Columns: []queries.Column{
				pu("Pseudonymous patient identifier."),
				date("admission_date", "Date of admission."),
				date("discharge_date", "Date of discharge."),
				code("primary_diagnosis", "Primary diagnosis, ICD-10.", "icd10", icd10Examples()),
				cat("admission_method", "How the patient was admitted.", admissionMethods),
			}},
			{Name: "vaccinations", Description: "Vaccinations given.", Columns: []queries.Column{
				pu("Pseudonymous patient identifier."),
				date("date", "Date given."),
				cat("vaccine", "Vaccine.", vaccines),
			}},
			{Name: "optouts", Description: "Patients who opted out of secondary use (type 1 or national data opt-out); removed from every query.", Columns: []queries.Column{
				// The validator needs the privacy unit here; the query compiler
				// refuses the opt-out table itself, so nothing in it is readable.
				pu("Pseudonymous patient identifier of a patient who opted out."),
				{Name: "kind", Type: "VARCHAR", Role: queries.RoleForbidden, Description: "type1 or ndop."},
			}},
			{Name: "snomed_codes", Public: true, Description: "SNOMED CT concepts used in clinical_events (public lookup).", Columns: []queries.Column{
				code("snomed_code", "SNOMED CT concept id.", "snomed", nil),
				{Name: "term", Type: "VARCHAR", Role: queries.RoleCategorical, Description: "Preferred term."},
				{Name: "condition", Type: "VARCHAR", Role: queries.RoleCategorical, Description: "Condition or measurement the code records.", Domain: snomedConditions()},
			}},
			{Name: "dmd_codes", Public: true, Description: "Products used in medications (public lookup).", Columns: []queries.Column{
				code("dmd_code", "Product code.", "dmd", nil),
				{Name: "name", Type: "VARCHAR", Role: queries.RoleCategorical, Description: "Product name."},
				cat("drug_class", "Drug class.", drugClassNames[:]),
			}},
		},
	}
	return c
}

// snomedExamples lists every SNOMED CT code the generator records, with its
// term: the catalog's examples of clinical_events.snomed_code.
func snomedExamples() []queries.CodeExample {
	var out []queries.CodeExample
	for _, r := range snomedRows() {
		out = append(out, queries.CodeExample{Code: r.code, Term: r.term})
	}
	return out
}

// dmdExamples lists every product code the generator prescribes.
func dmdExamples() []queries.CodeExample {
	var out []queries.CodeExample
	for c, names := range drugs {
		for i, name := range names {
			out = append(out, queries.CodeExample{Code: dmdCode(c, i), Term: name})
		}
	}
	return out
}

// icd10Examples lists the ICD-10 codes the generator admits patients with,
// in code order.
func icd10Examples() []queries.CodeExample {
	codes := make([]string, 0, len(icd10Terms))
	for c := range icd10Terms {
		codes = append(codes, c)
	}
	sort.Strings(codes)
	out := make([]queries.CodeExample, len(codes))
	for i, c := range codes {
		out[i] = queries.CodeExample{Code: c, Term: icd10Terms[c]}
	}
	return out
}

func snomedConditions() []string {
	rows := snomedRows()
	out := make([]string, len(rows))
	for i, r := range rows {
		out[i] = r.condition
	}
	return out
}

// writeCatalog writes cat as YAML to path.
func writeCatalog(path string, cat *queries.Catalog) error {
	data, err := yaml.Marshal(cat)
	if err != nil {
		return fmt.Errorf("encode catalog: %w", err)
	}
	header := "# Catalog of the synthetic dataset written by `tre synth`. Entirely synthetic data.\n"
	if err := os.WriteFile(path, append([]byte(header), data...), 0o644); err != nil {
		return fmt.Errorf("write catalog: %w", err)
	}
	return nil
}
