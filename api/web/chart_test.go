package web

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/nhs-tre/tre/broker"
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

	def := newChart(cols, rows, "", "")
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

	ratio := newChart(cols, rows, "share_old", "")
	if ratio == nil || ratio.Column != "share_old" || !ratio.HasIntervals || !strings.Contains(ratio.Note, "ratios") {
		t.Fatalf("ratio chart %+v", ratio)
	}
	for _, b := range ratio.Bars {
		if !b.HasCI || !(b.LowX < b.X+b.Width && b.X+b.Width < b.HighX) {
			t.Errorf("ratio bar %+v: the whisker does not span its end", b)
		}
	}
	q := newChart(cols, rows, "median_age", "")
	if q == nil || q.Column != "median_age" || !strings.Contains(q.Note, "quantile") || q.Bars[0].CI != "49.0 to 54.0" {
		t.Fatalf("quantile chart %+v", q)
	}
	// An asymmetric interval stays asymmetric.
	if b := q.Bars[0]; !(b.HighX-(b.X+b.Width) > (b.X+b.Width)-b.LowX) {
		t.Errorf("quantile bar %+v: interval drawn symmetric", b)
	}
	if other := newChart(cols, rows, "nonesuch", ""); other == nil || other.Column != "n" {
		t.Errorf("an unknown ?chart= draws %+v, want the first aggregate", other)
	}

	links, keys := chartLinks(7, cols, ratio)
	if len(links) != 3 || links[1].Href != "/ui/queries/7?chart=share_old#chart-pick" || !links[1].Current || links[0].Current || keys != nil {
		t.Errorf("links %+v, keys %+v", links, keys)
	}
	if links, keys := chartLinks(7, cols[:2], newChart(cols[:2], nil, "", "")); links != nil || keys != nil {
		t.Error("links for a table without a chart")
	}
	if got, _ := chartLinks(7, cols[:2], def); got != nil {
		t.Errorf("links for a table with one aggregate: %+v", got)
	}

	// Two group columns with subtotals: each bar is labelled by both keys.
	cols2 := append([]dp.Column{{Name: "region", Kind: dp.KindGroup}}, cols...)
	rows2 := [][]dp.Cell{
		append([]dp.Cell{{Key: "North"}}, row("female", 1, 0.1, 40)...),
		append([]dp.Cell{{Key: "North"}}, row(dp.TotalKey, 2, 0.1, 40)...),
		append([]dp.Cell{{Key: dp.TotalKey}}, row(dp.TotalKey, 3, 0.1, 40)...),
	}
	two := newChart(cols2, rows2, "", "")
	if two == nil || len(two.Bars) != 1 || two.Bars[0].Label != "North · female" || len(two.Totals) != 2 || two.Group != "region × sex" {
		t.Errorf("two-column chart %+v", two)
	}
}

