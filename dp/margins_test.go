package dp

import (
	"math"
	"math/big"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/google/differential-privacy/go/v3/noise"
	"github.com/google/go-cmp/cmp"
)

// rollupSpec is validSpec grouped by ROLLUP (sex, region).
func rollupSpec() Spec {
	s := validSpec()
	s.Margins = true
	s.Sets = [][]int{{0, 1}, {0}, {}}
	return s
}

func TestSetsValidate(t *testing.T) {
	tests := []struct {
		name   string
		modify func(*Spec)
		want   string
	}{
		{name: "rollup", modify: func(*Spec) {}},
		{name: "cube", modify: func(s *Spec) { s.Sets = [][]int{{}, {0}, {1}, {0, 1}} }},
		{name: "no margins", modify: func(s *Spec) { s.Margins = false }, want: "margins must be set"},
		{name: "gaussian", modify: func(s *Spec) { s.Mechanism = MechanismGaussian }},
		{name: "no full grouping", modify: func(s *Spec) { s.Sets = [][]int{{0}, {1}, {}} }, want: "grouping by every group column"},
		{name: "repeated set", modify: func(s *Spec) { s.Sets = [][]int{{0, 1}, {0}, {0}} }, want: "repeats"},
		{name: "unordered set", modify: func(s *Spec) { s.Sets = [][]int{{1, 0}} }, want: "increasing order"},
		{name: "column out of range", modify: func(s *Spec) { s.Sets = [][]int{{0, 2}} }, want: "increasing order"},
		{name: "no public domain", modify: func(s *Spec) { s.Groups[1].Domain = nil }, want: "public domain"},
		{name: "total key in a domain", modify: func(s *Spec) { s.Groups[0].Domain = []string{"F", TotalKey} }, want: "key of totals"},
		{name: "no groups", modify: func(s *Spec) { s.Groups = nil }, want: "need group columns"},
		{name: "too many cells", modify: func(s *Spec) {
			s.Groups[0].Domain = nil
			for i := range 200 {
				s.Groups[0].Domain = append(s.Groups[0].Domain, strings.Repeat("x", i+1))
			}
			s.Groups[1].Domain = s.Groups[0].Domain[:60]
		}, want: "more than the 10000 allowed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := rollupSpec()
			tt.modify(&s)
			err := s.Validate()
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Validate() = %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Validate() = %v, want %q", err, tt.want)
			}
		})
	}
}

// TestRollupRelease: a ROLLUP releases the cells, the subtotals by sex and
// the grand total, each with TotalKey in the columns it totals, every
// subtotal after the cells it sums; keys the SQL reports outside the sets
// (a CUBE cell of a ROLLUP, NULL, a value outside the domain) are not.
func TestRollupRelease(t *testing.T) {
	s := rollupSpec()
	s.RoundingBase = 1
	groups := []GroupStats{
		{Keys: keys("F", "London"), Patients: 40, Aggs: []AggStats{{Count: 40}}},
		{Keys: keys("F", TotalKey), Patients: 45, Aggs: []AggStats{{Count: 45}}},
		{Keys: keys(TotalKey, TotalKey), Patients: 100, Aggs: []AggStats{{Count: 100}}},
		{Keys: keys(TotalKey, "London"), Patients: 70, Aggs: []AggStats{{Count: 70}}},
		{Keys: keys("\x00", TotalKey), Patients: 7, Aggs: []AggStats{{Count: 7}}},
	}
	res := MustProtect(t, s, groups, Options{Noise: addNoiseFake{Noise: noise.Laplace(), offset: 20}})
	var got []string
	for _, row := range res.Rows {
		got = append(got, row[0].Key+"/"+row[1].Key)
	}
	want := []string{
		"F/London", "F/North", "F/South", "F/(total)",
		"M/London", "M/North", "M/South", "M/(total)",
		"(total)/(total)",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("rows (-want +got):\n%s", diff)
	}
	if v := value(t, res.Rows[8][2]); v != 120 {
		t.Errorf("grand total %v, want 100 + 20", v)
	}
	sel, err := s.NewSelector()
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []bool{true, true, true, false, false} {
		keep, err := sel.Keep(groups[i])
		if err != nil {
			t.Fatal(err)
		}
		if keep != want {
			t.Errorf("Selector.Keep(%s) = %v, want %v", keyString(groups[i].Keys), keep, want)
		}
	}
	if n := s.DomainCells(); n != 9 {
		t.Errorf("DomainCells() = %d, want 9", n)
	}
}

