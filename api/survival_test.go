package api

import (
	"math"
	"strings"
	"testing"

	"github.com/nhs-tre/tre/dp"
)

func survivalTable(cells [][3]float64, halfWidth float64) ([]dp.Column, [][]dp.Cell) {
	cols := []dp.Column{{Name: "years_band", Kind: dp.KindGroup}, {Name: "deaths", Kind: string(dp.AggCount)}, {Name: "censored", Kind: string(dp.AggCount)}}
	var rows [][]dp.Cell
	for i, c := range cells {
		row := []dp.Cell{{Key: []string{"0-1", "1-2", "2-5", "5-10", "10+"}[i]}}
		for _, v := range c[1:] {
			v, lo, hi := v, v-halfWidth, v+halfWidth
			cell := dp.Cell{Value: &v}
			if halfWidth > 0 {
				cell.CILow, cell.CIHigh = &lo, &hi
			}
			row = append(row, cell)
		}
		rows = append(rows, row)
	}
	return cols, rows
}

// lifeTableQ is the probability of dying within a band, given alive at its
// start, under a constant hazard Λ over the band and censorings spread
// evenly over it (a fraction ρ of those alive leave per band): the
// expected deaths and censorings per patient at risk, band time u ∈ [0, 1].
func lifeTableQ(lambda, rho float64) (q, d, c float64) {
	q = 1 - math.Exp(-lambda)
	d = q - rho*(1-math.Exp(-lambda)*(1+lambda))/lambda
	c = rho * q / lambda
	return q, d, c
}

// TestKaplanMeier: the curve by hand, and its interval: Greenwood alone for
// exact counts, wider with the counts' noise.
func TestKaplanMeier(t *testing.T) {
	// bandDeathProb inverts the life table: from expected deaths and
	// censorings it recovers q, and it is the actuarial d/(n − c/2) when
	// few die within the band.
	for _, tc := range [][2]float64{{0.05, 0.3}, {0.45, 0.2}, {1.5, 0.6}, {3, 0.9}} {
		q, d, c := lifeTableQ(tc[0], tc[1])
		if got := bandDeathProb(1000, 1000*d, 1000*c); math.Abs(got-q) > 1e-9 {
			t.Errorf("Λ = %v, ρ = %v: q = %v, want %v", tc[0], tc[1], got, q)
		}
	}
	if got, act := bandDeathProb(10000, 10, 2000), 10/(10000-1000.0); math.Abs(got-act) > 1e-3*act {
		t.Errorf("few deaths: q = %v, want about the actuarial %v", got, act)
	}
	if bandDeathProb(10, 0, 5) != 0 || bandDeathProb(0, 0, 0) != 0 {
		t.Error("a band without deaths has q > 0")
	}

	cells := [][3]float64{{0, 10, 20}, {0, 30, 40}, {0, 5, 0}}
	cols, rows := survivalTable(cells, 0)
	got, err := KaplanMeier(cols, rows, "deaths", "censored")
	if err != nil {
		t.Fatal(err)
	}
	// n0 = 105; band 1: 105 at risk; band 2: 75; band 3: 5 at risk, all
	// die.
	q1, q2 := bandDeathProb(105, 10, 20), bandDeathProb(75, 30, 40)
	s1 := 1 - q1
	s2 := s1 * (1 - q2)
	want := []KMBand{
		{Band: "0-1", AtRisk: 105, Deaths: 10, Censored: 20, Survival: s1},
		{Band: "1-2", AtRisk: 75, Deaths: 30, Censored: 40, Survival: s2},
		{Band: "2-5", AtRisk: 5, Deaths: 5, Censored: 0, Survival: 0},
	}
	// The first band is nearly actuarial (1 − 10/95); in the second, where
	// 30 of 75 die and 40 leave, the actuarial 1 − 30/55 overstates
	// survival.
	if math.Abs(s1-(1-10.0/95)) > 0.002 || !(1-q2 < 1-30.0/55) {
		t.Errorf("q = %v, %v against the actuarial %v, %v", q1, q2, 10.0/95, 30.0/55)
	}
	for i, w := range want {
		g := got[i]
		if g.Band != w.Band || g.AtRisk != w.AtRisk || g.Deaths != w.Deaths || g.Censored != w.Censored || math.Abs(g.Survival-w.Survival) > 1e-12 {
			t.Errorf("band %d: %+v, want %+v", i, g, w)
		}
		if !(g.Low <= g.Survival && g.Survival <= g.High) || g.Low < 0 || g.High > 1 {
			t.Errorf("band %d: interval [%v, %v] around %v", i, g.Low, g.High, g.Survival)
		}
	}
	// Greenwood's term with the band's effective number at risk n′ = d/q.
	eff := 10 / q1
	green := kmZ * s1 * math.Sqrt(10/(eff*(eff-10)))
	if math.Abs((got[0].High-got[0].Low)/2-green) > 1e-9 {
		t.Errorf("exact counts: half-width %v, want Greenwood's %v", (got[0].High-got[0].Low)/2, green)
	}
	cols, rows = survivalTable(cells, 8)
	noisy, err := KaplanMeier(cols, rows, "deaths", "censored")
	if err != nil {
		t.Fatal(err)
	}
	if !(noisy[0].High-noisy[0].Low > got[0].High-got[0].Low) || noisy[0].Survival != got[0].Survival {
		t.Errorf("noisy counts: %+v, want the same curve with a wider interval than %+v", noisy[0], got[0])
	}
}

