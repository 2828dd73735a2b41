package queries

import "strings"

// Catalog describes one dataset held at one NHS site: its tables, the role of
// every column, and the disclosure-control policy that applies to every query
// over it. It is how a site tells tre what may be asked; it never holds rows.
//
// A catalog is loaded from YAML with LoadCatalog (strict: unknown keys, missing
// bounds and columns without a role are errors naming the file, line and key)
// and published by the site agent to the broker.
type Catalog struct {
	// Dataset is the name projects and queries use to refer to this data.
	Dataset     string `yaml:"dataset" json:"dataset"`
	Description string `yaml:"description,omitempty" json:"description,omitempty"`
	// PrivacyUnit is the column, present in every non-public table, that
	// identifies the person whose contribution is bounded (the pseudonymous
	// patient id). It is never selectable, groupable or filterable.
	PrivacyUnit string  `yaml:"privacy_unit" json:"privacy_unit"`
	Policy      Policy  `yaml:"policy" json:"policy"`
	Tables      []Table `yaml:"tables" json:"tables"`
	// Federation describes a dataset several sites hold (issue 21): every
	// site publishing it must declare the same.
	Federation *Federation `yaml:"federation,omitempty" json:"federation,omitempty"`
}

// Federation is what a catalog declares about a dataset held by several
// sites.
type Federation struct {
	// DisjointPopulations declares that no patient is in more than one
	// site's data (each site serves its own registered population): a
	// federated query then costs the project ε once (parallel composition)
	// instead of once per site.
	DisjointPopulations bool `yaml:"disjoint_populations" json:"disjoint_populations"`
}

// Policy is the per-dataset disclosure-control policy.
type Policy struct {
	// MaxGroupsPerPatient (k) bounds how many output groups one patient can
	// contribute to; it is the L0 sensitivity of every aggregate.
	MaxGroupsPerPatient int `yaml:"max_groups_per_patient" json:"max_groups_per_patient"`
	// MaxRowsPerGroup (C) bounds how many rows of one patient count within one
	// group; with the column bounds it gives the L∞ sensitivity.
	MaxRowsPerGroup int `yaml:"max_rows_per_group" json:"max_rows_per_group"`
	// SmallCellThreshold: groups whose noisy count is below it are suppressed,
	// and it is the pre-threshold of DP partition selection. Default 10.
	SmallCellThreshold int `yaml:"small_cell_threshold" json:"small_cell_threshold"`
	// RoundingBase: released counts are rounded to a multiple of it. Default 5.
	RoundingBase int `yaml:"rounding_base" json:"rounding_base"`
	// Rounding is "nearest" (default) or "midpoint6" (NHS Digital style:
	// values 1–7 become 5, then to the nearest 5).
	Rounding string `yaml:"rounding,omitempty" json:"rounding,omitempty"`
	// OptOutTable names the table of patients who opted out (national data
	// opt-out, type 1). Its privacy-unit column lists the patients removed
	// from every view a query can see.
	OptOutTable string `yaml:"optout_table" json:"optout_table"`
	// DefaultEpsilon is charged when a query does not ask for a budget;
	// MaxEpsilon is the most one query may spend; MinEpsilon the least
	// (default DefaultMinEpsilon). Below it the noise is so large that the
	// answer is worthless, while each run still exercises the data: a
	// floor keeps such queries from being cheap probes.
	DefaultEpsilon float64 `yaml:"default_epsilon" json:"default_epsilon"`
	MaxEpsilon     float64 `yaml:"max_epsilon" json:"max_epsilon"`
	MinEpsilon     float64 `yaml:"min_epsilon,omitempty" json:"min_epsilon,omitempty"`
	// Delta is the δ a query spends on partition selection when a grouping
	// column has no public domain. Must be below 1e-5.
	Delta float64 `yaml:"delta" json:"delta"`
	// MaxJoinRowsPerPatient (W) bounds the rows one patient adds to a join
	// of several event tables (tables not one row per patient): each of m
	// such tables keeps at most ⌊W^(1/m)⌋ rows of each patient before the
	// join, so one patient cannot make a query slow. Default 1,000,000.
	MaxJoinRowsPerPatient int `yaml:"max_join_rows_per_patient,omitempty" json:"max_join_rows_per_patient,omitempty"`
}

