package dp

import (
	"encoding/json"
	"math"
	"strconv"
	"strings"
	"testing"

	"github.com/google/differential-privacy/go/v3/noise"
)

// fedSpec is a federated query: patients, mean BMI and total of a bounded
// value by region (public domain), Gaussian noise.
func fedSpec() Spec {
	return Spec{
		Groups: []GroupSpec{{Name: "region", Domain: []string{"north", "south", "west"}}},
		Aggregates: []AggSpec{
			{Name: "n", Kind: AggCountPatients, PatientCount: true},
			{Name: "bmi", Kind: AggMean, Lower: 10, Upper: 60},
			{Name: "total", Kind: AggSum, Lower: 0, Upper: 100},
		},
		MaxGroupsPerPatient: 1, MaxRowsPerGroup: 1,
		Epsilon: 1, Delta: 1e-6,
		Threshold: 10, RoundingBase: 5, Rounding: RoundingNearest,
		Mechanism: MechanismGaussian,
	}
}

// siteGroups is one site's exact statistics for fedSpec: n patients per
// region, each with BMI bmi and value v.
func siteGroups(n [3]int64, bmi, v float64) []GroupStats {
	var out []GroupStats
	for i, r := range []string{"north", "south", "west"} {
		c := float64(n[i])
		out = append(out, GroupStats{Keys: keys(r), Patients: n[i], Aggs: []AggStats{
			{Count: c},
			{Count: c, Sum: c * (bmi - 35)}, // centred on the midpoint 35
			{Count: c, Sum: c * v},
		}})
	}
	return out
}

func mustPartial(tb testing.TB, s Spec, g []GroupStats, opts Options) *Partial {
	tb.Helper()
	p, err := ProtectPartial(s, g, opts)
	if err != nil {
		tb.Fatalf("ProtectPartial: %v", err)
	}
	return p
}

func TestValidateFederated(t *testing.T) {
	if err := fedSpec().ValidateFederated(); err != nil {
		t.Fatalf("valid federated spec refused: %v", err)
	}
	if err := fedQuantileSpec(12, 70).ValidateFederated(); err != nil {
		t.Fatalf("federated quantiles refused: %v", err)
	}
	for _, k := range []int{1, 2, 3, 4} { // the plan's L∞ = C·√k, whole or not
		s := fedQuantileSpec(12, 70)
		s.Sets, s.Margins, s.MaxGroupsPerPatient = [][]int{{0}, {}}, true, k
		if err := s.ValidateFederated(); err != nil {
			t.Errorf("federated quantiles with a ROLLUP, k = %d, refused: %v", k, err)
		}
	}
	for name, tc := range map[string]struct {
		edit func(*Spec)
		want string
	}{
		"laplace":   {func(s *Spec) { s.Mechanism = MechanismLaplace }, "gaussian"},
		"default":   {func(s *Spec) { s.Mechanism = "" }, "gaussian"},
		"no domain": {func(s *Spec) { s.Groups[0].Domain = nil }, `"region" has no public domain`},
		"too many trees": {func(s *Spec) {
			s.Groups[0].Domain = make([]string, MaxFederatedTrees+1)
			for i := range s.Groups[0].Domain {
				s.Groups[0].Domain[i] = strconv.Itoa(i)
			}
			s.Aggregates[1] = AggSpec{Name: "med", Kind: AggQuantile, Lower: 0, Upper: 1, Rank: 0.5, Tree: 1}
		}, "at most 1000"},
		"invalid":      {func(s *Spec) { s.Epsilon = -1 }, "epsilon"},
		"unknown kind": {func(s *Spec) { s.Aggregates[0].Kind = "mode" }, "kind"},
	} {
		s := fedSpec()
		tc.edit(&s)
		err := s.ValidateFederated()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want an error naming %q", name, err, tc.want)
		}
		if _, err := ProtectPartial(s, nil, Options{}); err == nil {
			t.Errorf("%s: ProtectPartial accepted the spec", name)
		}
		if _, err := Combine(s, []*Partial{{}}); err == nil {
			t.Errorf("%s: Combine accepted the spec", name)
		}
	}
}