// TestKaplanMeierRefuses: another table's shape, a renamed column and a
// suppressed band are errors that say what is expected.
func TestKaplanMeierRefuses(t *testing.T) {
	cols, rows := survivalTable([][3]float64{{0, 1, 2}}, 0)
	if _, err := KaplanMeier(cols, rows, "died", "censored"); err == nil || !strings.Contains(err.Error(), `count columns "died" and "censored"`) || !strings.Contains(err.Error(), "deaths (count)") {
		t.Errorf("missing column: %v", err)
	}
	mean := []dp.Column{{Name: "g", Kind: dp.KindGroup}, {Name: "deaths", Kind: string(dp.AggMean)}, {Name: "censored", Kind: string(dp.AggCount)}}
	if _, err := KaplanMeier(mean, rows, "deaths", "censored"); err == nil || !strings.Contains(err.Error(), "not a survival table") {
		t.Errorf("a mean as deaths: %v", err)
	}
	rows[0][1] = dp.Cell{Suppressed: true}
	if _, err := KaplanMeier(cols, rows, "deaths", "censored"); err == nil || !strings.Contains(err.Error(), `band "0-1": deaths is suppressed`) {
		t.Errorf("suppressed band: %v", err)
	}
}

// TestKaplanMeierStrata: group columns before the band's give one curve
// per stratum, each the curve of its rows alone, named by its keys, in the
// table's order; a ROLLUP's total over the strata is a stratum too; a
// suppressed band names its stratum.
func TestKaplanMeierStrata(t *testing.T) {
	female := [][3]float64{{0, 10, 20}, {0, 30, 40}, {0, 5, 0}}
	male := [][3]float64{{0, 20, 10}, {0, 25, 5}, {0, 9, 3}}
	bandCols, fRows := survivalTable(female, 4)
	_, mRows := survivalTable(male, 6)
	cols := append([]dp.Column{{Name: "sex", Kind: dp.KindGroup}}, bandCols...)
	var rows [][]dp.Cell
	for i := range fRows { // interleaved, as ORDER BY years_band, sex leaves them
		rows = append(rows, append([]dp.Cell{{Key: "female"}}, fRows[i]...), append([]dp.Cell{{Key: "male"}}, mRows[i]...))
	}
	// GROUPING SETS ((sex, years_band), (years_band), ()): the bands over
	// both sexes, and the grand total, which is no band.
	var both [][3]float64
	for i := range female {
		both = append(both, [3]float64{0, female[i][1] + male[i][1], female[i][2] + male[i][2]})
	}
	_, tRows := survivalTable(both, 8)
	for _, r := range tRows {
		rows = append(rows, append([]dp.Cell{{Key: dp.TotalKey}}, r...))
	}
	total := 1.0
	rows = append(rows, []dp.Cell{{Key: dp.TotalKey}, {Key: dp.TotalKey}, {Value: &total}, {Value: &total}})
	got, err := KaplanMeier(cols, rows, "deaths", "censored")
	if err != nil {
		t.Fatal(err)
	}
	wantF, _ := KaplanMeier(bandCols, fRows, "deaths", "censored")
	wantM, _ := KaplanMeier(bandCols, mRows, "deaths", "censored")
	wantT, _ := KaplanMeier(bandCols, tRows, "deaths", "censored")
	if len(got) != 9 {
		t.Fatalf("%d bands, want 3 for each sex and for both: %+v", len(got), got)
	}
	for i, w := range append(append(wantF, wantM...), wantT...) {
		g := got[i]
		w.Stratum = []string{"sex=female", "sex=male", "sex=" + dp.TotalKey}[i/3]
		if g != w {
			t.Errorf("band %d: %+v, want %+v", i, g, w)
		}
	}
	if wantF[0].Stratum != "" {
		t.Errorf("a table with the band alone has stratum %q", wantF[0].Stratum)
	}

	rows[3][2] = dp.Cell{Suppressed: true} // male, 1-2, deaths
	if _, err := KaplanMeier(cols, rows, "deaths", "censored"); err == nil || !strings.Contains(err.Error(), `stratum sex=male: band "1-2": deaths is suppressed`) {
		t.Errorf("suppressed band in a stratum: %v", err)
	}
	noCounts := []dp.Column{{Name: "sex", Kind: dp.KindGroup}, {Name: "years_band", Kind: dp.KindGroup}}
	if _, err := KaplanMeier(noCounts, nil, "deaths", "censored"); err == nil || !strings.Contains(err.Error(), "its last group column (any before it are strata") {
		t.Errorf("no count columns: %v", err)
	}
}
