package web_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/nhs-tre/tre/broker/brokertest"
	"github.com/nhs-tre/tre/dp"
	"github.com/nhs-tre/tre/queries"
)

// statsSQL releases a count, a ratio and a median by sex with a total row.
const statsSQL = "SELECT sex, count(*) AS n, count(*) FILTER (WHERE age >= 65) / count(*) AS share_old, median(age) AS median_age\nFROM patients\nGROUP BY ROLLUP (sex)"

// completeStats completes the approved statistics query as the site agent,
// with a result of its shape (the broker checks it): per row r, n = 100 +
// 35r, share_old = 0.2 + 0.1r within ±0.05, median_age 50 + r within
// [48 + r, 54 + r] (asymmetric, as a quantile's interval may be).
func (e *env) completeStats(tb testing.TB, id int64) {
	tb.Helper()
	ctx := e.as("agent")
	lease, err := e.svc.LeaseJob(ctx, siteID, "")
	if err != nil || lease == nil || lease.QueryID != id {
		tb.Fatalf("lease: %+v, %v", lease, err)
	}
	plan, err := e.parser.Compile(context.Background(), e.catalog, lease.SQL, queries.Options{Epsilon: lease.Epsilon})
	if err != nil {
		tb.Fatalf("compile the leased query: %v", err)
	}
	res := brokertest.ShapedResult(plan.Spec, nil, func(int) dp.Cell { return dp.Cell{} })
	for r, row := range res.Rows {
		for i, col := range res.Columns {
			x := float64(r)
			switch col.Kind {
			case string(dp.AggCount):
				row[i] = dp.Cell{Value: f64(100 + 35*x), CILow: f64(94 + 35*x), CIHigh: f64(106 + 35*x), Rounded: true}
			case string(dp.AggRatio):
				row[i] = dp.Cell{Value: f64(0.2 + 0.1*x), CILow: f64(0.15 + 0.1*x), CIHigh: f64(0.25 + 0.1*x)}
			case string(dp.AggQuantile):
				row[i] = dp.Cell{Value: f64(50 + x), CILow: f64(48 + x), CIHigh: f64(54 + x)}
			}
		}
	}
	res.Report.OptOut = dp.OptOutReport{Applied: true, Table: "optouts", SnapshotHash: strings.Repeat("ab", 32)}
	res.Report.Sandbox = dp.SandboxReport{Layers: []string{"landlock", "seccomp", "rlimits"}}
	if err := e.svc.CompleteJob(ctx, id, lease.Token, res); err != nil {
		tb.Fatalf("complete: %v", err)
	}
}

// svgBar is one bar of the page's chart as the browser lays it out: the
// bar's end and its whisker's ends (SVG attributes), and its label.
type svgBar struct {
	Label          string
	End, Low, High float64
	Caps           int
}

const readBars = `(() => {
	const svg = document.querySelector("figure.chart svg"), out = [];
	const rects = svg.querySelectorAll("rect.barfill"), labels = svg.querySelectorAll("text.label");
	const ci = Array.from(svg.querySelectorAll("line.ci"));
	rects.forEach((r, i) => {
		const mid = +r.getAttribute("y") + 9, x = +r.getAttribute("x"), w = +r.getAttribute("width");
		const mine = ci.filter(l => +l.getAttribute("y1") <= mid + 6 && +l.getAttribute("y2") >= mid - 6);
		const whisker = mine.find(l => l.getAttribute("y1") === l.getAttribute("y2"));
		out.push({Label: labels[i].textContent, End: x + w,
			Low: whisker ? +whisker.getAttribute("x1") : -1, High: whisker ? +whisker.getAttribute("x2") : -1,
			Caps: mine.filter(l => l.getAttribute("x1") === l.getAttribute("x2")).length});
	});
	return out; })()`

