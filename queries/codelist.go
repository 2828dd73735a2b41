package queries

import (
	"slices"
	"strings"
)

// CodelistsTable is the public lookup table every query may join: one row
// per code of every codelist the broker holds, codelists(codelist, code,
// term). It is not part of any dataset's catalog (a catalog may not declare
// a table of that name); the sandbox attaches the codelists a job names as
// its view (ViewName(CodelistsTable)).
const CodelistsTable = "codelists"

// CodelistsColumns are the columns of CodelistsTable, all VARCHAR.
var CodelistsColumns = []string{"codelist", "code", "term"}

// codelistsRelation is CodelistsTable as the compiler sees it: public, so
// it joins a patient table by equality on a code column and needs no
// bounds. Its codelist column marks its values (codelistName), so that
// comparisons with literals name the codelists a query uses.
func codelistsRelation() *relation {
	r := &relation{table: CodelistsTable, public: true}
	roles := []Role{RoleCategorical, RoleCode, RoleCategorical}
	for i, name := range CodelistsColumns {
		v := unbounded(kText)
		v.groupable = true
		v.codelistName = i == 0
		r.cols = append(r.cols, column{name: name, role: roles[i], v: v})
	}
	return r
}

// noteCodelists records the codelist names an equality or IN compares the
// codelist column with: vals[0] is the column (or a literal when the
// column is on the right of an equality), the rest literals.
func (c *compiler) noteCodelists(vals []val) {
	col := -1
	for i, v := range vals {
		if v.codelistName {
			col = i
		}
	}
	if col < 0 {
		return
	}
	for i, v := range vals {
		if i != col && v.isConst && v.kind == kText {
			if c.codelists == nil {
				c.codelists = map[string]bool{}
			}
			c.codelists[v.constText] = true
		}
	}
}

// codelistNames returns the codelists the query names, sorted, or refuses a
// query that reads the codelists table without naming one: every codelist
// a query reads must be known (the broker checks each exists and records
// its hash; the site ships only those).
func (c *compiler) codelistNames() ([]string, error) {
	if !c.readsCodelists {
		return nil, nil
	}
	if len(c.codelists) == 0 {
		return nil, refuse("the codelists table without a codelist name", -1,
			"name the codelist, e.g. JOIN codelists cl ON cl.code = e.snomed_code AND cl.codelist = 'ORG/SLUG/VERSION'")
	}
	names := make([]string, 0, len(c.codelists))
	for n := range c.codelists {
		names = append(names, n)
	}
	slices.SortFunc(names, strings.Compare)
	return names, nil
}

// codelistNeutral makes a plan's canonical text (Shape, Predicates) blind to
// which codelists it names, and adds one predicate per codelist instead
// ("codelist 'NAME'"): two queries that differ only in a codelist (another
// version of it, say) then have one shape and predicates that differ by
// one, which the risk checks flag as a near-duplicate like any other
// changed condition. The added predicates are not equalities, so they do
// not count towards the narrow-population heuristic.
func codelistNeutral(plan *Plan) {
	if len(plan.Codelists) == 0 {
		return
	}
	mask := func(s string) string {
		for _, n := range plan.Codelists {
			s = strings.ReplaceAll(s, quoteString(n), "'<codelist>'")
		}
		return s
	}
	plan.Shape = mask(plan.Shape)
	preds := make([]string, 0, len(plan.Predicates)+len(plan.Codelists))
	for _, p := range plan.Predicates {
		preds = append(preds, mask(p))
	}
	for _, n := range plan.Codelists {
		preds = append(preds, "codelist "+quoteString(n))
	}
	sortStrings(preds)
	plan.Predicates = preds
}