// TestCombineSumsNoisyStatistics: with noise that adds nothing, the
// combined table is the post-processing of the sums over the sites: counts
// add up and are rounded, the mean is the pooled mean, a region small at
// every site is suppressed on the combined count, and the report says how
// many sites and the combined noise (σ√3), whose release threshold is above
// one site's.
func TestCombineSumsNoisyStatistics(t *testing.T) {
	s := fedSpec()
	zero := Options{Noise: addNoiseFake{Noise: noise.Gaussian()}}
	parts := []*Partial{
		mustPartial(t, s, siteGroups([3]int64{100, 3, 40}, 20, 10), zero),
		mustPartial(t, s, siteGroups([3]int64{200, 3, 40}, 30, 20), zero),
		mustPartial(t, s, siteGroups([3]int64{300, 3, 0}, 40, 30), Options{Noise: zero.Noise, DroppedRows: 12}),
	}
	res, err := Combine(s, parts)
	if err != nil {
		t.Fatal(err)
	}
	if got := value(t, res.Rows[0][1]); got != 600 {
		t.Errorf("north count %v, want 600", got)
	}
	wantMean := (100*20 + 200*30 + 300*40) / 600.0
	if got := value(t, res.Rows[0][2]); math.Abs(got-wantMean) > 1e-9 {
		t.Errorf("north mean %v, want %v", got, wantMean)
	}
	if got := value(t, res.Rows[0][3]); got != 100*10+200*20+300*30 {
		t.Errorf("north total %v, want %v", got, 100*10+200*20+300*30)
	}
	if !res.Rows[1][1].Suppressed {
		t.Errorf("south (9 patients in all) released: %+v", res.Rows[1][1])
	}
	one := s.plan()
	fed := s.federatedPlan(3)
	r := res.Report
	if r.Sites != 3 || r.ReleaseThreshold != fed.release || !(fed.release > one.release) {
		t.Errorf("report sites %d, release threshold %v (federated %v, one site %v)", r.Sites, r.ReleaseThreshold, fed.release, one.release)
	}
	t.Logf("release threshold: one site %.2f, three sites %.2f", one.release, fed.release)
	if (80 >= fed.release) == res.Rows[2][1].Suppressed {
		t.Errorf("west (80 patients) suppressed %v with release threshold %v", res.Rows[2][1].Suppressed, fed.release)
	}
	for i, n := range r.Noise {
		if want := math.Sqrt(3) * one.scale(one.stats[i]); math.Abs(n.Scale-want) > 2e-3*want {
			t.Errorf("noise of %s: scale %v, want σ√3 = %v", n.Statistic, n.Scale, want)
		}
	}
	if c := s.Cost(); r.Epsilon != c.Epsilon || r.Delta != c.Delta || r.Mechanism != MechanismGaussian {
		t.Errorf("report spends ε %v δ %v (%s), want each site's cost %+v", r.Epsilon, r.Delta, r.Mechanism, c)
	}
	if r.RowsDroppedByBounding != 10 {
		t.Errorf("rows dropped %d, want 10 (12 rounded to 5)", r.RowsDroppedByBounding)
	}
	if got := res.ForResearcher().Report.Sites; got != 3 {
		t.Errorf("researcher report sites %d, want 3", got)
	}
}

// TestPartialHoldsNoExactValue: two sites with different exact data and
// the same noise send byte-identical parts (rows dropped aside), so
// nothing exact is in a Partial; and the dominance flags, computed from
// exact contributions, are not in it.
func TestPartialHoldsNoExactValue(t *testing.T) {
	s := fedSpec()
	vals := []float64{50, -3, 1000.5, 7, 81, 12, 0.25, 99, 3e3, 4, 5, 6}
	a := mustPartial(t, s, siteGroups([3]int64{1, 2, 3}, 20, 1), Options{Noise: newReplayNoise(vals...)})
	b := mustPartial(t, s, siteGroups([3]int64{400, 0, 9}, 55, 90), Options{Noise: newReplayNoise(vals...)})
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	if string(ja) != string(jb) {
		t.Errorf("parts differ with the same noise:\n%s\n%s", ja, jb)
	}
	if strings.Contains(string(ja), "dominance") {
		t.Errorf("a part carries dominance flags: %s", ja)
	}
}

