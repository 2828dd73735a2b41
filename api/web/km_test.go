package web

import (
	"strings"
	"testing"

	"github.com/nhs-tre/tre/dp"
)

// TestKMChart: a released survival table gets a Kaplan–Meier chart of the
// survival at the end of each band, with intervals; any other table none.
func TestKMChart(t *testing.T) {
	f := func(v float64) *float64 { return &v }
	cols := []dp.Column{{Name: "years_band", Kind: dp.KindGroup}, {Name: "deaths", Kind: string(dp.AggCount)}, {Name: "censored", Kind: string(dp.AggCount)}}
	rows := [][]dp.Cell{
		{{Key: "0-1"}, {Value: f(10), CILow: f(4), CIHigh: f(16)}, {Value: f(20), CILow: f(14), CIHigh: f(26)}},
		{{Key: "1-2"}, {Value: f(30), CILow: f(24), CIHigh: f(36)}, {Value: f(40), CILow: f(34), CIHigh: f(46)}},
	}
	ch := newKMChart(cols, rows)
	if ch == nil || len(ch.Bars) != 2 || !ch.HasIntervals || !strings.Contains(ch.Note, "Kaplan–Meier") {
		t.Fatalf("survival table: chart %+v", ch)
	}
	// tre query km: 0.888 [0.799, 0.978] and 0.255 [0.114, 0.397].
	if ch.Bars[0].Label != "0-1" || ch.Bars[0].Value != "0.888" || ch.Bars[1].Value != "0.26" {
		t.Errorf("bars %+v", ch.Bars)
	}
	if newKMChart(cols[:2], nil) != nil {
		t.Error("a table without censorings got a Kaplan–Meier chart")
	}
	// By sex: each bar names its stratum and band.
	strata := append([]dp.Column{{Name: "sex", Kind: dp.KindGroup}}, cols...)
	var rows2 [][]dp.Cell
	for _, sex := range []string{"female", "male"} {
		for _, r := range rows {
			rows2 = append(rows2, append([]dp.Cell{{Key: sex}}, r...))
		}
	}
	ch = newKMChart(strata, rows2)
	if ch == nil || len(ch.Bars) != 4 || ch.Bars[2].Label != "sex=male · 0-1" || ch.Bars[2].Value != "0.888" || !strings.Contains(ch.Description, "one curve per stratum") {
		t.Errorf("stratified survival table: chart %+v", ch)
	}
}
