package queries

import (
	"encoding/json"
	"fmt"
	"math"
	"regexp"
	"strconv"
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
}

// compiler holds the state of one Compile call.
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
}

// query is the validated outer query.
type query struct {
	from       string
	where      string
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
	// onePerPatient: every FROM relation is a per-patient CTE or subquery
	// or a table proven unique per patient, all joined on the privacy unit,
	// so the input has at most one row per patient.
	onePerPatient bool
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
}

type aggKind int

const (
	aggCountRows aggKind = iota
	aggCountPatients
	aggValue
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
	sets := list(node, "group_sets")
	groups := list(node, "group_expressions")
	if len(groups) > 0 {
		ok := len(sets) == 1
		if ok {
			s, _ := sets[0].([]any)
			ok = len(s) == len(groups)
			for i, e := range s {
				if n, _ := e.(json.Number); ok && string(n) != strconv.Itoa(i) {
					ok = false
				}
			}
		}
		if !ok {
			return refuse("GROUPING SETS, ROLLUP or CUBE", pos(obj(nil)), "margins and totals from several groupings are not supported; release one grouping and sum it")
		}
	} else if len(sets) > 0 {
		return refuse("GROUPING SETS, ROLLUP or CUBE", -1, "margins and totals from several groupings are not supported")
	}
	return nil
}

// compileCTEs validates WITH clauses: each must be a per-patient query.
func (c *compiler) compileCTEs(node obj) error {
	cm := sub(node, "cte_map")
	entries := list(cm, "map")
	if len(entries) == 0 {
		return nil
	}
	if len(entries) > maxCTEs {
		return refuse("more than 16 CTEs", -1, "")
	}
	c.ctes = make(map[string]*relation, len(entries))
	for _, e := range entries {
		entry, _ := e.(obj)
		name := strings.ToLower(str(entry, "key"))
		value := sub(entry, "value")
		if value == nil || !identRe.MatchString(name) {
			return refuse(fmt.Sprintf("CTE name %q", name), -1, "use letters, digits and _ only")
		}
		if err := knownKeys(value, "CTE "+name, keysCTE); err != nil {
			return err
		}
		if t := str(sub(sub(value, "query"), "node"), "type"); t == "RECURSIVE_CTE_NODE" {
			return refuse("a recursive CTE", -1, "WITH RECURSIVE can generate unbounded rows")
		}
		if len(list(value, "aliases")) > 0 {
			return refuse("a column list on CTE "+name, -1, "name the columns with AS inside the CTE")
		}
		if _, dup := c.ctes[name]; dup || c.idx.tables[name] != nil {
			return refuse("CTE name "+name, -1, "it repeats a table or CTE name")
		}
		q := sub(value, "query")
		if err := knownKeys(q, "CTE "+name, keysStatement); err != nil {
			return err
		}
		inner := sub(q, "node")
		if inner == nil {
			return refuse("CTE "+name, -1, "unrecognised parser output")
		}
		rel, body, err := c.perPatient(inner, "CTE "+name)
		if err != nil {
			return err
		}
		rel.table = name
		c.ctes[name] = rel
		c.with = append(c.with, fmt.Sprintf("%s AS (%s)", quoteIdent("cte_"+name), body))
	}
	return nil
}

// perPatient validates a CTE or FROM subquery that derives per-patient
// variables: it must be grouped by the privacy unit alone, so it has one row
// per patient. Inside it, per-patient aggregates (max, min, arg_max, count,
// …) are allowed because only the outer, protected aggregate is released.
func (c *compiler) perPatient(node obj, what string) (*relation, string, error) {
	if err := c.checkSelectNode(node, what); err != nil {
		return nil, "", err
	}
	if len(list(sub(node, "cte_map"), "map")) > 0 {
		return nil, "", refuse("WITH inside "+what, -1, "define every CTE at the top of the query")
	}
	if len(list(node, "modifiers")) > 0 {
		return nil, "", refuse("DISTINCT, ORDER BY or LIMIT in "+what, -1, "per-patient queries are grouped by the patient instead")
	}
	sc := &scope{inner: true, capRows: c.joinCap(sub(node, "from_table"))}
	from, pid, err := c.fromItem(sub(node, "from_table"), sc, 1)
	if err != nil {
		return nil, "", err
	}
	// Aggregates of this query only (a FROM subquery above has its own).
	defer func(h *hoister) { c.hoist = h }(c.hoist)
	c.hoist = &hoister{index: make(map[string]string)}
	if pid == "" {
		return nil, "", refuse(what+" without patient data", -1, "a per-patient query must read a patient table")
	}
	var b strings.Builder
	groups := list(node, "group_expressions")
	badGroup := func(p int) error {
		return refuse(what+" not grouped by "+c.cat.PrivacyUnit, p, "a CTE or subquery must GROUP BY "+c.cat.PrivacyUnit+" alone, giving one row per patient")
	}
	if len(groups) != 1 {
		return nil, "", badGroup(pos(node))
	}
	g, _ := groups[0].(obj)
	grel, gcol, isPU, err := c.privacyUnitCol(g, sc)
	if err != nil {
		return nil, "", err
	}
	if !isPU {
		return nil, "", badGroup(pos(g))
	}
	if grel.nullable {
		// NULL for every patient without a row on that side: one group
		// would hold many patients under a NULL "patient".
		return nil, "", refuse(what+" grouped by the "+c.cat.PrivacyUnit+" of "+grel.alias, pos(g), grel.alias+" is on the right of a LEFT JOIN, where "+c.cat.PrivacyUnit+" can be NULL; group by the "+c.cat.PrivacyUnit+" of the left side")
	}
	gsql := qualified(grel, gcol)
	rel := &relation{patient: true, perPatient: true, derived: true, canon: "derived" + strconv.Itoa(len(c.derived)+1)}
	items := list(node, "select_list")
	if len(items) == 0 {
		return nil, "", refuse("an empty SELECT in "+what, -1, "")
	}
	outs := make([]string, 0, len(items))
	sawPU := false
	// Every output name must be unique: the outer query finds a relation's
	// privacy unit, and every other column, by name.
	repeated := func(name string, p int) error {
		if rel.col(name) != nil {
			return refuse("column name "+name+" repeated in "+what, p, "give every column of a CTE or subquery its own name")
		}
		return nil
	}
	for _, it := range items {
		item, _ := it.(obj)
		alias := strings.ToLower(str(item, "alias"))
		if alias != "" && !identRe.MatchString(alias) {
			return nil, "", refuse(fmt.Sprintf("column name %q", alias), pos(item), "use letters, digits and _ only")
		}
		if prel, pcol, ok, err := c.privacyUnitCol(item, sc); err != nil {
			return nil, "", err
		} else if ok {
			if sawPU {
				return nil, "", refuse(c.cat.PrivacyUnit+" selected twice in "+what, pos(item), "")
			}
			sawPU = true
			if prel != grel || pcol != gcol {
				return nil, "", refuse(c.cat.PrivacyUnit+" of "+prel.alias+" in the SELECT of "+what, pos(item), "select the "+c.cat.PrivacyUnit+" the query is grouped by ("+grel.alias+"."+gcol.name+")")
			}
			name := c.cat.PrivacyUnit
			if alias != "" && alias != strings.ToLower(name) {
				return nil, "", refuse("renaming "+c.cat.PrivacyUnit, pos(item), "keep its name so joins stay on the privacy unit")
			}
			if err := repeated(name, pos(item)); err != nil {
				return nil, "", err
			}
			rel.cols = append(rel.cols, column{name: name, role: RolePrivacyUnit})
			outs = append(outs, `"__tre_agg"."__pid" AS `+quoteIdent(name))
			continue
		}
		esql, v, err := c.expr(item, sc, exprMode{clause: "SELECT of " + what, inner: true}, 1)
		if err != nil {
			return nil, "", err
		}
		name := alias
		if name == "" {
			if cr := list(item, "column_names"); str(item, "class") == "COLUMN_REF" && len(cr) > 0 {
				name, _ = cr[len(cr)-1].(string)
				name = strings.ToLower(name)
			}
		}
		if name == "" {
			return nil, "", refuse("an unnamed expression in "+what, pos(item), "give it a name with AS")
		}
		if strings.EqualFold(name, c.cat.PrivacyUnit) {
			return nil, "", refuse("the name "+name+" for an expression in "+what, pos(item), "it names the privacy unit; give the expression another name")
		}
		if v.kind == kInterval {
			return nil, "", refuse("an interval column "+name+" in "+what, pos(item), "an interval can only be added to or subtracted from a date")
		}
		if err := repeated(name, pos(item)); err != nil {
			return nil, "", err
		}
		v.patient = true
		v.isConst = false
		role := RoleNumeric
		switch v.kind {
		case kText:
			role = RoleCategorical
		case kDate:
			role = RoleDate
		}
		rel.cols = append(rel.cols, column{name: name, role: role, v: v})
		outs = append(outs, esql+" AS "+quoteIdent(name))
	}
	if !sawPU {
		return nil, "", refuse(what+" without "+c.cat.PrivacyUnit+" in its SELECT", pos(node), "select "+c.cat.PrivacyUnit+" so the result can be joined")
	}
	var having string
	if h := sub(node, "having"); h != nil {
		hsql, _, err := c.condition(h, sc, exprMode{clause: "HAVING of " + what, inner: true}, 1, "HAVING of "+what)
		if err != nil {
			return nil, "", err
		}
		having = hsql
	}
	// The aggregates, hoisted into an inner query grouped by the patient;
	// the outputs and HAVING are expressions over its columns.
	fmt.Fprintf(&b, `SELECT %s FROM (SELECT %s AS "__pid"`, strings.Join(outs, ", "), gsql)
	for i, agg := range c.hoist.sqls {
		fmt.Fprintf(&b, `, %s AS "__ia%d"`, agg, i)
	}
	b.WriteString(" FROM " + from)
	if w := sub(node, "where_clause"); w != nil {
		var parts []string
		for _, conj := range conjuncts(w) {
			wsql, _, err := c.condition(conj, sc, exprMode{clause: "WHERE of " + what, inner: true, noAgg: true}, 1, "WHERE of "+what)
			if err != nil {
				return nil, "", err
			}
			parts = append(parts, wsql)
			// Filters inside a per-patient query also change what is
			// released; the broker compares them too.
			c.innerPreds = append(c.innerPreds, "in "+rel.canon+": "+canonicalText(wsql, sc.rels))
		}
		b.WriteString(" WHERE " + strings.Join(parts, " AND "))
	}
	b.WriteString(` GROUP BY ` + gsql + `) AS "__tre_agg"`)
	// The shape the broker compares is the query as written: the hoisted
	// aggregates inlined back.
	shape := "SELECT " + c.hoist.inline(strings.Join(outs, ", "), gsql) + " FROM " + from + " GROUP BY " + gsql
	if having != "" {
		b.WriteString(" WHERE " + having)
		shape += " HAVING " + c.hoist.inline(having, gsql)
	}
	// Its WHERE conjuncts are compared as predicates (innerPreds), the
	// rest as part of the query's shape.
	c.derived = append(c.derived, derivedQuery{canon: rel.canon, body: b.String(), shape: canonicalText(shape, sc.rels)})
	return rel, b.String(), nil
}