func TestCombineRefusesMismatchedParts(t *testing.T) {
	s := fedSpec()
	good := func() *Partial { return mustPartial(t, s, siteGroups([3]int64{100, 100, 100}, 20, 1), Options{}) }
	other := fedSpec()
	other.Epsilon = 0.5
	for name, tc := range map[string]struct {
		edit func(p *Partial) *Partial
		want string
	}{
		"other spec": {func(*Partial) *Partial {
			return mustPartial(t, other, siteGroups([3]int64{100, 100, 100}, 20, 1), Options{})
		}, "spec hash"},
		"nil":         {func(*Partial) *Partial { return nil }, "empty"},
		"group gone":  {func(p *Partial) *Partial { p.Groups = p.Groups[1:]; return p }, "groups"},
		"keys order":  {func(p *Partial) *Partial { p.Groups[0], p.Groups[1] = p.Groups[1], p.Groups[0]; return p }, "next value"},
		"stat gone":   {func(p *Partial) *Partial { p.Groups[2].Stats = p.Groups[2].Stats[1:]; return p }, "statistics"},
		"names":       {func(p *Partial) *Partial { p.Statistics[0] = "x"; return p }, "statistics"},
		"not finite":  {func(p *Partial) *Partial { p.Groups[1].Stats[0] = math.NaN(); return p }, "finite"},
		"infinite":    {func(p *Partial) *Partial { p.Groups[1].Stats[2] = math.Inf(1); return p }, "finite"},
		"extra key":   {func(p *Partial) *Partial { p.Groups[0].Keys = append(p.Groups[0].Keys, "x"); return p }, "keys"},
		"hash forged": {func(p *Partial) *Partial { p.SpecHash = strings.Repeat("0", 64); return p }, "spec hash"},
	} {
		_, err := Combine(s, []*Partial{good(), tc.edit(good()), good()})
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "site 2") {
			t.Errorf("%s: got %v, want a refusal of site 2 naming %q", name, err, tc.want)
		}
	}
	if _, err := Combine(s, nil); err == nil {
		t.Error("Combine of no parts accepted")
	}
	if _, err := Combine(s, []*Partial{good()}); err != nil {
		t.Errorf("one site refused: %v", err)
	}
}

// TestFederatedAccuracy: counts' and sums' half-widths grow as √N, the
// release threshold grows, and one site is Accuracy itself.
func TestFederatedAccuracy(t *testing.T) {
	s := fedSpec()
	one, err := s.Accuracy()
	if err != nil {
		t.Fatal(err)
	}
	same, err := s.FederatedAccuracy(1)
	if err != nil {
		t.Fatal(err)
	}
	four, err := s.FederatedAccuracy(4)
	if err != nil {
		t.Fatal(err)
	}
	for i := range one {
		if same[i] != one[i] {
			t.Errorf("%s: one site %+v, Accuracy %+v", one[i].Column, same[i], one[i])
		}
		if four[i].ReleaseThreshold <= one[i].ReleaseThreshold {
			t.Errorf("%s: release threshold at 4 sites %v not above one site's %v", one[i].Column, four[i].ReleaseThreshold, one[i].ReleaseThreshold)
		}
	}
	for _, i := range []int{0, 2} { // count and sum: exactly √4 = 2 times
		if r := four[i].HalfWidth95 / one[i].HalfWidth95; math.Abs(r-2) > 4e-3 {
			t.Errorf("%s: half-width ratio at 4 sites %v, want 2", one[i].Column, r)
		}
	}
	for _, n := range []int{0, -1, MaxSites + 1} {
		if _, err := s.FederatedAccuracy(n); err == nil {
			t.Errorf("%d sites accepted", n)
		}
	}
	l := s
	l.Mechanism = MechanismLaplace
	if _, err := l.FederatedAccuracy(2); err == nil {
		t.Error("Laplace federated accuracy accepted")
	}
}

