package dp

import (
	"math"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestRoundCount(t *testing.T) {
	tests := []struct {
		name  string
		noisy float64
		base  int
		rule  string
		want  float64
	}{
		{name: "negative to zero", noisy: -3.2, base: 5, rule: RoundingNearest, want: 0},
		{name: "below half base", noisy: 2.49, base: 5, rule: RoundingNearest, want: 0},
		{name: "half base rounds up", noisy: 2.5, base: 5, rule: RoundingNearest, want: 5},
		{name: "12.4 to 10", noisy: 12.4, base: 5, rule: RoundingNearest, want: 10},
		{name: "12.5 to 15", noisy: 12.5, base: 5, rule: RoundingNearest, want: 15},
		{name: "base 10", noisy: 14.9, base: 10, rule: RoundingNearest, want: 10},
		{name: "base 1 integer", noisy: 7.6, base: 1, rule: RoundingNearest, want: 8},
		{name: "empty rule is nearest", noisy: 7.6, base: 5, rule: "", want: 10},
		{name: "midpoint6 zero stays zero", noisy: 0.49, base: 5, rule: RoundingMidpoint6, want: 0},
		{name: "midpoint6 negative", noisy: -6, base: 5, rule: RoundingMidpoint6, want: 0},
		{name: "midpoint6 one", noisy: 0.5, base: 5, rule: RoundingMidpoint6, want: 5},
		{name: "midpoint6 two", noisy: 2, base: 5, rule: RoundingMidpoint6, want: 5},
		{name: "midpoint6 seven", noisy: 7.4, base: 5, rule: RoundingMidpoint6, want: 5},
		{name: "midpoint6 eight", noisy: 7.5, base: 5, rule: RoundingMidpoint6, want: 10},
		{name: "midpoint6 twelve", noisy: 12, base: 5, rule: RoundingMidpoint6, want: 10},
		{name: "midpoint6 thirteen", noisy: 13, base: 5, rule: RoundingMidpoint6, want: 15},
		{name: "midpoint6 large", noisy: 1002.6, base: 5, rule: RoundingMidpoint6, want: 1005},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := RoundCount(tt.noisy, tt.base, tt.rule); got != tt.want {
				t.Errorf("RoundCount(%v, %d, %q) = %v, want %v", tt.noisy, tt.base, tt.rule, got, tt.want)
			}
		})
	}
}

func TestDominance(t *testing.T) {
	tests := []struct {
		name            string
		sum, top1, top2 float64
		want            []string
	}{
		{name: "spread out", sum: 1000, top1: 100, top2: 90},
		{name: "nk only", sum: 1000, top1: 460, top2: 450, want: []string{DominanceNK}},
		{name: "nk boundary is not a breach", sum: 1000, top1: 500, top2: 400},
		// With p = 10% and k = 90% a p% breach is always an (n,k) breach too.
		{name: "both", sum: 100, top1: 50, top2: 46, want: []string{DominanceNK, DominanceP}},
		{name: "single contributor", sum: 40, top1: 40, want: []string{DominanceNK, DominanceP}},
		{name: "swapped tops", sum: 1000, top1: 450, top2: 460, want: []string{DominanceNK}},
		{name: "zero sum not judged", sum: 0, top1: 0, top2: 0},
		{name: "negative sum not judged", sum: -5, top1: 3, top2: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, Dominance(tt.sum, tt.top1, tt.top2)); diff != "" {
				t.Errorf("Dominance(%v, %v, %v) (-want +got):\n%s", tt.sum, tt.top1, tt.top2, diff)
			}
		})
	}
}