// TestBrowserResearchStatistics drives a real browser through a query with
// totals, a ratio and a median: the reviewer reads its grouping sets and
// L0 = k × sets; the output checker reads the (total) row marked and the
// report's grouping sets; the researcher picks each released column's
// chart, and the ratio and the median are drawn with their intervals, the
// total listed apart from the bars.
func TestBrowserResearchStatistics(t *testing.T) {
	ctx, problems := newBrowser(t, browserLimit)
	e := newEnv(t)
	q := e.mustSubmit(t, "alice", statsSQL, "Table 1 with totals")

	e.browserSignIn(t, ctx, "bob")
	run(t, ctx, "review the query", chromedp.Navigate(fmt.Sprintf("%s/ui/queries/%d", e.srv.URL, q.ID)), chromedp.WaitVisible(chromedp.CSS(`#totals`)))
	totals := value(t, ctx, "read the totals", chromedp.Text(chromedp.CSS(`#totals`)))
	sets := value(t, ctx, "grouping sets", chromedp.Evaluate[[]string](`Array.from(document.querySelectorAll("#totals ul.sets li")).map(li => li.textContent)`))
	if strings.Join(sets, "|") != "sex (the cells)|the grand total (every group column totalled)" {
		t.Errorf("review page grouping sets %q", sets)
	}
	for _, want := range []string{"2 grouping sets", "(total)", "k × 2 = 2 cells", "L0 = k × sets, with k = 1"} {
		if !strings.Contains(totals, want) {
			t.Errorf("review page totals lack %q:\n%s", want, totals)
		}
	}
	run(t, ctx, "approve", chromedp.Click(chromedp.CSS(`#approve`)), chromedp.WaitVisible(chromedp.CSS(`p.notice`)))
	e.browserSignOut(t, ctx)
	e.completeStats(t, q.ID)

	e.browserSignIn(t, ctx, "carol")
	run(t, ctx, "open the output check", chromedp.Navigate(fmt.Sprintf("%s/ui/queries/%d", e.srv.URL, q.ID)), chromedp.WaitVisible(chromedp.CSS(`#release`)))
	marked := value(t, ctx, "total rows", chromedp.Evaluate[[]string](`Array.from(document.querySelectorAll("table.result tr.total td.key")).map(td => td.textContent)`))
	if len(marked) != 1 || marked[0] != dp.TotalKey {
		t.Errorf("output check: total rows marked %q, want one (total)", marked)
	}
	report := value(t, ctx, "report", chromedp.Text(chromedp.CSS(`dl.report`)))
	if !strings.Contains(report, "2 grouping sets") || !strings.Contains(report, "k × 2 = 2 cells (L0)") {
		t.Errorf("output check report lacks the grouping sets:\n%s", report)
	}
	if !strings.Contains(value(t, ctx, "checker's totals", chromedp.Text(chromedp.CSS(`#totals`))), "2 grouping sets") {
		t.Error("the output check page does not show the grouping sets")
	}
	run(t, ctx, "release", chromedp.Click(chromedp.CSS(`#release`)), chromedp.WaitVisible(chromedp.CSS(`p.notice`)))
	e.browserSignOut(t, ctx)

	e.clock.Add(time.Minute) // researchers see status changes a granularity later
	e.browserSignIn(t, ctx, "alice")
	run(t, ctx, "read the result", chromedp.Navigate(fmt.Sprintf("%s/ui/queries/%d", e.srv.URL, q.ID)), chromedp.WaitVisible(chromedp.CSS(`nav.chartpick`)))
	picks := value(t, ctx, "chart picker", chromedp.Evaluate[[]string](`Array.from(document.querySelectorAll("nav.chartpick a")).map(a => a.textContent + (a.getAttribute("aria-current") ? "*" : ""))`))
	if strings.Join(picks, "|") != "n*|share_old|median_age" {
		t.Errorf("chart picker %q, want n (current), share_old, median_age", picks)
	}
	// The count: three bars, the total listed apart.
	bars := value(t, ctx, "count bars", chromedp.Evaluate[[]svgBar](readBars))
	if len(bars) != 3 || bars[0].Label != "female" {
		t.Errorf("count chart bars %+v, want female, male, unknown", bars)
	}
	if tot := value(t, ctx, "listed totals", chromedp.Text(chromedp.CSS(`figure.chart ul.charttotals`))); !strings.Contains(tot, "(total): 205") {
		t.Errorf("the count's total is listed as %q", tot)
	}

	// The ratio: its bars end at 0.2, 0.3, 0.4 with whiskers ±0.05, caps
	// at both ends, and the total (0.5) not among them.
	run(t, ctx, "pick the ratio", chromedp.Click(chromedp.CSS(`nav.chartpick a[href*="chart=share_old"]`)), chromedp.WaitVisible(chromedp.CSS(`nav.chartpick a[aria-current="true"][href*="share_old"]`)))
	if loc := value(t, ctx, "location", chromedp.Location()); !strings.HasSuffix(loc, fmt.Sprintf("/ui/queries/%d?chart=share_old#chart-pick", q.ID)) {
		t.Errorf("the ratio's chart is at %s", loc)
	}
	caption := value(t, ctx, "ratio caption", chromedp.Text(chromedp.CSS(`figure.chart figcaption`)))
	if !strings.Contains(caption, "share_old by sex") || !strings.Contains(caption, "ratios") || !strings.Contains(caption, "95% intervals") {
		t.Errorf("ratio chart caption %q", caption)
	}
	bars = value(t, ctx, "ratio bars", chromedp.Evaluate[[]svgBar](readBars))
	checkIntervals(t, "ratio", bars, []float64{0.2, 0.3, 0.4}, 0.05, 0.05)
	if tot := value(t, ctx, "ratio total", chromedp.Text(chromedp.CSS(`figure.chart ul.charttotals`))); !strings.Contains(tot, "(total): 0.500") || !strings.Contains(tot, "95% interval") {
		t.Errorf("the ratio's total is listed as %q", tot)
	}

	// The median: asymmetric intervals [48 + r, 54 + r] around 50 + r.
	run(t, ctx, "pick the median", chromedp.Click(chromedp.CSS(`nav.chartpick a[href*="chart=median_age"]`)), chromedp.WaitVisible(chromedp.CSS(`nav.chartpick a[aria-current="true"][href*="median_age"]`)))
	if caption := value(t, ctx, "median caption", chromedp.Text(chromedp.CSS(`figure.chart figcaption`))); !strings.Contains(caption, "quantiles") {
		t.Errorf("median chart caption %q", caption)
	}
	bars = value(t, ctx, "median bars", chromedp.Evaluate[[]svgBar](readBars))
	checkIntervals(t, "median", bars, []float64{50, 51, 52}, 2, 4)

	if msgs := problems.all(); len(msgs) > 0 {
		t.Errorf("the browser reported errors (CSP violations or script exceptions):\n%s", strings.Join(msgs, "\n"))
	}
}