// privacyUnitRef reports whether n is a bare reference to a privacy-unit
// column, and its SQL.
func (c *compiler) privacyUnitRef(n obj, sc *scope) (string, bool, error) {
	rel, col, ok, err := c.privacyUnitCol(n, sc)
	if !ok || err != nil {
		return "", false, err
	}
	return qualified(rel, col), true, nil
}

// privacyUnitCol reports whether n is a bare reference to a privacy-unit
// column, and which relation's.
func (c *compiler) privacyUnitCol(n obj, sc *scope) (*relation, *column, bool, error) {
	if str(n, "class") != "COLUMN_REF" || isCurrentDate(n) {
		return nil, nil, false, nil
	}
	rel, col, err := c.resolve(n, sc)
	if err != nil {
		return nil, nil, false, err
	}
	if col.role != RolePrivacyUnit {
		return nil, nil, false, nil
	}
	return rel, col, true, nil
}

func qualified(rel *relation, col *column) string {
	return quoteIdent(rel.alias) + "." + quoteIdent(col.name)
}

// resolve finds the relation and column a COLUMN_REF names.
func (c *compiler) resolve(n obj, sc *scope) (*relation, *column, error) {
	rel, col, err := c.resolveRef(n, sc)
	if err == nil && c.refs != nil {
		c.refs[rel] = true
	}
	return rel, col, err
}

func (c *compiler) resolveRef(n obj, sc *scope) (*relation, *column, error) {
	if err := knownKeys(n, "column reference", keysColumnRef); err != nil {
		return nil, nil, err
	}
	var parts []string
	for _, p := range list(n, "column_names") {
		s, _ := p.(string)
		parts = append(parts, s)
	}
	display := strings.Join(parts, ".")
	switch len(parts) {
	case 1:
		var rel *relation
		var col *column
		for _, r := range sc.rels {
			if cl := r.col(parts[0]); cl != nil {
				if col != nil {
					if (col.role == RolePrivacyUnit && cl.role == RolePrivacyUnit) || sc.using[strings.ToLower(parts[0])] {
						continue
					}
					return nil, nil, refuse("ambiguous column "+display, pos(n), "qualify it with a table alias, e.g. p."+parts[0])
				}
				rel, col = r, cl
			}
		}
		if col == nil {
			return nil, nil, refuse("unknown column "+display, pos(n), "it is not a column of the tables in FROM (see the dataset catalog)"+didYouMean(display, sc.columnNames()))
		}
		return rel, col, nil
	case 2:
		for _, r := range sc.rels {
			if r.alias == strings.ToLower(parts[0]) {
				if cl := r.col(parts[1]); cl != nil {
					return r, cl, nil
				}
				return nil, nil, refuse("unknown column "+display, pos(n), "table "+parts[0]+" has no such column"+didYouMean(display, r.columnNames()))
			}
		}
		var aliases []string
		for _, r := range sc.rels {
			aliases = append(aliases, r.alias)
		}
		return nil, nil, refuse("unknown table alias in "+display, pos(n), "no table in FROM is called "+parts[0]+didYouMean(parts[0], aliases))
	}
	return nil, nil, refuse("qualified name "+display, pos(n), "use table.column or column")
}