// TestCostWithSets: a patient's rows count in one cell of each grouping
// set, so the noise is calibrated to L0 = k × sets: the count's noise and
// its 95% half-width are three times a plain GROUP BY's for a ROLLUP of
// two columns (three sets), the budget (ε, δ) is the same, and the
// release threshold rises with L0.
func TestCostWithSets(t *testing.T) {
	plain, roll := validSpec(), rollupSpec()
	plain.MaxGroupsPerPatient, roll.MaxGroupsPerPatient = 2, 2
	if plain.Cost() != roll.Cost() {
		t.Errorf("cost %+v, want the plain query's %+v", roll.Cost(), plain.Cost())
	}
	pa, err := plain.Accuracy()
	if err != nil {
		t.Fatal(err)
	}
	ra, err := roll.Accuracy()
	if err != nil {
		t.Fatal(err)
	}
	if math.Abs(ra[0].HalfWidth95-3*pa[0].HalfWidth95) > 1e-9 {
		t.Errorf("half-width %v, want 3 × %v", ra[0].HalfWidth95, pa[0].HalfWidth95)
	}
	if !strings.Contains(ra[0].Note, "3 grouping sets") {
		t.Errorf("accuracy note %q does not name the grouping sets", ra[0].Note)
	}
	p := roll.plan()
	if p.stats[0].l0 != 6 {
		t.Errorf("L0 = %d, want k·sets = 6", p.stats[0].l0)
	}
	lib, err := noise.Laplace().Threshold(6, 1, 1, 0, roll.Delta)
	if err != nil {
		t.Fatal(err)
	}
	if math.Abs(p.release-lib) > 1e-9 || p.release <= plain.plan().release {
		t.Errorf("release threshold %v, want the library's %v for L0 = 6 (plain %v)", p.release, lib, plain.plan().release)
	}
	res := MustProtect(t, roll, nil, Options{})
	if res.Report.GroupingSets != 3 || res.ForResearcher().Report.GroupingSets != 3 {
		t.Errorf("report grouping sets %d", res.Report.GroupingSets)
	}
	if math.Abs(res.Report.Noise[0].Scale-math.Sqrt2*6) > 1e-9 {
		t.Errorf("noise scale %v, want √2·6", res.Report.Noise[0].Scale)
	}
}

// span reports whether v lies in the span of rows, in exact arithmetic.
func inSpan(rows [][]*big.Rat, v []*big.Rat) bool {
	rank := func(m [][]*big.Rat) int {
		m = slices.Clone(m)
		for i := range m {
			m[i] = slices.Clone(m[i])
			for j := range m[i] {
				m[i][j] = new(big.Rat).Set(m[i][j])
			}
		}
		r := 0
		for c := 0; len(m) > 0 && c < len(m[0]); c++ {
			p := -1
			for i := r; i < len(m); i++ {
				if m[i][c].Sign() != 0 {
					p = i
					break
				}
			}
			if p < 0 {
				continue
			}
			m[r], m[p] = m[p], m[r]
			for i := r + 1; i < len(m); i++ {
				if m[i][c].Sign() == 0 {
					continue
				}
				f := new(big.Rat).Quo(m[i][c], m[r][c])
				for j := c; j < len(m[i]); j++ {
					m[i][j].Sub(m[i][j], new(big.Rat).Mul(f, m[r][j]))
				}
			}
			r++
		}
		return r
	}
	return rank(rows) == rank(append(slices.Clone(rows), v))
}

// finestVectors writes every cell of a table as a vector over the cells of
// its full grouping (all free, independent values): a cell of the full
// grouping is its own unit vector, a total the sum of those it covers. It
// is built from the keys alone, independently of setRelations.
func finestVectors(keys [][]*string) [][]*big.Rat {
	var finest []int
	for i, k := range keys {
		if !slices.ContainsFunc(k, func(s *string) bool { return *s == TotalKey }) {
			finest = append(finest, i)
		}
	}
	out := make([][]*big.Rat, len(keys))
	for i, k := range keys {
		out[i] = make([]*big.Rat, len(finest))
		for j, f := range finest {
			covered := true
			for c := range k {
				covered = covered && (*k[c] == TotalKey || *k[c] == *keys[f][c])
			}
			out[i][j] = new(big.Rat)
			if covered {
				out[i][j].SetInt64(1)
			}
		}
	}
	return out
}

