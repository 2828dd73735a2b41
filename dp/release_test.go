package dp

import (
	"fmt"
	"math"
	"testing"

	"github.com/google/differential-privacy/go/v3/noise"
)

// TestReleaseThresholdBoundsOnePatient: on public domains a cell of one
// patient, who can be in k cells, is released with probability at most δ
// over all k cells, for every mechanism, k, ε and number of statistics;
// the threshold is never below the policy's T; and with partition
// selection (which bounds that probability itself) it is T.
func TestReleaseThresholdBoundsOnePatient(t *testing.T) {
	for _, mech := range []string{MechanismLaplace, MechanismGaussian} {
		for _, k := range []int{1, 3, 12} {
			for _, eps := range []float64{0.01, 0.1, 1, 10} {
				for _, aggs := range [][]AggSpec{
					{{Name: "n", Kind: AggCountPatients, PatientCount: true}},
					{{Name: "rows", Kind: AggCount}, {Name: "bmi", Kind: AggMean, Lower: 10, Upper: 60}},
				} {
					s := validSpec()
					s.Mechanism, s.MaxGroupsPerPatient, s.Epsilon, s.Aggregates = mech, k, eps, aggs
					name := fmt.Sprintf("%s/k=%d/eps=%g/stats=%d", mech, k, eps, len(aggs))
					if err := s.Validate(); err != nil {
						t.Fatalf("%s: %v", name, err)
					}
					p := s.plan()
					st := p.stats[p.suppress]
					// The chance the noisy count of a cell with one patient
					// (L∞ = 1) reaches the threshold, for one cell.
					var one float64
					if mech == MechanismLaplace {
						lambda := float64(st.l0) * st.lInf / st.eps
						one = 0.5 * math.Exp(-(p.release-1)/lambda)
					} else {
						sigma := noise.SigmaForGaussian(st.l0, st.lInf, st.eps, st.delta)
						one = 0.5 * math.Erfc((p.release-1)/(sigma*math.Sqrt2))
					}
					all := 1 - math.Pow(1-one, float64(k))
					if all > s.Delta*(1+1e-6) {
						t.Errorf("%s: a one-patient cell is released with probability %g over its %d cells, above δ = %g", name, all, k, s.Delta)
					}
					if all < s.Delta/2 && p.release > float64(s.Threshold) {
						t.Errorf("%s: threshold %v is needlessly high (probability %g, δ = %g)", name, p.release, all, s.Delta)
					}
					if p.release < float64(s.Threshold) {
						t.Errorf("%s: release threshold %v below T = %d", name, p.release, s.Threshold)
					}
					s.Groups[1].Domain = nil
					if r := s.plan().release; r != float64(s.Threshold) {
						t.Errorf("%s with partition selection: release threshold %v, want T = %d", name, r, s.Threshold)
					}
				}
			}
		}
	}
}

// TestSmallPublicCellsNotReleased runs Protect with the library's noise on
// a public-domain cell of two patients many times: none may be released.
// Before the release threshold, a mean by region at ε = 1 (three noisy
// statistics, T = 10) released such a cell in about 3.5% of runs. Here δ is
// 1e-12, so a correct implementation fails with probability below 1e-6.
func TestSmallPublicCellsNotReleased(t *testing.T) {
	const runs = 20000
	s := Spec{
		Groups:              []GroupSpec{{Name: "sex", Domain: []string{"unknown"}}},
		Aggregates:          []AggSpec{{Name: "n", Kind: AggCountPatients, PatientCount: true}, {Name: "bmi", Kind: AggMean, Lower: 10, Upper: 60}},
		MaxGroupsPerPatient: 1, MaxRowsPerGroup: 1, Epsilon: 1, Delta: 1e-12,
		Threshold: 10, RoundingBase: 5,
	}
	g := []GroupStats{{Keys: keys("unknown"), Patients: 2, Aggs: []AggStats{{Count: 2}, {Count: 2, Sum: -2 * 27.5}}}}
	released := 0
	for range runs {
		res := MustProtect(t, s, g, Options{})
		if !res.Rows[0][1].Suppressed {
			released++
		}
	}
	if released > 0 {
		t.Errorf("a cell of two patients was released in %d of %d runs", released, runs)
	}
	// A large cell is released (the threshold is about 1 + 3·ln(1/2δ) ≈ 82).
	g[0].Patients, g[0].Aggs[0].Count, g[0].Aggs[1].Count = 1000, 1000, 1000
	if res := MustProtect(t, s, g, Options{}); res.Rows[0][1].Suppressed {
		t.Errorf("a cell of 1000 patients was suppressed (release threshold %v)", res.Report.ReleaseThreshold)
	}
}
