package queries

import (
	"fmt"
	"strings"

	"github.com/nhs-tre/tre/dp"
)

// catalogIndex is a catalog prepared for lookups; built once per catalog.
type catalogIndex struct {
	pu     string // privacy unit, lower case
	optout string
	tables map[string]*relation // lower-case table name → template relation
}

func newCatalogIndex(cat *Catalog) *catalogIndex {
	idx := &catalogIndex{
		pu:     strings.ToLower(cat.PrivacyUnit),
		optout: strings.ToLower(cat.Policy.OptOutTable),
		tables: make(map[string]*relation, len(cat.Tables)),
	}
	for _, t := range cat.Tables {
		r := &relation{table: t.Name, public: t.Public, patient: !t.Public, perPatient: t.OnePerPatient}
		for _, col := range t.Columns {
			// The kind is the declared type's: the release snapshot casts
			// every column to it (ReleaseStatements).
			k, ts := kindOfType(col.Type)
			v := unbounded(k)
			v.ts = ts
			switch col.Role {
			case RoleNumeric:
				if col.Bounds != nil {
					v.lo, v.hi = col.Bounds[0], col.Bounds[1]
				}
			case RoleCategorical, RoleCode:
				v.groupable = true
				if len(col.Domain) > 0 {
					v.hasDomain = true
					v.domain = col.Domain
				}
			}
			v.patient = t.OnePerPatient
			r.cols = append(r.cols, column{name: col.Name, role: col.Role, v: v})
		}
		idx.tables[strings.ToLower(t.Name)] = r
	}
	if _, ok := idx.tables[CodelistsTable]; !ok {
		idx.tables[CodelistsTable] = codelistsRelation()
	}
	return idx
}

// column is one column a relation offers to the query.
type column struct {
	name string
	role Role
	v    val
}

// relation is a FROM item in scope: a catalog table, or a per-patient CTE or
// subquery.
type relation struct {
	alias string // lower case, as referenced in the query
	table string // catalog table or CTE name (for predicates)
	// canon names a per-patient CTE or subquery by its order in canonical
	// text (canonical.go), whatever the researcher called it.
	canon      string
	cols       []column
	public     bool // lookup table without patient data
	patient    bool // rows belong to patients (has the privacy unit)
	perPatient bool // at most one row per patient
	// derived marks a CTE or FROM subquery grouped by the privacy unit: one
	// row per patient by construction, unlike a catalog table's declaration.
	derived bool
	// unique marks a catalog table whose privacy unit the data enforces as
	// unique and not NULL (Options.UniqueTables): one row per patient proven
	// for the data this query runs on.
	unique bool
	// nullable marks a relation on the right of a LEFT JOIN: its columns,
	// the privacy unit too, are NULL on rows it has no match for.
	nullable bool
}

func (r *relation) col(name string) *column {
	for i := range r.cols {
		if strings.EqualFold(r.cols[i].name, name) {
			return &r.cols[i]
		}
	}
	return nil
}

// scope is the relations visible to expressions of one SELECT.
type scope struct {
	rels  []*relation
	using map[string]bool // USING column names (lower case)
	inner bool            // a per-patient query: aggregates are per patient
	// capRows, when above 0, is how many rows of each patient every event
	// table of this FROM contributes (joinCap).
	capRows int
	// drops are the relations the join compiled last could do without
	// (late.go): the outermost join's, once FROM is compiled.
	drops []lateDrop
}

