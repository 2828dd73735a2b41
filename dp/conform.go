package dp

import (
	"fmt"
	"math"
	"slices"
)

// KindGroup is Column.Kind of a group key column.
const KindGroup = "group"

// Columns returns the columns Protect releases for s, in order: the group
// columns, then the aggregates.
func (s Spec) Columns() []Column {
	cols := make([]Column, 0, len(s.Groups)+len(s.Aggregates))
	for _, g := range s.Groups {
		cols = append(cols, Column{Name: g.Name, Kind: KindGroup})
	}
	for _, a := range s.Aggregates {
		if !a.Hidden {
			cols = append(cols, Column{Name: a.Name, Kind: string(a.Kind)})
		}
	}
	return cols
}

// resultTolerance is the relative tolerance of the budget comparison.
const resultTolerance = 1e-9

// CheckResult reports whether r could be what Protect releases for s: the
// broker runs it on every result a site uploads, so that a compromised or
// broken agent cannot put a table the approved query does not produce in
// front of the output checker. It checks the claims that follow from the
// spec alone: the budget spent equals the spec's cost; the columns are the
// spec's, in order, with their kinds; the report's bounds, threshold,
// rounding and partition selection are the spec's; a public-domain grouping
// releases exactly the cross product of its domains, in domain order (with
// grouping sets each set's cells, totals as Protect orders them; a query
// without GROUP BY exactly one row); keys are never repeated; every
// aggregate cell is a finite number, or marked suppressed without one. It
// cannot check the numbers themselves: that is what noise hides. Messages
// never quote a key or a value.
func (s Spec) CheckResult(r *Result) error {
	want := s.Columns()
	if len(r.Columns) != len(want) {
		return fmt.Errorf("the result has %d columns; the approved query releases %d", len(r.Columns), len(want))
	}
	for i, c := range want {
		if r.Columns[i] != c {
			return fmt.Errorf("result column %d is %q (%s); the approved query releases %q (%s)", i+1, r.Columns[i].Name, r.Columns[i].Kind, c.Name, c.Kind)
		}
	}
	if err := s.checkReport(&r.Report); err != nil {
		return err
	}
	p := s.plan()
	var released [][]*string // a public-domain grouping's keys, in order
	if !p.selection {
		released = s.releasedKeys()
		if len(r.Rows) != len(released) {
			return fmt.Errorf("the result has %d rows; the approved query's public domains release exactly %d", len(r.Rows), len(released))
		}
	}
	seen := make(map[string]bool, len(r.Rows))
	keys := make([]*string, len(s.Groups))
	for i, row := range r.Rows {
		if len(row) != len(want) {
			return fmt.Errorf("result row %d has %d cells for %d columns", i+1, len(row), len(want))
		}
		for j := range s.Groups {
			c := row[j]
			if c.Value != nil || c.CILow != nil || c.CIHigh != nil || c.Suppressed || c.Secondary || c.Rounded || len(c.Dominance) > 0 {
				return fmt.Errorf("result row %d: group column %d carries a value", i+1, j+1)
			}
			if c.Null && c.Key != "" {
				return fmt.Errorf("result row %d: group column %d is both NULL and a key", i+1, j+1)
			}
			keys[j] = nil
			if !c.Null {
				keys[j] = &row[j].Key
			}
			if !p.selection && (c.Null || c.Key != *released[i][j]) {
				return fmt.Errorf("result row %d: the key of group column %q is not the public domain's next value", i+1, s.Groups[j].Name)
			}
		}
		k := keyString(keys)
		if seen[k] {
			return fmt.Errorf("result row %d repeats the keys of an earlier row", i+1)
		}
		seen[k] = true
		for j := len(s.Groups); j < len(row); j++ {
			if err := checkAggCell(row[j]); err != nil {
				return fmt.Errorf("result row %d, column %q: %w", i+1, want[j].Name, err)
			}
		}
	}
	return nil
}

