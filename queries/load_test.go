package queries

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// MustLoadTestCatalog loads queries/testdata/catalog.yaml.
func MustLoadTestCatalog(tb testing.TB) *Catalog {
	tb.Helper()
	c, err := LoadCatalog(filepath.Join("testdata", "catalog.yaml"))
	if err != nil {
		tb.Fatalf("load test catalog: %v", err)
	}
	return c
}

const minimalCatalog = `dataset: site_a
privacy_unit: nhs_pseudo_id
policy:
  max_groups_per_patient: 2
  max_rows_per_group: 5
  optout_table: opted_out
  default_epsilon: 0.5
  max_epsilon: 1
tables:
  - name: people
    columns:
      - name: nhs_pseudo_id
        type: BIGINT
        role: privacy_unit
      - name: weight
        type: DOUBLE
        role: numeric
        bounds: [0, 300]
  - name: opted_out
    columns:
      - name: nhs_pseudo_id
        type: BIGINT
        role: privacy_unit
`

func TestLoadCatalog(t *testing.T) {
	c := MustLoadTestCatalog(t)
	if c.Dataset != "nhs_gp_synthetic" || c.Table("Patients") == nil || c.Table("patients").Column("SEX") == nil {
		t.Fatalf("unexpected catalog: %+v", c)
	}
	if _, err := LoadCatalog(filepath.Join(t.TempDir(), "missing.yaml")); err == nil {
		t.Fatal("missing file: want error")
	}
}

func TestParseCatalogDefaults(t *testing.T) {
	c, err := ParseCatalog("site.yaml", []byte(minimalCatalog))
	if err != nil {
		t.Fatal(err)
	}
	want := Policy{MaxGroupsPerPatient: 2, MaxRowsPerGroup: 5, SmallCellThreshold: 10, RoundingBase: 5, Rounding: "nearest", OptOutTable: "opted_out", DefaultEpsilon: 0.5, MaxEpsilon: 1, MinEpsilon: 0.01, Delta: 1e-6, MaxJoinRowsPerPatient: 1_000_000}
	if diff := cmp.Diff(want, c.Policy); diff != "" {
		t.Errorf("policy (-want +got):\n%s", diff)
	}
}

