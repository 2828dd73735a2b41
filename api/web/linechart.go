package web

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nhs-tre/tre/api"
	"github.com/nhs-tre/tre/dp"
)

// lineChart is a released measure over an ordered key (dates, such as a
// monthly measure's months, or numbers) drawn as a line through the
// released values with their 95% intervals as a band. A suppressed value
// breaks the line and is marked on the axis, so the line never joins
// across a value the table does not release. Positions along the axis
// follow the keys (a missing month leaves a gap); every position is
// computed here.
type lineChart struct {
	Points []linePoint
	// Lines and Bands are SVG points lists, one per run of released
	// values between suppressed ones; a band only where every value of its
	// run has an interval.
	Lines, Bands []string
	// YTicks are the value axis's ticks (Pos is y), XTicks the key axis's
	// labels (Pos is x).
	YTicks, XTicks []lineTick
}

type linePoint struct {
	Label, Value, CI string
	X, Y             float64
	Suppressed       bool
}

type lineTick struct {
	Pos   float64
	Label string
}

// Line chart geometry in SVG user units.
const (
	lineWidth     = 720.0
	linePlotH     = 260.0
	lineRight     = 24.0
	lineMaxPoints = 400
	lineXTicks    = 6
)

// dateLayouts are the ways a DATE or TIMESTAMP key is written
// (CAST(… AS VARCHAR) in the sandbox).
var dateLayouts = []string{"2006-01-02", "2006-01-02 15:04:05", "2006-01-02 15:04:05.999999"}

// orderedKeys returns each row's position along a key axis when every key
// of column gi, totals apart, is a date, or is a number and there are more
// rows than a bar chart holds; ok is false otherwise (and for a key axis
// of fewer than three distinct positions).
func orderedKeys(rows [][]dp.Cell, gi int) (pos []float64, ok bool) {
	pos = make([]float64, len(rows))
	dates, numbers, n := true, true, 0
	seen := map[float64]bool{}
	for i, row := range rows {
		if gi >= len(row) || row[gi].Null {
			return nil, false
		}
		k := row[gi].Key
		if k == dp.TotalKey {
			pos[i] = math.NaN()
			continue
		}
		n++
		var t time.Time
		var err error
		isDate := false
		for _, l := range dateLayouts {
			if t, err = time.Parse(l, k); err == nil {
				isDate = true
				break
			}
		}
		x, nerr := strconv.ParseFloat(k, 64)
		dates = dates && isDate
		numbers = numbers && nerr == nil && !math.IsInf(x, 0) && !math.IsNaN(x)
		switch {
		case dates:
			pos[i] = float64(t.Unix()) / 86400
		case numbers:
			pos[i] = x
		default:
			return nil, false
		}
		seen[pos[i]] = true
	}
	if len(seen) < 3 || len(seen) != n || n > lineMaxPoints || (!dates && n <= chartMaxBars) {
		return nil, false
	}
	return pos, true
}