// fromItem validates one FROM item, adds its relations to sc and returns
// its SQL over the views and the privacy-unit column of its root patient
// relation ("" when it holds only public lookup tables).
func (c *compiler) fromItem(n obj, sc *scope, depth int) (string, string, error) {
	if n == nil {
		return "", "", refuse("a query without FROM", -1, "read at least one catalog table")
	}
	if err := c.tick(n, depth); err != nil {
		return "", "", err
	}
	if !isEmpty(n["sample"]) {
		return "", "", refuse("TABLESAMPLE", pos(n), "sampling is not supported")
	}
	switch t := str(n, "type"); t {
	case "BASE_TABLE":
		return c.baseTable(n, sc)
	case "SUBQUERY":
		if err := knownKeys(n, "subquery", keysSubquery); err != nil {
			return "", "", err
		}
		if len(list(n, "column_name_alias")) > 0 {
			return "", "", refuse("a column list on a subquery alias", pos(n), "name the columns with AS inside the subquery")
		}
		alias := strings.ToLower(str(n, "alias"))
		if alias == "" || strings.HasPrefix(alias, "unnamed_subquery") {
			return "", "", refuse("a subquery without an alias", pos(n), "write (SELECT …) AS name")
		}
		q := sub(n, "subquery")
		if err := knownKeys(q, "subquery", keysStatement); err != nil {
			return "", "", err
		}
		inner := sub(q, "node")
		if inner == nil {
			return "", "", refuse("subquery", pos(n), "unrecognised parser output")
		}
		rel, body, err := c.perPatient(inner, "subquery "+alias)
		if err != nil {
			return "", "", err
		}
		rel.alias, rel.table = alias, alias
		if err := c.addRel(sc, rel, pos(n)); err != nil {
			return "", "", err
		}
		return "(" + body + ") AS " + quoteIdent(alias), qualified(rel, rel.col(c.cat.PrivacyUnit)), nil
	case "JOIN":
		return c.join(n, sc, depth)
	case "TABLE_FUNCTION":
		name := str(sub(n, "function"), "function_name")
		return "", "", refuse("function "+name, pos(n), "only catalog tables may be read")
	case "EMPTY":
		return "", "", refuse("a query without FROM", pos(n), "read at least one catalog table")
	default:
		return "", "", refuse(strings.ToLower(t)+" in FROM", pos(n), "only catalog tables may be read")
	}
}

func (c *compiler) addRel(sc *scope, rel *relation, p int) error {
	if len(sc.rels) >= maxRelations {
		return refuse("more than 12 tables in one FROM", p, "")
	}
	if !identRe.MatchString(rel.alias) {
		return refuse(fmt.Sprintf("table alias %q", rel.alias), p, "use letters, digits and _ only")
	}
	for _, r := range sc.rels {
		if r.alias == rel.alias {
			return refuse("table alias "+rel.alias+" used twice", p, "give each table its own alias")
		}
	}
	sc.rels = append(sc.rels, rel)
	return nil
}

func (c *compiler) baseTable(n obj, sc *scope) (string, string, error) {
	if err := knownKeys(n, "table", keysBaseTable); err != nil {
		return "", "", err
	}
	name := str(n, "table_name")
	if s, cat := str(n, "schema_name"), str(n, "catalog_name"); s != "" || cat != "" {
		full := strings.Trim(cat+"."+s+"."+name, ".")
		return "", "", refuse("schema-qualified table "+full, pos(n), "only catalog tables may be read, by their plain name")
	}
	if !isEmpty(n["at_clause"]) {
		return "", "", refuse("AT (time travel) on "+name, pos(n), "")
	}
	if len(list(n, "column_name_alias")) > 0 {
		return "", "", refuse("a column list on table alias of "+name, pos(n), "")
	}
	lname := strings.ToLower(name)
	alias := strings.ToLower(str(n, "alias"))
	if alias == "" {
		alias = lname
	}
	if lname == c.idx.optout {
		return "", "", refuse("table "+name, pos(n), "the opt-out list can never be queried")
	}
	var rel relation
	var source string
	if cte, ok := c.ctes[lname]; ok {
		rel = *cte
		source = quoteIdent("cte_" + lname)
	} else if tmpl, ok := c.idx.tables[lname]; ok {
		rel = *tmpl
		rel.unique = rel.patient && !rel.public && c.unique[lname]
		source = quoteIdent(ViewName(tmpl.table))
		if sc.capRows > 0 && eventTable(tmpl) {
			source = c.capped(tmpl, sc.capRows)
		}
	} else if strings.ContainsAny(name, "./\\:*?") {
		return "", "", refuse(fmt.Sprintf("file or URL %q", name), pos(n), "only catalog tables may be read")
	} else {
		return "", "", refuse("unknown table "+name, pos(n), "only catalog tables may be read (see the dataset catalog)"+didYouMean(name, c.tableNames()))
	}
	rel.alias = alias
	if err := c.addRel(sc, &rel, pos(n)); err != nil {
		return "", "", err
	}
	pid := ""
	if rel.patient {
		pid = qualified(&rel, rel.col(c.cat.PrivacyUnit))
	}
	return source + " AS " + quoteIdent(alias), pid, nil
}

// joinCap is how many rows of each patient each event table of a FROM may
// contribute, or 0 for no cap. A join of two event tables on the patient
// (a self-join, or events with prescriptions) gives one patient as many
// rows as the product of theirs, so one patient with many rows could make
// a query slow or run out of memory, and whether it does would tell about
// that patient. With m ≥ 2 event tables each keeps at most
// ⌊W^(1/m)⌋ rows of each patient, W the catalog's
// max_join_rows_per_patient: no patient then adds more than W joined rows.
// Which rows are kept depends only on the seed and the patient's own rows
// (capped). Per-patient CTEs and tables declared one row per patient are
// not event tables; neither are lookup tables. Counting from the syntax and
// the catalog alone, the broker and the sandbox cap alike.
func (c *compiler) joinCap(from obj) int {
	m := 0
	var walk func(n obj)
	walk = func(n obj) {
		switch str(n, "type") {
		case "JOIN":
			walk(sub(n, "left"))
			walk(sub(n, "right"))
		case "BASE_TABLE":
			name := strings.ToLower(str(n, "table_name"))
			if _, isCTE := c.ctes[name]; isCTE {
				return
			}
			if t := c.idx.tables[name]; t != nil && eventTable(t) {
				m++
			}
		}
	}
	walk(from)
	if m < 2 {
		return 0
	}
	w := float64(c.cat.Policy.maxJoinRows())
	r := int(math.Floor(math.Pow(w, 1/float64(m)) + 1e-9))
	for r > 1 && math.Pow(float64(r), float64(m)) > w {
		r--
	}
	return max(r, 1)
}

// eventTable reports whether a catalog table may hold many rows per
// patient: a patient table the catalog does not declare one row per
// patient.
func eventTable(t *relation) bool { return t.patient && !t.public && !t.perPatient }

// capped returns the source of table t with each patient's rows capped at
// r, a CTE of the rewrite shared by every use of t with that cap: the
// patients with more than r rows keep r of them, ranked by a keyed hash of
// (seed, the row's values), every other patient keeps all.
func (c *compiler) capped(t *relation, r int) string {
	name := fmt.Sprintf("__tre_cap_%s_%d", strings.ToLower(t.table), r)
	q := quoteIdent(name)
	if c.capNames[name] {
		return q
	}
	if c.capNames == nil {
		c.capNames = make(map[string]bool)
	}
	c.capNames[name] = true
	view := quoteIdent(ViewName(t.table))
	pu := quoteIdent(c.cat.PrivacyUnit)
	var cols []string
	for _, col := range t.cols {
		if col.role != RoleForbidden {
			cols = append(cols, quoteIdent(col.name))
		}
	}
	list := strings.Join(cols, ", ")
	heavy := fmt.Sprintf("(SELECT %s FROM %s GROUP BY %s HAVING count(*) > %d)", pu, view, pu, r)
	c.with = append(c.with, fmt.Sprintf(`%s AS (SELECT %s FROM %s ANTI JOIN %s AS h USING (%s) UNION ALL SELECT %s FROM (SELECT %s, row_number() OVER (PARTITION BY %s ORDER BY hash(%d::UBIGINT, %s)) AS "__r" FROM %s SEMI JOIN %s AS h USING (%s)) WHERE "__r" <= %d)`,
		q, list, view, heavy, pu, list, list, pu, c.seed, list, view, heavy, pu, r))
	return q
}

