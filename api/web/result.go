package web

import (
	"encoding/json"
	"fmt"
	"math"
	"net/http"

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

// chart is a horizontal bar chart of a result's first aggregate over its
// first group column, drawn as SVG attributes (no script, no inline style).
type chart struct {
	Column string
	Group  string
	Bars   []chartBar
	Height int
	Max    string
}

type chartBar struct {
	Label      string
	Value      string
	Y, TextY   int
	Width      float64
	Suppressed bool
}

// Chart geometry in SVG user units.
const (
	chartBarH     = 26
	chartPlotW    = 420.0
	chartMaxBars  = 40
	chartTopPad   = 4
	chartLabelPad = 17
)

// newChart returns nil when the table has no group column or no aggregate
// to draw.
func newChart(cols []dp.Column, rows [][]dp.Cell) *chart {
	gi, ai := -1, -1
	for i, c := range cols {
		if c.Kind == "group" && gi < 0 {
			gi = i
		}
		if c.Kind != "group" && ai < 0 {
			ai = i
		}
	}
	if gi < 0 || ai < 0 || len(rows) == 0 || len(rows) > chartMaxBars {
		return nil
	}
	maxV := 0.0
	for _, row := range rows {
		if ai < len(row) && row[ai].Value != nil && !row[ai].Suppressed {
			maxV = math.Max(maxV, *row[ai].Value)
		}
	}
	ch := &chart{Column: cols[ai].Name, Group: cols[gi].Name, Max: fmtNum(maxV)}
	for i, row := range rows {
		if gi >= len(row) || ai >= len(row) {
			continue
		}
		b := chartBar{Y: chartTopPad + i*chartBarH, TextY: chartTopPad + i*chartBarH + chartLabelPad}
		b.Label = row[gi].Key
		if row[gi].Null {
			b.Label = "(missing)"
		}
		if len(b.Label) > 24 {
			b.Label = b.Label[:23] + "…"
		}
		c := row[ai]
		if c.Suppressed || c.Secondary || c.Value == nil {
			b.Suppressed, b.Value = true, "suppressed"
		} else {
			b.Value = fmtNum(*c.Value)
			if maxV > 0 && *c.Value > 0 {
				b.Width = math.Round(10*chartPlotW**c.Value/maxV) / 10
			}
		}
		ch.Bars = append(ch.Bars, b)
	}
	ch.Height = chartTopPad*2 + len(ch.Bars)*chartBarH
	return ch
}
