package dp

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strconv"
	"syscall"
	"testing"
	"time"
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

// BenchmarkFederatedQuantiles is the broker's work on a federated query
// of quartiles in G groups (one tree each) over three sites: check, one
// upload's check (CheckPartial: every tree decoded); combine, Combine of
// the three parts (every tree decoded and summed, three ranks and their
// intervals walked per group). The parts carry the library's Gaussian
// noise on every node (one site's part, drawn once, stands for all three:
// same size, same work). Besides wall time it reports the process's CPU
// time per operation (getrusage), which other load on the machine does
// not inflate, and the part's JSON size.
func BenchmarkFederatedQuantiles(b *testing.B) {
	for _, g := range []int{3, 12} {
		s := fedQuantileSpec(12, 70)
		s.Groups[0].Domain = nil
		groups := make([]GroupStats, g)
		for i := range groups {
			key := "g" + strconv.Itoa(i)
			s.Groups[0].Domain = append(s.Groups[0].Domain, key)
			v := draws(rand.New(rand.NewPCG(uint64(i), 1)), 5000, func(r *rand.Rand) float64 { return 27 + 5*r.NormFloat64() })
			groups[i] = GroupStats{Keys: keys(key), Patients: 5000, Aggs: []AggStats{{Count: 5000}, {Count: 5000, Hist: histogram(v, 12, 70)}, {}, {}}}
		}
		part, err := ProtectPartial(s, groups, Options{})
		if err != nil {
			b.Fatal(err)
		}
		js, err := json.Marshal(part)
		if err != nil {
			b.Fatal(err)
		}
		parts := []*Partial{part, part, part}
		for name, op := range map[string]func() error{
			"check":   func() error { return s.CheckPartial(part) },
			"combine": func() error { _, err := Combine(s, parts); return err },
		} {
			b.Run(fmt.Sprintf("groups=%d/%s", g, name), func(b *testing.B) {
				cpu := cpuTime()
				for b.Loop() {
					if err := op(); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(cpuTime()-cpu)/1e6/float64(b.N), "cpu-ms/op")
				b.ReportMetric(float64(len(js)), "part-bytes")
			})
		}
	}
}

// cpuTime is the process's user and system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