// join validates a join: patient relations join only on the privacy unit;
// public lookup tables join by equality on one of their columns.
func (c *compiler) join(n obj, sc *scope, depth int) (string, string, error) {
	if err := knownKeys(n, "JOIN", keysJoin); err != nil {
		return "", "", err
	}
	switch rt := str(n, "ref_type"); rt {
	case "REGULAR":
	case "CROSS":
		return "", "", refuse("a cross join", pos(n), "write JOIN … ON a."+c.cat.PrivacyUnit+" = b."+c.cat.PrivacyUnit+" (or join a lookup table on its code column); comma joins and CROSS JOIN are not supported")
	default:
		return "", "", refuse(strings.ToLower(rt)+" join", pos(n), "use JOIN … ON or USING")
	}
	jt := str(n, "join_type")
	if jt != "INNER" && jt != "LEFT" {
		return "", "", refuse(jt+" JOIN", pos(n), "only INNER and LEFT joins are supported")
	}
	first := len(sc.rels)
	lsql, lpid, err := c.fromItem(sub(n, "left"), sc, depth+1)
	if err != nil {
		return "", "", err
	}
	mid := len(sc.rels)
	rsql, rpid, err := c.fromItem(sub(n, "right"), sc, depth+1)
	if err != nil {
		return "", "", err
	}
	left, right := sc.rels[first:mid], sc.rels[mid:]
	if jt == "LEFT" && lpid == "" && rpid != "" {
		return "", "", refuse("LEFT JOIN from a lookup table to patient data", pos(n), "put the patient table on the left")
	}
	if jt == "LEFT" {
		for _, r := range right {
			r.nullable = true
		}
	}
	var cond string
	var puEq, keyEq bool
	if using := list(n, "using_columns"); len(using) > 0 {
		quoted := make([]string, 0, len(using))
		if sc.using == nil {
			sc.using = make(map[string]bool)
		}
		for _, u := range using {
			name, _ := u.(string)
			lc, rc := findCol(left, name), findCol(right, name)
			if lc == nil || rc == nil {
				return "", "", refuse("USING ("+name+")", pos(n), "the column must exist on both sides")
			}
			if err := c.joinPair(lc, rc, &puEq, &keyEq, pos(n)); err != nil {
				return "", "", err
			}
			sc.using[strings.ToLower(name)] = true
			quoted = append(quoted, quoteIdent(name))
		}
		cond = " USING (" + strings.Join(quoted, ", ") + ")"
	} else {
		on := sub(n, "condition")
		if on == nil {
			return "", "", refuse("a join without a condition", pos(n), "join on "+c.cat.PrivacyUnit)
		}
		var parts []string
		for _, conj := range conjuncts(on) {
			if s, ok, err := c.joinEquality(conj, sc, left, right, &puEq, &keyEq); err != nil {
				return "", "", err
			} else if ok {
				parts = append(parts, s)
				continue
			}
			s, _, err := c.condition(conj, sc, exprMode{clause: "JOIN condition", inner: sc.inner, noAgg: true}, depth+1, "a JOIN condition")
			if err != nil {
				return "", "", err
			}
			parts = append(parts, s)
		}
		cond = " ON " + strings.Join(parts, " AND ")
	}
	switch {
	case lpid != "" && rpid != "" && !puEq:
		return "", "", refuse("a join of patient tables not on "+c.cat.PrivacyUnit, pos(n), "patient tables may only be joined on "+c.cat.PrivacyUnit)
	case (lpid == "" || rpid == "") && !keyEq && !puEq:
		return "", "", refuse("a lookup join without an equality on a code column", pos(n), "join a lookup table with e.g. ON m.dmd_code = d.dmd_code")
	}
	pid := lpid
	if pid == "" {
		pid = rpid
	}
	return lsql + " " + jt + " JOIN " + rsql + cond, pid, nil
}

// onePerPatient reports whether every relation of a FROM clause is a CTE or
// subquery grouped by the privacy unit, or a catalog table the data proves
// unique per patient (Options.UniqueTables). Joins between patient relations
// are refused unless they equate the privacy unit, and any lookup table
// (whose key need not be unique) disqualifies, so the joined rows then number
// at most one per patient. A table's one_row_per_patient declaration alone
// never qualifies: the rewrite checks it at run time.
func onePerPatient(rels []*relation) bool {
	for _, r := range rels {
		if !(r.derived || r.unique) || !r.patient || r.public {
			return false
		}
	}
	return len(rels) > 0
}

// boundTimes multiplies a bound on a patient's groups by a key's count of
// values n (0: unknown), giving 0 when either is unknown or the product is
// too large to track.
func boundTimes(bound, n int) int {
	if bound <= 0 || n <= 0 || bound > maxGroupBound/n {
		return 0
	}
	return bound * n
}

// declaredOnePerPatient reports whether every patient relation of a FROM
// clause is a per-patient CTE or subquery or a table the catalog declares
// one row per patient: a fact of the query and the catalog alone (proofs
// from the data, Options.UniqueTables, do not count), so the broker and
// the sandbox agree on it.
func declaredOnePerPatient(rels []*relation) bool {
	for _, r := range rels {
		if r.patient && !r.perPatient {
			return false
		}
	}
	return len(rels) > 0
}

// maybeOnePerPatient reports whether every patient relation of a FROM
// clause has at most one row per patient by construction, proof or the
// catalog's declaration (which only a run-time check can confirm).
func maybeOnePerPatient(rels []*relation) bool {
	for _, r := range rels {
		if r.patient && !r.perPatient && !r.unique {
			return false
		}
	}
	return len(rels) > 0
}

func findCol(rels []*relation, name string) *column {
	for _, r := range rels {
		if col := r.col(name); col != nil {
			return col
		}
	}
	return nil
}

// joinPair classifies an equality between a left and a right column.
func (c *compiler) joinPair(lc, rc *column, puEq, keyEq *bool, p int) error {
	lpu, rpu := lc.role == RolePrivacyUnit, rc.role == RolePrivacyUnit
	switch {
	case lpu && rpu:
		*puEq = true
	case lpu || rpu:
		return refuse("a join of "+c.cat.PrivacyUnit+" to another column", p, "the privacy unit may only equal the privacy unit")
	case lc.role == RoleForbidden || rc.role == RoleForbidden:
		return refuse("a join on a forbidden column", p, "")
	case (lc.role == RoleCode || lc.role == RoleCategorical) && (rc.role == RoleCode || rc.role == RoleCategorical):
		*keyEq = true
	}
	return nil
}

