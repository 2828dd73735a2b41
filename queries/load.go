package queries

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"os"
	"regexp"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/nhs-tre/tre/dp"
)

// Catalog policy defaults, applied by ParseCatalog when a key is absent.
const (
	DefaultSmallCellThreshold = 10
	DefaultRoundingBase       = 5
	DefaultRounding           = "nearest"
	DefaultDelta              = 1e-6
	DefaultMinEpsilon         = 0.01
	DefaultMaxJoinRows        = 1_000_000
)

// Policy limits. They keep a typo in a site's catalog (k: 10000, ε: 50) from
// silently turning protection off.
const (
	maxGroupsLimit     = 1000
	maxRowsLimit       = 10000
	maxThresholdLimit  = 1000
	maxRoundingLimit   = 1000
	maxEpsilonLimit    = 10
	minEpsilonLimit    = 1e-6
	maxJoinRowsLimit   = 1_000_000_000
	maxDeltaExclusive  = 1e-5
	maxDomainValues    = 10000
	maxCatalogFileSize = 4 << 20
)

// identRe is what a table or column name must look like. The rewrite quotes
// every identifier, but restricting names keeps the emitted SQL readable and
// rules out quoting tricks through a catalog.
var identRe = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,62}$`)

// CatalogError is a problem in a catalog. Key is the path of the offending
// key (e.g. "tables[2].columns[0].bounds"); File and Line are set when the
// catalog came from a file.
type CatalogError struct {
	File    string
	Line    int
	Key     string
	Message string
}

func (e *CatalogError) Error() string {
	var b strings.Builder
	if e.File != "" {
		b.WriteString(e.File)
		if e.Line > 0 {
			fmt.Fprintf(&b, ":%d", e.Line)
		}
		b.WriteString(": ")
	}
	if e.Key != "" {
		fmt.Fprintf(&b, "%s: ", e.Key)
	}
	b.WriteString(e.Message)
	return b.String()
}

// LoadCatalog reads and validates the YAML catalog at path.
func LoadCatalog(path string) (*Catalog, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load catalog: %w", err)
	}
	return ParseCatalog(path, data)
}

// ParseCatalog decodes a YAML catalog strictly, applies the policy defaults
// and validates it. filename is only used in error messages.
func ParseCatalog(filename string, data []byte) (*Catalog, error) {
	if len(data) > maxCatalogFileSize {
		return nil, &CatalogError{File: filename, Message: "catalog file is larger than 4 MiB"}
	}
	var root yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&root); err != nil {
		return nil, &CatalogError{File: filename, Line: yamlErrLine(err), Message: "invalid YAML: " + yamlErrText(err)}
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return nil, &CatalogError{File: filename, Line: extra.Line, Message: "more than one YAML document"}
	}
	if root.Kind != yaml.DocumentNode || len(root.Content) != 1 || root.Content[0].Kind != yaml.MappingNode {
		return nil, &CatalogError{File: filename, Line: 1, Message: "catalog must be a YAML mapping"}
	}
	doc := root.Content[0]
	if err := checkKeys(filename, doc, ""); err != nil {
		return nil, err
	}
	var c Catalog
	if err := doc.Decode(&c); err != nil {
		return nil, &CatalogError{File: filename, Line: yamlErrLine(err), Message: yamlErrText(err)}
	}
	c.SetDefaults()
	if err := c.Validate(); err != nil {
		var ce *CatalogError
		if errors.As(err, &ce) {
			ce.File = filename
			ce.Line = lineOf(doc, ce.Key)
		}
		return nil, err
	}
	return &c, nil
}

// SetDefaults fills policy keys left unset (zero) with their defaults.
func (c *Catalog) SetDefaults() {
	p := &c.Policy
	if p.SmallCellThreshold == 0 {
		p.SmallCellThreshold = DefaultSmallCellThreshold
	}
	if p.RoundingBase == 0 {
		p.RoundingBase = DefaultRoundingBase
	}
	if p.Rounding == "" {
		p.Rounding = DefaultRounding
	}
	if p.Delta == 0 {
		p.Delta = DefaultDelta
	}
	if p.MinEpsilon == 0 {
		p.MinEpsilon = min(DefaultMinEpsilon, p.DefaultEpsilon)
	}
	if p.MaxJoinRowsPerPatient == 0 {
		p.MaxJoinRowsPerPatient = DefaultMaxJoinRows
	}
}

// maxJoinRows is W of joinCap: the policy's, or the default for a catalog
// stored before the key existed.
func (p Policy) maxJoinRows() int {
	if p.MaxJoinRowsPerPatient > 0 {
		return p.MaxJoinRowsPerPatient
	}
	return DefaultMaxJoinRows
}

// minEpsilon is the least ε a query may spend: the policy's MinEpsilon, or
// DefaultMinEpsilon for a catalog stored before the key existed.
func (p Policy) minEpsilon() float64 {
	if p.MinEpsilon > 0 {
		return p.MinEpsilon
	}
	return DefaultMinEpsilon
}

// Validate checks a catalog whose defaults are set: it is used on catalogs
// loaded from YAML and on catalogs site agents publish as JSON. Errors are
// *CatalogError naming the key.
func (c *Catalog) Validate() error {
	if strings.TrimSpace(c.Dataset) == "" {
		return catalogErr("dataset", "missing dataset name")
	}
	if !identRe.MatchString(c.PrivacyUnit) {
		return catalogErr("privacy_unit", "missing or invalid privacy-unit column name %q", c.PrivacyUnit)
	}
	p := c.Policy
	if err := p.validate(); err != nil {
		return err
	}
	if len(c.Tables) == 0 {
		return catalogErr("tables", "no tables declared")
	}
	seen := make(map[string]bool, len(c.Tables))
	for i, t := range c.Tables {
		if err := c.validateTable(i, t, seen); err != nil {
			return err
		}
	}
	ot := c.Table(p.OptOutTable)
	if ot == nil {
		return catalogErr("policy.optout_table", "opt-out table %q is not declared under tables", p.OptOutTable)
	}
	if ot.Public {
		return catalogErr("policy.optout_table", "opt-out table %q cannot be public", p.OptOutTable)
	}
	return nil
}

// validate checks a catalog's protection policy.
func (p Policy) validate() error {
	switch {
	case p.MaxGroupsPerPatient < 1 || p.MaxGroupsPerPatient > maxGroupsLimit:
		return catalogErr("policy.max_groups_per_patient", "must be between 1 and %d, got %d", maxGroupsLimit, p.MaxGroupsPerPatient)
	case p.MaxRowsPerGroup < 1 || p.MaxRowsPerGroup > maxRowsLimit:
		return catalogErr("policy.max_rows_per_group", "must be between 1 and %d, got %d", maxRowsLimit, p.MaxRowsPerGroup)
	case p.SmallCellThreshold < 1 || p.SmallCellThreshold > maxThresholdLimit:
		return catalogErr("policy.small_cell_threshold", "must be between 1 and %d, got %d", maxThresholdLimit, p.SmallCellThreshold)
	case p.RoundingBase < 1 || p.RoundingBase > maxRoundingLimit:
		return catalogErr("policy.rounding_base", "must be between 1 and %d, got %d", maxRoundingLimit, p.RoundingBase)
	case p.Rounding != "nearest" && p.Rounding != "midpoint6":
		return catalogErr("policy.rounding", `must be "nearest" or "midpoint6", got %q`, p.Rounding)
	case !(p.MaxEpsilon > 0) || math.IsInf(p.MaxEpsilon, 0) || p.MaxEpsilon > maxEpsilonLimit:
		return catalogErr("policy.max_epsilon", "must be a number above 0 and at most %d, got %v", maxEpsilonLimit, p.MaxEpsilon)
	case !(p.DefaultEpsilon > 0) || math.IsInf(p.DefaultEpsilon, 0) || p.DefaultEpsilon > p.MaxEpsilon:
		return catalogErr("policy.default_epsilon", "must be above 0 and at most max_epsilon (%v), got %v", p.MaxEpsilon, p.DefaultEpsilon)
	case p.MinEpsilon != 0 && (!(p.MinEpsilon >= minEpsilonLimit) || p.MinEpsilon > p.DefaultEpsilon):
		return catalogErr("policy.min_epsilon", "must be at least %g and at most default_epsilon (%v), got %v", minEpsilonLimit, p.DefaultEpsilon, p.MinEpsilon)
	case !(p.Delta > 0) || !(p.Delta < maxDeltaExclusive):
		return catalogErr("policy.delta", "must be above 0 and below 1e-5, got %v", p.Delta)
	case p.MaxJoinRowsPerPatient < 0 || p.MaxJoinRowsPerPatient > maxJoinRowsLimit:
		return catalogErr("policy.max_join_rows_per_patient", "must be between 1 and %d, got %d", maxJoinRowsLimit, p.MaxJoinRowsPerPatient)
	case p.OptOutTable == "":
		return catalogErr("policy.optout_table", "missing: every dataset must name its opt-out table")
	}
	return nil
}

// validateTable checks table t, the i-th, and its columns.
func (c *Catalog) validateTable(i int, t Table, seen map[string]bool) error {
	tk := fmt.Sprintf("tables[%d]", i)
	if !identRe.MatchString(t.Name) {
		return catalogErr(tk+".name", "missing or invalid table name %q (letters, digits and _ only)", t.Name)
	}
	if seen[strings.ToLower(t.Name)] {
		return catalogErr(tk+".name", "duplicate table %q", t.Name)
	}
	if strings.EqualFold(t.Name, CodelistsTable) {
		return catalogErr(tk+".name", "table name %q is reserved for the broker's codelists (docs/codelists.md)", t.Name)
	}
	seen[strings.ToLower(t.Name)] = true
	if len(t.Columns) == 0 {
		return catalogErr(tk+".columns", "table %q has no columns", t.Name)
	}
	cols := make(map[string]bool, len(t.Columns))
	hasPU := false
	for j, col := range t.Columns {
		ck := fmt.Sprintf("%s.columns[%d]", tk, j)
		if !identRe.MatchString(col.Name) {
			return catalogErr(ck+".name", "missing or invalid column name %q (letters, digits and _ only)", col.Name)
		}
		if cols[strings.ToLower(col.Name)] {
			return catalogErr(ck+".name", "duplicate column %q in table %q", col.Name, t.Name)
		}
		cols[strings.ToLower(col.Name)] = true
		if err := c.validateColumn(ck, t, col); err != nil {
			return err
		}
		if col.Role == RolePrivacyUnit {
			hasPU = true
		}
	}
	switch {
	case t.Public && hasPU:
		return catalogErr(tk+".public", "public table %q must not hold the privacy unit %q", t.Name, c.PrivacyUnit)
	case !t.Public && !hasPU:
		return catalogErr(tk+".columns", "table %q holds patient data but has no privacy-unit column %q (mark lookup tables public: true)", t.Name, c.PrivacyUnit)
	}
	if t.OnePerPatient && t.Public {
		return catalogErr(tk+".one_row_per_patient", "public table %q cannot have one row per patient", t.Name)
	}
	return nil
}

// validateColumn checks column col (key ck) of table t.
func (c *Catalog) validateColumn(ck string, t Table, col Column) error {
	if strings.TrimSpace(col.Type) == "" {
		return catalogErr(ck+".type", "column %s.%s has no type", t.Name, col.Name)
	}
	if !typeRe.MatchString(col.Type) {
		return catalogErr(ck+".type", "column %s.%s has type %q, which is not a DuckDB type name such as VARCHAR, BIGINT, DOUBLE, DECIMAL(10, 2) or DATE", t.Name, col.Name, col.Type)
	}
	if col.Role == "" {
		return catalogErr(ck+".role", "column %s.%s has no role", t.Name, col.Name)
	}
	if !col.Role.Valid() {
		return catalogErr(ck+".role", "column %s.%s has unknown role %q (want privacy_unit, categorical, numeric, date, code or forbidden)", t.Name, col.Name, col.Role)
	}
	isPUName := strings.EqualFold(col.Name, c.PrivacyUnit)
	switch {
	case col.Role == RolePrivacyUnit && !isPUName:
		return catalogErr(ck+".role", "column %s.%s has role privacy_unit but the privacy unit is %q", t.Name, col.Name, c.PrivacyUnit)
	case isPUName && col.Role != RolePrivacyUnit:
		return catalogErr(ck+".role", "column %s.%s is the privacy unit and must have role privacy_unit", t.Name, col.Name)
	}
	switch k, _ := kindOfType(col.Type); {
	case col.Role == RoleNumeric && k != kNum:
		return catalogErr(ck+".type", "numeric column %s.%s has type %s, which is not a number type", t.Name, col.Name, col.Type)
	case col.Role == RoleDate && k != kDate:
		return catalogErr(ck+".type", "date column %s.%s has type %s; use DATE or TIMESTAMP", t.Name, col.Name, col.Type)
	}
	if col.Role == RoleNumeric {
		if col.Bounds == nil {
			return catalogErr(ck+".bounds", "numeric column %s.%s needs bounds [lower, upper]", t.Name, col.Name)
		}
		lo, hi := col.Bounds[0], col.Bounds[1]
		if math.IsNaN(lo) || math.IsNaN(hi) || math.IsInf(lo, 0) || math.IsInf(hi, 0) || !(lo < hi) {
			return catalogErr(ck+".bounds", "bounds of %s.%s must be finite with lower < upper, got [%v, %v]", t.Name, col.Name, lo, hi)
		}
		if math.Max(math.Abs(lo), math.Abs(hi)) > dp.MaxAbsBound {
			return catalogErr(ck+".bounds", "bounds of %s.%s must lie within ±%g, got [%v, %v]", t.Name, col.Name, dp.MaxAbsBound, lo, hi)
		}
	} else if col.Bounds != nil {
		return catalogErr(ck+".bounds", "only numeric columns have bounds (%s.%s is %s)", t.Name, col.Name, col.Role)
	}
	if len(col.Domain) > 0 {
		if col.Role != RoleCategorical && col.Role != RoleCode {
			return catalogErr(ck+".domain", "only categorical and code columns have a domain (%s.%s is %s)", t.Name, col.Name, col.Role)
		}
		if len(col.Domain) > maxDomainValues {
			return catalogErr(ck+".domain", "domain of %s.%s has more than %d values", t.Name, col.Name, maxDomainValues)
		}
		vals := make(map[string]bool, len(col.Domain))
		for _, v := range col.Domain {
			if vals[v] {
				return catalogErr(ck+".domain", "domain of %s.%s lists %q twice", t.Name, col.Name, v)
			}
			vals[v] = true
		}
	}
	if col.CodeSystem != "" && col.Role != RoleCode {
		return catalogErr(ck+".code_system", "only code columns have a code_system (%s.%s is %s)", t.Name, col.Name, col.Role)
	}
	if err := validExamples(ck, t.Name, col); err != nil {
		return err
	}
	return nil
}

// catalogErr is a *CatalogError naming key.
func catalogErr(key, format string, args ...any) error {
	return &CatalogError{Key: key, Message: fmt.Sprintf(format, args...)}
}

// checkKeys walks the YAML tree and refuses keys the catalog types do not
// have, naming the line: yaml.v3's KnownFields does not say which file.
func checkKeys(file string, n *yaml.Node, path string) error {
	if n.Kind != yaml.MappingNode {
		return nil
	}
	allowed := catalogKeys[keyKind(path)]
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if !allowed[k.Value] {
			return &CatalogError{File: file, Line: k.Line, Key: joinKey(path, k.Value), Message: fmt.Sprintf("unknown key %q", k.Value)}
		}
		child := joinKey(path, k.Value)
		switch k.Value {
		case "tables", "columns", "examples":
			if v.Kind != yaml.SequenceNode {
				return &CatalogError{File: file, Line: v.Line, Key: child, Message: "must be a list"}
			}
			for j, item := range v.Content {
				if item.Kind != yaml.MappingNode {
					return &CatalogError{File: file, Line: item.Line, Key: fmt.Sprintf("%s[%d]", child, j), Message: "must be a mapping"}
				}
				if err := checkKeys(file, item, fmt.Sprintf("%s[%d]", child, j)); err != nil {
					return err
				}
			}
		case "policy":
			if v.Kind != yaml.MappingNode {
				return &CatalogError{File: file, Line: v.Line, Key: child, Message: "must be a mapping"}
			}
			if err := checkKeys(file, v, child); err != nil {
				return err
			}
		}
	}
	return nil
}

var catalogKeys = map[string]map[string]bool{
	"":        {"dataset": true, "description": true, "privacy_unit": true, "policy": true, "tables": true},
	"policy":  {"max_groups_per_patient": true, "max_rows_per_group": true, "small_cell_threshold": true, "rounding_base": true, "rounding": true, "optout_table": true, "default_epsilon": true, "max_epsilon": true, "min_epsilon": true, "delta": true, "max_join_rows_per_patient": true},
	"table":   {"name": true, "description": true, "public": true, "one_row_per_patient": true, "columns": true},
	"column":  {"name": true, "type": true, "description": true, "role": true, "domain": true, "bounds": true, "code_system": true, "examples": true},
	"example": {"code": true, "term": true},
}

// badKey is a *CatalogError at key.
func badKey(key, format string, args ...any) error {
	return &CatalogError{Key: key, Message: fmt.Sprintf(format, args...)}
}

// maxExamples bounds a column's example codes: they are a starting point,
// not the terminology.
const maxExamples = 200

// validExamples checks the example codes of column col of table table,
// whose key is ck.
func validExamples(ck, table string, col Column) error {
	if len(col.Examples) == 0 {
		return nil
	}
	if col.Role != RoleCode {
		return badKey(ck+".examples", "only code columns have examples (%s.%s is %s)", table, col.Name, col.Role)
	}
	if len(col.Examples) > maxExamples {
		return badKey(ck+".examples", "%s.%s has more than %d examples", table, col.Name, maxExamples)
	}
	seen := make(map[string]bool, len(col.Examples))
	for i, e := range col.Examples {
		switch {
		case strings.TrimSpace(e.Code) == "":
			return badKey(fmt.Sprintf("%s.examples[%d].code", ck, i), "example %d of %s.%s has no code", i+1, table, col.Name)
		case seen[e.Code]:
			return badKey(fmt.Sprintf("%s.examples[%d].code", ck, i), "%s.%s lists example code %q twice", table, col.Name, e.Code)
		}
		seen[e.Code] = true
	}
	return nil
}

func keyKind(path string) string {
	switch {
	case path == "" || path == "policy":
		return path
	case strings.HasSuffix(path, "]") && strings.Contains(path, ".examples["):
		return "example"
	case strings.HasSuffix(path, "]") && strings.Contains(path, ".columns["):
		return "column"
	case strings.HasPrefix(path, "tables["):
		return "table"
	}
	return "?"
}

func joinKey(path, k string) string {
	if path == "" {
		return k
	}
	return path + "." + k
}

// lineOf finds the line of a key path like "tables[2].columns[0].bounds".
func lineOf(doc *yaml.Node, key string) int {
	if key == "" {
		return doc.Line
	}
	n := doc
	line := doc.Line
	for _, part := range strings.Split(key, ".") {
		name, idx := part, -1
		if i := strings.IndexByte(part, '['); i >= 0 {
			name = part[:i]
			idx, _ = strconv.Atoi(strings.TrimSuffix(part[i+1:], "]"))
		}
		if n.Kind != yaml.MappingNode {
			return line
		}
		var next *yaml.Node
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == name {
				line = n.Content[i].Line
				next = n.Content[i+1]
				break
			}
		}
		if next == nil {
			return line
		}
		n = next
		if idx >= 0 {
			if n.Kind != yaml.SequenceNode || idx >= len(n.Content) {
				return line
			}
			n = n.Content[idx]
			line = n.Line
		}
	}
	return line
}

var yamlLineRe = regexp.MustCompile(`line (\d+)`)

func yamlErrLine(err error) int {
	if m := yamlLineRe.FindStringSubmatch(err.Error()); m != nil {
		n, _ := strconv.Atoi(m[1])
		return n
	}
	return 0
}

var yamlLinePrefixRe = regexp.MustCompile(`^line \d+: `)

func yamlErrText(err error) string {
	s := strings.TrimPrefix(err.Error(), "yaml: ")
	s = strings.TrimPrefix(s, "unmarshal errors:\n  ")
	return yamlLinePrefixRe.ReplaceAllString(s, "")
}