func TestParseCatalogErrors(t *testing.T) {
	tests := []struct {
		name string
		old  string // replaced in minimalCatalog
		new  string
		want string // substring of the error
		line int
	}{
		{name: "invalid yaml", old: "dataset: site_a", new: "dataset: [site_a", want: "invalid YAML"},
		{name: "unknown top key", old: "dataset: site_a", new: "dataset: site_a\ncolour: blue", want: `site.yaml:2: colour: unknown key "colour"`},
		{name: "unknown policy key", old: "  max_epsilon: 1", new: "  max_epsilon: 1\n  epsilon_max: 3", want: `site.yaml:9: policy.epsilon_max: unknown key`},
		{name: "unknown table key", old: "  - name: people\n", new: "  - name: people\n    rows: 3\n", want: `tables[0].rows: unknown key`, line: 11},
		{name: "unknown column key", old: "        type: DOUBLE", new: "        type: DOUBLE\n        unit: kg", want: `tables[0].columns[1].unit: unknown key`, line: 17},
		{name: "wrong type", old: "max_rows_per_group: 5", new: "max_rows_per_group: five", want: "site.yaml:5: cannot unmarshal"},
		{name: "tables not list", old: "tables:\n", new: "tables: 3\nx:\n", want: "tables: must be a list"},
		{name: "two documents", old: "dataset: site_a", new: "dataset: site_a\n---\ndataset: b", want: "more than one YAML document"},
		{name: "not mapping", old: minimalCatalog, new: "- a\n- b\n", want: "catalog must be a YAML mapping"},
		{name: "no dataset", old: "dataset: site_a", new: "description: x", want: "dataset: missing dataset name"},
		{name: "no privacy unit", old: "privacy_unit: nhs_pseudo_id", new: "privacy_unit: ''", want: "privacy_unit: missing or invalid"},
		{name: "missing bounds", old: "        bounds: [0, 300]\n", new: "", want: "tables[0].columns[1].bounds: numeric column people.weight needs bounds", line: 15},
		{name: "inverted bounds", old: "[0, 300]", new: "[300, 0]", want: "lower < upper", line: 18},
		{name: "bounds on non-numeric", old: "        type: BIGINT\n        role: privacy_unit\n      - name: weight", new: "        type: BIGINT\n        role: privacy_unit\n        bounds: [0, 1]\n      - name: weight", want: "only numeric columns have bounds"},
		{name: "no role", old: "        type: DOUBLE\n        role: numeric\n", new: "        type: DOUBLE\n", want: "tables[0].columns[1].role: column people.weight has no role", line: 15},
		{name: "unknown role", old: "role: numeric", new: "role: measurement", want: `unknown role "measurement"`, line: 17},
		{name: "no type", old: "        type: DOUBLE\n", new: "", want: "column people.weight has no type"},
		{name: "duplicate table", old: "  - name: opted_out", new: "  - name: People", want: `tables[1].name: duplicate table "People"`, line: 19},
		{name: "duplicate column", old: "      - name: weight", new: "      - name: NHS_pseudo_id", want: `duplicate column "NHS_pseudo_id"`},
		{name: "bad table name", old: "  - name: people", new: "  - name: \"people; drop\"", want: "invalid table name"},
		{name: "no privacy unit column", old: "      - name: nhs_pseudo_id\n        type: BIGINT\n        role: privacy_unit\n      - name: weight", new: "      - name: weight", want: `table "people" holds patient data but has no privacy-unit column`},
		{name: "privacy unit wrong role", old: "        type: BIGINT\n        role: privacy_unit\n      - name: weight", new: "        type: BIGINT\n        role: code\n      - name: weight", want: "is the privacy unit and must have role privacy_unit"},
		{name: "public table with privacy unit", old: "  - name: people\n", new: "  - name: people\n    public: true\n", want: `public table "people" must not hold the privacy unit`},
		{name: "optout not declared", old: "optout_table: opted_out", new: "optout_table: nowhere", want: `opt-out table "nowhere" is not declared`, line: 6},
		{name: "optout missing", old: "  optout_table: opted_out\n", new: "", want: "policy.optout_table: missing"},
		{name: "k zero", old: "max_groups_per_patient: 2", new: "max_groups_per_patient: 0", want: "policy.max_groups_per_patient: must be between 1", line: 4},
		{name: "k huge", old: "max_groups_per_patient: 2", new: "max_groups_per_patient: 5000", want: "max_groups_per_patient: must be between"},
		{name: "C negative", old: "max_rows_per_group: 5", new: "max_rows_per_group: -1", want: "policy.max_rows_per_group"},
		{name: "threshold", old: "  optout_table", new: "  small_cell_threshold: -3\n  optout_table", want: "policy.small_cell_threshold"},
		{name: "rounding base", old: "  optout_table", new: "  rounding_base: 100000\n  optout_table", want: "policy.rounding_base"},
		{name: "rounding mode", old: "  optout_table", new: "  rounding: up\n  optout_table", want: `policy.rounding: must be "nearest" or "midpoint6"`},
		{name: "max epsilon zero", old: "max_epsilon: 1", new: "max_epsilon: 0", want: "policy.max_epsilon"},
		{name: "max epsilon inf", old: "max_epsilon: 1", new: "max_epsilon: .inf", want: "policy.max_epsilon"},
		{name: "default above max", old: "default_epsilon: 0.5", new: "default_epsilon: 2", want: "policy.default_epsilon"},
		{name: "default nan", old: "default_epsilon: 0.5", new: "default_epsilon: .nan", want: "policy.default_epsilon"},
		{name: "bounds too large", old: "        bounds: [0, 300]", new: "        bounds: [0, 1e16]", want: "must lie within ±1e+15"},
		{name: "min above default", old: "  optout_table", new: "  min_epsilon: 0.6\n  optout_table", want: "policy.min_epsilon: must be at least 1e-06 and at most default_epsilon (0.5)"},
		{name: "min tiny", old: "  optout_table", new: "  min_epsilon: 1e-9\n  optout_table", want: "policy.min_epsilon"},
		{name: "min negative", old: "  optout_table", new: "  min_epsilon: -1\n  optout_table", want: "policy.min_epsilon"},
		{name: "min nan", old: "  optout_table", new: "  min_epsilon: .nan\n  optout_table", want: "policy.min_epsilon"},
		{name: "delta too big", old: "  optout_table", new: "  delta: 0.001\n  optout_table", want: "policy.delta: must be above 0 and below 1e-5"},
		{name: "delta negative", old: "  optout_table", new: "  delta: -1e-7\n  optout_table", want: "policy.delta"},
		{name: "domain on numeric", old: "        bounds: [0, 300]", new: "        bounds: [0, 300]\n        domain: [a]", want: "only categorical and code columns have a domain"},
		{name: "duplicate domain value", old: "        role: numeric\n        bounds: [0, 300]", new: "        role: categorical\n        domain: [a, b, a]", want: `lists "a" twice`},
		{name: "code system on non-code", old: "        bounds: [0, 300]", new: "        bounds: [0, 300]\n        code_system: snomed", want: "only code columns have a code_system"},
		{name: "examples on non-code", old: "        bounds: [0, 300]", new: "        bounds: [0, 300]\n        examples: [{code: '1'}]", want: "only code columns have examples"},
		{name: "example without code", old: "        role: numeric\n        bounds: [0, 300]", new: "        role: code\n        examples: [{code: '1', term: a}, {term: b}]", want: "tables[0].columns[1].examples[1].code: example 2 of people.weight has no code"},
		{name: "example twice", old: "        role: numeric\n        bounds: [0, 300]", new: "        role: code\n        examples: [{code: '1'}, {code: '1'}]", want: `lists example code "1" twice`},
		{name: "unknown example key", old: "        role: numeric\n        bounds: [0, 300]", new: "        role: code\n        examples:\n          - code: '1'\n            meaning: x", want: `tables[0].columns[1].examples[0].meaning: unknown key`, line: 20},
		{name: "no tables", old: minimalCatalog[strings.Index(minimalCatalog, "tables:"):], new: "tables: []\n", want: "tables: no tables declared"},
		{name: "no columns", old: "  - name: opted_out\n    columns:\n      - name: nhs_pseudo_id\n        type: BIGINT\n        role: privacy_unit\n", new: "  - name: opted_out\n    columns: []\n", want: `table "opted_out" has no columns`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !strings.Contains(minimalCatalog, tt.old) {
				t.Fatalf("test setup: %q not in catalog", tt.old)
			}
			src := strings.Replace(minimalCatalog, tt.old, tt.new, 1)
			_, err := ParseCatalog("site.yaml", []byte(src))
			if err == nil {
				t.Fatalf("want error containing %q", tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not contain %q", err, tt.want)
			}
			if !strings.HasPrefix(err.Error(), "site.yaml") {
				t.Errorf("error %q does not name the file", err)
			}
			if tt.line > 0 && !strings.HasPrefix(err.Error(), "site.yaml:"+itoa(tt.line)+":") {
				t.Errorf("error %q: want line %d", err, tt.line)
			}
		})
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

func TestLoadCatalogTooBig(t *testing.T) {
	path := filepath.Join(t.TempDir(), "big.yaml")
	if err := os.WriteFile(path, []byte(strings.Repeat("#\n", 3<<20)), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadCatalog(path); err == nil || !strings.Contains(err.Error(), "larger than 4 MiB") {
		t.Fatalf("got %v", err)
	}
}

// TestCatalogExamples: example codes of a code column load with their
// terms.
func TestCatalogExamples(t *testing.T) {
	src := strings.Replace(minimalCatalog, "        role: numeric\n        bounds: [0, 300]",
		"        role: code\n        code_system: snomed\n        examples:\n          - {code: '44054006', term: Diabetes mellitus type 2}\n          - {code: '38341003'}", 1)
	c, err := ParseCatalog("site.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	want := []CodeExample{{Code: "44054006", Term: "Diabetes mellitus type 2"}, {Code: "38341003"}}
	if diff := cmp.Diff(want, c.Tables[0].Columns[1].Examples); diff != "" {
		t.Errorf("examples (-want +got):\n%s", diff)
	}
}