// Table is one table of the dataset.
type Table struct {
	Name        string `yaml:"name" json:"name"`
	Description string `yaml:"description,omitempty" json:"description,omitempty"`
	// Public marks a lookup table that holds no patient data (a code list, a
	// region table). It has no privacy-unit column and may be joined on its
	// key columns.
	Public bool `yaml:"public,omitempty" json:"public,omitempty"`
	// OnePerPatient declares that the table has at most one row per patient
	// (a demographics table). Grouping only by such columns lets a query
	// claim one group per patient (k = 1); the rewrite enforces it anyway.
	OnePerPatient bool     `yaml:"one_row_per_patient,omitempty" json:"one_row_per_patient,omitempty"`
	Columns       []Column `yaml:"columns" json:"columns"`
}

// Column is one column of a table and the role that decides how a query may
// use it.
type Column struct {
	Name        string `yaml:"name" json:"name"`
	Type        string `yaml:"type" json:"type"` // DuckDB type: VARCHAR, BIGINT, DOUBLE, DATE…
	Description string `yaml:"description,omitempty" json:"description,omitempty"`
	Role        Role   `yaml:"role" json:"role"`
	// Domain is the public list of values of a categorical or code column. A
	// query grouping only by columns with public domains releases every key,
	// empty ones too; otherwise keys must pass DP partition selection.
	Domain []string `yaml:"domain,omitempty" json:"domain,omitempty"`
	// Bounds are the clamping bounds [lower, upper] of a numeric column.
	Bounds *[2]float64 `yaml:"bounds,omitempty" json:"bounds,omitempty"`
	// CodeSystem names the terminology of a code column: snomed, icd10, dmd.
	CodeSystem string `yaml:"code_system,omitempty" json:"code_system,omitempty"`
	// Examples list codes of a code column with their terms, so a
	// researcher can write a first WHERE clause without the terminology
	// browser. They describe the terminology, not the data: a site lists
	// codes whether or not any patient has them.
	Examples []CodeExample `yaml:"examples,omitempty" json:"examples,omitempty"`
}

// CodeExample is one code of a code column and its term.
type CodeExample struct {
	Code string `yaml:"code" json:"code"`
	Term string `yaml:"term,omitempty" json:"term,omitempty"`
}

// Role is what a column may be used for.
type Role string

// Column roles. Stored values never change.
const (
	RolePrivacyUnit Role = "privacy_unit" // the patient id: joins only
	RoleCategorical Role = "categorical"  // group by, filter
	RoleNumeric     Role = "numeric"      // aggregate (clamped to Bounds), filter
	RoleDate        Role = "date"         // filter, group by a date bucket
	RoleCode        Role = "code"         // filter, group by
	RoleForbidden   Role = "forbidden"    // never used in a query
)

// Valid reports whether r is a known role.
func (r Role) Valid() bool {
	switch r {
	case RolePrivacyUnit, RoleCategorical, RoleNumeric, RoleDate, RoleCode, RoleForbidden:
		return true
	}
	return false
}

// Table returns the table with the given name (case-insensitive), or nil.
func (c *Catalog) Table(name string) *Table {
	for i := range c.Tables {
		if strings.EqualFold(c.Tables[i].Name, name) {
			return &c.Tables[i]
		}
	}
	return nil
}

// Column returns the column with the given name (case-insensitive), or nil.
func (t *Table) Column(name string) *Column {
	for i := range t.Columns {
		if strings.EqualFold(t.Columns[i].Name, name) {
			return &t.Columns[i]
		}
	}
	return nil
}

func (r Role) String() string { return string(r) }
