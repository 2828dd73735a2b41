package queries

// The late join: where a released query joins one relation proven to hold
// one row per patient (a patients table the data proves unique, a
// per-patient CTE) by an inner join on the privacy unit alone and reads it
// only in group keys and WHERE conditions, the per-patient stages need not
// carry it. They run on the rest of the FROM, and the relation is joined
// to their per-(patient, group) rows, adding its group keys and dropping
// the patients its conditions or its absence exclude.
//
// The rows are the same. Every key it gives is a function of the patient,
// so it never splits a patient's pairs and is left out of the pair key
// and of the row-ranking hash (rewriter.newRewriter) whether or not the
// join is late; its conditions keep or drop whole patients, and every
// bounding stage treats each patient on its own, so dropping a patient
// after the stages leaves the others' rows as dropping it before would.
//
// What it saves is memory: joined first, the relation's hash table (every
// patient's keys) is held while the per-patient grouping and the C-row
// window fill; joined late, those run on the other rows alone and the join
// meets one row per pair (BENCHMARKS.md, "The late join").

// lateJoin is the rewrite's plan for a late join.
type lateJoin struct {
	// src is the per-patient relation's FROM item, pid its privacy unit.
	src, pid string
	// rest is the FROM clause without it, restPid that clause's privacy
	// unit.
	rest, restPid string
	// early and after are the WHERE conjuncts the event side's rows and
	// the joined per-patient rows are filtered by.
	early, after []string
	// keys marks the group keys the per-patient relation gives.
	keys []bool
}

// joinSide is one side of a join as compiled: its SQL, privacy unit ("" for
// lookup tables only), relations and the relations it could do without.
type joinSide struct {
	sql, pid string
	rels     []*relation
	drops    []lateDrop
}

// lateDrop is a relation of a FROM clause that the clause could do
// without: one relation joined by an inner join whose condition is only
// the equality of its privacy unit with eq's, and which no other join
// condition reads. src is its FROM item, rest the clause without it and
// restPid the rest's privacy unit.
type lateDrop struct {
	rel           *relation
	src           string
	eq            *relation
	rest, restPid string
}

// joinDrops lists what a join of l and r (of type jt, condition cond,
// which equates jf and reads reads) could do without: a side that is one
// relation joined by the privacy unit alone, and what either side could,
// where this join's condition does not read it. Without a relation of
// the right side of a LEFT JOIN the join would keep rows that relation's
// absence drops; its relations are nullable, and late refuses them.
func joinDrops(jt string, jf joinFacts, reads map[*relation]bool, l, r joinSide, cond string) []lateDrop {
	var out []lateDrop
	if jt == "INNER" && jf.puEq && jf.conds == 1 {
		if len(r.rels) == 1 && l.pid != "" {
			out = append(out, lateDrop{rel: r.rels[0], src: r.sql, eq: jf.pidRels[0], rest: l.sql, restPid: l.pid})
		}
		if len(l.rels) == 1 && r.pid != "" {
			out = append(out, lateDrop{rel: l.rels[0], src: l.sql, eq: jf.pidRels[1], rest: r.sql, restPid: r.pid})
		}
	}
	for _, d := range l.drops {
		if !reads[d.rel] {
			d.rest += " " + jt + " JOIN " + r.sql + cond
			out = append(out, d)
		}
	}
	for _, d := range r.drops {
		if !reads[d.rel] {
			d.rest = l.sql + " " + jt + " JOIN " + d.rest + cond
			if l.pid != "" {
				d.restPid = l.pid
			}
			out = append(out, d)
		}
	}
	return out
}

// late decides whether q's rewrite joins a per-patient relation late.
func (c *compiler) late(q *query) *lateJoin {
	// Where every patient relation holds one row per patient there is no
	// per-patient grouping to shorten.
	if !c.shortcuts || q.maybeOnePerPatient {
		return nil
	}
	for _, d := range q.sc.drops {
		p := d.rel
		// Proven one row per patient (a catalog's declaration does not
		// count), and equated with a relation in every row of the rest,
		// whose privacy unit is then the rest's.
		if !p.patient || p.public || p.nullable || !(p.derived || p.unique) || d.eq == nil || d.eq.nullable {
			continue
		}
		pu := p.col(c.cat.PrivacyUnit)
		if pu == nil {
			continue
		}
		if lj := c.lateSplit(q, p); lj != nil {
			lj.src, lj.pid = d.src, qualified(p, pu)
			lj.rest, lj.restPid = d.rest, d.restPid
			return lj
		}
	}
	return nil
}

// lateSplit sorts q's group keys and WHERE conjuncts between the event
// side and the per-patient relation p, or returns nil when one reads both
// or an aggregate reads p.
func (c *compiler) lateSplit(q *query, p *relation) *lateJoin {
	side := func(reads map[*relation]bool) (onP, ok bool) {
		others := 0
		for r := range reads {
			if r == p {
				onP = true
			} else {
				others++
			}
		}
		return onP, !onP || others == 0
	}
	lj := &lateJoin{keys: make([]bool, len(q.groups))}
	for i, g := range q.groups {
		onP, ok := side(g.reads)
		if !ok || (onP && !g.ofPatient) {
			return nil
		}
		lj.keys[i] = onP
	}
	for _, cd := range q.conds {
		onP, ok := side(cd.reads)
		if !ok {
			return nil
		}
		if onP {
			lj.after = append(lj.after, cd.sql)
		} else {
			lj.early = append(lj.early, cd.sql)
		}
	}
	for _, a := range q.aggs {
		if onP, _ := side(a.reads); onP && a.arg != "" {
			return nil
		}
	}
	return lj
}

// cond is one WHERE conjunct and the relations it reads.
type cond struct {
	sql   string
	reads map[*relation]bool
}

// whereSQL is q's WHERE conjuncts' SQL.
func (q *query) whereSQL() []string {
	out := make([]string, len(q.conds))
	for i, cd := range q.conds {
		out[i] = cd.sql
	}
	return out
}

// sameAsRoot reports whether pu, a privacy-unit column of q's FROM, holds
// the root relation's privacy unit (q.pid) on every input row: it is the
// root's, or a relation's that no LEFT JOIN makes nullable. Patient
// relations join only by equating their privacy units, so on every joined
// row each non-NULL one equals the root's; the kinds must match for the
// equality to be identity.
func (c *compiler) sameAsRoot(q *query, pu string) bool {
	if pu == q.pid {
		return true
	}
	var root, rel *column
	for _, r := range q.sc.rels {
		col := r.col(c.cat.PrivacyUnit)
		if col == nil || !r.patient || r.public {
			continue
		}
		switch qualified(r, col) {
		case q.pid:
			root = col
		case pu:
			if !r.nullable {
				rel = col
			}
		}
	}
	return root != nil && rel != nil && root.v.kind == rel.v.kind
}