// joinEquality handles "a.x = b.y" between the two sides of a join.
func (c *compiler) joinEquality(n obj, sc *scope, left, right []*relation, puEq, keyEq *bool) (string, bool, error) {
	if str(n, "class") != "COMPARISON" || str(n, "type") != "COMPARE_EQUAL" {
		return "", false, nil
	}
	l, r := sub(n, "left"), sub(n, "right")
	if str(l, "class") != "COLUMN_REF" || str(r, "class") != "COLUMN_REF" {
		return "", false, nil
	}
	lrel, lcol, err := c.resolve(l, sc)
	if err != nil {
		return "", false, err
	}
	rrel, rcol, err := c.resolve(r, sc)
	if err != nil {
		return "", false, err
	}
	in := func(rels []*relation, x *relation) bool {
		for _, y := range rels {
			if y == x {
				return true
			}
		}
		return false
	}
	switch {
	case in(left, lrel) && in(right, rrel):
	case in(right, lrel) && in(left, rrel):
		lrel, rrel, lcol, rcol = rrel, lrel, rcol, lcol
	default:
		if lcol.role == RolePrivacyUnit || rcol.role == RolePrivacyUnit {
			return "", false, refuse("a condition on "+c.cat.PrivacyUnit+" within one side of a join", pos(n), "")
		}
		return "", false, nil
	}
	if err := c.joinPair(lcol, rcol, puEq, keyEq, pos(n)); err != nil {
		return "", false, err
	}
	return "(" + qualified(lrel, lcol) + " = " + qualified(rrel, rcol) + ")", true, nil
}

// conjuncts splits a condition on top-level AND.
func conjuncts(n obj) []obj {
	if str(n, "class") == "CONJUNCTION" && str(n, "type") == "CONJUNCTION_AND" {
		var out []obj
		for _, ch := range list(n, "children") {
			o, _ := ch.(obj)
			out = append(out, conjuncts(o)...)
		}
		return out
	}
	return []obj{n}
}

// compileOuter validates the released query: its groups and aggregates.
func (c *compiler) compileOuter(node obj) (*query, error) {
	sc := &scope{capRows: c.joinCap(sub(node, "from_table"))}
	from, pid, err := c.fromItem(sub(node, "from_table"), sc, 1)
	if err != nil {
		return nil, err
	}
	if pid == "" {
		return nil, refuse("a query of lookup tables only", -1, "a released query must count patients; read a patient table")
	}
	q := &query{from: from, sc: sc, pid: pid, onePerPatient: onePerPatient(sc.rels), maybeOnePerPatient: maybeOnePerPatient(sc.rels), declaredOne: declaredOnePerPatient(sc.rels)}
	if h := sub(node, "having"); h != nil {
		return nil, refuse("HAVING", pos(h), "it filters on exact aggregates before protection; filter the released table instead")
	}
	var ranges map[string]*dateRange
	if w := sub(node, "where_clause"); w != nil {
		var parts []string
		ranges = c.whereRanges(conjuncts(w), sc)
		for _, conj := range conjuncts(w) {
			s, _, err := c.condition(conj, sc, exprMode{clause: "WHERE", noAgg: true}, 1, "WHERE")
			if err != nil {
				return nil, err
			}
			parts = append(parts, s)
			q.predicates = append(q.predicates, canonicalText(s, sc.rels))
		}
		q.where = strings.Join(parts, " AND ")
	}
	q.predicates = append(q.predicates, c.innerPreds...)
	sortStrings(q.predicates)
	items := list(node, "select_list")
	// GROUP BY may name select aliases or positions.
	aliases := make(map[string]obj, len(items))
	for _, it := range items {
		item, _ := it.(obj)
		if a := strings.ToLower(str(item, "alias")); a != "" {
			if _, dup := aliases[a]; dup {
				return nil, refuse("output name "+a+" repeated", pos(item), "give every released column its own name")
			}
			aliases[a] = item
		}
	}
	groupExprs := list(node, "group_expressions")
	if len(groupExprs) > maxGroupKeys {
		return nil, refuse(fmt.Sprintf("%d GROUP BY columns", len(groupExprs)), -1, fmt.Sprintf("at most %d are allowed", maxGroupKeys))
	}
	q.groupBound, q.specBound = 1, 1
	for _, ge := range groupExprs {
		g, _ := ge.(obj)
		target, name := g, ""
		if str(g, "class") == "CONSTANT" {
			raw := fmt.Sprint(sub(g, "value")["value"])
			idx, err := strconv.Atoi(raw)
			if err != nil || idx < 1 || idx > len(items) {
				return nil, refuse("GROUP BY "+raw, pos(g), fmt.Sprintf("the SELECT list has no column %s", raw))
			}
			target, _ = items[idx-1].(obj)
			name = strings.ToLower(str(target, "alias"))
		} else if str(g, "class") == "COLUMN_REF" && len(list(g, "column_names")) == 1 {
			cn, _ := list(g, "column_names")[0].(string)
			if a, ok := aliases[strings.ToLower(cn)]; ok {
				if _, _, err := c.resolve(g, sc); err != nil {
					target, name = a, strings.ToLower(cn)
				}
			}
		}
		c.refs = make(map[*relation]bool)
		gsql, v, err := c.groupKey(target, sc)
		refs := c.refs
		c.refs = nil
		if err != nil {
			return nil, err
		}
		ofPatient := true
		for r := range refs {
			ofPatient = ofPatient && r.patient && !r.public && (r.derived || r.unique)
		}
		// A key proven (groupBound) or declared (specBound) per patient
		// counts once; any other needs a bucket count, or nothing is known.
		n := 0
		if !ofPatient || !v.patient {
			n = c.bucketCount(target, sc, ranges)
		}
		if !ofPatient {
			q.groupBound = boundTimes(q.groupBound, n)
		}
		if !v.patient {
			q.specBound = boundTimes(q.specBound, n)
		}
		if name == "" {
			name = defaultName(target)
		}
		for _, prev := range q.groups {
			if prev.sql == gsql {
				return nil, refuse("GROUP BY "+name+" twice", pos(g), "")
			}
		}
		q.groups = append(q.groups, groupKey{name: name, sql: gsql, v: v, ofPatient: ofPatient})
	}
	if len(items) == 0 {
		return nil, refuse("an empty SELECT", -1, "")
	}
	for _, it := range items {
		if w := findClass(it, "WINDOW"); w != nil {
			return nil, refuse("window function "+strings.ToLower(str(w, "function_name")), pos(w), "window functions compare patients with each other")
		}
		if s := findClass(it, "STAR"); s != nil {
			return nil, refuse("SELECT *", pos(s), "name the groups and aggregates to release")
		}
	}
	if err := c.modifiers(node, q, aliases); err != nil {
		return nil, err
	}
	for _, it := range items {
		item, _ := it.(obj)
		if err := c.selectItem(item, sc, q, aliases); err != nil {
			return nil, err
		}
	}
	if len(q.aggs) == 0 {
		return nil, refuse("a SELECT without an aggregate", -1, "release counts, sums or means, e.g. count(*)")
	}
	// count(pid) and count(DISTINCT pid) of the patient every input row
	// belongs to: __tre_input keeps no NULL q.pid, so the NOT NULL
	// indicator is always 1 and they are count(*) and the patient count.
	// Without an argument the rewrite knows each contribution.
	for i := range q.aggs {
		if c.shortcuts && q.aggs[i].pu != "" && q.aggs[i].pu == q.pid {
			q.aggs[i].arg = ""
		}
	}
	if len(q.aggs) > maxAggregates {
		return nil, refuse(fmt.Sprintf("%d aggregates", len(q.aggs)), -1, fmt.Sprintf("at most %d are allowed", maxAggregates))
	}
	// The aggregates that are exactly the group's distinct patient count:
	// suppression decides on them (dp.AggSpec.PatientCount), or else on a
	// hidden noisy patient count. Only facts of the query and the catalog
	// count, so the broker's Spec is the sandbox's.
	for i := range q.aggs {
		a := &q.aggs[i]
		ofRoot := a.pu != "" && a.pu == q.pid
		switch {
		case a.kind == aggCountPatients && ofRoot:
			a.spec.PatientCount = true
		case a.kind == aggCountRows && q.declaredOne && (a.whole || ofRoot):
			a.spec.PatientCount = true
		}
	}
	c.uniqueNames(q)
	return q, nil
}