// newLineChart fills ch (its column, group and totals set by newChart)
// with the line of aggregate column ai over group column gi, the rows'
// positions pos (orderedKeys).
func newLineChart(ch *chart, col dp.Column, rows [][]dp.Cell, gi, ai int, pos []float64) *chart {
	type pt struct {
		x    float64
		row  []dp.Cell
		text string
	}
	var pts []pt
	lo, hi := 0.0, 0.0
	for i, row := range rows {
		if ai >= len(row) {
			continue
		}
		text := groupLabel(row[gi])
		c := row[ai]
		if math.IsNaN(pos[i]) {
			ch.Totals = append(ch.Totals, totalOf(col, text, c))
			continue
		}
		pts = append(pts, pt{x: pos[i], row: row, text: text})
		if released(c) {
			lo, hi = extent(lo, hi, c)
		}
	}
	slices.SortFunc(pts, func(a, b pt) int { return cmp.Compare(a.x, b.x) })
	ticks, lo, hi, decimals := niceTicks(lo, hi)
	longest := 0
	for _, t := range ticks {
		longest = max(longest, len(strconv.FormatFloat(t, 'f', decimals, 64)))
	}
	ch.PlotX = math.Ceil(float64(longest)*chartCharW) + chartGap
	ch.PlotEnd = lineWidth - lineRight
	ch.Width = lineWidth
	ch.AxisY = ch.Top + linePlotH
	ch.TickY = ch.AxisY + 16
	ch.Height = ch.AxisY + chartAxisH
	ch.ZeroX = ch.PlotX
	xlo, xhi := pts[0].x, pts[len(pts)-1].x
	sx := func(x float64) float64 { return round1(ch.PlotX + 8 + (ch.PlotEnd-ch.PlotX-16)*(x-xlo)/(xhi-xlo)) }
	sy := func(v float64) float64 { return round1(ch.AxisY - linePlotH*(v-lo)/(hi-lo)) }
	l := &lineChart{}
	for _, t := range ticks {
		l.YTicks = append(l.YTicks, lineTick{Pos: sy(t), Label: strconv.FormatFloat(t, 'f', decimals, 64)})
	}
	var line, upper, lower []string
	banded := true
	flush := func() {
		if len(line) > 1 {
			l.Lines = append(l.Lines, strings.Join(line, " "))
		}
		if len(line) > 1 && banded {
			slices.Reverse(lower)
			l.Bands = append(l.Bands, strings.Join(append(upper, lower...), " "))
		}
		line, upper, lower, banded = nil, nil, nil, true
	}
	xy := func(x, y float64) string {
		return strconv.FormatFloat(x, 'f', -1, 64) + "," + strconv.FormatFloat(y, 'f', -1, 64)
	}
	for _, p := range pts {
		c := p.row[ai]
		lp := linePoint{Label: p.text, X: sx(p.x), Y: ch.AxisY}
		if !released(c) {
			lp.Suppressed, lp.Value = true, "suppressed"
			l.Points = append(l.Points, lp)
			flush()
			continue
		}
		v, cl, chi := api.FormatCell(col, c)
		lp.Value, lp.Y = v, sy(*c.Value)
		line = append(line, xy(lp.X, lp.Y))
		if c.CILow != nil && c.CIHigh != nil {
			lp.CI = cl + " to " + chi
			ch.HasIntervals = true
			upper = append(upper, xy(lp.X, sy(*c.CIHigh)))
			lower = append(lower, xy(lp.X, sy(*c.CILow)))
		} else {
			banded = false
		}
		l.Points = append(l.Points, lp)
	}
	flush()
	// About lineXTicks key labels, evenly spaced by position in the list.
	step := max(1, int(math.Ceil(float64(len(l.Points)-1)/float64(lineXTicks-1))))
	for i := 0; i < len(l.Points); i += step {
		l.XTicks = append(l.XTicks, lineTick{Pos: l.Points[i].X, Label: l.Points[i].Label})
	}
	if last := l.Points[len(l.Points)-1]; l.XTicks[len(l.XTicks)-1].Pos != last.X {
		l.XTicks = append(l.XTicks, lineTick{Pos: last.X, Label: last.Label})
	}
	ch.Line = l
	ch.Description = fmt.Sprintf("Line chart of %s over %s", ch.Column, ch.Group)
	if ch.HasIntervals {
		ch.Description += " with the 95% interval of each value as a band"
	}
	ch.Description += ch.facetSuffix()
	what, ok := chartKinds[col.Kind]
	if !ok {
		what = "the released (noisy, rounded) values"
	}
	if ch.HasIntervals {
		what += ", the band their 95% intervals"
	}
	ch.Note = fmt.Sprintf("%s over %s%s: points are %s; a suppressed value is marked × on the axis and breaks the line.", ch.Column, ch.Group, ch.facetSuffix(), what)
	return ch
}

// released reports whether c has a value the table releases.
func released(c dp.Cell) bool { return !c.Suppressed && !c.Secondary && c.Value != nil }

// totalOf is a row of totals as a chart lists it.
func totalOf(col dp.Column, label string, c dp.Cell) chartTotal {
	t := chartTotal{Label: label}
	if !released(c) {
		t.Suppressed, t.Value = true, "suppressed"
		return t
	}
	var l, h string
	t.Value, l, h = api.FormatCell(col, c)
	if l != "" && h != "" {
		t.CI = l + " to " + h
	}
	return t
}