// compiler holds the state of one Compile call. Its stages live in files
// the way go/types splits its checker: compile.go (this state, the
// statement), cte.go (per-patient CTEs), from.go (FROM items and joins:
// scopes and the contribution bounds they imply), select.go (the outer
// SELECT: select list, GROUP BY keys, modifiers), expr.go (expressions),
// call.go (function calls), aggregate.go (inner and released aggregates),
// bound.go (date ranges and bucket counts), spec.go (the dp.Spec) and
// rewrite.go (the contribution-bounded SQL the sandbox runs).
type compiler struct {
	cat  *Catalog
	idx  *catalogIndex
	sql  string
	seed uint64
	// unique holds Options.UniqueTables, lower case.
	unique map[string]bool
	nodes  int
	ctes   map[string]*relation
	with   []string // emitted user CTEs, in order
	// shortcuts lets the rewrite take the cheaper plans that give the same
	// rows: no bounding where each patient has at most one input row (proven
	// at compile time, onePerPatient, or checked at run time), and for
	// count-only queries one grouping in place of the C-row ranking. false
	// always emits the full bounding pipeline (tests compare).
	shortcuts bool
	// innerPreds are the WHERE conjuncts of per-patient queries.
	innerPreds []string
	// derived are the per-patient CTEs and subqueries, in order, for
	// canonical text (canonical.go).
	derived []derivedQuery
	// refs, when not nil, collects every relation a column reference
	// resolves to (to tell which relations a group key reads).
	refs map[*relation]bool
	// hoist collects the aggregates of the per-patient query being
	// compiled; nil outside one.
	hoist *hoister
	// capNames are the capped event tables already in with (joinCap).
	capNames map[string]bool
	// readsCodelists: the query reads CodelistsTable; codelists are the
	// names it compares the table's codelist column with (codelist.go).
	readsCodelists bool
	codelists      map[string]bool
}

// query is the validated outer query.
type query struct {
	from       string
	sc         *scope // the outer query's relations (canonical text)
	pid        string // the privacy unit of the root patient relation
	groups     []groupKey
	aggs       []aggregate
	predicates []string
	// specBound, when above 0, bounds the groups one patient can fall in
	// from the query and the catalog alone (keys that are functions of the
	// patient count once, by declaration too; date buckets the WHERE bounds
	// count their buckets; no GROUP BY is one group): the Spec's k when it
	// is below the catalog's, enforced by the rewrite. Being data-free, the
	// broker and the sandbox compute the same.
	specBound int
	// declaredOne: every patient relation in FROM is a per-patient CTE or
	// subquery or a table the catalog declares one row per patient, so an
	// honest input has one row per patient: the Spec's C is 1, enforced by
	// the rewrite, and count(*) is the group's patient count.
	declaredOne bool
	// groupBound, when above 0, is a proven bound on the groups any one
	// patient's input rows fall in: keys proven per patient count once,
	// date buckets the WHERE bounds count their buckets (bucketCount).
	groupBound int
	// sets are the grouping sets of ROLLUP, CUBE or GROUPING SETS as
	// indexes of groups (dp.Spec.Sets); nil for a plain GROUP BY.
	sets [][]int
	// onePerPatient: every FROM relation is a per-patient CTE or subquery
	// or a table proven unique per patient, all joined on the privacy unit,
	// so the input has at most one row per patient.
	onePerPatient bool
	// conds are the WHERE conjuncts and what each reads.
	conds []cond
	// late, when not nil, is the rewrite's plan to join the patient-level
	// relation after the per-patient stages (late.go).
	late *lateJoin
	// maybeOnePerPatient: every patient relation is a per-patient CTE or
	// subquery or a table declared or proven to have one row per patient,
	// so a run-time check that no patient has two input rows is worth
	// making; an event table in FROM makes it pointless.
	maybeOnePerPatient bool
}

type groupKey struct {
	name string
	sql  string
	v    val
	// ofPatient: the key reads only relations proven to hold at most one
	// row per patient (per-patient CTEs, Options.UniqueTables), all joined
	// on the privacy unit, so every input row of a patient has the same
	// value. A catalog's one_row_per_patient claim alone does not count.
	ofPatient bool
	// reads are the relations the key reads.
	reads map[*relation]bool
	// bucket, for a date bucket without a domain of its own (date_trunc,
	// year), is the bucket and what the WHERE bounds of its column (rng,
	// nil if none), from which a federated query's Spec derives its public
	// keys (bucketKeys); pos is the key's position in the SQL.
	bucket *dateBucket
	rng    *dateRange
	pos    int
}

