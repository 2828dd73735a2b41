package queries

import (
	"fmt"
	"math"

	"github.com/nhs-tre/tre/dp"
)

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
		// δ: what partition selection spends when keys are not public,
		// and with public domains the most probability with which a cell
		// of one patient is released (dp: the release threshold; not a
		// privacy cost there, so Cost charges no δ for it).
		Delta:        p.Delta,
		Threshold:    p.SmallCellThreshold,
		RoundingBase: p.RoundingBase,
		Rounding:     p.Rounding,
	}
	if opts.Federated {
		s.Mechanism = dp.MechanismGaussian
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
		domain, has := g.v.domain, g.v.hasDomain
		if !has && opts.Federated && g.bucket != nil {
			// Every site must release the same keys, and partition
			// selection at each site cannot be combined: a date bucket's
			// keys come from the query's WHERE bounds (bucketKeys), the
			// same at the broker and every site. Single-site queries keep
			// partition selection, which releases no empty month.
			var why string
			if domain, why = bucketKeys(*g.bucket, g.rng); why != "" {
				return dp.Spec{}, refuse("GROUP BY "+g.name+" over several sites", g.pos, why)
			}
			has, gs.Closed = true, true
		}
		if has {
			// A copy: the domain may be the catalog's own slice.
			gs.Domain = append([]string(nil), domain...)
			if keys <= maxCrossDomain {
				keys *= len(domain)
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
		for i := range s.Groups {
			s.Groups[i].Domain, s.Groups[i].Closed = nil, false
		}
	}
	for _, a := range q.aggs {
		s.Aggregates = append(s.Aggregates, a.spec)
	}
	// Totals (rollup.go): released with secondary suppression.
	s.Sets, s.Margins = q.sets, len(q.sets) > 0
	return s, nil
}