// checkUndetermined fails if some suppressed cell's vector lies in the span
// of the released cells' vectors and of extra (released margins): a
// combination of released values would then give it exactly.
func checkUndetermined(tb testing.TB, vecs, extra [][]*big.Rat, suppressed []bool) {
	tb.Helper()
	released := slices.Clone(extra)
	for i, v := range vecs {
		if !suppressed[i] {
			released = append(released, v)
		}
	}
	for i, v := range vecs {
		if suppressed[i] && inSpan(released, v) {
			tb.Errorf("suppressed cell %d is a combination of released cells and totals", i)
		}
	}
}

// TestSuppressTotalsAdversarial: over random ROLLUPs and CUBEs of two and
// three columns, random noisy counts and random primary suppressions (small
// cells, totals among them), no suppressed cell is a linear combination of
// the released cells, checked in exact arithmetic over a model built from
// the keys alone; and secondary suppression only adds cells.
func TestSuppressTotalsAdversarial(t *testing.T) {
	rng := rand.New(rand.NewPCG(19, 2026))
	domains := [][]string{{"F", "M"}, {"a", "b", "c"}, {"x", "y", "z", "w"}}
	families := map[string]func(n int) [][]int{
		"rollup": func(n int) [][]int {
			var out [][]int
			for i := n; i >= 0; i-- {
				out = append(out, seq(i))
			}
			return out
		},
		"cube": func(n int) [][]int {
			var out [][]int
			for m := range 1 << n {
				var set []int
				for c := range n {
					if m&(1<<c) != 0 {
						set = append(set, c)
					}
				}
				out = append(out, set)
			}
			return out
		},
		"full and grand total": func(n int) [][]int { return [][]int{seq(n), {}} },
	}
	for name, family := range families {
		for _, n := range []int{2, 3} {
			s := validSpec()
			s.Groups = nil
			for c := range n {
				s.Groups = append(s.Groups, GroupSpec{Name: string(rune('a' + c)), Domain: domains[c]})
			}
			s.Margins, s.Sets = true, family(n)
			if err := s.Validate(); err != nil {
				t.Fatalf("%s of %d: %v", name, n, err)
			}
			keys := s.releasedKeys()
			vecs := finestVectors(keys)
			for trial := range 40 {
				noisy := make([]float64, len(keys))
				primary := make([]bool, len(keys))
				p := 0.05 + 0.3*float64(trial%4)/3
				for i := range keys {
					noisy[i] = rng.Float64() * 100
					primary[i] = rng.Float64() < p
				}
				sec := s.suppressTotals(keys, noisy, primary)
				all := make([]bool, len(keys))
				for i := range all {
					if sec[i] && primary[i] {
						t.Fatalf("%s of %d: cell %d both primary and secondary", name, n, i)
					}
					all[i] = primary[i] || sec[i]
				}
				checkUndetermined(t, vecs, nil, all)
			}
		}
	}
}

func seq(n int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = i
	}
	return out
}