type aggKind int

const (
	aggCountRows aggKind = iota
	aggCountPatients
	aggValue
	// aggQuantile is a value released as a quantile: its rows are binned
	// into the leaves of a quantile tree (rewrite.go, dp.QuantileLeaf).
	aggQuantile
	// aggRatio is a ratio of two other aggregates of the query (ratio.go):
	// no statistics of its own in the rewrite (zeros in the layout).
	aggRatio
)

type aggregate struct {
	spec dp.AggSpec
	kind aggKind
	// whole: count(*) without FILTER, which counts every input row.
	whole bool
	arg   string // DOUBLE expression; for counts a 0/1 indicator or ""
	// pu is the privacy-unit column a count(pu) or count(DISTINCT pu)
	// without FILTER reads; arg is then only its NOT NULL indicator.
	pu string
	// rootPU: pu holds the patient's own id on every input row
	// (compiler.sameAsRoot), so arg is 1 on every row; the shortcuts drop
	// it and the row-ranking hash never reads it.
	rootPU bool
	// reads are the relations the argument and FILTER read.
	reads map[*relation]bool
	// parts are a ratio's numerator and denominator until resolveRatios
	// makes them aggregates of the query (spec.Num, spec.Den).
	parts []aggregate
}

func (c *compiler) tick(n obj, depth int) error {
	c.nodes++
	if c.nodes > maxNodes {
		return refuse("a query this large", pos(n), fmt.Sprintf("it has more than %d syntax nodes", maxNodes))
	}
	if depth > maxDepth {
		return refuse("nesting this deep", pos(n), fmt.Sprintf("expressions may nest at most %d levels", maxDepth))
	}
	return nil
}

func (c *compiler) compileStatement(stmt obj) (*query, error) {
	if err := knownKeys(stmt, "statement", keysStatement); err != nil {
		return nil, err
	}
	node := sub(stmt, "node")
	if node == nil {
		return nil, refuse("statement", -1, "unrecognised parser output")
	}
	if err := c.checkSelectNode(node, "the query"); err != nil {
		return nil, err
	}
	if err := c.compileCTEs(node); err != nil {
		return nil, err
	}
	return c.compileOuter(node)
}

// checkSelectNode refuses set operations, recursive CTEs and unknown node
// kinds, and the SELECT features no query may use.
func (c *compiler) checkSelectNode(node obj, where string) error {
	switch t := str(node, "type"); t {
	case "SELECT_NODE":
	case "SET_OPERATION_NODE":
		op := strings.ToUpper(str(node, "setop_type"))
		if op == "" {
			op = "set operation"
		}
		return refuse(op+" in "+where, pos(node), "combine results after release, not in SQL")
	case "RECURSIVE_CTE_NODE":
		return refuse("a recursive CTE", pos(node), "WITH RECURSIVE can generate unbounded rows")
	default:
		return refuse(strings.ToLower(strings.ReplaceAll(t, "_", " "))+" in "+where, pos(node), "only SELECT is supported")
	}
	if err := knownKeys(node, "SELECT", keysSelectNode); err != nil {
		return err
	}
	if !isEmpty(node["sample"]) {
		return refuse("USING SAMPLE", pos(node), "sampling is not supported")
	}
	if !isEmpty(node["qualify"]) {
		return refuse("QUALIFY", pos(sub(node, "qualify")), "window functions are not supported")
	}
	if h := str(node, "aggregate_handling"); h != "" && h != "STANDARD_HANDLING" {
		return refuse("GROUP BY ALL", -1, "list the group columns explicitly")
	}
	// Grouping sets (ROLLUP, CUBE) are for the released query only
	// (rollup.go).
	if err := checkGroupSetsNode(node, where == "the query"); err != nil {
		return err
	}
	return nil
}
