package dp

import (
	"math"
	"strconv"
	"testing"

	"github.com/google/differential-privacy/go/v3/noise"
)

// Statistical tests: real library noise, many draws, stated tolerances.
// The library's noise has no seed, so the tolerances are wide enough (at
// least 6 standard errors) that a correct implementation fails with
// negligible probability.

// domainSpec is one group column with n domain values.
func domainSpec(n int) Spec {
	dom := make([]string, n)
	for i := range dom {
		dom[i] = strconv.Itoa(i)
	}
	return Spec{
		Groups: []GroupSpec{{Name: "g", Domain: dom}},
		Aggregates: []AggSpec{
			{Name: "n", Kind: AggCount, PatientCount: true},
			{Name: "total", Kind: AggSum, Lower: 0, Upper: 10},
		},
		MaxGroupsPerPatient: 2, MaxRowsPerGroup: 3,
		Epsilon: 1, Delta: 1e-6,
		Threshold: 0, RoundingBase: 1,
	}
}

func meanVar(xs []float64) (mean, variance float64) {
	for _, x := range xs {
		mean += x
	}
	mean /= float64(len(xs))
	for _, x := range xs {
		variance += (x - mean) * (x - mean)
	}
	return mean, variance / float64(len(xs)-1)
}

// TestNoiseVariance: 20,000 groups with the same exact count (500) and sum
// (2,000) are released; the sample variance of the released values must be
// within ±10% of the variance the declared ε implies, and the sample mean
// within 6 standard errors of the exact value. The count and the sum get
// ε/2 each; k = 2, C = 3, bounds [0, 10]: count L∞ = 3, sum L∞ = 30.
// Laplace: variance 2b² with b = k·L∞/(ε/2). Gaussian: σ² from the
// library's calibration for (ε/2, δ/2). Counts are released rounded to an
// integer, which adds 1/12 to the variance.
func TestNoiseVariance(t *testing.T) {
	const draws = 20000
	const exactCount, exactSum = 500.0, 2000.0
	for _, mech := range []string{MechanismLaplace, MechanismGaussian} {
		t.Run(mech, func(t *testing.T) {
			s := domainSpec(draws)
			s.Mechanism = mech
			groups := make([]GroupStats, draws)
			for i := range groups {
				groups[i] = GroupStats{
					Keys:     keys(strconv.Itoa(i)),
					Patients: 400,
					Aggs:     []AggStats{{Count: exactCount}, {Count: exactCount, Sum: exactSum}},
				}
			}
			res := MustProtect(t, s, groups, Options{})
			counts := make([]float64, 0, draws)
			sums := make([]float64, 0, draws)
			for _, row := range res.Rows {
				counts = append(counts, value(t, row[1]))
				sums = append(sums, value(t, row[2]))
			}
			for _, tc := range []struct {
				name   string
				xs     []float64
				exact  float64
				lInf   float64
				extra  float64
				report NoiseReport
			}{
				{name: "count", xs: counts, exact: exactCount, lInf: 3, extra: 1.0 / 12, report: res.Report.Noise[0]},
				{name: "sum", xs: sums, exact: exactSum, lInf: 30, report: res.Report.Noise[1]},
			} {
				var sigma float64
				if mech == MechanismLaplace {
					sigma = math.Sqrt2 * 2 * tc.lInf / 0.5
				} else {
					sigma = noise.SigmaForGaussian(2, tc.lInf, 0.5, 0.5e-6)
				}
				if math.Abs(tc.report.Scale-sigma) > 1e-9*sigma || tc.report.Epsilon != 0.5 {
					t.Errorf("%s: report %+v, want scale %v at ε 0.5", tc.name, tc.report, sigma)
				}
				want := sigma*sigma + tc.extra
				mean, variance := meanVar(tc.xs)
				if math.Abs(variance-want) > 0.1*want {
					t.Errorf("%s: sample variance %.1f, want %.1f ± 10%%", tc.name, variance, want)
				}
				if se := math.Sqrt(want / draws); math.Abs(mean-tc.exact) > 6*se {
					t.Errorf("%s: sample mean %.2f, want %v ± %.2f", tc.name, mean, tc.exact, 6*se)
				}
				t.Logf("%s %s: variance %.1f (declared %.1f), mean %.2f", mech, tc.name, variance, want, mean)
			}
		})
	}
}