// TestChartFacet: a measure by month and region, too long for one chart,
// is drawn one region at a time (?at=), with a link per region that keeps
// the drawn column; a one-column table that long gets no chart.
func TestChartFacet(t *testing.T) {
	f := func(v float64) *float64 { return &v }
	cols := []dp.Column{{Name: "month", Kind: dp.KindGroup}, {Name: "region", Kind: dp.KindGroup},
		{Name: "tested_share", Kind: string(dp.AggRatio)}, {Name: "patients", Kind: string(dp.AggCount)}}
	regions := []string{"North", "South", "East", "West"}
	var rows [][]dp.Cell
	for m := 1; m <= 12; m++ {
		for i, r := range regions {
			v := float64(m)/100 + float64(i)/10
			rows = append(rows, []dp.Cell{{Key: strconv.Itoa(m)}, {Key: r}, {Value: f(v), CILow: f(v - 0.01), CIHigh: f(v + 0.01)}, {Value: f(100)}})
		}
	}
	ch := newChart(cols, rows, "", "South")
	if ch == nil || ch.Facet.Column != "region" || ch.Facet.Key != "South" || len(ch.Bars) != 12 || ch.Group != "month" || ch.Bars[0].Value != "0.110" || ch.Bars[0].Label != "1" {
		t.Fatalf("faceted chart %+v", ch)
	}
	if !strings.Contains(ch.Note, "for region South") || !strings.Contains(ch.Description, "for region South") {
		t.Errorf("the caption does not say which region: %q / %q", ch.Note, ch.Description)
	}
	if first := newChart(cols, rows, "", "nowhere"); first == nil || first.Facet.Key != "North" {
		t.Errorf("an unknown ?at= draws %+v, want the first region", first)
	}
	links, keys := chartLinks(3, cols, ch)
	if len(links) != 2 || links[1].Href != "/ui/queries/3?at=South&chart=patients#chart-pick" {
		t.Errorf("column links %+v", links)
	}
	if len(keys) != 4 || keys[0].Href != "/ui/queries/3?at=North&chart=tested_share#chart-pick" || !keys[1].Current || keys[0].Current {
		t.Errorf("region links %+v", keys)
	}
	// The researcher's page draws it, with both rows of links.
	res := &dp.ResearcherResult{Columns: cols, Rows: rows}
	qv := &queryView{Q: &broker.Query{ID: 3, Status: broker.StatusReleased}, Released: &broker.ReleasedResult{QueryID: 3, Result: res}, Chart: ch}
	qv.Charts, qv.ChartKeys = links, keys
	var buf bytes.Buffer
	if err := mustParsePages().set["query.html"].ExecuteTemplate(&buf, "base.html", &view{Title: "Query 3", User: &broker.User{Subject: "alice", Roles: []broker.Role{broker.RoleResearcher}}, Data: qv}); err != nil {
		t.Fatalf("render: %v", err)
	}
	page := buf.String()
	for _, want := range []string{`<nav class="chartpick" id="chart-keys" aria-label="Chart for one region">`, `<a href="/ui/queries/3?at=South&amp;chart=tested_share#chart-pick" aria-current="true">South</a>`, "for region South", `id="chart-pick"`} {
		if !strings.Contains(page, want) {
			t.Errorf("the page lacks %s", want)
		}
	}

	long := [][]dp.Cell{}
	for i := range chartMaxBars + 1 {
		long = append(long, []dp.Cell{{Key: "practice " + strconv.Itoa(i)}, {Value: f(1)}})
	}
	if c := newChart([]dp.Column{cols[0], cols[3]}, long, "", ""); c != nil {
		t.Errorf("a one-column table of %d named rows got a chart (numbers get a line: TestLineChart)", len(long))
	}
}