// TestFederatedOnePatientCell: with the library's Gaussian noise at each
// of 3 sites, a cell of one patient (combined count 1: the sites' patients
// are disjoint) reaches the combined release threshold with probability at
// most δ. δ is 1e-6 per spec, too rare to count, so the test draws the
// sum of the three sites' noises on the suppression count 100,000 times and
// requires (a) its standard deviation to be σ√3, (b) the empirical rate
// of passing a threshold set at the 1e-3 tail of N(0, 3σ²) to be 1e-3 (the
// sum is that Gaussian in its tail), and (c) the release threshold to be at
// least that Gaussian's (1−δ) point, plus one. A threshold computed for one
// site's σ fails (c) by far; noise of one site's σ fails (a) and (b).
func TestFederatedOnePatientCell(t *testing.T) {
	const sites, draws = 3, 100_000
	s := fedSpec()
	p := s.plan()
	st := p.stats[p.suppress]
	sigma := p.scale(st) * math.Sqrt(sites)
	tail := sigma * math.Sqrt2 * math.Erfcinv(2e-3) // P(N(0, σ²·3) ≥ tail) = 1e-3
	var sum2 float64
	over := 0
	nz := noise.Gaussian()
	for range draws {
		var x float64
		for range sites {
			v, err := nz.AddNoiseFloat64(0, st.l0, st.lInf, st.eps, st.delta)
			if err != nil {
				t.Fatal(err)
			}
			x += v
		}
		sum2 += x * x
		if x >= tail {
			over++
		}
	}
	if sd := math.Sqrt(sum2 / draws); math.Abs(sd/sigma-1) > 0.01 {
		t.Errorf("standard deviation of the summed noise %v, want σ√3 = %v", sd, sigma)
	}
	// Binomial(100000, 1e-3): mean 100, sd 10.
	t.Logf("summed noise: sd %.3f (σ√3 = %.3f); %d of %d beyond the 1e-3 tail point", math.Sqrt(sum2/draws), sigma, over, draws)
	if over < 60 || over > 140 {
		t.Errorf("%d of %d sums beyond the 1e-3 tail point, want about 100", over, draws)
	}
	fed := s.federatedPlan(sites)
	need := 1 + sigma*math.Sqrt2*math.Erfcinv(2*s.Delta) // k = 1: one cell
	if fed.release < need {
		t.Errorf("combined release threshold %v; a one-patient cell needs %v to pass with probability ≤ δ", fed.release, need)
	}
	if fed.release > need+math.Sqrt(sites) {
		t.Errorf("combined release threshold %v needlessly above %v", fed.release, need)
	}
}

// TestCombinedIntervalCoverage runs three sites' ProtectPartial with the
// library's noise and Combine, many times, and counts how often the 95%
// interval of each released cell holds the exact combined value: the sum's
// and the mean's about 95% (at least 93%; an interval for one site's σ
// would hold it about 74% of the time), never more than 99% for the sum
// (an interval for σ·N instead of σ√N would).
func TestCombinedIntervalCoverage(t *testing.T) {
	const runs = 1500
	s := fedSpec()
	sites := [][]GroupStats{
		siteGroups([3]int64{500, 300, 800}, 24, 40),
		siteGroups([3]int64{800, 400, 900}, 28, 55),
		siteGroups([3]int64{1200, 200, 700}, 31, 70),
	}
	var exactN, exactSum, bmiSum float64
	for i, g := range sites {
		exactN += g[0].Aggs[0].Count
		exactSum += g[0].Aggs[2].Sum
		bmiSum += g[0].Aggs[0].Count * []float64{24, 28, 31}[i]
	}
	exactMean := bmiSum / exactN
	var inN, inSum, inMean int
	for range runs {
		var parts []*Partial
		for _, g := range sites {
			parts = append(parts, mustPartial(t, s, g, Options{}))
		}
		res, err := Combine(s, parts)
		if err != nil {
			t.Fatal(err)
		}
		row := res.Rows[0]
		for _, c := range row[1:] {
			if c.Suppressed {
				t.Fatalf("north (2500 patients) suppressed")
			}
		}
		in := func(c Cell, x float64) bool { return *c.CILow <= x && x <= *c.CIHigh }
		if in(row[1], exactN) {
			inN++
		}
		if in(row[2], exactMean) {
			inMean++
		}
		if in(row[3], exactSum) {
			inSum++
		}
	}
	t.Logf("coverage over %d runs: count %.3f, mean %.3f, sum %.3f", runs, float64(inN)/runs, float64(inMean)/runs, float64(inSum)/runs)
	for name, n := range map[string]int{"count": inN, "mean": inMean, "sum": inSum} {
		if cov := float64(n) / runs; cov < 0.93 {
			t.Errorf("%s: the combined interval held the exact value in %.3f of runs, want ≥ 0.93", name, cov)
		}
	}
	if cov := float64(inSum) / runs; cov > 0.99 {
		t.Errorf("sum: coverage %.3f, want about 0.95 (the interval is too wide)", cov)
	}
}

