package queries

import (
	"fmt"
	"strconv"
	"strings"
)

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
		c.with = append(c.with, fmt.Sprintf("%s AS (%s)", QuoteIdent("cte_"+name), body))
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
	grel, gcol, err := c.perPatientKey(node, what, sc)
	if err != nil {
		return nil, "", err
	}
	gsql := qualified(grel, gcol)
	rel := &relation{patient: true, perPatient: true, derived: true, canon: "derived" + strconv.Itoa(len(c.derived)+1)}
	outs, err := c.perPatientSelect(node, what, sc, rel, grel, gcol)
	if err != nil {
		return nil, "", err
	}
	var having string
	if h := sub(node, "having"); h != nil {
		hsql, _, err := c.condition(h, sc, exprMode{clause: "HAVING of " + what, inner: true}, 1, "HAVING of "+what)
		if err != nil {
			return nil, "", err
		}
		having = hsql
	}
	body, err := c.perPatientBody(node, what, sc, rel, from, gsql, outs, having)
	if err != nil {
		return nil, "", err
	}
	return rel, body, nil
}

// perPatientKey checks a per-patient query is grouped by the privacy unit
// alone, of a relation where it cannot be NULL, and returns that column.
func (c *compiler) perPatientKey(node obj, what string, sc *scope) (*relation, *column, error) {
	groups := list(node, "group_expressions")
	badGroup := func(p int) error {
		return refuse(what+" not grouped by "+c.cat.PrivacyUnit, p, "a CTE or subquery must GROUP BY "+c.cat.PrivacyUnit+" alone, giving one row per patient")
	}
	if len(groups) != 1 {
		return nil, nil, badGroup(pos(node))
	}
	g, _ := groups[0].(obj)
	grel, gcol, isPU, err := c.privacyUnitCol(g, sc)
	if err != nil {
		return nil, nil, err
	}
	if !isPU {
		return nil, nil, badGroup(pos(g))
	}
	if grel.nullable {
		// NULL for every patient without a row on that side: one group
		// would hold many patients under a NULL "patient".
		return nil, nil, refuse(what+" grouped by the "+c.cat.PrivacyUnit+" of "+grel.alias, pos(g), grel.alias+" is on the right of a LEFT JOIN, where "+c.cat.PrivacyUnit+" can be NULL; group by the "+c.cat.PrivacyUnit+" of the left side")
	}
	return grel, gcol, nil
}

// perPatientSelect checks a per-patient query's select list — the privacy
// unit it is grouped by, once and under its own name, and named
// expressions — adds its columns to rel and returns the output SQL.
func (c *compiler) perPatientSelect(node obj, what string, sc *scope, rel, grel *relation, gcol *column) ([]string, error) {
	items := list(node, "select_list")
	if len(items) == 0 {
		return nil, refuse("an empty SELECT in "+what, -1, "")
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
			return nil, refuse(fmt.Sprintf("column name %q", alias), pos(item), "use letters, digits and _ only")
		}
		if prel, pcol, ok, err := c.privacyUnitCol(item, sc); err != nil {
			return nil, err
		} else if ok {
			if sawPU {
				return nil, refuse(c.cat.PrivacyUnit+" selected twice in "+what, pos(item), "")
			}
			sawPU = true
			if prel != grel || pcol != gcol {
				return nil, refuse(c.cat.PrivacyUnit+" of "+prel.alias+" in the SELECT of "+what, pos(item), "select the "+c.cat.PrivacyUnit+" the query is grouped by ("+grel.alias+"."+gcol.name+")")
			}
			name := c.cat.PrivacyUnit
			if alias != "" && alias != strings.ToLower(name) {
				return nil, refuse("renaming "+c.cat.PrivacyUnit, pos(item), "keep its name so joins stay on the privacy unit")
			}
			if err := repeated(name, pos(item)); err != nil {
				return nil, err
			}
			rel.cols = append(rel.cols, column{name: name, role: RolePrivacyUnit})
			outs = append(outs, `"__tre_agg"."__pid" AS `+QuoteIdent(name))
			continue
		}
		col, esql, err := c.perPatientColumn(item, alias, what, sc)
		if err != nil {
			return nil, err
		}
		if err := repeated(col.name, pos(item)); err != nil {
			return nil, err
		}
		rel.cols = append(rel.cols, col)
		outs = append(outs, esql+" AS "+QuoteIdent(col.name))
	}
	if !sawPU {
		return nil, refuse(what+" without "+c.cat.PrivacyUnit+" in its SELECT", pos(node), "select "+c.cat.PrivacyUnit+" so the result can be joined")
	}
	return outs, nil
}

// perPatientColumn compiles one expression of a per-patient select list
// into the column it offers the outer query (named by its alias, or by the
// column it reads) and its SQL.
func (c *compiler) perPatientColumn(item obj, alias, what string, sc *scope) (column, string, error) {
	esql, v, err := c.expr(item, sc, exprMode{clause: "SELECT of " + what, inner: true}, 1)
	if err != nil {
		return column{}, "", err
	}
	name := alias
	if name == "" {
		if cr := list(item, "column_names"); str(item, "class") == "COLUMN_REF" && len(cr) > 0 {
			name, _ = cr[len(cr)-1].(string)
			name = strings.ToLower(name)
		}
	}
	if name == "" {
		return column{}, "", refuse("an unnamed expression in "+what, pos(item), "give it a name with AS")
	}
	if strings.EqualFold(name, c.cat.PrivacyUnit) {
		return column{}, "", refuse("the name "+name+" for an expression in "+what, pos(item), "it names the privacy unit; give the expression another name")
	}
	if v.kind == kInterval {
		return column{}, "", refuse("an interval column "+name+" in "+what, pos(item), "an interval can only be added to or subtracted from a date")
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
	return column{name: name, role: role, v: v}, esql, nil
}

// perPatientBody writes a per-patient query's SQL over the views, with
// its WHERE compiled, and records it, with its shape, among the derived
// queries the broker compares.
func (c *compiler) perPatientBody(node obj, what string, sc *scope, rel *relation, from, gsql string, outs []string, having string) (string, error) {
	var b strings.Builder
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
				return "", err
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
	return b.String(), nil
}
