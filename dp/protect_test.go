package dp

import (
	"math"
	"strconv"
	"strings"
	"testing"

	"github.com/google/differential-privacy/go/v3/noise"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// addNoiseFake adds a fixed offset to every exact value, like the library
// tests' noNoise with a twist so clamping is exercised. Its other methods
// are the library's Laplace noise (Protect never calls them on opts.Noise).
type addNoiseFake struct {
	noise.Noise
	offset float64
}

func (f addNoiseFake) AddNoiseFloat64(x float64, _ int64, _, _, _ float64) (float64, error) {
	return x + f.offset, nil
}

// replayNoise ignores the exact value and returns the next value of a fixed
// list: two runs over different exact data see the same noisy values.
type replayNoise struct {
	noise.Noise
	values []float64
	next   *int
}

func newReplayNoise(values ...float64) replayNoise {
	return replayNoise{Noise: noise.Laplace(), values: values, next: new(int)}
}

func (f replayNoise) AddNoiseFloat64(float64, int64, float64, float64, float64) (float64, error) {
	v := f.values[*f.next%len(f.values)]
	*f.next++
	return v, nil
}

func ptr(s string) *string { return &s }

func keys(ks ...string) []*string {
	out := make([]*string, len(ks))
	for i, k := range ks {
		if k != "\x00" {
			out[i] = ptr(k)
		}
	}
	return out
}

// MustProtect runs Protect and fails the test on error.
func MustProtect(tb testing.TB, s Spec, groups []GroupStats, opts Options) *Result {
	tb.Helper()
	res, err := Protect(s, groups, opts)
	if err != nil {
		tb.Fatalf("Protect: %v", err)
	}
	return res
}

func value(tb testing.TB, c Cell) float64 {
	tb.Helper()
	if c.Value == nil {
		tb.Fatalf("cell %+v has no value", c)
	}
	return *c.Value
}

// TestDomainFillIn: every key of the cross product is released in domain
// order, empty groups included with noisy zeros; keys outside the domain
// (and NULL) are ignored. The fake noise adds 20, above the release
// threshold (1 + ln(1/2δ) ≈ 14.1 here), so every cell is released.
func TestDomainFillIn(t *testing.T) {
	s := validSpec()
	s.RoundingBase = 1
	groups := []GroupStats{
		{Keys: keys("M", "North"), Patients: 40, Aggs: []AggStats{{Count: 40}}},
		{Keys: keys("F", "London"), Patients: 12, Aggs: []AggStats{{Count: 12}}},
		{Keys: keys("X", "London"), Patients: 99, Aggs: []AggStats{{Count: 99}}},
		{Keys: keys("F", "\x00"), Patients: 7, Aggs: []AggStats{{Count: 7}}},
	}
	res := MustProtect(t, s, groups, Options{Noise: addNoiseFake{Noise: noise.Laplace(), offset: 20}})
	var got [][3]string
	for _, row := range res.Rows {
		got = append(got, [3]string{row[0].Key, row[1].Key, strconv.FormatFloat(value(t, row[2]), 'f', -1, 64)})
	}
	want := [][3]string{
		{"F", "London", "32"}, {"F", "North", "20"}, {"F", "South", "20"},
		{"M", "London", "20"}, {"M", "North", "60"}, {"M", "South", "20"},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("rows (-want +got):\n%s", diff)
	}
	if res.Report.PartitionSelection != SelectionPublicDomain || res.Report.PartitionsNotRelease != 0 {
		t.Errorf("report: selection %q, not released %d", res.Report.PartitionSelection, res.Report.PartitionsNotRelease)
	}
	wantCols := []Column{{Name: "sex", Kind: "group"}, {Name: "region", Kind: "group"}, {Name: "n", Kind: "count_patients"}}
	if diff := cmp.Diff(wantCols, res.Columns); diff != "" {
		t.Errorf("columns (-want +got):\n%s", diff)
	}
}

// TestDecisionsUseNoisyValuesOnly runs Protect twice over exact data that
// differ everywhere (counts on both sides of the threshold, different sums)
// with the same replayed noisy values: every decision and released value
// must be identical.
func TestDecisionsUseNoisyValuesOnly(t *testing.T) {
	s := validSpec()
	s.Margins = true
	s.Aggregates = []AggSpec{
		{Name: "n", Kind: AggCount, PatientCount: true},
		{Name: "cost", Kind: AggSum, Lower: 0, Upper: 100},
		{Name: "bmi", Kind: AggMean, Lower: 10, Upper: 60},
	}
	// Per group: n, cost, bmi/count, bmi/sum. The release threshold is
	// 1 + 4·ln(1/2δ) ≈ 53.5 (four statistics at ε/4, public domains).
	// Noisy n: 3 (suppressed), 75, 50.4 (suppressed), 62.6, −4
	// (suppressed, negative), 80.
	replay := []float64{
		3, 100, 3, 10,
		75, 2500, 25, 50,
		50.4, 80, 9, 1,
		62.6, -7, 13, -13 * 40,
		-4, 10, 1, 1,
		80, 900, 30, 30,
	}
	mk := func(n, sum float64) []GroupStats {
		var gs []GroupStats
		for _, sex := range []string{"F", "M"} {
			for _, region := range []string{"London", "North", "South"} {
				// Dominance-neutral contributions so only noise-driven output is compared.
				gs = append(gs, GroupStats{
					Keys: keys(sex, region), Patients: int64(n),
					Aggs: []AggStats{{Count: n}, {Count: n, Sum: sum, Top1: 1, Top2: 1}, {Count: n, Sum: sum, Top1: 1, Top2: 1}},
				})
				n, sum = n*3+1, sum+17
			}
		}
		return gs
	}
	a := MustProtect(t, s, mk(1, 5), Options{Noise: newReplayNoise(replay...)})
	b := MustProtect(t, s, mk(500, 90000), Options{Noise: newReplayNoise(replay...)})
	if diff := cmp.Diff(a, b); diff != "" {
		t.Fatalf("results differ with the same noisy values (-a +b):\n%s", diff)
	}

	// And the decisions themselves are the ones the noisy values imply.
	type decision struct {
		Suppressed, Secondary bool
		N                     *float64
	}
	var got []decision
	for _, row := range a.Rows {
		got = append(got, decision{row[2].Suppressed, row[2].Secondary, row[2].Value})
	}
	// Primary: F London (3), F South (50.4), M North (−4). Column London
	// has one (F London) → M London (62.6) secondary; column North has one
	// (M North) → F North (75); column South has one (F South) → M South
	// (80). Rows F and M then have three each. Everything ends suppressed.
	wantFinal := []decision{
		{Suppressed: true}, {Suppressed: true, Secondary: true}, {Suppressed: true},
		{Suppressed: true, Secondary: true}, {Suppressed: true}, {Suppressed: true, Secondary: true},
	}
	if diff := cmp.Diff(wantFinal, got); diff != "" {
		t.Errorf("decisions (-want +got):\n%s", diff)
	}
	r := a.Report
	if r.GroupsSuppressed != 6 || r.GroupsReleased != 0 || r.CellsSuppressed != 9 || r.CellsSecondary != 9 {
		t.Errorf("report counts: %+v", r)
	}
}

// TestSuppressionAndRounding checks primary suppression on the first count,
// suppression of every statistic of the group, rounding of counts, clamping
// of sums and means, and confidence intervals, with deterministic noise.
func TestSuppressionAndRounding(t *testing.T) {
	s := Spec{
		Groups: []GroupSpec{{Name: "band", Domain: []string{"a", "b", "c"}}},
		Aggregates: []AggSpec{
			{Name: "sum", Kind: AggSum, Lower: 0, Upper: 10},
			{Name: "n", Kind: AggCountPatients, PatientCount: true},
			{Name: "mean", Kind: AggMean, Lower: 10, Upper: 60},
			{Name: "sd", Kind: AggStddev, Lower: 10, Upper: 60},
		},
		MaxGroupsPerPatient: 1, MaxRowsPerGroup: 1, Epsilon: 1, Delta: 1e-6,
		Threshold: 10, RoundingBase: 5, Rounding: RoundingNearest,
	}
	// Seven statistics at ε/7 each on public domains: a group is released
	// when its noisy patient count reaches 1 + 7·ln(1/2δ) ≈ 92.86.
	release := 1 + 7*math.Log(1/(2*s.Delta))
	// Stats per group: sum, n, mean/count, mean/sum, sd/count, sd/sum, sd/sumsq.
	replay := []float64{
		-3, 102.4, 12, 12 * 40, 12, 0, 12 * 4, // a: sum clamped to 0, n 102.4 → 100, mean clamped to 60
		5, release - 0.01, 10, 0, 10, 0, 0, // b: suppressed on n
		50, 1e6, 1e6, -1e9, 1e6, 1e6 * 5, 1e9, // c: n 1e6, mean clamped to 10, sd clamped to 25
	}
	res := MustProtect(t, s, nil, Options{Noise: newReplayNoise(replay...)})
	vals := func(row []Cell) []*float64 {
		var out []*float64
		for _, c := range row[1:] {
			out = append(out, c.Value)
		}
		return out
	}
	f := func(v float64) *float64 { return &v }
	want := [][]*float64{
		{f(0), f(100), f(60), f(2)}, // sd: √(48/12 − 0²)
		{nil, nil, nil, nil},
		{f(50), f(1e6), f(10), f(25)},
	}
	for i, row := range res.Rows {
		if diff := cmp.Diff(want[i], vals(row)); diff != "" {
			t.Errorf("row %d (-want +got):\n%s", i, diff)
		}
	}
	if !res.Rows[0][2].Rounded || res.Rows[0][1].Rounded {
		t.Errorf("rounded flags: count %v, sum %v", res.Rows[0][2].Rounded, res.Rows[0][1].Rounded)
	}
	for _, c := range res.Rows[1][1:] {
		if !c.Suppressed || c.Secondary || c.CILow != nil {
			t.Errorf("suppressed cell %+v", c)
		}
	}
	// Confidence interval of the count: released value ± (b·ln 20 + 2.5),
	// with b = k·L∞/ε_share = 1/(1/7) = 7, never below 0.
	h := 7*math.Log(20) + 2.5
	c := res.Rows[2][2]
	if math.Abs(*c.CILow-(1e6-h)) > 1e-6 || math.Abs(*c.CIHigh-(1e6+h)) > 1e-6 {
		t.Errorf("count CI [%v, %v], want 1e6 ± %v", *c.CILow, *c.CIHigh, h)
	}
	for _, row := range [][]Cell{res.Rows[0], res.Rows[2]} {
		for _, c := range row[1:] {
			if !(*c.CILow <= *c.Value && *c.Value <= *c.CIHigh) {
				t.Errorf("value %v outside its CI [%v, %v]", *c.Value, *c.CILow, *c.CIHigh)
			}
		}
	}
	r := res.Report
	want2 := Report{
		Epsilon: 1, Mechanism: MechanismLaplace, MaxGroupsPerPatient: 1, MaxRowsPerGroup: 1,
		Threshold: 10, RoundingBase: 5, Rounding: RoundingNearest, PartitionSelection: SelectionPublicDomain,
		GroupsReleased: 2, GroupsSuppressed: 1, CellsSuppressed: 4, CellsRounded: 2,
	}
	if math.Abs(r.ReleaseThreshold-release) > 1e-9 {
		t.Errorf("release threshold %v, want %v", r.ReleaseThreshold, release)
	}
	if diff := cmp.Diff(want2, r, cmpopts.IgnoreFields(Report{}, "Noise", "ReleaseThreshold")); diff != "" {
		t.Errorf("report (-want +got):\n%s", diff)
	}
	if len(r.Noise) != 7 || r.Noise[1].Statistic != "n" || math.Abs(r.Noise[1].Scale-7*math.Sqrt2) > 1e-9 || r.Noise[1].Epsilon != 1.0/7 {
		t.Errorf("noise report: %+v", r.Noise)
	}
}

// TestHiddenSuppressionCount: with no count aggregate, suppression uses a
// hidden noisy patient count that is budgeted and reported but not released.
func TestHiddenSuppressionCount(t *testing.T) {
	s := Spec{
		Groups:              []GroupSpec{{Name: "band", Domain: []string{"a", "b"}}},
		Aggregates:          []AggSpec{{Name: "total", Kind: AggSum, Lower: 0, Upper: 5}},
		MaxGroupsPerPatient: 1, MaxRowsPerGroup: 2, Epsilon: 2, Delta: 1e-6,
		Threshold: 10, RoundingBase: 5,
	}
	// total, suppression_count per group; the release threshold is
	// 1 + ln(1/2δ) ≈ 14.1 (the hidden count at ε = 1).
	res := MustProtect(t, s, nil, Options{Noise: newReplayNoise(40, 14.2, 40, 14)})
	if len(res.Columns) != 2 || res.Rows[0][1].Value == nil || !res.Rows[1][1].Suppressed {
		t.Fatalf("rows %+v", res.Rows)
	}
	n := res.Report.Noise
	if len(n) != 2 || n[1].Statistic != "suppression_count" || n[1].Epsilon != 1 || n[0].Epsilon != 1 {
		t.Errorf("noise report %+v", n)
	}
}

// TestNoGroupBy: one keyless group, released without partition selection
// (and still subject to suppression); missing input means an empty group.
func TestNoGroupBy(t *testing.T) {
	s := validSpec()
	s.Groups = nil
	twenty := 20.0
	for _, tt := range []struct {
		name   string
		groups []GroupStats
		want   *float64
	}{
		{name: "one group", groups: []GroupStats{{Patients: 20, Aggs: []AggStats{{Count: 20}}}}, want: &twenty},
		{name: "no rows"},
		{name: "small", groups: []GroupStats{{Patients: 3, Aggs: []AggStats{{Count: 3}}}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			res := MustProtect(t, s, tt.groups, Options{Noise: addNoiseFake{Noise: noise.Laplace()}})
			if len(res.Rows) != 1 || len(res.Rows[0]) != 1 {
				t.Fatalf("rows %+v", res.Rows)
			}
			if diff := cmp.Diff(tt.want, res.Rows[0][0].Value); diff != "" {
				t.Errorf("value (-want +got):\n%s", diff)
			}
			if res.Report.PartitionSelection != SelectionPublicDomain || res.Report.Delta != 0 {
				t.Errorf("report %+v", res.Report)
			}
		})
	}
	if _, err := Protect(s, make([]GroupStats, 2), Options{}); err == nil {
		t.Error("two groups without GROUP BY: want error")
	}
}

func TestProtectRefusesBadInput(t *testing.T) {
	s := validSpec()
	tests := []struct {
		name   string
		spec   Spec
		groups []GroupStats
	}{
		{name: "invalid spec", spec: Spec{}, groups: nil},
		{name: "wrong key count", spec: s, groups: []GroupStats{{Keys: keys("F"), Aggs: make([]AggStats, 1)}}},
		{name: "wrong aggregate count", spec: s, groups: []GroupStats{{Keys: keys("F", "North")}}},
		{name: "negative patients", spec: s, groups: []GroupStats{{Keys: keys("F", "North"), Patients: -1, Aggs: make([]AggStats, 1)}}},
		{name: "NaN statistic", spec: s, groups: []GroupStats{{Keys: keys("F", "North"), Aggs: []AggStats{{Sum: math.NaN()}}}}},
		{name: "duplicate keys", spec: s, groups: []GroupStats{
			{Keys: keys("F", "North"), Aggs: make([]AggStats, 1)},
			{Keys: keys("F", "North"), Aggs: make([]AggStats, 1)},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := Protect(tt.spec, tt.groups, Options{}); err == nil {
				t.Fatal("want error")
			}
		})
	}
}

// TestDominanceFlagsInResult: flags are computed from exact contributions
// and attached to released sum/mean cells only.
func TestDominanceFlagsInResult(t *testing.T) {
	s := Spec{
		Groups:              []GroupSpec{{Name: "g", Domain: []string{"a", "b", "c"}}},
		Aggregates:          []AggSpec{{Name: "n", Kind: AggCount}, {Name: "cost", Kind: AggSum, Lower: 0, Upper: 1000}},
		MaxGroupsPerPatient: 1, MaxRowsPerGroup: 1, Epsilon: 1, Delta: 1e-6, Threshold: 10, RoundingBase: 5,
	}
	groups := []GroupStats{
		{Keys: keys("a"), Patients: 50, Aggs: []AggStats{{Count: 50}, {Sum: 1000, Top1: 800, Top2: 150}}}, // nk and p%
		{Keys: keys("b"), Patients: 50, Aggs: []AggStats{{Count: 50}, {Sum: 1000, Top1: 50, Top2: 40}}},
		{Keys: keys("c"), Patients: 2, Aggs: []AggStats{{Count: 2}, {Sum: 1000, Top1: 900, Top2: 100}}}, // suppressed
	}
	res := MustProtect(t, s, groups, Options{Noise: addNoiseFake{Noise: noise.Laplace()}})
	got := [][]string{res.Rows[0][2].Dominance, res.Rows[1][2].Dominance, res.Rows[2][2].Dominance}
	want := [][]string{{DominanceNK, DominanceP}, nil, nil}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("dominance (-want +got):\n%s", diff)
	}
	if res.Report.CellsDominanceFlags != 1 {
		t.Errorf("CellsDominanceFlags = %d, want 1", res.Report.CellsDominanceFlags)
	}
}