// TestSecondarySuppressBridge: in a 4×4 table with released margins, two
// 2×2 blocks of primary suppressions joined by one more primary cell leave
// every line with two or three suppressed cells, so the line rule alone
// suppresses nothing, yet the margins determine the joining cell (any
// change to it must be undone in its row and column, which only the other
// block could do). SecondarySuppress must protect it.
func TestSecondarySuppressBridge(t *testing.T) {
	rows, cols := []string{"r1", "r2", "r3", "r4"}, []string{"c1", "c2", "c3", "c4"}
	var ks [][]*string
	for _, r := range rows {
		for _, c := range cols {
			ks = append(ks, keys(r, c))
		}
	}
	at := func(r, c int) int { return r*4 + c }
	primary := make([]bool, 16)
	for _, rc := range [][2]int{{0, 0}, {0, 1}, {1, 0}, {1, 1}, {2, 2}, {2, 3}, {3, 2}, {3, 3}, {1, 2}} {
		primary[at(rc[0], rc[1])] = true
	}
	noisy := make([]float64, 16)
	for i := range noisy {
		noisy[i] = float64(50 + i)
	}
	sec, err := SecondarySuppress(ks, noisy, primary)
	if err != nil {
		t.Fatal(err)
	}
	all := make([]bool, 16)
	for i := range all {
		all[i] = primary[i] || sec[i]
	}
	// The model: 16 free cells; the released margins are row and column
	// sums.
	vecs := make([][]*big.Rat, 16)
	var margins [][]*big.Rat
	for i := range vecs {
		vecs[i] = ratVector(16, i)
	}
	for r := range 4 {
		margins = append(margins, ratVector(16, at(r, 0), at(r, 1), at(r, 2), at(r, 3)))
		margins = append(margins, ratVector(16, at(0, r), at(1, r), at(2, r), at(3, r)))
	}
	checkUndetermined(t, vecs, margins, all)
	if !slices.Contains(sec, true) {
		t.Error("no secondary suppression for the bridge")
	}
	checkNoSingleSuppressed(t, ks, primary, sec)
}

func ratVector(n int, ones ...int) []*big.Rat {
	v := make([]*big.Rat, n)
	for i := range v {
		v[i] = new(big.Rat)
	}
	for _, i := range ones {
		v[i].SetInt64(1)
	}
	return v
}

// TestSecondarySuppressRandomDetermination: over random primary patterns
// in a 5×4 table with released margins, no suppressed cell is a
// combination of released cells and margins.
func TestSecondarySuppressRandomDetermination(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 21))
	const nr, nc = 5, 4
	var ks [][]*string
	vecs := make([][]*big.Rat, 0, nr*nc)
	var margins [][]*big.Rat
	for r := range nr {
		for c := range nc {
			ks = append(ks, keys(string(rune('a'+r)), string(rune('p'+c))))
			vecs = append(vecs, ratVector(nr*nc, r*nc+c))
		}
	}
	for r := range nr {
		margins = append(margins, ratVector(nr*nc, r*nc, r*nc+1, r*nc+2, r*nc+3))
	}
	for c := range nc {
		margins = append(margins, ratVector(nr*nc, c, nc+c, 2*nc+c, 3*nc+c, 4*nc+c))
	}
	for range 60 {
		noisy := make([]float64, nr*nc)
		primary := make([]bool, nr*nc)
		for i := range noisy {
			noisy[i] = rng.Float64() * 100
			primary[i] = rng.Float64() < 0.3
		}
		sec, err := SecondarySuppress(ks, noisy, primary)
		if err != nil {
			t.Fatal(err)
		}
		all := make([]bool, len(ks))
		for i := range all {
			all[i] = primary[i] || sec[i]
		}
		checkUndetermined(t, vecs, margins, all)
	}
}

// TestGaussianSetsSensitivity: with Gaussian noise a total can take all of
// a patient's k·C rows, so the L∞ of every statistic but a distinct
// patient count is raised by √k; Laplace noise is unchanged.
func TestGaussianSetsSensitivity(t *testing.T) {
	s := rollupSpec()
	s.MaxGroupsPerPatient, s.MaxRowsPerGroup = 4, 3
	s.Aggregates = []AggSpec{{Name: "n", Kind: AggCountPatients, PatientCount: true}, {Name: "rows", Kind: AggCount}, {Name: "m", Kind: AggMean, Lower: 0, Upper: 10}}
	lap := s.plan()
	s.Mechanism = MechanismGaussian
	gau := s.plan()
	// n, rows, m/count, m/sum (C·(U−L)/2 = 15); √k = 2.
	wantLap := []float64{1, 3, 3, 15}
	wantGau := []float64{1, 6, 6, 30}
	for i, st := range gau.stats {
		if math.Abs(st.lInf-wantGau[i]) > 1e-12 || st.l0 != 12 {
			t.Errorf("gaussian %s: L0 %d, L∞ %v, want 12, %v", st.name, st.l0, st.lInf, wantGau[i])
		}
		if lap.stats[i].lInf != wantLap[i] {
			t.Errorf("laplace %s: L∞ %v, want %v", lap.stats[i].name, lap.stats[i].lInf, wantLap[i])
		}
	}
}
