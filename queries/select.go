package queries

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

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
	ranges, err := c.outerWhere(node, q, sc)
	if err != nil {
		return nil, err
	}
	items := list(node, "select_list")
	aliases, err := selectAliases(items)
	if err != nil {
		return nil, err
	}
	if err := c.outerGroups(node, q, sc, items, aliases, ranges); err != nil {
		return nil, err
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
	if err := c.outerAggregates(q); err != nil {
		return nil, err
	}
	c.uniqueNames(q)
	q.late = c.late(q)
	return q, nil
}

// outerWhere compiles the released query's WHERE into q.conds and its
// predicates (with the per-patient queries' ones) into q.predicates, and
// returns the date ranges it bounds.
func (c *compiler) outerWhere(node obj, q *query, sc *scope) (map[string]*dateRange, error) {
	var ranges map[string]*dateRange
	if w := sub(node, "where_clause"); w != nil {
		ranges = c.whereRanges(conjuncts(w), sc)
		for _, conj := range conjuncts(w) {
			var s string
			var err error
			reads := c.reading(func() { s, _, err = c.condition(conj, sc, exprMode{clause: "WHERE", noAgg: true}, 1, "WHERE") })
			if err != nil {
				return nil, err
			}
			q.conds = append(q.conds, cond{sql: s, reads: reads})
			q.predicates = append(q.predicates, canonicalText(s, sc.rels))
		}
	}
	q.predicates = append(q.predicates, c.innerPreds...)
	sortStrings(q.predicates)
	return ranges, nil
}

// selectAliases maps the select list's output names to their items: GROUP
// BY may name select aliases or positions.
func selectAliases(items []any) (map[string]obj, error) {
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
	return aliases, nil
}

// outerGroups compiles the GROUP BY keys into q.groups and bounds how many
// groups a patient can fall in (q.groupBound, q.specBound).
func (c *compiler) outerGroups(node obj, q *query, sc *scope, items []any, aliases map[string]obj, ranges map[string]*dateRange) error {
	groupExprs := list(node, "group_expressions")
	if len(groupExprs) > maxGroupKeys {
		return refuse(fmt.Sprintf("%d GROUP BY columns", len(groupExprs)), -1, fmt.Sprintf("at most %d are allowed", maxGroupKeys))
	}
	q.groupBound, q.specBound = 1, 1
	for _, ge := range groupExprs {
		g, _ := ge.(obj)
		if err := c.outerGroup(g, q, sc, items, aliases, ranges); err != nil {
			return err
		}
	}
	var err error
	q.sets, err = c.groupSets(node, q)
	return err
}

// outerGroup compiles one GROUP BY key g (an expression, a select alias or
// a position) into q.groups.
func (c *compiler) outerGroup(g obj, q *query, sc *scope, items []any, aliases map[string]obj, ranges map[string]*dateRange) error {
	target, name := g, ""
	if str(g, "class") == "CONSTANT" {
		raw := fmt.Sprint(sub(g, "value")["value"])
		idx, err := strconv.Atoi(raw)
		if err != nil || idx < 1 || idx > len(items) {
			return refuse("GROUP BY "+raw, pos(g), fmt.Sprintf("the SELECT list has no column %s", raw))
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
	var gsql string
	var v val
	var err error
	refs := c.reading(func() { gsql, v, err = c.groupKey(target, sc) })
	if err != nil {
		return err
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
			return refuse("GROUP BY "+name+" twice", pos(g), "")
		}
	}
	gk := groupKey{name: name, sql: gsql, v: v, ofPatient: ofPatient, reads: refs, pos: pos(target)}
	if b, ok := c.bucketOf(target, sc); ok && !v.hasDomain {
		gk.bucket, gk.rng = &b, ranges[b.col.sql]
	}
	q.groups = append(q.groups, gk)
	return nil
}

// outerAggregates checks the released aggregates' number and settles what
// the rewrite and suppression need to know of them.
func (c *compiler) outerAggregates(q *query) error {
	if len(q.aggs) == 0 {
		return refuse("a SELECT without an aggregate", -1, "release counts, sums or means, e.g. count(*)")
	}
	c.resolveRatios(q)
	// count(pid) and count(DISTINCT pid) of the patient every input row
	// belongs to (q.pid, or a privacy unit equal to it on every row):
	// __tre_input keeps no NULL q.pid, so the NOT NULL indicator is always
	// 1 and they are count(*) and the patient count. Without an argument
	// the rewrite knows each contribution.
	for i := range q.aggs {
		a := &q.aggs[i]
		a.rootPU = a.pu != "" && c.sameAsRoot(q, a.pu)
		if c.shortcuts && a.rootPU {
			a.arg = ""
		}
	}
	if len(q.aggs) > maxAggregates {
		return refuse(fmt.Sprintf("%d aggregates", len(q.aggs)), -1, fmt.Sprintf("at most %d are allowed", maxAggregates))
	}
	// Quantiles of the same argument (FILTER included) and bounds read one
	// tree, and cost one statistic (dp.AggSpec.Tree).
	trees := map[string]int{}
	for i := range q.aggs {
		a := &q.aggs[i]
		if a.kind != aggQuantile {
			continue
		}
		key := fmt.Sprintf("%s\x00%v\x00%v", a.arg, a.spec.Lower, a.spec.Upper)
		if trees[key] == 0 {
			trees[key] = len(trees) + 1
		}
		a.spec.Tree = trees[key]
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
	proportions(q)
	return nil
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
		if str(item, "function_name") == "/" && containsAggregate(item) {
			return c.ratioItem(item, sc, q, alias)
		}
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
		return refuse("arithmetic on aggregates", pos(item), ratioHint)
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