func TestDroppedRowsReportedRounded(t *testing.T) {
	s := validSpec()
	res := MustProtect(t, s, nil, Options{DroppedRows: 1237})
	if res.Report.RowsDroppedByBounding != 1235 {
		t.Errorf("RowsDroppedByBounding = %d, want 1235", res.Report.RowsDroppedByBounding)
	}
}

// TestPartitionSelectionKeepsLargeGroups uses fake noise with groups far
// above the library's hard threshold, which are always kept, and groups
// below the pre-threshold, which never are.
func TestPartitionSelectionKeepsLargeGroups(t *testing.T) {
	s := validSpec()
	s.Groups = []GroupSpec{{Name: "practice"}}
	var groups []GroupStats
	for i := range 50 {
		n := int64(9) // below the pre-threshold of 10: never kept
		if i%2 == 0 {
			n = 1000
		}
		groups = append(groups, GroupStats{Keys: keys("P" + strconv.Itoa(100-i)), Patients: n, Aggs: []AggStats{{Count: float64(n)}}})
	}
	groups = append(groups, GroupStats{Keys: keys("\x00"), Patients: 1000, Aggs: []AggStats{{Count: 1000}}})
	res := MustProtect(t, s, groups, Options{Noise: addNoiseFake{Noise: noise.Laplace()}})
	if len(res.Rows) != 26 {
		t.Fatalf("%d rows released, want 26", len(res.Rows))
	}
	if !res.Rows[0][0].Null {
		t.Errorf("first row %+v, want the NULL key first", res.Rows[0][0])
	}
	for i := 2; i < len(res.Rows); i++ {
		if res.Rows[i-1][0].Key >= res.Rows[i][0].Key {
			t.Errorf("rows not sorted by key at %d", i)
		}
	}
	r := res.Report
	if r.PartitionSelection != SelectionPreThreshold || r.PartitionsNotRelease != 25 || r.Delta != 1e-6 {
		t.Errorf("report %+v", r)
	}
	if last := r.Noise[len(r.Noise)-1]; last.Statistic != "partition_selection" || last.Epsilon != 0.5 || last.Delta != 1e-6 {
		t.Errorf("noise report %+v", r.Noise)
	}
}

