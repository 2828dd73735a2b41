package dp

import (
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/google/differential-privacy/go/v3/noise"
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

// BenchmarkFederatedTreeShapes measures what the shape of the federated
// quantile tree (fedTree) trades: a site draws the library's secure noise
// once per node, so its CPU grows with the nodes, and the value read from
// the merged tree is off by the noise (the walk reads B noisy children at
// each of h levels) and by the interpolation inside a leaf (B^h leaves).
// Each operation is one federated median over three sites with the
// library's Gaussian noise: every site's values drawn afresh (site i's
// centre shifted by i), its whole tree noised (noisyTreeNodes), the trees
// summed and walked (mergedTree.result, quantileRelease). It reports the
// mean absolute error against the exact median of the three sites'
// values, the mean half-width and the coverage of the released 95%
// interval, the draws per site tree and one site tree's CPU time. The
// record in docs/privacy.md took about a quarter of an hour:
//
//	go test ./dp -run XXX -bench FederatedTreeShapes -benchtime 400x
func BenchmarkFederatedTreeShapes(b *testing.B) {
	data := []struct {
		name         string
		lower, upper float64
		draw         func(r *rand.Rand, site int) float64
	}{
		// HbA1c in whole mmol/mol, as recorded.
		{"hba1c", 20, 150, func(r *rand.Rand, site int) float64 {
			return math.Round(48 + 4*float64(site) + 12*r.NormFloat64())
		}},
		// BMI to one decimal.
		{"bmi", 12, 70, func(r *rand.Rand, site int) float64 {
			return math.Round(10*(27+float64(site)+5*r.NormFloat64())) / 10
		}},
	}
	shapes := []treeShape{fedTree, {3, 16}, {2, 32}, {5, 4}}
	for _, d := range data {
		s := fedQuantileSpec(d.lower, d.upper)
		s.MaxRowsPerGroup = 3
		s.Aggregates = s.Aggregates[:3] // n, q1 (tree 1), median
		median := s.Aggregates[2]
		for _, n := range []int{100, 300, 1000, 10000, 100000} {
			for _, t := range shapes {
				b.Run(fmt.Sprintf("%s/n=%d/h=%d,B=%d", d.name, n, t.height, t.branching), func(b *testing.B) {
					p := s.planFor(t)
					st := p.stats[p.aggStats[1][1]]
					sigma := math.Sqrt(3) * p.scale(st) // the sum of three sites' node noises
					rng := rand.New(rand.NewPCG(uint64(n), 21))
					var absErr, half, covered float64
					var cpu time.Duration
					for b.Loop() {
						nodes := make([]int64, t.nodes()+1)
						var all []float64
						for site := range 3 {
							xs := draws(rng, n, func(r *rand.Rand) float64 { return d.draw(r, site) })
							all = append(all, xs...)
							c := cpuTime()
							enc, err := noisyTreeNodes(s, t, st, histogram(xs, d.lower, d.upper), noise.Gaussian())
							cpu += cpuTime() - c
							if err != nil {
								b.Fatal(err)
							}
							if err := addTree(nodes, enc); err != nil {
								b.Fatal(err)
							}
						}
						tree := mergedTree{shape: t, nodes: nodes, lower: d.lower, upper: d.upper}
						v, lo, hi, err := quantileRelease(tree.result, median, t, sigma, float64(len(all)))
						if err != nil {
							b.Fatal(err)
						}
						slices.Sort(all)
						exact := all[len(all)/2]
						absErr += math.Abs(v - exact)
						half += (hi - lo) / 2
						if lo <= exact && exact <= hi {
							covered++
						}
					}
					runs := float64(b.N)
					b.ReportMetric(absErr/runs, "abs-err")
					b.ReportMetric(half/runs, "ci-half")
					b.ReportMetric(covered/runs, "coverage")
					b.ReportMetric(float64(t.nodes()), "draws/tree")
					b.ReportMetric(float64(cpu.Microseconds())/1e3/(3*runs), "site-cpu-ms/tree")
				})
			}
		}
	}
}
