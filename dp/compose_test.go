package dp

import (
	"math"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

func TestComposeBasic(t *testing.T) {
	got := ComposeBasic(Cost{1, 1e-6}, Cost{0.5, 0}, Cost{0.25, 2e-6})
	if diff := cmp.Diff(Cost{1.75, 3e-6}, got, cmpopts.EquateApprox(0, 1e-15)); diff != "" {
		t.Errorf("ComposeBasic (-want +got):\n%s", diff)
	}
	if got := ComposeBasic(); got != (Cost{}) {
		t.Errorf("ComposeBasic() = %+v, want zero", got)
	}
}

func TestComposeAdvanced(t *testing.T) {
	many := make([]Cost, 100)
	for i := range many {
		many[i] = Cost{Epsilon: 0.1, Delta: 1e-7}
	}
	// √(2·ln(1e6)·100·0.01) + 100·0.1·(e^0.1 − 1) ≈ 5.2565 + 1.0517.
	wantEps := math.Sqrt(2*math.Log(1e6)) + 10*math.Expm1(0.1)
	tests := []struct {
		name       string
		costs      []Cost
		deltaPrime float64
		want       Cost
	}{
		{name: "many small queries", costs: many, deltaPrime: 1e-6, want: Cost{Epsilon: wantEps, Delta: 100*1e-7 + 1e-6}},
		{name: "one query falls back to basic", costs: []Cost{{1, 1e-6}}, deltaPrime: 1e-6, want: Cost{1, 1e-6}},
		{name: "bad delta prime falls back to basic", costs: many, deltaPrime: 0, want: ComposeBasic(many...)},
		{name: "delta prime one falls back to basic", costs: many, deltaPrime: 1, want: ComposeBasic(many...)},
		{name: "empty", deltaPrime: 1e-6, want: Cost{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := ComposeAdvanced(tt.costs, tt.deltaPrime)
			if diff := cmp.Diff(tt.want, got, cmpopts.EquateApprox(1e-12, 0)); diff != "" {
				t.Errorf("ComposeAdvanced (-want +got):\n%s", diff)
			}
			if basic := ComposeBasic(tt.costs...); got.Epsilon > basic.Epsilon {
				t.Errorf("advanced ε %v above basic %v", got.Epsilon, basic.Epsilon)
			}
		})
	}
}

func TestCostFits(t *testing.T) {
	tenth := Cost{}
	for range 10 {
		tenth = tenth.Add(Cost{Epsilon: 0.1, Delta: 1e-7})
	}
	tests := []struct {
		name            string
		cost, remaining Cost
		want            bool
	}{
		{name: "exact", cost: Cost{1, 1e-6}, remaining: Cost{1, 1e-6}, want: true},
		{name: "float sums", cost: Cost{1, 1e-6}, remaining: tenth, want: true},
		{name: "float sums reversed", cost: tenth, remaining: Cost{1, 1e-6}, want: true},
		{name: "within tolerance", cost: Cost{1 + 1e-12, 0}, remaining: Cost{1, 0}, want: true},
		{name: "epsilon over", cost: Cost{1.001, 0}, remaining: Cost{1, 1}, want: false},
		{name: "delta over", cost: Cost{0.1, 2e-6}, remaining: Cost{1, 1e-6}, want: false},
		{name: "delta needed, none left", cost: Cost{0.1, 1e-9}, remaining: Cost{1, 0}, want: false},
		{name: "nothing left", cost: Cost{0.1, 0}, remaining: Cost{0, 0}, want: false},
		{name: "free query fits an empty budget", cost: Cost{}, remaining: Cost{}, want: true},
		{name: "NaN never fits", cost: Cost{math.NaN(), 0}, remaining: Cost{1, 1}, want: false},
		{name: "overspent budget", cost: Cost{0.1, 0}, remaining: Cost{1, 0}.Sub(Cost{1.5, 0}), want: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.cost.Fits(tt.remaining); got != tt.want {
				t.Errorf("%+v.Fits(%+v) = %v, want %v", tt.cost, tt.remaining, got, tt.want)
			}
		})
	}
}
