package dp

import (
	"strconv"
	"testing"

	"github.com/google/differential-privacy/go/v3/noise"
	"github.com/google/go-cmp/cmp"
)

// TestSuppressOnDistinctPatients: small-cell suppression decides on the
// group's distinct patients, never on a row count or a filtered count. Two
// patients with many rows each (a row count of 40 and a mean over them) are
// suppressed when no aggregate is flagged as the patient count; with the
// hidden count's noise exactly zero the decision is the one 2 < 10 implies.
func TestSuppressOnDistinctPatients(t *testing.T) {
	s := validSpec()
	s.Threshold, s.MaxRowsPerGroup = 10, 20
	s.Aggregates = []AggSpec{
		{Name: "rows", Kind: AggCount},
		{Name: "bmi", Kind: AggMean, Lower: 10, Upper: 60},
	}
	g := []GroupStats{{Keys: keys("F", "London"), Patients: 2, Aggs: []AggStats{{Count: 40}, {Count: 40, Sum: -40 * 27.5}}}}
	res := MustProtect(t, s, g, Options{Noise: addNoiseFake{Noise: noise.Laplace()}})
	var row []Cell
	for _, r := range res.Rows {
		if r[0].Key == "F" && r[1].Key == "London" {
			row = r
		}
	}
	if !row[2].Suppressed || !row[3].Suppressed {
		t.Errorf("a group of 2 patients with 40 rows released: %+v", row)
	}
	if n := res.Report.Noise; n[len(n)-1].Statistic != "suppression_count" {
		t.Errorf("noise report %+v, want the hidden patient count", n)
	}
	// Flagged as the patient count, the count itself decides (and a
	// flagged count equal to the patients is what the compiler emits).
	s.Aggregates[0].PatientCount = true
	g[0].Aggs[0].Count = 2
	res = MustProtect(t, s, g, Options{Noise: addNoiseFake{Noise: noise.Laplace()}})
	if n := res.Report.Noise; len(n) != 3 {
		t.Errorf("noise report %+v, want no hidden count", n)
	}
	s.Aggregates[1].PatientCount = true
	if err := s.Validate(); err == nil {
		t.Error("a mean flagged as the patient count passed Validate")
	}
}

// TestCentredStatistics: means and variances come from statistics centred
// on the bounds' midpoint, as the rewrite computes them.
func TestCentredStatistics(t *testing.T) {
	s := validSpec()
	s.RoundingBase = 1
	s.Aggregates = []AggSpec{{Name: "m", Kind: AggMean, Lower: 10, Upper: 30}, {Name: "v", Kind: AggVariance, Lower: 10, Upper: 30}}
	// Values 12, 18, 24: m = 20, Σ(x−m) = −6, Σ(x−m)² = 64+4+16 = 84. The
	// hidden patient count is set high so that the group is released (the
	// fake noise is zero); the statistics are those of three values.
	g := []GroupStats{{Keys: keys("F", "London"), Patients: 1000, Aggs: []AggStats{{Count: 3, Sum: -6}, {Count: 3, Sum: -6, SumSq: 84}}}}
	res := MustProtect(t, s, g, Options{Noise: addNoiseFake{Noise: noise.Laplace()}})
	for _, r := range res.Rows {
		if r[0].Key != "F" || r[1].Key != "London" {
			continue
		}
		if got, want := *r[2].Value, 18.0; got != want {
			t.Errorf("mean %v, want %v", got, want)
		}
		// Population variance of 12, 18, 24 (the released variance is
		// Σ(x−m)²/n − (Σ(x−m)/n)², as the library's BoundedVariance).
		if got, want := *r[3].Value, 84.0/3-4; got != want {
			t.Errorf("variance %v, want %v", got, want)
		}
	}
}

// TestSelectorAsProtect: groups passed through a Selector as they are read
// (the sandbox's scan) and then Protect'ed with it give the keys Protect
// chooses itself, for public domains and for partition selection (groups
// far from the threshold, so the library's randomness decides nothing).
func TestSelectorAsProtect(t *testing.T) {
	for _, selection := range []bool{false, true} {
		s := validSpec()
		s.Epsilon = 2
		if selection {
			s.Groups[1].Domain = nil
		}
		var groups []GroupStats
		for i, p := range []int64{0, 3, 1_000_000, 2, 5_000_000} {
			region := []string{"London", "North", "South", "Elsewhere", "South"}[i]
			sex := []string{"F", "F", "F", "M", "M"}[i]
			groups = append(groups, GroupStats{Keys: keys(sex, region), Patients: p, Aggs: []AggStats{{Count: float64(p)}}})
		}
		groups = append(groups, GroupStats{Keys: []*string{nil, ptr("x" + strconv.FormatBool(selection))}, Patients: 9, Aggs: []AggStats{{Count: 9}}})
		sel, err := s.NewSelector()
		if err != nil {
			t.Fatal(err)
		}
		var kept []GroupStats
		for _, g := range groups {
			keep, err := sel.Keep(g)
			if err != nil {
				t.Fatal(err)
			}
			if keep {
				kept = append(kept, g)
			}
		}
		if _, err := sel.Keep(groups[0]); err == nil {
			t.Error("a repeated key was kept")
		}
		nz := Options{Noise: addNoiseFake{Noise: noise.Laplace()}}
		want := MustProtect(t, s, groups, nz)
		nz.Selected = sel
		got := MustProtect(t, s, kept, nz)
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("selection %v: streamed selection differs (-Protect's own +streamed):\n%s", selection, diff)
		}
		if selection && (len(got.Rows) != 2 || got.Report.PartitionsNotRelease != 5) {
			t.Errorf("selection: %d rows, %d not released", len(got.Rows), got.Report.PartitionsNotRelease)
		}
	}
}