// modifiers accepts ORDER BY on output columns (ordering is done after
// protection, so it is dropped) and refuses DISTINCT and LIMIT, which would
// select rows by exact values.
func (c *compiler) modifiers(node obj, q *query, aliases map[string]obj) error {
	for _, m := range list(node, "modifiers") {
		mod, _ := m.(obj)
		switch str(mod, "type") {
		case "ORDER_MODIFIER":
			for _, o := range list(mod, "orders") {
				ord, _ := o.(obj)
				if err := knownKeys(ord, "ORDER BY", keysOrder); err != nil {
					return err
				}
				e := sub(ord, "expression")
				ok := false
				switch str(e, "class") {
				case "CONSTANT":
					ok = true // a position: checked by DuckDB's own semantics, harmless here
				case "COLUMN_REF":
					if names := list(e, "column_names"); len(names) == 1 {
						n, _ := names[0].(string)
						n = strings.ToLower(n)
						_, ok = aliases[n]
						for _, g := range q.groups {
							ok = ok || g.name == n
						}
					}
				}
				if !ok {
					return refuse("ORDER BY expression", pos(e), "order by a released column's name; ordering happens after protection")
				}
			}
		case "LIMIT_MODIFIER", "LIMIT_PERCENT_MODIFIER":
			return refuse("LIMIT", -1, "it selects groups by exact values; filter the released table instead")
		case "DISTINCT_MODIFIER":
			return refuse("SELECT DISTINCT", -1, "it releases row values; use GROUP BY with an aggregate")
		default:
			return refuse("query modifier "+strings.ToLower(str(mod, "type")), -1, "")
		}
	}
	return nil
}

func defaultName(n obj) string {
	switch str(n, "class") {
	case "COLUMN_REF":
		names := list(n, "column_names")
		s, _ := names[len(names)-1].(string)
		return strings.ToLower(s)
	case "FUNCTION":
		name := strings.ToLower(str(n, "function_name"))
		if name == "count_star" {
			return "count"
		}
		if ch := list(n, "children"); len(ch) > 0 {
			last, _ := ch[len(ch)-1].(obj)
			if str(last, "class") == "COLUMN_REF" {
				return name + "_" + defaultName(last)
			}
		}
		return name
	}
	return ""
}

func (c *compiler) uniqueNames(q *query) {
	seen := make(map[string]int)
	fix := func(name *string, i int, prefix string) {
		if *name == "" {
			*name = fmt.Sprintf("%s%d", prefix, i+1)
		}
		base := *name
		for seen[*name] > 0 {
			seen[base]++
			*name = fmt.Sprintf("%s_%d", base, seen[base])
		}
		seen[*name]++
	}
	for i := range q.groups {
		fix(&q.groups[i].name, i, "group")
	}
	for i := range q.aggs {
		fix(&q.aggs[i].spec.Name, i, "aggregate")
	}
}

var dateCastRe = regexp.MustCompile(`CAST\('(\d{4}-\d{2}-\d{2})' AS DATE\)`)

// groupKey validates one GROUP BY expression.
func (c *compiler) groupKey(n obj, sc *scope) (string, val, error) {
	m := exprMode{clause: "GROUP BY", noAgg: true}
	why := "group by categorical or code columns, date buckets (date_trunc, year, month, quarter) or CASE expressions with literal results"
	switch str(n, "class") {
	case "COLUMN_REF":
		rel, col, err := c.resolve(n, sc)
		if err != nil {
			return "", val{}, err
		}
		switch {
		case col.role == RolePrivacyUnit:
			return "", val{}, refuse("GROUP BY "+col.name, pos(n), "the privacy unit identifies patients")
		case col.role == RoleForbidden:
			return "", val{}, refuse("GROUP BY "+col.name, pos(n), "the column is forbidden by the catalog")
		case col.role == RoleDate:
			return "", val{}, refuse("GROUP BY date column "+col.name, pos(n), "group by a bucket such as date_trunc('month', "+col.name+") or year("+col.name+")")
		case !col.v.groupable:
			return "", val{}, refuse("GROUP BY "+col.role.String()+" column "+col.name, pos(n), "bucket it with CASE WHEN … THEN 'label' … END")
		}
		return qualified(rel, col), col.v, nil
	case "FUNCTION":
		name := strings.ToLower(str(n, "function_name"))
		switch name {
		case "date_trunc", "datetrunc", "year", "month", "quarter":
		case "left", "substr", "substring", "lower", "upper":
			// A prefix of a code (an ICD-10 chapter, a SNOMED stem) is a
			// coarser code: groupable, with no public domain.
			if kids := list(n, "children"); len(kids) > 0 {
				first, _ := kids[0].(obj)
				if str(first, "class") == "COLUMN_REF" {
					if _, col, err := c.resolve(first, sc); err == nil && col.v.groupable && col.v.kind == kText {
						s, v, err := c.expr(n, sc, m, 1)
						if err != nil {
							return "", val{}, err
						}
						v.groupable, v.patient = true, col.v.patient
						return s, v, nil
					}
				}
			}
			return "", val{}, refuse("GROUP BY "+name+"(…)", pos(n), "only a prefix or case change of a code or categorical column may be a group")
		default:
			if _, _, err := c.expr(n, sc, m, 1); err != nil {
				return "", val{}, err
			}
			return "", val{}, refuse("GROUP BY "+name+"(…)", pos(n), why)
		}
		s, v, err := c.expr(n, sc, m, 1)
		if err != nil {
			return "", val{}, err
		}
		if name == "date_trunc" || name == "datetrunc" {
			// DuckDB truncates to a TIMESTAMP; every allowed unit is a day or
			// longer, so the key reads better, and is the same, as a DATE.
			s = "CAST(" + s + " AS DATE)"
		}
		v.groupable = true
		return s, v, nil
	case "CASE":
		for _, ck := range list(n, "case_checks") {
			chk, _ := ck.(obj)
			if !isLiteral(sub(chk, "then_expr")) {
				return "", val{}, refuse("GROUP BY CASE with a computed result", pos(n), "every THEN and ELSE must be a literal such as '40-59'")
			}
		}
		if e := sub(n, "else_expr"); e != nil && !isLiteral(e) {
			return "", val{}, refuse("GROUP BY CASE with a computed result", pos(n), "every THEN and ELSE must be a literal such as '40-59'")
		}
		s, v, err := c.expr(n, sc, m, 1)
		if err != nil {
			return "", val{}, err
		}
		v.groupable = true
		v.isConst = false
		return s, v, nil
	}
	if _, _, err := c.expr(n, sc, m, 1); err != nil {
		return "", val{}, err
	}
	return "", val{}, refuse("GROUP BY expression", pos(n), why)
}

func (r Role) String() string { return string(r) }

