package queries

import (
	"fmt"
	"math"
	"strings"
)

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
	return QuoteIdent(rel.alias) + "." + QuoteIdent(col.name)
}

// resolve finds the relation and column a COLUMN_REF names.
func (c *compiler) resolve(n obj, sc *scope) (*relation, *column, error) {
	rel, col, err := c.resolveRef(n, sc)
	if err == nil {
		c.noteRead(rel)
	}
	return rel, col, err
}

// noteRead records that the expression being compiled reads rel, for the
// reading around it (if any).
func (c *compiler) noteRead(rels ...*relation) {
	if c.refs == nil {
		return
	}
	for _, r := range rels {
		c.refs[r] = true
	}
}

// reading runs f and returns the relations its column references resolve
// to, adding them to the collection of any reading around it.
func (c *compiler) reading(f func()) map[*relation]bool {
	outer := c.refs
	c.refs = make(map[*relation]bool)
	f()
	got := c.refs
	if outer != nil {
		for r := range got {
			outer[r] = true
		}
	}
	c.refs = outer
	return got
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
		return "(" + body + ") AS " + QuoteIdent(alias), qualified(rel, rel.col(c.cat.PrivacyUnit)), nil
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
		source = QuoteIdent("cte_" + lname)
	} else if tmpl, ok := c.idx.tables[lname]; ok {
		rel = *tmpl
		c.readsCodelists = c.readsCodelists || tmpl.table == CodelistsTable
		rel.unique = rel.patient && !rel.public && c.unique[lname]
		source = QuoteIdent(ViewName(tmpl.table))
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
	return source + " AS " + QuoteIdent(alias), pid, nil
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
	q := QuoteIdent(name)
	if c.capNames[name] {
		return q
	}
	if c.capNames == nil {
		c.capNames = make(map[string]bool)
	}
	c.capNames[name] = true
	view := QuoteIdent(ViewName(t.table))
	pu := QuoteIdent(c.cat.PrivacyUnit)
	var cols []string
	for _, col := range t.cols {
		if col.role != RoleForbidden {
			cols = append(cols, QuoteIdent(col.name))
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
	sc.drops = nil
	lsql, lpid, err := c.fromItem(sub(n, "left"), sc, depth+1)
	if err != nil {
		return "", "", err
	}
	ldrops := sc.drops
	mid := len(sc.rels)
	sc.drops = nil
	rsql, rpid, err := c.fromItem(sub(n, "right"), sc, depth+1)
	if err != nil {
		return "", "", err
	}
	rdrops := sc.drops
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
	var jf joinFacts
	reads := c.reading(func() { cond, jf, err = c.joinCondition(n, sc, left, right, depth) })
	if err != nil {
		return "", "", err
	}
	switch {
	case lpid != "" && rpid != "" && !jf.puEq:
		return "", "", refuse("a join of patient tables not on "+c.cat.PrivacyUnit, pos(n), "patient tables may only be joined on "+c.cat.PrivacyUnit)
	case (lpid == "" || rpid == "") && !jf.keyEq && !jf.puEq:
		return "", "", refuse("a lookup join without an equality on a code column", pos(n), "join a lookup table with e.g. ON m.dmd_code = d.dmd_code")
	}
	pid := lpid
	if pid == "" {
		pid = rpid
	}
	sc.drops = joinDrops(jt, jf, reads, joinSide{lsql, lpid, left, ldrops}, joinSide{rsql, rpid, right, rdrops}, cond)
	return lsql + " " + jt + " JOIN " + rsql + cond, pid, nil
}

// joinCondition validates join n's USING or ON condition between the
// relations left and right: its SQL and what it equates.
func (c *compiler) joinCondition(n obj, sc *scope, left, right []*relation, depth int) (string, joinFacts, error) {
	var jf joinFacts
	if using := list(n, "using_columns"); len(using) > 0 {
		quoted := make([]string, 0, len(using))
		if sc.using == nil {
			sc.using = make(map[string]bool)
		}
		for _, u := range using {
			name, _ := u.(string)
			lr, lc := findCol(left, name)
			rr, rc := findCol(right, name)
			if lc == nil || rc == nil {
				return "", jf, refuse("USING ("+name+")", pos(n), "the column must exist on both sides")
			}
			if err := c.joinPair(lr, lc, rr, rc, &jf, pos(n)); err != nil {
				return "", jf, err
			}
			c.noteRead(lr, rr)
			sc.using[strings.ToLower(name)] = true
			quoted = append(quoted, QuoteIdent(name))
		}
		jf.conds = len(using)
		return " USING (" + strings.Join(quoted, ", ") + ")", jf, nil
	}
	on := sub(n, "condition")
	if on == nil {
		return "", jf, refuse("a join without a condition", pos(n), "join on "+c.cat.PrivacyUnit)
	}
	var parts []string
	for _, conj := range conjuncts(on) {
		if s, ok, err := c.joinEquality(conj, sc, left, right, &jf); err != nil {
			return "", jf, err
		} else if ok {
			parts = append(parts, s)
			continue
		}
		s, _, err := c.condition(conj, sc, exprMode{clause: "JOIN condition", inner: sc.inner, noAgg: true}, depth+1, "a JOIN condition")
		if err != nil {
			return "", jf, err
		}
		parts = append(parts, s)
	}
	jf.conds = len(parts)
	return " ON " + strings.Join(parts, " AND "), jf, nil
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

func findCol(rels []*relation, name string) (*relation, *column) {
	for _, r := range rels {
		if col := r.col(name); col != nil {
			return r, col
		}
	}
	return nil, nil
}

// joinFacts is what a join's condition equates.
type joinFacts struct {
	puEq  bool // the privacy unit of a left and of a right relation
	keyEq bool // code or categorical columns
	// pidRels are the relations of the first privacy-unit equality, left
	// and right; conds counts the condition's conjuncts (USING columns).
	pidRels [2]*relation
	conds   int
}

// joinPair classifies an equality between a column of lr, on the left,
// and one of rr, on the right.
func (c *compiler) joinPair(lr *relation, lc *column, rr *relation, rc *column, jf *joinFacts, p int) error {
	lpu, rpu := lc.role == RolePrivacyUnit, rc.role == RolePrivacyUnit
	switch {
	case lpu && rpu:
		if !jf.puEq {
			jf.pidRels = [2]*relation{lr, rr}
		}
		jf.puEq = true
	case lpu || rpu:
		return refuse("a join of "+c.cat.PrivacyUnit+" to another column", p, "the privacy unit may only equal the privacy unit")
	case lc.role == RoleForbidden || rc.role == RoleForbidden:
		return refuse("a join on a forbidden column", p, "")
	case (lc.role == RoleCode || lc.role == RoleCategorical) && (rc.role == RoleCode || rc.role == RoleCategorical):
		jf.keyEq = true
	}
	return nil
}

// joinEquality handles "a.x = b.y" between the two sides of a join.
func (c *compiler) joinEquality(n obj, sc *scope, left, right []*relation, jf *joinFacts) (string, bool, error) {
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
	if err := c.joinPair(lrel, lcol, rrel, rcol, jf, pos(n)); err != nil {
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
