package dp

import (
	"fmt"
	"math"
	"testing"
)

// TestExtremeParameters: for every combination of extreme budget, bounds
// and mechanism, a Spec is either refused by Validate (a clean error the
// compiler turns into a refusal) or Accuracy and Protect succeed on it —
// never an error from deeper down (which would surface as an internal
// error, a 500).
func TestExtremeParameters(t *testing.T) {
	epsilons := []float64{math.SmallestNonzeroFloat64, math.Exp2(-60), math.Exp2(-50), 1e-12, 1e-9, 1e-6, 1e-3, 0.01, 1, 10, 100, 1e6, 1e15, 1e300, math.MaxFloat64, math.Inf(1), math.NaN(), -1, 0}
	deltas := []float64{0, math.SmallestNonzeroFloat64, 1e-300, 1e-100, 1e-30, 1e-12, 1e-6, 9.99e-6, 1e-5, math.NaN()}
	bounds := [][2]float64{{0, 1}, {-1e15, 1e15}, {0, 1e300}, {-math.MaxFloat64, math.MaxFloat64}, {1e-300, 2e-300}, {0, math.SmallestNonzeroFloat64}}
	valid := 0
	for _, mech := range []string{MechanismLaplace, MechanismGaussian} {
		for _, eps := range epsilons {
			for _, delta := range deltas {
				for _, b := range bounds {
					for _, selection := range []bool{false, true} {
						s := Spec{
							Groups: []GroupSpec{{Name: "g", Domain: []string{"a", "b"}}},
							Aggregates: []AggSpec{
								{Name: "n", Kind: AggCount},
								{Name: "s", Kind: AggSum, Lower: b[0], Upper: b[1]},
								{Name: "m", Kind: AggMean, Lower: b[0], Upper: b[1]},
								{Name: "v", Kind: AggStddev, Lower: b[0], Upper: b[1]},
							},
							MaxGroupsPerPatient: 1000, MaxRowsPerGroup: 10000,
							Epsilon: eps, Delta: delta, Threshold: 10, RoundingBase: 5, Mechanism: mech,
						}
						if selection {
							s.Groups[0].Domain = nil
						}
						name := fmt.Sprintf("%s/eps=%g/delta=%g/bounds=%v/selection=%v", mech, eps, delta, b, selection)
						if err := s.Validate(); err != nil {
							continue
						}
						valid++
						if _, err := s.Accuracy(); err != nil {
							t.Errorf("%s: valid spec, Accuracy fails: %v", name, err)
							continue
						}
						groups := []GroupStats{{Keys: keys("a"), Patients: 3, Aggs: make([]AggStats, 4)}}
						if _, err := Protect(s, groups, Options{}); err != nil {
							t.Errorf("%s: valid spec, Protect fails: %v", name, err)
						}
					}
				}
			}
		}
	}
	// The sweep must exercise valid Specs, not only refusals.
	if valid < 200 {
		t.Errorf("only %d valid combinations", valid)
	}
	t.Logf("%d valid combinations protected", valid)
}
