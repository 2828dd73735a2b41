package dp

import (
	"testing"

	"github.com/google/differential-privacy/go/v3/noise"
	"github.com/google/go-cmp/cmp"
)

// TestUnusedStatisticsIgnored: the rewrite leaves SumSq and Top1/Top2 at 0
// for kinds that do not use them (UsesSumSq, UsesTop), so Protect must
// release exactly the same table and report whatever they hold; and a kind
// that does use them must see a change.
func TestUnusedStatisticsIgnored(t *testing.T) {
	for _, kind := range []AggKind{AggCount, AggCountPatients, AggSum, AggMean, AggVariance, AggStddev} {
		t.Run(string(kind), func(t *testing.T) {
			s := validSpec()
			s.RoundingBase = 1
			s.Aggregates = []AggSpec{{Name: "x", Kind: kind, Lower: 0, Upper: 100}}
			run := func(sumsq, top1, top2 float64) *Result {
				// 500 patients: above every kind's release threshold.
				g := []GroupStats{{Keys: keys("F", "London"), Patients: 500, Aggs: []AggStats{
					{Count: 50, Sum: 1000, SumSq: sumsq, Top1: top1, Top2: top2},
				}}}
				return MustProtect(t, s, g, Options{Noise: addNoiseFake{Noise: noise.Laplace(), offset: 1}})
			}
			base := run(0, 0, 0)
			if diff := cmp.Diff(base, run(90000, 0, 0)); (diff != "") != kind.UsesSumSq() {
				t.Errorf("SumSq changed the result: %v, UsesSumSq %v\n%s", diff != "", kind.UsesSumSq(), diff)
			}
			// Dominant for a sum (of 1,000) and a mean (whose uncentred sum
			// is 1,000 + 50 × the midpoint 50).
			if diff := cmp.Diff(base, run(0, 3400, 50)); (diff != "") != kind.UsesTop() {
				t.Errorf("Top1/Top2 changed the result: %v, UsesTop %v\n%s", diff != "", kind.UsesTop(), diff)
			}
		})
	}
}
