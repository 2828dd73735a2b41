package dp

import (
	"encoding/binary"
	"encoding/json"
	"hash/fnv"
	"math"
	"math/rand/v2"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/differential-privacy/go/v3/noise"
)

// hashNoise adds to a count x a whole number in [−spread, spread] that is
// a hash of (seed, x): deterministic, the same for the library's float
// noise on x as for the integer noise on x, and independent of the order
// in which nodes are noised (the library noises nodes as its walk reads
// them, a federated part all of them in node order). Its other methods
// are the library's Gaussian noise.
type hashNoise struct {
	noise.Noise
	seed, spread uint64
}

func (h hashNoise) offset(x int64) int64 {
	f := fnv.New64a()
	var b [16]byte
	binary.LittleEndian.PutUint64(b[:8], h.seed)
	binary.LittleEndian.PutUint64(b[8:], uint64(x))
	f.Write(b[:])
	return int64(f.Sum64()%(2*h.spread+1)) - int64(h.spread)
}

func (h hashNoise) AddNoiseFloat64(x float64, _ int64, _, _, _ float64) (float64, error) {
	return x + float64(h.offset(int64(x))), nil
}

func (h hashNoise) AddNoiseInt64(x, _, _ int64, _, _ float64) (int64, error) {
	return x + h.offset(x), nil
}

// mustMerged sums encoded trees as Combine does.
func mustMerged(tb testing.TB, lower, upper float64, trees ...[]byte) mergedTree {
	tb.Helper()
	nodes := make([]int64, fedTree.nodes()+1)
	for _, b := range trees {
		if err := addTree(nodes, b); err != nil {
			tb.Fatal(err)
		}
	}
	return mergedTree{shape: fedTree, nodes: nodes, lower: lower, upper: upper}
}

// fedQuantileSpec is a federated median and quartiles of a value in
// [lower, upper] by region, with the patient count.
func fedQuantileSpec(lower, upper float64) Spec {
	s := fedSpec()
	s.Aggregates = []AggSpec{
		{Name: "n", Kind: AggCountPatients, PatientCount: true},
		{Name: "q1", Kind: AggQuantile, Lower: lower, Upper: upper, Rank: 0.25, Tree: 1},
		{Name: "median", Kind: AggQuantile, Lower: lower, Upper: upper, Rank: 0.5, Tree: 1},
		{Name: "q3", Kind: AggQuantile, Lower: lower, Upper: upper, Rank: 0.75, Tree: 1},
	}
	return s
}

// quantileGroups is one site's exact statistics for fedQuantileSpec: the
// values of each region.
func quantileGroups(lower, upper float64, values [3][]float64) []GroupStats {
	var out []GroupStats
	for i, r := range []string{"north", "south", "west"} {
		n := int64(len(values[i]))
		out = append(out, GroupStats{Keys: keys(r), Patients: n, Aggs: []AggStats{
			{Count: float64(n)},
			{Count: float64(n), Hist: histogram(values[i], lower, upper)},
			{}, {},
		}})
	}
	return out
}

func draws(rng *rand.Rand, n int, draw func(*rand.Rand) float64) []float64 {
	xs := make([]float64, n)
	for i := range xs {
		xs[i] = draw(rng)
	}
	return xs
}

