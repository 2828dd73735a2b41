package dp

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"
)

// rateSpec is a monthly-measure-like spec over n public groups: the
// patients with a test (hidden numerator, count_patients with FILTER) over
// all patients (hidden denominator, the patient count), k = C = 1.
func rateSpec(n int) Spec {
	s := domainSpec(n)
	s.MaxGroupsPerPatient, s.MaxRowsPerGroup = 1, 1
	s.Aggregates = []AggSpec{
		{Name: "rate", Kind: AggRatio, Num: 2, Den: 3, Proportion: true},
		{Name: "rate/numerator", Kind: AggCountPatients, Hidden: true},
		{Name: "rate/denominator", Kind: AggCountPatients, Hidden: true, PatientCount: true},
	}
	return s
}

func TestRatioValidate(t *testing.T) {
	for name, tc := range map[string]struct {
		aggs []AggSpec
		want string
	}{
		"missing part":     {[]AggSpec{{Name: "r", Kind: AggRatio, Num: 2, Den: 3}, {Name: "a", Kind: AggCount}}, "does not have"},
		"sum denominator":  {[]AggSpec{{Name: "r", Kind: AggRatio, Num: 2, Den: 3}, {Name: "a", Kind: AggCount}, {Name: "b", Kind: AggSum, Lower: 0, Upper: 1}}, "divides a count"},
		"mean numerator":   {[]AggSpec{{Name: "r", Kind: AggRatio, Num: 2, Den: 3}, {Name: "a", Kind: AggMean, Lower: 0, Upper: 1}, {Name: "b", Kind: AggCount}}, "divides a count"},
		"ratio of a ratio": {[]AggSpec{{Name: "r", Kind: AggRatio, Num: 2, Den: 3}, {Name: "q", Kind: AggRatio, Num: 3, Den: 4}, {Name: "b", Kind: AggCount}, {Name: "c", Kind: AggCount}}, "divides a count"},
		"itself":           {[]AggSpec{{Name: "r", Kind: AggRatio, Num: 2, Den: 2}, {Name: "a", Kind: AggCount}}, "by itself"},
		"hidden unread":    {[]AggSpec{{Name: "n", Kind: AggCount}, {Name: "a", Kind: AggCount, Hidden: true}}, "no ratio reads it"},
		"hidden ratio":     {[]AggSpec{{Name: "r", Kind: AggRatio, Num: 2, Den: 3, Hidden: true}, {Name: "a", Kind: AggCount}, {Name: "b", Kind: AggCount}}, "cannot be hidden"},
		"parts elsewhere":  {[]AggSpec{{Name: "n", Kind: AggCount, Num: 1}}, "only a ratio"},
		"proportion kinds": {[]AggSpec{{Name: "r", Kind: AggRatio, Num: 2, Den: 3, Proportion: true}, {Name: "a", Kind: AggCount}, {Name: "b", Kind: AggCountPatients}}, "same kind"},
	} {
		s := domainSpec(2)
		s.Aggregates = tc.aggs
		if err := s.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Validate = %v, want an error containing %q", name, err, tc.want)
		}
	}
	if err := rateSpec(2).Validate(); err != nil {
		t.Fatalf("rate spec: %v", err)
	}
}

