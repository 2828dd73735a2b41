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

// TestKaplanMeier: the actuarial curve by hand, and its interval: Greenwood
// alone for exact counts, wider with the counts' noise.
func TestKaplanMeier(t *testing.T) {
	cells := [][3]float64{{0, 10, 20}, {0, 30, 40}, {0, 5, 0}}
	cols, rows := survivalTable(cells, 0)
	got, err := KaplanMeier(cols, rows, "deaths", "censored")
	if err != nil {
		t.Fatal(err)
	}
	// n0 = 105; band 1: 105 at risk, 95 effective, S = 1 − 10/95;
	// band 2: 75 at risk, 55 effective; band 3: 5 at risk, all die.
	s1 := 1 - 10.0/95
	s2 := s1 * (1 - 30.0/55)
	want := []KMBand{
		{Band: "0-1", AtRisk: 105, Deaths: 10, Censored: 20, Survival: s1},
		{Band: "1-2", AtRisk: 75, Deaths: 30, Censored: 40, Survival: s2},
		{Band: "2-5", AtRisk: 5, Deaths: 5, Censored: 0, Survival: 0},
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
	green := kmZ * s1 * math.Sqrt(10/(95*85.0))
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
