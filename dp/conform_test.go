package dp

import (
	"encoding/json"
	"strings"
	"testing"
)

// cloneResult deep-copies a result through JSON, as it crosses the wire.
func cloneResult(tb testing.TB, r *Result) *Result {
	tb.Helper()
	b, err := json.Marshal(r)
	if err != nil {
		tb.Fatal(err)
	}
	var out Result
	if err := json.Unmarshal(b, &out); err != nil {
		tb.Fatal(err)
	}
	return &out
}

// TestCheckResult protects real statistics with Protect, checks the result
// conforms to its spec, then alters one claim at a time as a compromised
// agent would and expects each to be refused.
func TestCheckResult(t *testing.T) {
	public := validSpec()
	public.Aggregates = append(public.Aggregates, AggSpec{Name: "total", Kind: AggSum, Lower: 0, Upper: 100})
	selection := validSpec()
	for i := range selection.Groups {
		selection.Groups[i].Domain = nil
	}
	noGroups := validSpec()
	noGroups.Groups = nil
	stats := func(s Spec) []GroupStats {
		var gs []GroupStats
		for _, k := range [][]*string{keys("F", "London"), keys("M", "South"), keys("F", "\x00")} {
			g := GroupStats{Keys: k[:len(s.Groups)], Patients: 500}
			for range s.Aggregates {
				g.Aggs = append(g.Aggs, AggStats{Count: 500, Sum: 4000, SumSq: 40000, Top1: 90, Top2: 80})
			}
			gs = append(gs, g)
			if len(s.Groups) == 0 {
				break
			}
		}
		return gs
	}
	rollup := validSpec()
	rollup.Margins, rollup.Sets = true, [][]int{{0, 1}, {0}, {}}
	specs := map[string]Spec{"public domain": public, "partition selection": selection, "no groups": noGroups, "grouping sets": rollup}
	for name, s := range specs {
		t.Run(name+" genuine", func(t *testing.T) {
			if err := s.CheckResult(MustProtect(t, s, stats(s), Options{})); err != nil {
				t.Fatalf("a genuine result is refused: %v", err)
			}
		})
	}
	f := func(x float64) *float64 { return &x }
	tests := []struct {
		name   string
		spec   string
		modify func(r *Result)
		want   string
	}{
		{"ε below the approved cost", "public domain", func(r *Result) { r.Report.Epsilon = 0 }, "reports ε 0"},
		{"ε above the approved cost", "public domain", func(r *Result) { r.Report.Epsilon *= 2 }, "the approved query spends"},
		{"δ not spent", "partition selection", func(r *Result) { r.Report.Delta = 0 }, "reports ε"},
		{"renamed column", "public domain", func(r *Result) { r.Columns[2].Name = "=cmd" }, "result column 3"},
		{"changed kind", "public domain", func(r *Result) { r.Columns[2].Kind = string(AggMean) }, "result column 3"},
		{"extra column", "public domain", func(r *Result) { r.Columns = append(r.Columns, Column{Name: "x", Kind: "count"}) }, "columns"},
		{"key outside the domain", "public domain", func(r *Result) { r.Rows[0][0].Key = `=HYPERLINK("http://evil.example","x")` }, "public domain's next value"},
		{"NULL key in a public domain", "public domain", func(r *Result) { r.Rows[1][1] = Cell{Null: true} }, "public domain"},
		{"row missing", "public domain", func(r *Result) { r.Rows = r.Rows[1:] }, "exactly 6"},
		{"rows reordered", "public domain", func(r *Result) { r.Rows[0], r.Rows[1] = r.Rows[1], r.Rows[0] }, "public domain"},
		{"a second row without GROUP BY", "no groups", func(r *Result) { r.Rows = append(r.Rows, r.Rows[0]) }, "exactly 1"},
		{"repeated keys", "partition selection", func(r *Result) { r.Rows = append(r.Rows, r.Rows[0]) }, "repeats the keys"},
		{"value in a key cell", "partition selection", func(r *Result) { r.Rows[0][0].Value = f(3) }, "carries a value"},
		{"key in a value cell", "public domain", func(r *Result) { r.Rows[0][2].Key = "x" }, "carries a key"},
		{"suppressed cell with a value", "public domain", func(r *Result) { r.Rows[0][2] = Cell{Suppressed: true, Value: f(3)} }, "suppressed cell carries a value"},
		{"released cell without a value", "public domain", func(r *Result) { r.Rows[0][2] = Cell{} }, "no value"},
		{"short row", "public domain", func(r *Result) { r.Rows[0] = r.Rows[0][:2] }, "cells for"},
		{"weaker threshold", "public domain", func(r *Result) { r.Report.Threshold = 0 }, "threshold"},
		{"weaker bounds", "public domain", func(r *Result) { r.Report.MaxRowsPerGroup = 100 }, "contribution bounds"},
		{"partition selection claimed public", "partition selection", func(r *Result) { r.Report.PartitionSelection = SelectionPublicDomain }, "partition selection"},
		{"other mechanism", "public domain", func(r *Result) { r.Report.Mechanism = MechanismGaussian }, "mechanism"},
		{"a total dropped", "grouping sets", func(r *Result) { r.Rows = r.Rows[:len(r.Rows)-1] }, "exactly 9"},
		{"a subtotal out of order", "grouping sets", func(r *Result) { r.Rows[2], r.Rows[3] = r.Rows[3], r.Rows[2] }, "public domain"},
		{"a cell relabelled a total", "grouping sets", func(r *Result) { r.Rows[0][1].Key = TotalKey }, "public domain"},
		{"grouping sets not reported", "grouping sets", func(r *Result) { r.Report.GroupingSets = 0 }, "grouping sets"},
		{"grouping sets claimed", "public domain", func(r *Result) { r.Report.GroupingSets = 2 }, "grouping sets"},
		{"reversed interval", "public domain", func(r *Result) { r.Rows[0][3].CILow, r.Rows[0][3].CIHigh = f(10), f(1) }, "reversed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := specs[tt.spec]
			r := cloneResult(t, MustProtect(t, s, stats(s), Options{}))
			tt.modify(r)
			err := s.CheckResult(r)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("CheckResult = %v, want an error containing %q", err, tt.want)
			}
			if strings.Contains(err.Error(), "HYPERLINK") || strings.Contains(err.Error(), "London") {
				t.Errorf("the message quotes a key: %v", err)
			}
		})
	}
}