// TestMergedTreeWalkIsLibraryWalk: a site's tree (every node's noisy
// count, noisyTreeNodes), decoded and walked by mergedTree.result, answers
// every rank exactly as the library's BoundedQuantiles.Result over the
// same values with the same deterministic noise, for data that is empty,
// one value, sparse, dense, skewed and bimodal, noise that makes many
// nodes negative or tiny (the walk's clamping and alpha rule) and noise
// that is large, over several ranges.
func TestMergedTreeWalkIsLibraryWalk(t *testing.T) {
	rng := rand.New(rand.NewPCG(21, 1))
	data := map[string]func(lower, upper float64) []float64{
		"empty": func(float64, float64) []float64 { return nil },
		"one":   func(l, u float64) []float64 { return []float64{l + (u-l)/3} },
		"sparse": func(l, u float64) []float64 {
			return draws(rng, 40, func(r *rand.Rand) float64 { return l + (u-l)*r.Float64() })
		},
		"dense normal": func(l, u float64) []float64 {
			return draws(rng, 20000, func(r *rand.Rand) float64 { return l + (u-l)*(0.4+0.1*r.NormFloat64()) })
		},
		"skewed": func(l, u float64) []float64 {
			return draws(rng, 3000, func(r *rand.Rand) float64 { return l + (u-l)*0.05*r.ExpFloat64() })
		},
		"bimodal": func(l, u float64) []float64 {
			return draws(rng, 5000, func(r *rand.Rand) float64 {
				if r.IntN(4) == 0 {
					return l + (u-l)*(0.1+0.001*r.NormFloat64())
				}
				return l + (u-l)*(0.9+0.01*r.NormFloat64())
			})
		},
	}
	compared := 0
	for _, b := range [][2]float64{{12, 70}, {0, 1}, {-1e6, 3e6}} {
		for name, gen := range data {
			xs := gen(b[0], b[1])
			s := quantileSpec(b[0], b[1], 0.5)
			s.Mechanism, s.Delta = MechanismGaussian, 1e-6
			st := s.partialPlan().stats[2]
			for _, nz := range []hashNoise{{seed: 1, spread: 3}, {seed: 2, spread: 40}, {seed: 3, spread: 1000}} {
				hist := histogram(xs, b[0], b[1])
				bq, err := newTree(s, fedTree, st, s.Aggregates[1], hist, nz)
				if err != nil {
					t.Fatal(err)
				}
				enc, err := noisyTreeNodes(s, fedTree, st, hist, nz)
				if err != nil {
					t.Fatal(err)
				}
				tree := mustMerged(t, b[0], b[1], enc)
				for i := 0; i <= 1000; i++ {
					q := float64(i) / 1000
					want, err1 := bq.Result(q)
					got, err2 := tree.result(q)
					if err1 != nil || err2 != nil || got != want {
						t.Fatalf("%s over [%g, %g], noise %+v, rank %v: merged walk %v (%v), library %v (%v)", name, b[0], b[1], nz, q, got, err2, want, err1)
					}
					compared++
				}
			}
		}
	}
	t.Logf("%d ranks identical", compared)
}

// countingNoise counts the integer noises drawn and adds none.
type countingNoise struct {
	noise.Noise
	ints *atomic.Int64
}

func (c countingNoise) AddNoiseFloat64(x float64, _ int64, _, _, _ float64) (float64, error) {
	return x, nil
}

func (c countingNoise) AddNoiseInt64(x, _, _ int64, _, _ float64) (int64, error) {
	c.ints.Add(1)
	return x, nil
}

// TestPartialTreeNoisesEveryNode: a part carries one tree per group with
// the noise of every node below the root (empty ones too, whatever the
// data), with the tree statistic's sensitivities, ε and δ (those the
// library's tree gives its nodes); with noise that ignores the data, two
// sites with different values send identical trees, so nothing exact and
// not which nodes are empty is in them.
func TestPartialTreeNoisesEveryNode(t *testing.T) {
	s := fedQuantileSpec(12, 70)
	var n atomic.Int64
	part := mustPartial(t, s, quantileGroups(12, 70, [3][]float64{{20}, nil, {30, 31, 32}}), Options{Noise: countingNoise{Noise: noise.Gaussian(), ints: &n}})
	if got := n.Load(); got != 3*int64(fedTree.nodes()) || fedTree.nodes() != 584 {
		t.Errorf("%d integer noises for three trees, want 3 × %d", got, fedTree.nodes())
	}
	for i, g := range part.Groups {
		if len(g.Trees) != 1 {
			t.Fatalf("group %d has %d trees", i, len(g.Trees))
		}
	}
	var seen struct {
		l0   int64
		lInf int64
		eps  float64
	}
	rec := recordNoise{Noise: noise.Gaussian(), f: func(l0, lInf int64, eps, delta float64) {
		seen.l0, seen.lInf, seen.eps = l0, lInf, eps
	}}
	mustPartial(t, s, quantileGroups(12, 70, [3][]float64{{20}, nil, nil}), Options{Noise: rec})
	st := s.partialPlan().stats[2]
	if seen.l0 != FederatedTreeHeight*int64(s.MaxGroupsPerPatient) || seen.lInf != int64(s.MaxRowsPerGroup) || seen.eps != st.eps || st.role != roleTree {
		t.Errorf("node noise with L0 %d, L∞ %d, ε %v; want the tree statistic's %d, %v, %v", seen.l0, seen.lInf, seen.eps, st.l0, st.lInf, st.eps)
	}
	constant := constNoise{Noise: noise.Gaussian(), v: 7}
	a := mustPartial(t, s, quantileGroups(12, 70, [3][]float64{{20}, nil, {30, 31, 32}}), Options{Noise: constant})
	b := mustPartial(t, s, quantileGroups(12, 70, [3][]float64{draws(rand.New(rand.NewPCG(1, 1)), 500, func(r *rand.Rand) float64 { return 12 + 58*r.Float64() }), {69}, nil}), Options{Noise: constant})
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	if string(ja) != string(jb) {
		t.Error("two sites with different values and data-blind noise sent different parts")
	}
}

