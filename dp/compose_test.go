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

func TestCostFits(t *testing.T) {
	tenth := Cost{}
	for range 10 {
		tenth = tenth.Add(Cost{Epsilon: 0.1, Delta: 1e-7})
	}
	tests := []struct {
		name               string
		cost, used, budget Cost
		want               bool
	}{
		{name: "exact", cost: Cost{1, 1e-6}, budget: Cost{1, 1e-6}, want: true},
		{name: "float sums", cost: Cost{1, 1e-6}, budget: tenth, want: true},
		{name: "float sums reversed", cost: tenth, budget: Cost{1, 1e-6}, want: true},
		{name: "float sums used", cost: Cost{0.1, 1e-7}, used: Cost{0.9, 9e-7}, budget: tenth, want: true},
		{name: "within tolerance", cost: Cost{1 + 1e-12, 0}, budget: Cost{1, 0}, want: true},
		{name: "epsilon over", cost: Cost{1.001, 0}, budget: Cost{1, 1}, want: false},
		{name: "epsilon over with used", cost: Cost{0.5, 0}, used: Cost{0.501, 0}, budget: Cost{1, 1}, want: false},
		{name: "delta over", cost: Cost{0.1, 2e-6}, budget: Cost{1, 1e-6}, want: false},
		{name: "delta needed, none left", cost: Cost{0.1, 1e-9}, budget: Cost{1, 0}, want: false},
		{name: "nothing left", cost: Cost{0.1, 0}, used: Cost{1, 0}, budget: Cost{1, 0}, want: false},
		{name: "free query fits an empty budget", cost: Cost{}, budget: Cost{}, want: true},
		{name: "NaN never fits", cost: Cost{math.NaN(), 0}, budget: Cost{1, 1}, want: false},
		{name: "NaN budget never fits", cost: Cost{}, budget: Cost{math.NaN(), 1}, want: false},
		{name: "overspent budget", cost: Cost{0.1, 0}, used: Cost{1.5, 0}, budget: Cost{1, 0}, want: false},
		{name: "overspent budget, nothing more", cost: Cost{}, used: Cost{1.5, 0}, budget: Cost{1, 0}, want: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.cost.Fits(tt.used, tt.budget); got != tt.want {
				t.Errorf("%+v.Fits(%+v, %+v) = %v, want %v", tt.cost, tt.used, tt.budget, got, tt.want)
			}
		})
	}
}

// TestWithinEdges pins the tolerance where it ends: the ledger's stored
// decisions depend on it, so it must not move.
func TestWithinEdges(t *testing.T) {
	budget := 10.0
	edge := budget*(1+1e-9) + 1e-18
	tests := []struct {
		name               string
		used, cost, budget float64
		want               bool
	}{
		{name: "at the edge", used: edge, budget: budget, want: true},
		{name: "one ulp over the edge", used: math.Nextafter(edge, math.Inf(1)), budget: budget, want: false},
		{name: "split at the edge", used: budget, cost: edge - budget, budget: budget, want: true},
		{name: "zero budget allows 1e-18", cost: 1e-18, want: true},
		{name: "zero budget refuses 2e-18", cost: 2e-18, want: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Within(tt.used, tt.cost, tt.budget); got != tt.want {
				t.Errorf("Within(%v, %v, %v) = %v, want %v", tt.used, tt.cost, tt.budget, got, tt.want)
			}
		})
	}
}

func TestCostSame(t *testing.T) {
	tests := []struct {
		name string
		a, b Cost
		want bool
	}{
		{name: "equal", a: Cost{1, 1e-6}, b: Cost{1, 1e-6}, want: true},
		{name: "float sums", a: Cost{0.1 + 0.2, 0}, b: Cost{0.3, 0}, want: true},
		{name: "epsilon differs", a: Cost{1.001, 1e-6}, b: Cost{1, 1e-6}, want: false},
		{name: "delta differs", a: Cost{1, 2e-6}, b: Cost{1, 1e-6}, want: false},
		{name: "no delta either way", a: Cost{1, 0}, b: Cost{1, 0}, want: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.a.Same(tt.b); got != tt.want {
				t.Errorf("%+v.Same(%+v) = %v, want %v", tt.a, tt.b, got, tt.want)
			}
		})
	}
}