func isLiteral(n obj) bool {
	if n == nil {
		return false
	}
	if str(n, "class") == "CONSTANT" {
		return true
	}
	// DATE '…' and 'x'::VARCHAR are casts of a constant.
	return str(n, "class") == "CAST" && str(sub(n, "child"), "class") == "CONSTANT"
}

// selectItem validates one outer SELECT item: a group key or a supported
// aggregate.
func (c *compiler) selectItem(item obj, sc *scope, q *query, aliases map[string]obj) error {
	alias := strings.ToLower(str(item, "alias"))
	switch str(item, "class") {
	case "STAR":
		return refuse("SELECT *", pos(item), "name the groups and aggregates to release")
	case "FUNCTION":
		if outerAggs[strings.ToLower(str(item, "function_name"))] != "" {
			a, err := c.aggregate(item, sc)
			if err != nil {
				return err
			}
			a.spec.Name = alias
			if alias == "" {
				a.spec.Name = defaultName(item)
			}
			q.aggs = append(q.aggs, a)
			return nil
		}
	}
	if str(item, "class") == "FUNCTION" {
		name := strings.ToLower(str(item, "function_name"))
		if why, bad := refusedAggregates[name]; bad {
			return refuse("aggregate "+name, pos(item), why)
		}
	}
	// Not an aggregate: it must be one of the groups.
	if str(item, "class") == "CONSTANT" {
		return refuse("a literal in SELECT", pos(item), "release groups and aggregates only")
	}
	if containsAggregate(item) {
		return refuse("arithmetic on aggregates", pos(item), "release each aggregate as its own column and combine them after release")
	}
	var s string
	var err error
	if str(item, "class") == "COLUMN_REF" && len(list(item, "column_names")) == 1 {
		cn, _ := list(item, "column_names")[0].(string)
		for _, g := range q.groups {
			if g.name == strings.ToLower(cn) && alias == "" {
				if _, _, rerr := c.resolve(item, sc); rerr != nil {
					return nil // refers to a group by its alias
				}
			}
		}
	}
	s, _, err = c.groupKey(item, sc)
	if err != nil {
		if r, ok := err.(*Refusal); ok && strings.HasPrefix(r.Construct, "GROUP BY") {
			return refuse(strings.Replace(r.Construct, "GROUP BY", "SELECT", 1), r.Pos, strings.TrimPrefix(r.Message[strings.Index(r.Message, "allowed")+len("allowed"):], ": "))
		}
		return err
	}
	for i, g := range q.groups {
		if g.sql == s {
			if alias != "" && alias != g.name {
				q.groups[i].name = alias
			}
			return nil
		}
	}
	return refuse("SELECT "+defaultName(item), pos(item), "a released column must be in GROUP BY or inside an aggregate")
}

func containsAggregate(n obj) bool {
	found := false
	var walk func(v any)
	walk = func(v any) {
		switch x := v.(type) {
		case obj:
			if str(x, "class") == "FUNCTION" {
				name := strings.ToLower(str(x, "function_name"))
				if outerAggs[name] != "" || innerAggs[name] || refusedAggregates[name] != "" {
					found = true
				}
			}
			if str(x, "class") == "WINDOW" {
				found = true
			}
			for _, e := range x {
				walk(e)
			}
		case []any:
			for _, e := range x {
				walk(e)
			}
		}
	}
	walk(n)
	return found
}

// Outer (released) aggregates and their dp kinds.
var outerAggs = map[string]dp.AggKind{
	"count_star":  dp.AggCount,
	"count":       dp.AggCount,
	"sum":         dp.AggSum,
	"avg":         dp.AggMean,
	"mean":        dp.AggMean,
	"stddev":      dp.AggStddev,
	"stddev_samp": dp.AggStddev,
	"var_samp":    dp.AggVariance,
	"variance":    dp.AggVariance,
}

// refusedAggregates explain why an aggregate may not be released.
var refusedAggregates = map[string]string{
	"min":                   "an extreme value belongs to one patient; use min inside a per-patient CTE grouped by patient_id",
	"max":                   "an extreme value belongs to one patient; use max inside a per-patient CTE grouped by patient_id",
	"arg_max":               "it returns one patient's value; use it inside a per-patient CTE grouped by patient_id",
	"arg_min":               "it returns one patient's value; use it inside a per-patient CTE grouped by patient_id",
	"max_by":                "it returns one patient's value; use it inside a per-patient CTE grouped by patient_id",
	"min_by":                "it returns one patient's value; use it inside a per-patient CTE grouped by patient_id",
	"list":                  "it releases individual values",
	"array_agg":             "it releases individual values",
	"string_agg":            "it releases individual values",
	"group_concat":          "it releases individual values",
	"listagg":               "it releases individual values",
	"any_value":             "it releases an individual value",
	"first":                 "it releases an individual value",
	"last":                  "it releases an individual value",
	"mode":                  "it releases an individual value",
	"histogram":             "it releases individual values",
	"median":                "quantiles are not released yet; use avg",
	"quantile":              "quantiles are not released yet; use avg",
	"quantile_cont":         "quantiles are not released yet; use avg",
	"quantile_disc":         "quantiles are not released yet; use avg",
	"approx_count_distinct": "only count(DISTINCT patient_id) is supported",
	"stddev_pop":            "use stddev (sample)",
	"var_pop":               "use variance (sample)",
	"bit_and":               "it releases individual values",
	"bit_or":                "it releases individual values",
	"bool_and":              "use avg of a 0/1 CASE expression",
	"bool_or":               "use count(DISTINCT patient_id) with a WHERE condition",
	"product":               "products have no bounded sensitivity",
	"entropy":               "not supported",
	"kurtosis":              "not supported",
	"skewness":              "not supported",
	"corr":                  "not supported",
	"covar_samp":            "not supported",
	"covar_pop":             "not supported",
	"regr_slope":            "not supported",
}

// innerAggs are allowed inside per-patient queries only.
var innerAggs = map[string]bool{
	"count_star": true, "count": true, "sum": true, "avg": true, "mean": true, "min": true, "max": true,
	"arg_max": true, "arg_min": true, "max_by": true, "min_by": true, "bool_or": true, "bool_and": true,
	"median": true,
}