// recordNoise reports the parameters of the integer noises drawn.
type recordNoise struct {
	noise.Noise
	f func(l0, lInf int64, eps, delta float64)
}

func (r recordNoise) AddNoiseInt64(x, l0, lInf int64, eps, delta float64) (int64, error) {
	r.f(l0, lInf, eps, delta)
	return r.Noise.AddNoiseInt64(x, l0, lInf, eps, delta)
}

// constNoise replaces every value by v, whatever the data.
type constNoise struct {
	noise.Noise
	v int64
}

func (c constNoise) AddNoiseFloat64(float64, int64, float64, float64, float64) (float64, error) {
	return float64(c.v), nil
}

func (c constNoise) AddNoiseInt64(int64, int64, int64, float64, float64) (int64, error) {
	return c.v, nil
}

// TestCombineQuantiles: three sites' parts combine into the quantiles of
// the node-by-node sum of their trees: with deterministic noise, each
// released quantile and its interval are the library-equivalent walk of
// the summed tree at the rank and at rank ± the half-width for σ√3 and
// the combined noisy count; with noise that adds nothing they are the
// library's quantiles of the union of the sites' values (one tree over
// all the values); a region too small in all is suppressed, its quantiles
// with it; and the report gives the tree noise of σ√3.
func TestCombineQuantiles(t *testing.T) {
	const lower, upper = 12.0, 70.0
	s := fedQuantileSpec(lower, upper)
	rng := rand.New(rand.NewPCG(5, 6))
	bmi := func(r *rand.Rand) float64 { return 27 + 5*r.NormFloat64() }
	var sites [3][3][]float64
	for i := range sites {
		sites[i] = [3][]float64{draws(rng, 300*(i+1), bmi), draws(rng, 2, bmi), draws(rng, 40, bmi)}
	}
	for _, nz := range []noise.Noise{hashNoise{Noise: noise.Gaussian(), seed: 9, spread: 5}, countingNoise{Noise: noise.Gaussian(), ints: new(atomic.Int64)}} {
		var parts []*Partial
		for i := range sites {
			parts = append(parts, mustPartial(t, s, quantileGroups(lower, upper, sites[i]), Options{Noise: nz}))
		}
		res, err := Combine(s, parts)
		if err != nil {
			t.Fatal(err)
		}
		fed := s.federatedPlan(3)
		for g, row := range res.Rows {
			if row[1].Suppressed {
				for _, c := range row[2:] {
					if !c.Suppressed || c.Value != nil {
						t.Errorf("%s: quantile released in a suppressed group: %+v", row[0].Key, c)
					}
				}
				continue
			}
			var union []float64
			for i := range sites {
				union = append(union, sites[i][g]...)
			}
			tree := mustMerged(t, lower, upper, parts[0].Groups[g].Trees[0], parts[1].Groups[g].Trees[0], parts[2].Groups[g].Trees[0])
			nHat := parts[0].Groups[g].Stats[1] + parts[1].Groups[g].Stats[1] + parts[2].Groups[g].Stats[1]
			r := rankHalfWidth(fedTree, fed.scale(fed.stats[2]), nHat, CIAlpha)
			for j, q := range []float64{0.25, 0.5, 0.75} {
				c := row[2+j]
				v, _ := tree.result(q)
				lo, _ := tree.result(clamp(q-r, 0, 1))
				hi, _ := tree.result(clamp(q+r, 0, 1))
				w := fedTree.leafWidth(lower, upper)
				if value(t, c) != v || *c.CILow != clamp(lo-w, lower, upper) || *c.CIHigh != clamp(hi+w, lower, upper) {
					t.Errorf("%s rank %v: released %v [%v, %v], merged walk %v [%v, %v]", row[0].Key, q, *c.Value, *c.CILow, *c.CIHigh, v, lo-w, hi+w)
				}
				if _, zero := nz.(countingNoise); zero {
					s1 := quantileSpec(lower, upper, q)
					bq, err := newTree(s1, fedTree, s1.partialPlan().stats[2], s1.Aggregates[1], histogram(union, lower, upper), addNoiseFake{Noise: noise.Gaussian()})
					if err != nil {
						t.Fatal(err)
					}
					if want, _ := bq.Result(q); value(t, c) != want {
						t.Errorf("%s rank %v without noise: combined %v, library over the union %v", row[0].Key, q, value(t, c), want)
					}
					// Not exact: the tree interpolates within a leaf by rank,
					// quantile_cont between neighbouring values.
					if e := exactQuantile(union, q); math.Abs(e-v) > 0.1 {
						t.Errorf("%s rank %v without noise: combined %v, exact %v", row[0].Key, q, v, e)
					}
				}
			}
		}
		if !res.Rows[1][1].Suppressed {
			t.Errorf("south (6 patients in all) released")
		}
		if res.Rows[0][1].Suppressed || res.Rows[0][3].Value == nil {
			t.Errorf("north (1800 patients) not released: %+v", res.Rows[0])
		}
		for _, n := range res.Report.Noise {
			if n.Statistic == "q1/tree" {
				if want := math.Sqrt(3) * s.partialPlan().scale(s.partialPlan().stats[2]); math.Abs(n.Scale-want) > 2e-3*want {
					t.Errorf("tree noise %v, want σ√3 = %v", n.Scale, want)
				}
			}
		}
	}
}