// TestCombineRollup: a federated ROLLUP releases every cell and total of
// the grouping sets, each the sum of the sites' noisy statistics, with the
// secondary suppression of the combined table.
func TestCombineRollup(t *testing.T) {
	s := rollupSpec()
	s.Mechanism = MechanismGaussian
	if err := s.ValidateFederated(); err != nil {
		t.Fatal(err)
	}
	zero := Options{Noise: addNoiseFake{Noise: noise.Gaussian()}}
	var groups []GroupStats
	for i, k := range s.releasedKeys() {
		n := int64(400)
		if i == 0 {
			n = 1 // one tiny cell: suppressed, and so is a partner of it
		}
		groups = append(groups, GroupStats{Keys: k, Patients: n, Aggs: []AggStats{{Count: float64(n)}}})
	}
	parts := []*Partial{mustPartial(t, s, groups, zero), mustPartial(t, s, groups, zero)}
	res, err := Combine(s, parts)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Rows) != len(s.releasedKeys()) {
		t.Fatalf("%d rows, want %d", len(res.Rows), len(s.releasedKeys()))
	}
	if !res.Rows[0][2].Suppressed || res.Report.CellsSecondary == 0 {
		t.Errorf("the two-patient cell %+v released, or no secondary suppression (%d)", res.Rows[0][2], res.Report.CellsSecondary)
	}
	for i, row := range res.Rows[1:] {
		if !row[2].Suppressed && value(t, row[2]) != 800 {
			t.Errorf("row %d: count %v, want 800", i+2, value(t, row[2]))
		}
	}
	if res.Report.GroupingSets != 3 || res.Report.Sites != 2 {
		t.Errorf("report grouping sets %d, sites %d", res.Report.GroupingSets, res.Report.Sites)
	}
}

// TestCombineRatio: a ratio of a federated query is the ratio of the
// combined noisy parts, withheld on the combined denominator.
func TestCombineRatio(t *testing.T) {
	s := rateSpec(2)
	s.Mechanism = MechanismGaussian
	zero := Options{Noise: addNoiseFake{Noise: noise.Gaussian()}}
	site := func(num, den [2]float64) *Partial {
		var groups []GroupStats
		for i, k := range s.releasedKeys() {
			groups = append(groups, GroupStats{Keys: k, Patients: int64(den[i]), Aggs: []AggStats{{}, {Count: num[i]}, {Count: den[i]}}})
		}
		return mustPartial(t, s, groups, zero)
	}
	res, err := Combine(s, []*Partial{site([2]float64{10, 1}, [2]float64{400, 5}), site([2]float64{50, 2}, [2]float64{200, 5})})
	if err != nil {
		t.Fatal(err)
	}
	if got := value(t, res.Rows[0][1]); math.Abs(got-60.0/600) > 1e-12 {
		t.Errorf("combined rate %v, want 60/600", got)
	}
	if !res.Rows[1][1].Suppressed {
		t.Errorf("rate over 10 patients released: %+v", res.Rows[1][1])
	}
}