// TestRatioCostsItsParts: a ratio costs its two parts and nothing more; a
// part that is also a column is shared, so a ratio of released columns
// costs nothing at all.
func TestRatioCostsItsParts(t *testing.T) {
	shares := func(s Spec) int { return len(s.plan().stats) }
	s := rateSpec(3)
	if got := shares(s); got != 2 {
		t.Errorf("rate of hidden parts: %d noisy statistics, want 2 (numerator, denominator as the suppression count)", got)
	}
	cols := domainSpec(3)
	cols.Aggregates = []AggSpec{
		{Name: "tested", Kind: AggCountPatients},
		{Name: "patients", Kind: AggCountPatients, PatientCount: true},
	}
	withRatio := cols
	withRatio.Aggregates = append(slices.Clone(cols.Aggregates), AggSpec{Name: "rate", Kind: AggRatio, Num: 1, Den: 2, Proportion: true})
	if a, b := shares(cols), shares(withRatio); a != b {
		t.Errorf("a ratio of two released columns added statistics: %d → %d", a, b)
	}
	if withRatio.Cost() != cols.Cost() {
		t.Errorf("cost changed: %v → %v", cols.Cost(), withRatio.Cost())
	}
	acc, err := s.Accuracy()
	if err != nil || len(acc) != 1 || acc[0].Column != "rate" || !(acc[0].HalfWidth95 > 0) {
		t.Fatalf("accuracy of the rate alone (hidden parts are not columns): %+v, %v", acc, err)
	}
	if got := s.Columns(); len(got) != 2 || got[1] != (Column{Name: "rate", Kind: string(AggRatio)}) {
		t.Errorf("columns: %+v", got)
	}
}

// TestRatioRelease: the value, its clamping, the report and conformance.
func TestRatioRelease(t *testing.T) {
	s := rateSpec(2)
	in := []GroupStats{
		{Keys: keys("0"), Patients: 1000, Aggs: []AggStats{{}, {Count: 300}, {Count: 1000}}},
		{Keys: keys("1"), Patients: 1000, Aggs: []AggStats{{}, {Count: 1000}, {Count: 1000}}},
	}
	res := MustProtect(t, s, in, Options{Noise: addNoiseFake{offset: 5}})
	if v := value(t, res.Rows[0][1]); math.Abs(v-305.0/1005) > 1e-12 {
		t.Errorf("rate = %v, want 305/1005 from the noisy parts", v)
	}
	if v := value(t, res.Rows[1][1]); v != 1 {
		t.Errorf("a proportion whose noisy numerator exceeds its denominator released as %v, want 1", v)
	}
	if c := res.Rows[1][1]; *c.CIHigh > 1 || *c.CILow > *c.Value {
		t.Errorf("interval [%v, %v] not within [0, 1] around %v", *c.CILow, *c.CIHigh, *c.Value)
	}
	want := []RatioReport{{Column: "rate", Numerator: "rate/numerator", Denominator: "rate/denominator", Proportion: true}}
	if !slices.Equal(res.Report.Ratios, want) || !slices.Equal(res.ForResearcher().Report.Ratios, want) {
		t.Errorf("report ratios %+v, researcher's %+v, want %+v", res.Report.Ratios, res.ForResearcher().Report.Ratios, want)
	}
	names := []string{}
	for _, n := range res.Report.Noise {
		names = append(names, n.Statistic)
	}
	if !slices.Equal(names, []string{"rate/numerator", "rate/denominator"}) {
		t.Errorf("noise report lists %v", names)
	}
	if err := s.CheckResult(res); err != nil {
		t.Fatalf("CheckResult refuses Protect's own result: %v", err)
	}
	res.Report.Ratios[0].Denominator = "something else"
	if err := s.CheckResult(res); err == nil {
		t.Error("CheckResult accepts a report that derives the ratio from another statistic")
	}
}

// TestRatioSuppression: a group below the release threshold is withheld
// (its denominator is the patient count); a ratio whose own noisy
// denominator (a FILTERed count) is below it is withheld alone.
func TestRatioSuppression(t *testing.T) {
	s := domainSpec(2)
	s.MaxGroupsPerPatient, s.MaxRowsPerGroup = 1, 1
	s.Aggregates = []AggSpec{
		{Name: "n", Kind: AggCountPatients, PatientCount: true},
		{Name: "rate", Kind: AggRatio, Num: 3, Den: 4},
		{Name: "rate/numerator", Kind: AggCount, Hidden: true},
		{Name: "rate/denominator", Kind: AggCount, Hidden: true},
	}
	r := s.plan().release
	in := []GroupStats{
		{Keys: keys("0"), Patients: 5, Aggs: []AggStats{{Count: 5}, {}, {Count: 2}, {Count: 5}}},
		{Keys: keys("1"), Patients: 1000, Aggs: []AggStats{{Count: 1000}, {}, {Count: 2}, {Count: math.Floor(r) - 1}}},
	}
	res := MustProtect(t, s, in, Options{Noise: addNoiseFake{}})
	if c := res.Rows[0][2]; !c.Suppressed || c.Value != nil {
		t.Errorf("ratio of a suppressed group released: %+v", c)
	}
	if c := res.Rows[1][2]; !c.Suppressed || c.Value != nil || res.Rows[1][1].Suppressed {
		t.Errorf("ratio over a denominator below the release threshold %v: %+v (group count %+v)", r, c, res.Rows[1][1])
	}
	if res.Report.CellsSuppressed != 3 {
		t.Errorf("cells suppressed %d, want 3 (2 of the small group, 1 ratio)", res.Report.CellsSuppressed)
	}
	if err := s.CheckResult(res); err != nil {
		t.Fatal(err)
	}
}

