package api

import (
	"encoding/csv"
	"io"
	"math"
	"strconv"
	"strings"

	"github.com/nhs-tre/tre/dp"
)

// WriteResultCSV writes a released table as CSV (the JSON API and the web
// interface serve the same file). Group columns hold their key
// (empty for SQL NULL); each aggregate column is followed by
// <name>_ci_low, <name>_ci_high and <name>_flag, where the flag is
// "suppressed" or "secondary_suppressed" for a withheld cell (whose value
// and interval are empty) and empty otherwise. Numbers are written to the
// precision the noise leaves them (FormatCell); the JSON result carries
// them unrounded. Every text cell (headers and
// group keys) that a spreadsheet would read as a formula is neutralised with
// a leading apostrophe; numbers are written by strconv as plain literals
// ("-3.5" is a number, not a formula) so they stay numbers.
func WriteResultCSV(w io.Writer, res *dp.ResearcherResult) error {
	cw := csv.NewWriter(w)
	var header []string
	for _, c := range res.Columns {
		if c.Kind == "group" {
			header = append(header, c.Name)
			continue
		}
		header = append(header, c.Name, c.Name+"_ci_low", c.Name+"_ci_high", c.Name+"_flag")
	}
	if err := cw.Write(neutraliseRow(header)); err != nil {
		return err
	}
	for _, row := range res.Rows {
		var rec []string
		for i, c := range res.Columns {
			var cell dp.Cell
			if i < len(row) {
				cell = row[i]
			}
			if c.Kind == "group" {
				if cell.Null {
					rec = append(rec, "")
				} else {
					rec = append(rec, neutraliseCell(cell.Key))
				}
				continue
			}
			flag := ""
			switch {
			case cell.Secondary:
				flag = "secondary_suppressed"
			case cell.Suppressed:
				flag = "suppressed"
			}
			if flag != "" {
				rec = append(rec, "", "", "", flag)
				continue
			}
			v, lo, hi := FormatCell(c, cell)
			rec = append(rec, v, lo, hi, flag)
		}
		if err := cw.Write(rec); err != nil {
			return err
		}
	}
	cw.Flush()
	return cw.Error()
}

// FormatCell writes the released value of an aggregate cell and its 95%
// interval to the precision the release supports, as the CSV file, the
// command line and the web interface show them: counts as whole numbers,
// other statistics to two significant digits of the interval's half-width
// (digits below the noise carry nothing: a mean of 27.5200226 in
// [16.45, 38.59] reads 28 [16, 39]; in [27.15, 27.89], 27.52). The interval
// is rounded outwards, so it still covers what it covered. Missing numbers
// are "".
func FormatCell(c dp.Column, cell dp.Cell) (value, low, high string) {
	d := cellDecimals(c, cell)
	if d < 0 {
		return formatExact(cell.Value), formatExact(cell.CILow), formatExact(cell.CIHigh)
	}
	scale := math.Pow10(d)
	format := func(v *float64, round func(float64) float64) string {
		if v == nil {
			return ""
		}
		x := round(*v*scale) / scale
		if x == 0 {
			x = 0 // no "-0"
		}
		return strconv.FormatFloat(x, 'f', d, 64)
	}
	// A tiny tolerance keeps 261.0000000001 from flooring to 261 and
	// ceiling to 262 alike through float error.
	floor := func(x float64) float64 { return math.Floor(x + 1e-9) }
	ceil := func(x float64) float64 { return math.Ceil(x - 1e-9) }
	return format(cell.Value, math.Round), format(cell.CILow, floor), format(cell.CIHigh, ceil)
}

// cellDecimals is the number of decimals cell is written with, or -1 to
// write it exactly (no interval to judge the noise by).
func cellDecimals(c dp.Column, cell dp.Cell) int {
	switch dp.AggKind(c.Kind) {
	case dp.AggCount, dp.AggCountPatients:
		return 0
	}
	if cell.CILow == nil || cell.CIHigh == nil {
		return -1
	}
	half := (*cell.CIHigh - *cell.CILow) / 2
	if !(half > 0) || math.IsInf(half, 0) {
		return -1
	}
	return min(max(1-int(math.Floor(math.Log10(half))), 0), 12)
}

// formatExact writes v with as many digits as it needs.
func formatExact(v *float64) string {
	if v == nil {
		return ""
	}
	return strconv.FormatFloat(*v, 'f', -1, 64)
}

func neutraliseRow(rec []string) []string {
	for i := range rec {
		rec[i] = neutraliseCell(rec[i])
	}
	return rec
}

// neutraliseCell stops spreadsheet formula injection (OWASP CSV injection):
// a text cell starting with = + - @ tab or CR gets a leading apostrophe.
func neutraliseCell(s string) string {
	if s == "" {
		return s
	}
	if strings.ContainsRune("=+-@\t\r", rune(s[0])) {
		return "'" + s
	}
	return s
}
