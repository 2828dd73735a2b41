package api

import (
	"encoding/csv"
	"io"
	"strconv"
	"strings"

	"github.com/nhs-tre/tre/dp"
)

// WriteResultCSV writes a released table as CSV (the JSON API and the web
// interface serve the same file). Group columns hold their key
// (empty for SQL NULL); each aggregate column is followed by
// <name>_ci_low, <name>_ci_high and <name>_flag, where the flag is
// "suppressed" or "secondary_suppressed" for a withheld cell (whose value
// and interval are empty) and empty otherwise. Every text cell (headers and
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
	num := func(v *float64) string {
		if v == nil {
			return ""
		}
		return strconv.FormatFloat(*v, 'f', -1, 64)
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
			rec = append(rec, num(cell.Value), num(cell.CILow), num(cell.CIHigh), flag)
		}
		if err := cw.Write(rec); err != nil {
			return err
		}
	}
	cw.Flush()
	return cw.Error()
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

// safeFilename keeps only characters that are harmless in a
// Content-Disposition filename on every platform.
func safeFilename(s string) string {
	var b strings.Builder
	for _, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_', r == '.':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	out := strings.Trim(b.String(), ".")
	if out == "" {
		return "result"
	}
	if len(out) > 100 {
		out = out[:100]
	}
	return out
}