// TestRatioCoverage: with the library's real noise, the exact ratio lies
// inside the released 95% interval in at least 95% of releases (the union
// bound makes it conservative), and the error's 95th percentile at a
// denominator of 1000 stays below the half-width quoted before the run.
func TestRatioCoverage(t *testing.T) {
	if testing.Short() {
		t.Skip("statistical test")
	}
	const groups = 2000
	cases := []struct {
		name     string
		aggs     []AggSpec
		num, den float64
	}{
		{"proportion 0.3 of 1000", rateSpec(1).Aggregates, 300, 1000},
		{"proportion 0.05 of 400", rateSpec(1).Aggregates, 20, 400},
		{"rows per patient", []AggSpec{
			{Name: "r", Kind: AggRatio, Num: 2, Den: 3},
			{Name: "rows", Kind: AggCount},
			{Name: "patients", Kind: AggCountPatients, PatientCount: true},
		}, 2500, 1000},
		{"sum over count", []AggSpec{
			{Name: "r", Kind: AggRatio, Num: 2, Den: 3},
			{Name: "total", Kind: AggSum, Lower: 0, Upper: 10},
			{Name: "n", Kind: AggCount, PatientCount: true},
		}, 4200, 1000},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := domainSpec(groups)
			s.MaxGroupsPerPatient, s.MaxRowsPerGroup = 1, 3
			s.Aggregates = tc.aggs
			in := make([]GroupStats, groups)
			for g := range in {
				in[g] = GroupStats{Keys: keys(fmt.Sprint(g)), Patients: int64(tc.den), Aggs: []AggStats{{}, {Count: tc.num, Sum: tc.num}, {Count: tc.den}}}
			}
			res := MustProtect(t, s, in, Options{})
			exact := tc.num / tc.den
			covered, errs := 0, []float64{}
			for _, row := range res.Rows {
				c := row[1]
				if c.Suppressed {
					t.Fatalf("a group of %v patients withheld", tc.den)
				}
				if *c.CILow <= exact && exact <= *c.CIHigh {
					covered++
				}
				if !(*c.CILow <= *c.Value && *c.Value <= *c.CIHigh) {
					t.Fatalf("value %v outside its own interval [%v, %v]", *c.Value, *c.CILow, *c.CIHigh)
				}
				errs = append(errs, math.Abs(*c.Value-exact))
			}
			rate := float64(covered) / groups
			slices.Sort(errs)
			acc, _ := s.Accuracy()
			p95 := errs[groups*95/100] * tc.den / 1000 // scaled to a denominator of 1000
			t.Logf("coverage %.4f, 95th percentile error %.4g (scaled to D = 1000: %.4g; quoted %.4g)", rate, errs[groups*95/100], p95, acc[0].HalfWidth95)
			if rate < 0.95 {
				t.Errorf("exact ratio inside the 95%% interval in %.1f%% of releases", 100*rate)
			}
			if exact <= 1 && p95 > acc[0].HalfWidth95 {
				t.Errorf("95th percentile error %v (at D = 1000) above the quoted %v", p95, acc[0].HalfWidth95)
			}
		})
	}
}