func TestProtectRefusesNonFiniteRelease(t *testing.T) {
	s := validSpec()
	s.Aggregates = []AggSpec{{Name: "n", Kind: AggCount}, {Name: "total", Kind: AggSum, Lower: -1, Upper: 1}}
	_, err := Protect(s, nil, Options{Noise: newReplayNoise(50, math.Inf(1))})
	if err == nil || err.Error() != `protect: aggregate "total": released value is not finite` {
		t.Fatalf("Protect() error = %v, want a non-finite refusal", err)
	}
}

// TestClosedDomain: a group column whose domain is closed (its keys derived
// from the query, GroupSpec.Closed) fails Protect, ProtectPartial and the
// Selector on a key outside it or NULL, where an ordinary public domain
// drops such a key silently; keys inside pass.
func TestClosedDomain(t *testing.T) {
	inside := siteGroups([3]int64{20, 30, 40}, 30, 50)
	outside := append(siteGroups([3]int64{20, 30, 40}, 30, 50), GroupStats{Keys: keys("east"), Patients: 5, Aggs: make([]AggStats, 3)})
	null := append(siteGroups([3]int64{20, 30, 40}, 30, 50), GroupStats{Keys: []*string{nil}, Patients: 5, Aggs: make([]AggStats, 3)})
	for _, tt := range []struct {
		name    string
		closed  bool
		groups  []GroupStats
		wantErr bool
	}{
		{name: "closed, keys inside", closed: true, groups: inside},
		{name: "closed, a key outside", closed: true, groups: outside, wantErr: true},
		{name: "closed, a NULL key", closed: true, groups: null, wantErr: true},
		{name: "open, a key outside is dropped", groups: outside},
		{name: "open, a NULL key is dropped", groups: null},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := fedSpec()
			s.Groups[0].Closed = tt.closed
			_, errPart := ProtectPartial(s, tt.groups, Options{})
			_, errProt := Protect(s, tt.groups, Options{})
			sel, err := s.NewSelector()
			if err != nil {
				t.Fatal(err)
			}
			var errSel error
			for _, g := range tt.groups {
				if _, errSel = sel.Keep(g); errSel != nil {
					break
				}
			}
			for what, err := range map[string]error{"ProtectPartial": errPart, "Protect": errProt, "Selector": errSel} {
				if (err != nil) != tt.wantErr {
					t.Errorf("%s: error %v, want one: %v", what, err, tt.wantErr)
				}
				if err != nil && strings.Contains(err.Error(), "east") {
					t.Errorf("%s: the error quotes the key: %v", what, err)
				}
			}
		})
	}
	bad := fedSpec()
	bad.Groups = []GroupSpec{{Name: "month", Closed: true}}
	if err := bad.Validate(); err == nil {
		t.Error("a closed group column without a domain passed Validate")
	}
}