// keepProbability is the probability that the library's partition
// selection keeps a partition of n privacy units (n ≤ nCr, the regime where
// it is δ·Σ e^{iε}), per Desfontaines et al., "Differentially private
// partition selection", computed here independently of the library.
func keepProbability(t *testing.T, n int, eps, delta float64) float64 {
	t.Helper()
	nCr := 1 + math.Floor((1/eps)*math.Log((1+math.Exp(-eps)*(2*delta-1))/(delta*(1+math.Exp(-eps)))))
	if float64(n) > nCr {
		t.Fatalf("n = %d above n_cr = %v: formula does not apply", n, nCr)
	}
	return delta * math.Expm1(float64(n)*eps) / math.Expm1(eps)
}

// TestPartitionSelectionOnePatient: a group whose only member is one
// patient is released at most with the probability partition selection
// allows: never when the pre-threshold exceeds 1; at most δ (the library's
// keep probability for one unit with k = 1 is exactly δ) otherwise.
func TestPartitionSelectionOnePatient(t *testing.T) {
	const trials = 200000
	tests := []struct {
		name      string
		threshold int
		k         int
		maxKept   int
	}{
		// Expected kept: 0.
		{name: "pre-threshold 10", threshold: 10, k: 1, maxKept: 0},
		// Expected kept ≤ trials·δ = 1.8; P(Poisson(1.8) > 12) < 1e-7.
		{name: "pre-threshold 1, k=1", threshold: 1, k: 1, maxKept: 12},
		// k > 3 takes the library's Gaussian-thresholding path; still ≤ δ.
		{name: "pre-threshold 1, k=5", threshold: 1, k: 5, maxKept: 12},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := validSpec()
			s.Groups = []GroupSpec{{Name: "practice"}}
			s.Delta = 9e-6
			s.Threshold = tt.threshold
			s.MaxGroupsPerPatient = tt.k
			groups := make([]GroupStats, trials)
			for i := range groups {
				groups[i] = GroupStats{Keys: keys(strconv.Itoa(i)), Patients: 1, Aggs: []AggStats{{Count: 1}}}
			}
			res := MustProtect(t, s, groups, Options{Noise: addNoiseFake{Noise: noise.Laplace()}})
			if len(res.Rows) > tt.maxKept {
				t.Errorf("%d of %d one-patient groups released, want at most %d (δ = %g)", len(res.Rows), trials, tt.maxKept, s.Delta)
			}
			t.Logf("%d of %d one-patient groups released", len(res.Rows), trials)
		})
	}
}

// TestPartitionSelectionRate: groups of 29 patients with pre-threshold 10
// reach the library's selection with 29 − 9 = 20 units; with ε_sel = 0.5
// (half of ε = 1) and δ = 9e-6 the keep probability is δ·(e^10 − 1)/(e^0.5
// − 1) ≈ 0.306. Over 20,000 groups the kept share must be within ±0.02
// (over 6 standard errors). This checks the pre-threshold and the budget
// share reach the library as documented.
func TestPartitionSelectionRate(t *testing.T) {
	const trials = 20000
	s := validSpec()
	s.Groups = []GroupSpec{{Name: "practice"}}
	s.Delta = 9e-6
	groups := make([]GroupStats, trials)
	for i := range groups {
		groups[i] = GroupStats{Keys: keys(strconv.Itoa(i)), Patients: 29, Aggs: []AggStats{{Count: 29}}}
	}
	res := MustProtect(t, s, groups, Options{Noise: addNoiseFake{Noise: noise.Laplace()}})
	want := keepProbability(t, 20, 0.5, 9e-6)
	got := float64(len(res.Rows)) / trials
	if math.Abs(got-want) > 0.02 {
		t.Errorf("kept share %.4f, want %.4f ± 0.02", got, want)
	}
	t.Logf("kept share %.4f, library probability %.4f", got, want)
}