// aggregate validates one released aggregate.
func (c *compiler) aggregate(n obj, sc *scope) (aggregate, error) {
	name := strings.ToLower(str(n, "function_name"))
	if err := c.checkFunctionNode(n, name); err != nil {
		return aggregate{}, err
	}
	if !isEmpty(n["order_bys"]) {
		return aggregate{}, refuse("ORDER BY inside "+name, pos(n), "")
	}
	args := list(n, "children")
	distinct, _ := n["distinct"].(bool)
	var filter string
	if f := sub(n, "filter"); f != nil {
		s, _, err := c.condition(f, sc, exprMode{clause: "FILTER", noAgg: true}, 1, "FILTER")
		if err != nil {
			return aggregate{}, err
		}
		filter = s
	}
	withFilter := func(s string) string {
		if filter == "" {
			return s
		}
		return "CASE WHEN " + filter + " THEN " + s + " END"
	}
	a := aggregate{spec: dp.AggSpec{Kind: outerAggs[name]}}
	switch name {
	case "count_star":
		a.kind = aggCountRows
		a.whole = filter == ""
		if filter != "" {
			a.arg = withFilter("1")
		}
		return a, nil
	case "count":
		if len(args) != 1 {
			return aggregate{}, refuse("count with several arguments", pos(n), "")
		}
		arg, _ := args[0].(obj)
		if psql, isPU, err := c.privacyUnitRef(arg, sc); err != nil {
			return aggregate{}, err
		} else if isPU {
			if filter == "" {
				a.pu = psql
			}
			if !distinct {
				a.kind = aggCountRows
				a.arg = withFilter("CASE WHEN " + psql + " IS NOT NULL THEN 1 END")
				return a, nil
			}
			a.kind = aggCountPatients
			a.spec.Kind = dp.AggCountPatients
			a.arg = withFilter("CASE WHEN " + psql + " IS NOT NULL THEN 1 END")
			if psql == "" {
				a.arg = ""
			}
			return a, nil
		}
		if distinct {
			return aggregate{}, refuse("count(DISTINCT …) of a column other than "+c.cat.PrivacyUnit, pos(n), "only count(DISTINCT "+c.cat.PrivacyUnit+") is supported")
		}
		s, _, err := c.expr(arg, sc, exprMode{clause: name, noAgg: true}, 1)
		if err != nil {
			return aggregate{}, err
		}
		a.kind = aggCountRows
		a.arg = withFilter("CASE WHEN " + s + " IS NOT NULL THEN 1 END")
		return a, nil
	}
	if distinct {
		return aggregate{}, refuse(name+"(DISTINCT …)", pos(n), "DISTINCT is only supported in count(DISTINCT "+c.cat.PrivacyUnit+")")
	}
	if len(args) != 1 {
		return aggregate{}, refuse(name+" with several arguments", pos(n), "")
	}
	arg, _ := args[0].(obj)
	s, v, err := c.expr(arg, sc, exprMode{clause: name, noAgg: true}, 1)
	if err != nil {
		return aggregate{}, err
	}
	switch v.kind {
	case kBool:
		s, v.lo, v.hi = "CAST("+s+" AS INTEGER)", 0, 1
		v.kind = kNum
	case kNull:
		return aggregate{}, refuse(name+" of NULL", pos(n), "")
	}
	if v.bounded() && v.lo == v.hi {
		// sum(1) and the like: widen to include 0 so the bounds are an
		// interval dp accepts; the value still lies inside.
		v.lo, v.hi = math.Min(v.lo, 0), math.Max(v.hi, 0)
		if v.lo == v.hi {
			return aggregate{}, refuse(name+" of the constant 0", pos(arg), "")
		}
	}
	if !v.bounded() {
		return aggregate{}, refuse(name+" of an expression without bounds", pos(arg), "its values cannot be bounded from the catalog; use a numeric column or wrap it in greatest(lower, least(upper, …))")
	}
	if math.Max(math.Abs(v.lo), math.Abs(v.hi)) > dp.MaxAbsBound {
		return aggregate{}, refuse(fmt.Sprintf("%s of values bounded by [%s, %s]", name, fmtNum(v.lo), fmtNum(v.hi)), pos(arg), fmt.Sprintf("bounds must lie within ±%g; narrow them with greatest(lower, least(upper, …))", dp.MaxAbsBound))
	}
	a.kind = aggValue
	a.spec.Lower, a.spec.Upper = v.lo, v.hi
	a.arg = withFilter("CAST(" + s + " AS DOUBLE)")
	return a, nil
}

// parserQualified are the functions DuckDB's parser itself qualifies with
// the schema main (the SQL-standard forms TRIM(…) and SUBSTRING(…)). The
// compiler emits every function unqualified, so main.trim is the builtin.
var parserQualified = map[string]bool{"trim": true, "substring": true}

// checkFunctionNode refuses schema-qualified names and unknown fields.
func (c *compiler) checkFunctionNode(n obj, name string) error {
	if err := knownKeys(n, "function "+name, keysFunction); err != nil {
		return err
	}
	if s, cat := str(n, "schema"), str(n, "catalog"); (s != "" || cat != "") && !(s == "main" && cat == "" && parserQualified[name]) {
		return refuse("function "+strings.Trim(cat+"."+s+"."+name, "."), pos(n), "functions may not be schema-qualified")
	}
	if e, _ := n["export_state"].(bool); e {
		return refuse("EXPORT_STATE on "+name, pos(n), "")
	}
	return nil
}

// spec builds the dp.Spec from the catalog policy and the options.
func (c *compiler) spec(q *query, opts Options) (dp.Spec, error) {
	p := c.cat.Policy
	eps := opts.Epsilon
	if eps == 0 {
		eps = p.DefaultEpsilon
	}
	switch {
	case math.IsNaN(eps) || math.IsInf(eps, 0) || eps <= 0:
		return dp.Spec{}, refuse(fmt.Sprintf("epsilon %v", eps), -1, "ε must be a finite number above 0")
	case eps > p.MaxEpsilon:
		return dp.Spec{}, refuse(fmt.Sprintf("epsilon %v", eps), -1, fmt.Sprintf("this dataset allows at most %v per query", p.MaxEpsilon))
	case eps < p.minEpsilon():
		return dp.Spec{}, refuse(fmt.Sprintf("epsilon %v", eps), -1, fmt.Sprintf("this dataset needs at least %v per query", p.minEpsilon()))
	}
	s := dp.Spec{
		MaxGroupsPerPatient: p.MaxGroupsPerPatient,
		MaxRowsPerGroup:     p.MaxRowsPerGroup,
		Epsilon:             eps,
		Threshold:           p.SmallCellThreshold,
		RoundingBase:        p.RoundingBase,
		Rounding:            p.Rounding,
	}
	// Fewer groups per patient than the catalog's k proven by the query
	// itself (no GROUP BY: one; keys of the patient: one; a month bucket
	// of a one-year range: twelve): noise for that k. The rewrite enforces
	// the Spec's k, so a wrong catalog claim cannot break the bound.
	if q.specBound > 0 && q.specBound < s.MaxGroupsPerPatient {
		s.MaxGroupsPerPatient = q.specBound
	}
	// One row per patient by the catalog and the query: C = 1, enforced
	// by the rewrite.
	if q.declaredOne {
		s.MaxRowsPerGroup = 1
	}
	public := true
	keys := 1
	for _, g := range q.groups {
		gs := dp.GroupSpec{Name: g.name}
		if g.v.hasDomain {
			// A copy: the domain may be the catalog's own slice.
			gs.Domain = append([]string(nil), g.v.domain...)
			if keys <= maxCrossDomain {
				keys *= len(g.v.domain)
			}
		} else {
			public = false
		}
		s.Groups = append(s.Groups, gs)
	}
	if public && len(q.groups) > 0 && keys > maxCrossDomain {
		return dp.Spec{}, refuse("a grouping with more than 10,000 combinations", -1, "group by fewer columns")
	}
	if !public {
		// Keys are not public: the release depends on DP partition
		// selection, which costs δ. Group specs drop their domains so dp
		// does not treat a partly public grouping as public.
		s.Delta = p.Delta
		for i := range s.Groups {
			s.Groups[i].Domain = nil
		}
	}
	for _, a := range q.aggs {
		s.Aggregates = append(s.Aggregates, a.spec)
	}
	return s, nil
}

// findClass returns the first expression node of the given class under v.
func findClass(v any, class string) obj {
	switch x := v.(type) {
	case obj:
		if str(x, "class") == class {
			return x
		}
		for _, e := range x {
			if f := findClass(e, class); f != nil {
				return f
			}
		}
	case []any:
		for _, e := range x {
			if f := findClass(e, class); f != nil {
				return f
			}
		}
	}
	return nil
}