// checkIntervals checks each bar's whisker against its value: the bar ends
// at the value, the whisker runs from value − below to value + above on the
// same scale, with a cap at each end.
func checkIntervals(t *testing.T, what string, bars []svgBar, values []float64, below, above float64) {
	t.Helper()
	if len(bars) != len(values) {
		t.Fatalf("%s chart: %d bars, want %d: %+v", what, len(bars), len(values), bars)
	}
	// The scale from the first two bars' ends (the axis starts at zero).
	unit := (bars[1].End - bars[0].End) / (values[1] - values[0])
	for i, b := range bars {
		if b.Low < 0 || b.Caps != 2 {
			t.Errorf("%s bar %d has no interval with two caps: %+v", what, i, b)
			continue
		}
		if d := b.End - b.Low - below*unit; d < -0.2 || d > 0.2 {
			t.Errorf("%s bar %d: whisker starts %.1f units below the value, want %.1f: %+v", what, i, b.End-b.Low, below*unit, b)
		}
		if d := b.High - b.End - above*unit; d < -0.2 || d > 0.2 {
			t.Errorf("%s bar %d: whisker ends %.1f units above the value, want %.1f: %+v", what, i, b.High-b.End, above*unit, b)
		}
	}
}

// monthlySQL counts events by month over a year: one group column of dates.
const monthlySQL = "SELECT date_trunc('month', date) AS month, count(*) AS events\nFROM events\nWHERE date >= DATE '2023-01-01' AND date < DATE '2024-01-01'\nGROUP BY month"