// Claims returns the report fields that follow from the spec alone: the
// budget spent, the mechanism, the contribution bounds, the threshold, the
// rounding and how keys are chosen. Protect starts its report from it, and
// CheckResult holds a site's report to it.
func (s Spec) Claims() Report {
	p := s.plan()
	cost := s.Cost()
	mode := SelectionPublicDomain
	if p.selection {
		mode = SelectionPreThreshold
	}
	return Report{
		Epsilon: cost.Epsilon, Delta: cost.Delta, Mechanism: p.mechanism,
		MaxGroupsPerPatient: s.MaxGroupsPerPatient, MaxRowsPerGroup: s.MaxRowsPerGroup,
		Threshold: s.Threshold, ReleaseThreshold: p.release,
		RoundingBase: s.RoundingBase, Rounding: s.rounding(),
		PartitionSelection: mode,
		GroupingSets:       len(s.Sets),
		Ratios:             s.ratioReports(),
	}
}

// checkReport compares the report's claims with the spec's.
func (s Spec) checkReport(r *Report) error {
	c := s.Claims()
	switch {
	case !sameBudget(r.Epsilon, c.Epsilon) || !sameBudget(r.Delta, c.Delta):
		return fmt.Errorf("the result reports ε %v, δ %v; the approved query spends ε %v, δ %v", r.Epsilon, r.Delta, c.Epsilon, c.Delta)
	case r.Mechanism != c.Mechanism:
		return fmt.Errorf("the result reports the %q mechanism; the approved query uses %q", r.Mechanism, c.Mechanism)
	case r.PartitionSelection != c.PartitionSelection:
		return fmt.Errorf("the result reports partition selection %q; the approved query uses %q", r.PartitionSelection, c.PartitionSelection)
	case r.MaxGroupsPerPatient != c.MaxGroupsPerPatient || r.MaxRowsPerGroup != c.MaxRowsPerGroup:
		return fmt.Errorf("the result reports contribution bounds k=%d, C=%d; the approved query uses k=%d, C=%d",
			r.MaxGroupsPerPatient, r.MaxRowsPerGroup, c.MaxGroupsPerPatient, c.MaxRowsPerGroup)
	case r.Threshold != c.Threshold || r.RoundingBase != c.RoundingBase || r.Rounding != c.Rounding:
		return fmt.Errorf("the result reports threshold %d, rounding %s to %d; the approved query uses threshold %d, rounding %s to %d",
			r.Threshold, r.Rounding, r.RoundingBase, c.Threshold, c.Rounding, c.RoundingBase)
	case !sameBudget(r.ReleaseThreshold, c.ReleaseThreshold):
		return fmt.Errorf("the result reports release threshold %v; the approved query releases cells from %v patients", r.ReleaseThreshold, c.ReleaseThreshold)
	case r.GroupingSets != c.GroupingSets:
		return fmt.Errorf("the result reports %d grouping sets; the approved query releases %d", r.GroupingSets, c.GroupingSets)
	case !slices.Equal(r.Ratios, c.Ratios):
		return fmt.Errorf("the result reports ratios derived as %v; the approved query derives them as %v", r.Ratios, c.Ratios)
	}
	return nil
}

// sameBudget compares two budget figures within a relative float tolerance.
func sameBudget(got, want float64) bool {
	if math.IsNaN(got) || math.IsInf(got, 0) {
		return false
	}
	return math.Abs(got-want) <= resultTolerance*math.Max(math.Abs(want), 1e-12)
}

// checkAggCell checks one aggregate cell: no key, and a finite value unless
// suppressed (then none).
func checkAggCell(c Cell) error {
	if c.Key != "" || c.Null {
		return fmt.Errorf("an aggregate cell carries a key")
	}
	if c.Suppressed {
		if c.Value != nil || c.CILow != nil || c.CIHigh != nil {
			return fmt.Errorf("a suppressed cell carries a value")
		}
		return nil
	}
	if c.Secondary {
		return fmt.Errorf("a cell is marked secondary without being suppressed")
	}
	if c.Value == nil {
		return fmt.Errorf("a released cell has no value")
	}
	for _, v := range []*float64{c.Value, c.CILow, c.CIHigh} {
		if v != nil && (math.IsNaN(*v) || math.IsInf(*v, 0)) {
			return fmt.Errorf("a value is not a finite number")
		}
	}
	if c.CILow != nil && c.CIHigh != nil && *c.CILow > *c.CIHigh {
		return fmt.Errorf("a confidence interval is reversed")
	}
	return nil
}