// TestLineChart: one group column of dates is drawn as a line in date
// order, positioned by date (a missing month leaves a wider gap), broken
// at a suppressed value, which is marked on the axis; totals are listed
// apart. Numbers are drawn as a line only when there are more than bars
// fit; other keys beyond that get no chart.
func TestLineChart(t *testing.T) {
	f := func(v float64) *float64 { return &v }
	cols := []dp.Column{{Name: "month", Kind: dp.KindGroup}, {Name: "share", Kind: string(dp.AggRatio)}}
	cell := func(v float64) dp.Cell { return dp.Cell{Value: f(v), CILow: f(v - 0.05), CIHigh: f(v + 0.05)} }
	rows := [][]dp.Cell{
		{{Key: "2023-03-01"}, cell(0.30)},
		{{Key: "2023-01-01"}, cell(0.10)},
		{{Key: "2023-02-01"}, cell(0.20)},
		{{Key: "2023-04-01"}, {Suppressed: true}},
		{{Key: "2023-05-01"}, cell(0.25)},
		{{Key: "2023-07-01"}, cell(0.35)}, // June is missing
		{{Key: dp.TotalKey}, cell(0.26)},
	}
	ch := newChart(cols, rows, "", "")
	if ch == nil || ch.Line == nil {
		t.Fatalf("chart %+v, want a line", ch)
	}
	l := ch.Line
	var labels []string
	for _, p := range l.Points {
		labels = append(labels, p.Label)
	}
	if got := strings.Join(labels, " "); got != "2023-01-01 2023-02-01 2023-03-01 2023-04-01 2023-05-01 2023-07-01" {
		t.Errorf("points in order %s", got)
	}
	p := l.Points
	if !(p[0].Y > p[1].Y && p[1].Y > p[2].Y) {
		t.Errorf("rising values do not rise: %+v", p[:3])
	}
	if gapMay, gapJul := p[4].X-p[3].X, p[5].X-p[4].X; !(gapJul > 1.5*gapMay) {
		t.Errorf("a missing month does not widen the gap: %.1f then %.1f", gapMay, gapJul)
	}
	if !p[3].Suppressed || p[3].Y != ch.AxisY || p[3].Value != "suppressed" {
		t.Errorf("suppressed point %+v, want marked on the axis at %.1f", p[3], ch.AxisY)
	}
	if len(l.Lines) != 2 || len(l.Bands) != 2 || strings.Count(l.Lines[0], ",") != 3 || strings.Count(l.Lines[1], ",") != 2 {
		t.Errorf("lines %q, bands %q: want the line broken at April into 3 and 2 points, each with its band", l.Lines, l.Bands)
	}
	if len(ch.Totals) != 1 || ch.Totals[0].Value != "0.260" {
		t.Errorf("totals %+v", ch.Totals)
	}
	if !ch.HasIntervals || !strings.Contains(ch.Description, "Line chart of share over month") || !strings.Contains(ch.Note, "breaks the line") {
		t.Errorf("description %q, note %q", ch.Description, ch.Note)
	}
	// The band holds each point: its upper edge above, its lower below.
	if !strings.Contains(l.Bands[0], fmt.Sprintf("%g,", p[0].X)) {
		t.Errorf("band %q does not pass the first point's x %g", l.Bands[0], p[0].X)
	}

	num := func(n int) [][]dp.Cell {
		var out [][]dp.Cell
		for i := range n {
			out = append(out, []dp.Cell{{Key: strconv.Itoa(i)}, cell(float64(i) / 100)})
		}
		return out
	}
	if ch := newChart(cols, num(12), "", ""); ch == nil || ch.Line != nil || len(ch.Bars) != 12 {
		t.Errorf("12 numbered groups: %+v, want bars", ch)
	}
	if ch := newChart(cols, num(60), "", ""); ch == nil || ch.Line == nil || len(ch.Line.Points) != 60 || len(ch.Line.XTicks) > lineXTicks+1 {
		t.Errorf("60 numbered groups: %+v, want a line with at most %d key labels", ch, lineXTicks+1)
	}
	words := num(60)
	for i := range words {
		words[i][0].Key = "practice " + words[i][0].Key
	}
	if ch := newChart(cols, words, "", ""); ch != nil {
		t.Errorf("60 named groups drawn: %+v", ch)
	}
	// Months by region, too long for one chart: one region's months as a line.
	cols2 := []dp.Column{{Name: "month", Kind: dp.KindGroup}, {Name: "region", Kind: dp.KindGroup}, {Name: "share", Kind: string(dp.AggRatio)}}
	var rows2 [][]dp.Cell
	for m := 1; m <= 12; m++ {
		for _, r := range []string{"North", "South", "East", "West"} {
			rows2 = append(rows2, []dp.Cell{{Key: fmt.Sprintf("2023-%02d-01", m)}, {Key: r}, cell(0.1)})
		}
	}
	if ch := newChart(cols2, rows2, "", "South"); ch == nil || ch.Line == nil || ch.Facet.Key != "South" || len(ch.Line.Points) != 12 || !strings.Contains(ch.Note, "for region South") {
		t.Errorf("months by region: %+v", ch)
	}
}
