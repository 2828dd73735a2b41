package web

import (
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/nhs-tre/tre/api"
	"github.com/nhs-tre/tre/broker"
	"github.com/nhs-tre/tre/dp"
)

// resultCSV serves a released table as a CSV attachment. The broker decides
// whether the caller may download it (and audits the download).
func (h *Handler) resultCSV(w http.ResponseWriter, r *http.Request, s *session) {
	out, ok := h.download(w, r, s)
	if !ok {
		return
	}
	w.Header().Set("Content-Type", "text/csv; charset=utf-8")
	w.Header().Set("Content-Disposition", fmt.Sprintf(`attachment; filename="tre-query-%d.csv"`, out.QueryID))
	w.Header().Set("Cache-Control", "no-store")
	if err := api.WriteResultCSV(w, out.Result); err != nil {
		h.logger.Error("web: write CSV", "query", out.QueryID, "err", err)
	}
}

// resultJSON serves a released table as a JSON attachment.
func (h *Handler) resultJSON(w http.ResponseWriter, r *http.Request, s *session) {
	out, ok := h.download(w, r, s)
	if !ok {
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Disposition", fmt.Sprintf(`attachment; filename="tre-query-%d.json"`, out.QueryID))
	w.Header().Set("Cache-Control", "no-store")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(out); err != nil {
		h.logger.Error("web: write JSON", "query", out.QueryID, "err", err)
	}
}

// download returns what the researcher may see of a released output; the
// broker decides whether they may and audits the download.
func (h *Handler) download(w http.ResponseWriter, r *http.Request, s *session) (*broker.ReleasedResult, bool) {
	id, ok := h.pathID(w, r, s)
	if !ok {
		return nil, false
	}
	out, err := h.svc.DownloadResult(r.Context(), id)
	if err != nil {
		h.fail(w, r, s, err)
		return nil, false
	}
	return out, true
}

// chart is a horizontal bar chart of one released aggregate (the first, or
// the one ?chart= names) over the group columns, with a value axis and the
// 95% interval of each bar, drawn as SVG attributes (no script, no inline
// style). Rows of totals and subtotals (a key of dp.TotalKey) are not bars
// among the groups: they are listed below the chart. Every position is
// computed here: templates only place what they are given.
type chart struct {
	Column, Kind, Group string
	Bars                []chartBar
	Ticks               []chartTick
	// Totals are the rows of totals and subtotals, with their values.
	Totals []chartTotal
	// Facet, for a table too long for one chart, is the key of its last
	// group column the chart draws.
	Facet chartFacet
	// Width and Height are the viewBox; the label column ends at LabelX,
	// the plot spans PlotX to PlotEnd, zero is at ZeroX and the axis runs
	// along AxisY with its tick labels at TickY.
	Width, Height     float64
	LabelX, PlotX     float64
	PlotEnd, ZeroX    float64
	Top, AxisY, TickY float64
	HasIntervals      bool
	Description       string
	// Note, when set, is the figure's caption instead of the bar chart's.
	Note string
	// Line, when set, draws the chart as a line over an ordered key
	// (linechart.go) instead of bars.
	Line *lineChart
}

// chartTotal is one row of totals as the chart lists it.
type chartTotal struct {
	Label, Value, CI string
	Suppressed       bool
}

type chartBar struct {
	Label, Value, CI string
	// Y is the top of the bar, MidY its middle (labels, whiskers).
	Y, MidY    float64
	X, Width   float64
	Suppressed bool
	// LowX and HighX are the interval's ends; the value's text starts at
	// ValueX, right of the bar and the interval.
	HasCI       bool
	LowX, HighX float64
	CapTop      float64
	CapBottom   float64
	ValueX      float64
	SuppressedX float64
}

type chartTick struct {
	X     float64
	Label string
}

// Chart geometry in SVG user units. Text is 13 units high (style.css);
// chartCharW is a generous average glyph width (wide fallback fonts such as
// DejaVu Sans measure 8.2 a glyph there), so a label's column always holds
// the whole label: the browser test measures it.
const (
	chartBarH    = 28.0
	chartBarFill = 18.0
	chartPlotW   = 420.0
	chartValueW  = 110.0
	chartMaxBars = 40
	chartTop     = 6.0
	chartAxisH   = 30.0
	chartCharW   = 8.8
	chartGap     = 10.0
)

// chartKinds are the column kinds whose charts are captioned by what
// their values are (bars or points of them); others get the plain caption.
var chartKinds = map[string]string{
	string(dp.AggRatio):    "the released ratios, computed from their noisy parts (post-processing)",
	string(dp.AggQuantile): "the released quantiles, read from the library's noisy quantile tree",
}

// extent widens the value axis [lo, hi] to hold a released cell's value
// and interval.
func extent(lo, hi float64, c dp.Cell) (float64, float64) {
	lo, hi = math.Min(lo, *c.Value), math.Max(hi, *c.Value)
	if c.CILow != nil && c.CIHigh != nil {
		lo, hi = math.Min(lo, *c.CILow), math.Max(hi, *c.CIHigh)
	}
	return lo, hi
}

// facetSuffix is ", for COLUMN KEY" for a chart of one key of a long
// table's last group column, else "".
func (ch *chart) facetSuffix() string {
	if ch.Facet.Column == "" {
		return ""
	}
	return fmt.Sprintf(", for %s %s", ch.Facet.Column, ch.Facet.Key)
}

// newChart returns nil when the table has no group column or no aggregate
// to draw. It draws the aggregate column named pick, or the first one when
// none is so named. A table of more rows than a chart holds, with two or
// more group columns (a measure by month and region), is drawn one key of
// its last group column at a time: the key named at, or the first. One
// group column of dates (or of more numbers than bars fit) is drawn as a
// line (newLineChart).
func newChart(cols []dp.Column, rows [][]dp.Cell, pick, at string) *chart {
	ai := -1
	var gis []int
	var groups []string
	for i, c := range cols {
		if c.Kind == dp.KindGroup {
			gis = append(gis, i)
			groups = append(groups, c.Name)
			continue
		}
		if ai < 0 || (c.Name == pick && cols[ai].Name != pick) {
			ai = i
		}
	}
	if len(gis) == 0 || ai < 0 || len(rows) == 0 {
		return nil
	}
	var facet chartFacet
	if len(rows) > chartMaxBars && len(gis) > 1 {
		fi := gis[len(gis)-1]
		facet.Column = cols[fi].Name
		var keep [][]dp.Cell
		for _, row := range rows {
			if fi >= len(row) {
				continue
			}
			k := groupLabel(row[fi])
			if !slices.Contains(facet.Keys, k) {
				facet.Keys = append(facet.Keys, k)
			}
			if k == at {
				facet.Key = at
			}
		}
		if facet.Key == "" {
			facet.Key = facet.Keys[0]
		}
		for _, row := range rows {
			if fi < len(row) && groupLabel(row[fi]) == facet.Key {
				keep = append(keep, row)
			}
		}
		rows, gis, groups = keep, gis[:len(gis)-1], groups[:len(groups)-1]
	}
	col := cols[ai]
	ch := &chart{Column: col.Name, Kind: col.Kind, Group: strings.Join(groups, " × "), Top: chartTop, Facet: facet}
	if len(gis) == 1 {
		if pos, ok := orderedKeys(rows, gis[0]); ok {
			return newLineChart(ch, col, rows, gis[0], ai, pos)
		}
	}
	if len(rows) > chartMaxBars {
		return nil
	}
	// label is a row's keys; total whether it is a row of totals.
	label := func(row []dp.Cell) (text string, total bool) {
		var keys []string
		for _, g := range gis {
			if g < len(row) {
				keys = append(keys, groupLabel(row[g]))
				total = total || (!row[g].Null && row[g].Key == dp.TotalKey)
			}
		}
		return strings.Join(keys, " · "), total
	}
	// The value axis covers every bar's value and interval, and zero.
	lo, hi := 0.0, 0.0
	longest := 0
	var bars [][]dp.Cell
	for _, row := range rows {
		if ai >= len(row) {
			continue
		}
		text, total := label(row)
		c := row[ai]
		if total {
			ch.Totals = append(ch.Totals, totalOf(col, text, c))
			continue
		}
		bars = append(bars, row)
		longest = max(longest, utf8.RuneCountInString(text))
		if released(c) {
			lo, hi = extent(lo, hi, c)
		}
	}
	if len(bars) == 0 {
		return nil
	}
	ticks, lo, hi, decimals := niceTicks(lo, hi)
	ch.LabelX = math.Ceil(float64(longest)*chartCharW) + chartGap
	ch.PlotX = ch.LabelX + chartGap
	ch.PlotEnd = ch.PlotX + chartPlotW
	ch.Width = ch.PlotEnd + chartValueW
	scale := func(v float64) float64 { return round1(ch.PlotX + chartPlotW*(v-lo)/(hi-lo)) }
	ch.ZeroX = scale(0)
	for i, row := range bars {
		y := chartTop + float64(i)*chartBarH
		text, _ := label(row)
		b := chartBar{Label: text, Y: y + (chartBarH-chartBarFill)/2, MidY: y + chartBarH/2, SuppressedX: ch.ZeroX + 6}
		c := row[ai]
		if !released(c) {
			b.Suppressed, b.Value = true, "suppressed"
			ch.Bars = append(ch.Bars, b)
			continue
		}
		v, l, h := api.FormatCell(col, c)
		b.Value = v
		end := scale(*c.Value)
		b.X, b.Width = math.Min(ch.ZeroX, end), math.Abs(end-ch.ZeroX)
		b.ValueX = math.Max(ch.ZeroX, end) + 6
		if c.CILow != nil && c.CIHigh != nil {
			b.HasCI, ch.HasIntervals = true, true
			b.CI = l + " to " + h
			b.LowX, b.HighX = scale(*c.CILow), scale(*c.CIHigh)
			b.CapTop, b.CapBottom = b.MidY-6, b.MidY+6
			b.ValueX = math.Max(b.ValueX, b.HighX+6)
		}
		ch.Bars = append(ch.Bars, b)
	}
	ch.AxisY = chartTop + float64(len(ch.Bars))*chartBarH + 2
	ch.TickY = ch.AxisY + 16
	ch.Height = ch.AxisY + chartAxisH
	for _, t := range ticks {
		ch.Ticks = append(ch.Ticks, chartTick{X: scale(t), Label: strconv.FormatFloat(t, 'f', decimals, 64)})
	}
	ch.Description = fmt.Sprintf("Bar chart of %s by %s", ch.Column, ch.Group)
	if ch.HasIntervals {
		ch.Description += " with the 95% interval of each value"
	}
	ch.Description += ch.facetSuffix()
	if what, ok := chartKinds[col.Kind]; ok {
		ch.Note = fmt.Sprintf("%s by %s%s: bars are %s; whiskers are their 95%% intervals; suppressed groups have no bar.", ch.Column, ch.Group, ch.facetSuffix(), what)
	}
	return ch
}

// chartFacet is the key of the last group column a chart of a table too
// long for one chart draws, and the keys it could draw.
type chartFacet struct {
	Column, Key string
	Keys        []string
}

// chartLink is one released aggregate the chart can draw: the page's
// ?chart= parameter names it.
type chartLink struct {
	Name, Href string
	Current    bool
}

// chartLinks lists the aggregate columns of a table with a chart, each a
// link to the query page drawing it (none when there is only one), and for
// a faceted chart the keys it can draw.
func chartLinks(id int64, cols []dp.Column, ch *chart) (columns, keys []chartLink) {
	if ch == nil {
		return nil, nil
	}
	href := func(column, at string) string {
		v := url.Values{"chart": {column}}
		if at != "" {
			v.Set("at", at)
		}
		return "/ui/queries/" + strconv.FormatInt(id, 10) + "?" + v.Encode() + "#chart-pick"
	}
	for _, c := range cols {
		if c.Kind == dp.KindGroup {
			continue
		}
		columns = append(columns, chartLink{Name: c.Name, Href: href(c.Name, ch.Facet.Key), Current: c.Name == ch.Column})
	}
	if len(columns) < 2 {
		columns = nil
	}
	for _, k := range ch.Facet.Keys {
		keys = append(keys, chartLink{Name: k, Href: href(ch.Column, k), Current: k == ch.Facet.Key})
	}
	return columns, keys
}

// newKMChart is the Kaplan–Meier curve of a released survival table
// (api.KaplanMeier, as tre query km computes it) drawn as bars of the
// survival at the end of each band with their 95% intervals; nil for any
// other table. It reads only the released values: post-processing.
func newKMChart(cols []dp.Column, rows [][]dp.Cell) *chart {
	curve, err := api.KaplanMeier(cols, rows, "deaths", "censored")
	if err != nil {
		return nil
	}
	band := ""
	for _, c := range cols {
		if c.Kind == dp.KindGroup {
			band = c.Name
		}
	}
	kmCols := []dp.Column{{Name: band, Kind: dp.KindGroup}, {Name: "Kaplan–Meier survival", Kind: string(dp.AggRatio)}}
	kmRows := make([][]dp.Cell, len(curve))
	for i, b := range curve {
		v, lo, hi := b.Survival, b.Low, b.High
		key := b.Band
		if b.Stratum != "" {
			key = b.Stratum + " · " + b.Band
		}
		kmRows[i] = []dp.Cell{{Key: key}, {Value: &v, CILow: &lo, CIHigh: &hi}}
	}
	ch := newChart(kmCols, kmRows, "", "")
	if ch != nil {
		ch.Description = "Bar chart of the Kaplan–Meier survival at the end of each " + band + " with its 95% interval"
		if curve[0].Stratum != "" {
			ch.Description += ", one curve per stratum"
		}
		ch.Note = "Kaplan–Meier (life-table) survival at the end of each band, computed from the released deaths and censorings (as tre query km does; no privacy budget); whiskers are 95% intervals from Greenwood's variance and the counts' noise."
	}
	return ch
}

// groupLabel is a group key as the chart and the table show it.
func groupLabel(c dp.Cell) string {
	if c.Null {
		return "(missing)"
	}
	return c.Key
}

// niceTicks returns about five round tick values covering [lo, hi], the
// axis range they span and the decimals their labels need.
func niceTicks(lo, hi float64) (ticks []float64, start, end float64, decimals int) {
	if hi <= lo {
		hi = lo + 1
	}
	raw := (hi - lo) / 5
	exp := int(math.Floor(math.Log10(raw)))
	mag := math.Pow10(exp)
	step, mult := mag, 1.0
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if m*mag >= raw {
			step, mult = m*mag, m
			break
		}
	}
	// The step is mult·10^exp: its decimals are the labels'.
	switch mult {
	case 10:
		decimals = max(0, -exp-1)
	case 2.5:
		decimals = max(0, 1-exp)
	default:
		decimals = max(0, -exp)
	}
	first, last := math.Floor(lo/step), math.Ceil(hi/step)
	for k := first; k <= last; k++ {
		ticks = append(ticks, k*step)
	}
	return ticks, first * step, last * step, decimals
}

func round1(x float64) float64 { return math.Round(x*10) / 10 }
