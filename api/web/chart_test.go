package web

import (
	"strings"
	"testing"

	"github.com/nhs-tre/tre/dp"
)

// TestChartPick: the chart draws the aggregate ?chart= names (the first
// when it names none), each released aggregate gets a link, and rows of
// totals are listed apart from the bars, off the value axis.
func TestChartPick(t *testing.T) {
	f := func(v float64) *float64 { return &v }
	cols := []dp.Column{
		{Name: "sex", Kind: dp.KindGroup}, {Name: "n", Kind: string(dp.AggCount)},
		{Name: "share_old", Kind: string(dp.AggRatio)}, {Name: "median_age", Kind: string(dp.AggQuantile)},
	}
	row := func(key string, n, r, m float64) []dp.Cell {
		return []dp.Cell{{Key: key}, {Value: f(n), CILow: f(n - 5), CIHigh: f(n + 5)}, {Value: f(r), CILow: f(r - 0.05), CIHigh: f(r + 0.05)}, {Value: f(m), CILow: f(m - 2), CIHigh: f(m + 3)}}
	}
	rows := [][]dp.Cell{row("female", 100, 0.2, 51), row("male", 120, 0.3, 49), row(dp.TotalKey, 900, 0.25, 50)}

	def := newChart(cols, rows, "")
	if def == nil || def.Column != "n" || len(def.Bars) != 2 || len(def.Totals) != 1 {
		t.Fatalf("default chart %+v, want n with 2 bars and 1 total", def)
	}
	// The total (900) is not on the axis: the last tick is near the bars.
	if last := def.Ticks[len(def.Ticks)-1].Label; last != "125" {
		t.Errorf("the value axis ends at %s: the total of 900 is on it", last)
	}
	if tot := def.Totals[0]; tot.Label != dp.TotalKey || tot.Value != "900" || tot.CI != "895 to 905" {
		t.Errorf("total %+v", tot)
	}

	ratio := newChart(cols, rows, "share_old")
	if ratio == nil || ratio.Column != "share_old" || !ratio.HasIntervals || !strings.Contains(ratio.Note, "ratios") {
		t.Fatalf("ratio chart %+v", ratio)
	}
	for _, b := range ratio.Bars {
		if !b.HasCI || !(b.LowX < b.X+b.Width && b.X+b.Width < b.HighX) {
			t.Errorf("ratio bar %+v: the whisker does not span its end", b)
		}
	}
	q := newChart(cols, rows, "median_age")
	if q == nil || q.Column != "median_age" || !strings.Contains(q.Note, "quantile") || q.Bars[0].CI != "49.0 to 54.0" {
		t.Fatalf("quantile chart %+v", q)
	}
	// An asymmetric interval stays asymmetric.
	if b := q.Bars[0]; !(b.HighX-(b.X+b.Width) > (b.X+b.Width)-b.LowX) {
		t.Errorf("quantile bar %+v: interval drawn symmetric", b)
	}
	if other := newChart(cols, rows, "nonesuch"); other == nil || other.Column != "n" {
		t.Errorf("an unknown ?chart= draws %+v, want the first aggregate", other)
	}

	links := chartLinks(7, cols, ratio)
	if len(links) != 3 || links[1].Href != "/ui/queries/7?chart=share_old#chart-pick" || !links[1].Current || links[0].Current {
		t.Errorf("links %+v", links)
	}
	if chartLinks(7, cols[:2], newChart(cols[:2], nil, "")) != nil {
		t.Error("links for a table without a chart")
	}
	if got := chartLinks(7, cols[:2], def); got != nil {
		t.Errorf("links for a table with one aggregate: %+v", got)
	}

	// Two group columns with subtotals: each bar is labelled by both keys.
	cols2 := append([]dp.Column{{Name: "region", Kind: dp.KindGroup}}, cols...)
	rows2 := [][]dp.Cell{
		append([]dp.Cell{{Key: "North"}}, row("female", 1, 0.1, 40)...),
		append([]dp.Cell{{Key: "North"}}, row(dp.TotalKey, 2, 0.1, 40)...),
		append([]dp.Cell{{Key: dp.TotalKey}}, row(dp.TotalKey, 3, 0.1, 40)...),
	}
	two := newChart(cols2, rows2, "")
	if two == nil || len(two.Bars) != 1 || two.Bars[0].Label != "North · female" || len(two.Totals) != 2 || two.Group != "region × sex" {
		t.Errorf("two-column chart %+v", two)
	}
}