func TestSecondarySuppress(t *testing.T) {
	k := func(ks ...string) []*string { return keys(ks...) }
	tests := []struct {
		name       string
		keys       [][]*string
		noisy      []float64
		suppressed []bool
		want       []bool
	}{
		{
			name:       "one dimension: smallest other cell",
			keys:       [][]*string{k("a"), k("b"), k("c"), k("d")},
			noisy:      []float64{4, 50, 20, 30},
			suppressed: []bool{true, false, false, false},
			want:       []bool{false, false, true, false},
		},
		{
			name:       "one dimension: two primaries need nothing",
			keys:       [][]*string{k("a"), k("b"), k("c")},
			noisy:      []float64{4, 5, 30},
			suppressed: []bool{true, true, false},
			want:       []bool{false, false, false},
		},
		{
			name:       "nothing suppressed",
			keys:       [][]*string{k("a"), k("b")},
			noisy:      []float64{40, 50},
			suppressed: []bool{false, false},
			want:       []bool{false, false},
		},
		{
			name:       "ties pick the first",
			keys:       [][]*string{k("a"), k("b"), k("c")},
			noisy:      []float64{1, 30, 30},
			suppressed: []bool{true, false, false},
			want:       []bool{false, true, false},
		},
		{
			name: "two dimensions cascade",
			// Rows x, y, z; columns p, q, r; x/p primary.
			keys: [][]*string{
				k("x", "p"), k("x", "q"), k("x", "r"),
				k("y", "p"), k("y", "q"), k("y", "r"),
				k("z", "p"), k("z", "q"), k("z", "r"),
			},
			noisy: []float64{
				3, 12, 60,
				15, 16, 17,
				40, 14, 50,
			},
			suppressed: []bool{true, false, false, false, false, false, false, false, false},
			// Lines in order: columns p, q, r, then rows x, y, z.
			// Pass 1: column p {x/p} → y/p (15). Column q: none. Column r:
			// none. Row x {x/p} → x/q (12). Row y {y/p} → y/q (16). Row z:
			// none. Pass 2: column q {x/q, y/q} ok. Everything balanced:
			// each line has 0 or 2 suppressed cells.
			want: []bool{
				false, true, false,
				true, true, false,
				false, false, false,
			},
		},
		{
			name:       "NULL key is its own category",
			keys:       [][]*string{k("\x00"), k("a"), k("b")},
			noisy:      []float64{2, 30, 20},
			suppressed: []bool{true, false, false},
			want:       []bool{false, false, true},
		},
		{
			name:       "single-cell line cannot be helped",
			keys:       [][]*string{k("a", "p"), k("b", "q")},
			noisy:      []float64{2, 30},
			suppressed: []bool{true, false},
			want:       []bool{false, false},
		},
		{
			name:       "no keys",
			keys:       [][]*string{k()},
			noisy:      []float64{2},
			suppressed: []bool{true},
			want:       []bool{false},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := SecondarySuppress(tt.keys, tt.noisy, tt.suppressed)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("secondary (-want +got):\n%s", diff)
			}
			// Whatever the input, no line may end with exactly one
			// suppressed cell unless it has no other cell.
			checkNoSingleSuppressed(t, tt.keys, tt.suppressed, got)
		})
	}

	if _, err := SecondarySuppress([][]*string{k("a")}, nil, nil); err == nil {
		t.Error("mismatched lengths: want error")
	}
	if _, err := SecondarySuppress([][]*string{k("a"), k("a", "b")}, []float64{1, 2}, []bool{true, false}); err == nil {
		t.Error("uneven key tuples: want error")
	}
}

func checkNoSingleSuppressed(tb testing.TB, keys [][]*string, primary, secondary []bool) {
	tb.Helper()
	if len(keys) == 0 {
		return
	}
	for d := range len(keys[0]) {
		lines := map[string][]int{}
		for i, k := range keys {
			other := append(append([]*string{}, k[:d]...), k[d+1:]...)
			lines[keyString(other)] = append(lines[keyString(other)], i)
		}
		for _, line := range lines {
			n := 0
			for _, i := range line {
				if primary[i] || secondary[i] {
					n++
				}
			}
			if n == 1 && len(line) > 1 {
				tb.Errorf("a line of %d cells has exactly one suppressed cell", len(line))
			}
		}
	}
}

func TestSecondarySuppressRandomTables(t *testing.T) {
	// A fixed pseudo-random pattern over a 6×5×3 table: the invariant must
	// hold whatever the primary pattern.
	var ks [][]*string
	var noisy []float64
	var prim []bool
	x := uint64(12345)
	next := func() uint64 { x ^= x << 13; x ^= x >> 7; x ^= x << 17; return x }
	for _, a := range []string{"1", "2", "3", "4", "5", "6"} {
		for _, b := range []string{"p", "q", "r", "s", "t"} {
			for _, c := range []string{"u", "v", "w"} {
				ks = append(ks, keys(a, b, c))
				noisy = append(noisy, float64(next()%100))
				prim = append(prim, next()%7 == 0)
			}
		}
	}
	sec, err := SecondarySuppress(ks, noisy, prim)
	if err != nil {
		t.Fatal(err)
	}
	checkNoSingleSuppressed(t, ks, prim, sec)
	for i := range sec {
		if sec[i] && prim[i] {
			t.Fatalf("cell %d marked both primary and secondary", i)
		}
	}
}

func TestRoundNearestReport(t *testing.T) {
	if got := roundNearest(0, 5); got != 0 || math.Signbit(got) {
		t.Errorf("roundNearest(0, 5) = %v", got)
	}
}
