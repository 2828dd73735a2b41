package dp

import (
	"fmt"
	"strconv"
	"testing"
)

// BenchmarkProtect protects n groups that pass partition selection, each
// with a patient count, a count and a mean (four noisy statistics), with
// the library's Laplace noise.
func BenchmarkProtect(b *testing.B) {
	for _, n := range []int{10, 1000, 100000} {
		b.Run(fmt.Sprintf("groups=%d", n), func(b *testing.B) {
			s := Spec{
				Groups: []GroupSpec{{Name: "practice"}},
				Aggregates: []AggSpec{
					{Name: "n", Kind: AggCountPatients},
					{Name: "bmi", Kind: AggMean, Lower: 10, Upper: 60},
				},
				MaxGroupsPerPatient: 1, MaxRowsPerGroup: 1,
				Epsilon: 1, Delta: 1e-6, Threshold: 10, RoundingBase: 5,
			}
			groups := make([]GroupStats, n)
			for i := range groups {
				groups[i] = GroupStats{
					Keys:     keys("P" + strconv.Itoa(i)),
					Patients: 1000,
					Aggs:     []AggStats{{Count: 1000}, {Count: 1000, Sum: 27000, SumSq: 800000, Top1: 60, Top2: 59}},
				}
			}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := Protect(s, groups, Options{DroppedRows: 12}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