// TestBrowserMonthlyLine: a released measure by month is drawn as a line
// in a real browser: one point per released month in date order, higher
// values higher, the suppressed month marked on the axis with the line
// broken there, each run of the line inside its interval band.
func TestBrowserMonthlyLine(t *testing.T) {
	ctx, problems := newBrowser(t, browserLimit)
	e := newEnv(t)
	q := e.mustSubmit(t, "alice", monthlySQL, "events by month")
	if _, err := e.svc.ApproveQuery(e.as("bob"), q.ID, "ok"); err != nil {
		t.Fatal(err)
	}
	var months []string
	for m := 1; m <= 12; m++ {
		months = append(months, fmt.Sprintf("2023-%02d-01", m))
	}
	e.mustComplete(t, q.ID, months...) // month 2 suppressed, the others 100 + 35 × row
	if _, err := e.svc.ReleaseQuery(e.as("carol"), q.ID, "ok"); err != nil {
		t.Fatal(err)
	}
	e.clock.Add(time.Minute)
	e.browserSignIn(t, ctx, "alice")
	run(t, ctx, "read the result", chromedp.Navigate(fmt.Sprintf("%s/ui/queries/%d", e.srv.URL, q.ID)), chromedp.WaitVisible(chromedp.CSS(`figure.chart polyline.line`)))
	type point struct {
		X, Y  float64
		Title string
	}
	type drawn struct {
		Points          []point
		Marks           []point
		Lines, Bands    int
		AxisY           float64
		BandTop, BandLo []float64
	}
	got := value(t, ctx, "read the line", chromedp.Evaluate[drawn](`(() => {
		const svg = document.querySelector("figure.chart svg");
		const pt = el => ({X: +(el.getAttribute("cx") ?? el.getAttribute("x")), Y: +(el.getAttribute("cy") ?? el.getAttribute("y")), Title: el.querySelector("title").textContent});
		const axis = Array.from(svg.querySelectorAll("line.axis")).find(l => l.getAttribute("y1") === l.getAttribute("y2"));
		const band = svg.querySelector("polygon.band").getAttribute("points").split(" ").map(p => +p.split(",")[1]);
		return {Points: Array.from(svg.querySelectorAll("circle.point")).map(pt), Marks: Array.from(svg.querySelectorAll("text.mark")).map(pt),
			Lines: svg.querySelectorAll("polyline.line").length, Bands: svg.querySelectorAll("polygon.band").length,
			AxisY: +axis.getAttribute("y1"), BandTop: band.slice(0, band.length / 2), BandLo: band.slice(band.length / 2).reverse()};
	})()`))
	if len(got.Points) != 11 || len(got.Marks) != 1 {
		t.Fatalf("%d points and %d marks, want 11 released months and 1 suppressed: %+v", len(got.Points), len(got.Marks), got)
	}
	if m := got.Marks[0]; m.Title != "2023-02-01: suppressed" || m.Y != got.AxisY || !(got.Points[0].X < m.X && m.X < got.Points[1].X) {
		t.Errorf("the suppressed month is drawn as %+v (axis at %.1f), want February between January and March", m, got.AxisY)
	}
	for i := 1; i < len(got.Points); i++ {
		a, b := got.Points[i-1], got.Points[i]
		if !(b.X > a.X) || (i > 1 && !(b.Y < a.Y)) {
			t.Errorf("point %d %+v after %+v: want later months to the right and (rising values) higher", i, b, a)
		}
	}
	if !strings.HasPrefix(got.Points[0].Title, "2023-01-01: 100") || !strings.Contains(got.Points[1].Title, "95% interval") {
		t.Errorf("point titles %q, %q", got.Points[0].Title, got.Points[1].Title)
	}
	// January stands alone (February is suppressed): one line, one band,
	// from March to December, each point inside the band.
	if got.Lines != 1 || got.Bands != 1 || len(got.BandTop) != 10 {
		t.Fatalf("%d lines, %d bands of %d points: want the line broken at February", got.Lines, got.Bands, len(got.BandTop))
	}
	for i, p := range got.Points[1:] {
		if !(got.BandTop[i] < p.Y && p.Y < got.BandLo[i]) {
			t.Errorf("%s at y %.1f outside its band [%.1f, %.1f]", p.Title, p.Y, got.BandTop[i], got.BandLo[i])
		}
	}
	if caption := value(t, ctx, "caption", chromedp.Text(chromedp.CSS(`figure.chart figcaption`))); !strings.Contains(caption, "events over month") || !strings.Contains(caption, "breaks the line") {
		t.Errorf("caption %q", caption)
	}
	if msgs := problems.all(); len(msgs) > 0 {
		t.Errorf("the browser reported errors (CSP violations or script exceptions):\n%s", strings.Join(msgs, "\n"))
	}
}