// TestCombineRefusesBadTrees: a part whose tree is missing, of the wrong
// node count, corrupt, or with a count beyond ±2^53, or of another Spec,
// is refused naming the site, by Combine and by CheckPartial (the
// broker's check of an upload).
func TestCombineRefusesBadTrees(t *testing.T) {
	s := fedQuantileSpec(12, 70)
	nz := Options{Noise: hashNoise{Noise: noise.Gaussian(), seed: 4, spread: 9}}
	good := func() *Partial {
		return mustPartial(t, s, quantileGroups(12, 70, [3][]float64{{20, 21}, {30}, nil}), nz)
	}
	short := encodeTree(make([]int64, fedTree.nodes()-1))
	long := encodeTree(make([]int64, fedTree.nodes()+16))
	huge := make([]int64, fedTree.nodes())
	huge[7] = maxNodeCount + 1
	tooBig := encodeTree(huge)
	cut := encodeTree(make([]int64, fedTree.nodes()))
	cut[len(cut)-1] = 0x80 // a varint's continuation bit on its last byte
	other := fedQuantileSpec(12, 80)
	for name, tc := range map[string]struct {
		edit func(p *Partial) *Partial
		want string
	}{
		"tree gone":      {func(p *Partial) *Partial { p.Groups[1].Trees = nil; return p }, "has 0 quantile trees, want 1"},
		"extra tree":     {func(p *Partial) *Partial { p.Groups[0].Trees = append(p.Groups[0].Trees, short); return p }, "has 2 quantile trees, want 1"},
		"one node short": {func(p *Partial) *Partial { p.Groups[2].Trees[0] = short; return p }, "must hold 584 node counts"},
		"nodes too many": {func(p *Partial) *Partial { p.Groups[2].Trees[0] = long; return p }, "must hold 584 node counts"},
		"corrupt":        {func(p *Partial) *Partial { p.Groups[0].Trees[0] = cut; return p }, "not a valid varint"},
		"too long": {func(p *Partial) *Partial {
			p.Groups[0].Trees[0] = make([]byte, fedTree.nodes()*binary.MaxVarintLen64+1)
			return p
		}, "more than 584 node counts"},
		"count too big": {func(p *Partial) *Partial { p.Groups[0].Trees[0] = tooBig; return p }, "beyond ±2^53"},
		"other spec": {func(*Partial) *Partial {
			return mustPartial(t, other, quantileGroups(12, 80, [3][]float64{{20, 21}, {30}, nil}), nz)
		}, "spec hash"},
	} {
		bad := tc.edit(good())
		_, err := Combine(s, []*Partial{good(), bad, good()})
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "site 2") {
			t.Errorf("%s: Combine: got %v, want a refusal of site 2 naming %q", name, err, tc.want)
		}
		if err := s.CheckPartial(bad); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: CheckPartial: got %v, want an error naming %q", name, err, tc.want)
		}
	}
	if err := s.CheckPartial(good()); err != nil {
		t.Errorf("a good part refused: %v", err)
	}
}

// TestFederatedQuantileAccuracy: a quantile's expected half-width over N
// sites is the single-site formula for the federated tree (its height,
// its leaves) with node noise σ√N, σ the partial plan's.
func TestFederatedQuantileAccuracy(t *testing.T) {
	s := fedQuantileSpec(12, 70)
	for _, n := range []int{1, 3, 10} {
		acc, err := s.FederatedAccuracy(n)
		if err != nil {
			t.Fatal(err)
		}
		p := s.partialPlan()
		st := p.stats[2]
		sigma := p.scale(st) * math.Sqrt(float64(n))
		want := math.Min(rankHalfWidth(fedTree, sigma, accuracyReferenceRows, CIAlpha), 0.5)*58 + 58.0/512
		for _, i := range []int{1, 2, 3} {
			if math.Abs(acc[i].HalfWidth95-want) > 2e-3*want {
				t.Errorf("%d sites, %s: half-width %v, want %v (tree σ√N = %v)", n, acc[i].Column, acc[i].HalfWidth95, want, sigma)
			}
		}
		t.Logf("%d sites: median half-width %.3f", n, acc[2].HalfWidth95)
	}
}

// TestCombineQuantilesRollup: with a ROLLUP (two grouping sets, k = 1) a
// site noises its trees for L0 = h·k·2 (a patient's value is in a cell's
// tree and in the total's), not the library tree's h·k; and without
// noise the total's combined median is the library's over every value of
// every site.
func TestCombineQuantilesRollup(t *testing.T) {
	s := fedQuantileSpec(12, 70)
	s.Sets, s.Margins = [][]int{{0}, {}}, true
	rng := rand.New(rand.NewPCG(8, 9))
	bmi := func(r *rand.Rand) float64 { return 27 + 5*r.NormFloat64() }
	var all []float64
	var parts []*Partial
	for range 3 {
		values := [3][]float64{draws(rng, 400, bmi), draws(rng, 300, bmi), draws(rng, 200, bmi)}
		groups := quantileGroups(12, 70, values)
		var site []float64
		for _, v := range values {
			site = append(site, v...)
		}
		all = append(all, site...)
		n := int64(len(site))
		groups = append(groups, GroupStats{Keys: keys(TotalKey), Patients: n, Aggs: []AggStats{
			{Count: float64(n)}, {Count: float64(n), Hist: histogram(site, 12, 70)}, {}, {}}})
		var l0 atomic.Int64
		rec := recordNoise{Noise: noise.Gaussian(), f: func(l, _ int64, _, _ float64) { l0.Store(l) }}
		mustPartial(t, s, groups, Options{Noise: rec})
		if got := l0.Load(); got != 2*FederatedTreeHeight {
			t.Fatalf("tree nodes noised for L0 %d, want h·k·sets = %d", got, 2*FederatedTreeHeight)
		}
		parts = append(parts, mustPartial(t, s, groups, Options{Noise: countingNoise{Noise: noise.Gaussian(), ints: new(atomic.Int64)}}))
	}
	res, err := Combine(s, parts)
	if err != nil {
		t.Fatal(err)
	}
	total := res.Rows[len(res.Rows)-1]
	if total[0].Key != TotalKey || total[3].Value == nil {
		t.Fatalf("last row %+v, want the released total", total)
	}
	s1 := quantileSpec(12, 70, 0.5)
	bq, err := newTree(s1, fedTree, s1.partialPlan().stats[2], s1.Aggregates[1], histogram(all, 12, 70), addNoiseFake{Noise: noise.Gaussian()})
	if err != nil {
		t.Fatal(err)
	}
	if want, _ := bq.Result(0.5); *total[3].Value != want {
		t.Errorf("total median without noise %v, the library's over all values %v", *total[3].Value, want)
	}
}

// TestTreeShapesNest: the leaves of each tree shape are whole groups of
// the sandbox's QuantileLeaves leaves (so a site can file each of the
// latter in one leaf of the former, leafOf), and that leaf is the one the
// library's own arithmetic gives a value inside it, at both ends of each
// leaf, over bounds whose width is not a power of two.
func TestTreeShapesNest(t *testing.T) {
	for _, sh := range []treeShape{siteTree, fedTree} {
		if sh.branching < 2 || sh.branching&(sh.branching-1) != 0 || QuantileLeaves%sh.leaves() != 0 {
			t.Fatalf("shape %+v: branching must be a power of two and its %d leaves must divide %d", sh, sh.leaves(), QuantileLeaves)
		}
		lower, upper := 12.0, 70.0
		for leaf := range QuantileLeaves {
			for _, x := range []float64{
				lower + (upper-lower)*float64(leaf)/QuantileLeaves,
				leafValue(leaf, lower, upper),
			} {
				lib := min(int((x-lower)/(upper-lower)*float64(sh.leaves())), sh.leaves()-1)
				if QuantileLeaf(x, lower, upper) == leaf && lib != sh.leafOf(leaf) {
					t.Fatalf("shape %+v: value %v in finest leaf %d is in leaf %d of the shape by the library's arithmetic, leafOf says %d", sh, x, leaf, lib, sh.leafOf(leaf))
				}
			}
		}
	}
}
