package api

import (
	"testing"

	"github.com/nhs-tre/tre/dp"
)

func TestFormatCell(t *testing.T) {
	f := func(v float64) *float64 { return &v }
	tests := []struct {
		name          string
		kind          dp.AggKind
		cell          dp.Cell
		value, lo, hi string
	}{
		{name: "count", kind: dp.AggCountPatients, cell: dp.Cell{Value: f(6450), CILow: f(6444.504267726446), CIHigh: f(6455.495732273554)}, value: "6450", lo: "6444", hi: "6456"},
		{name: "count near zero", kind: dp.AggCount, cell: dp.Cell{Value: f(10), CILow: f(4.50426772644601), CIHigh: f(15.49573227355399)}, value: "10", lo: "4", hi: "16"},
		{name: "count interval on a whole number", kind: dp.AggCount, cell: dp.Cell{Value: f(100), CILow: f(94.00000000001), CIHigh: f(106)}, value: "100", lo: "94", hi: "106"},
		{name: "negative bound", kind: dp.AggCount, cell: dp.Cell{Value: f(10), CILow: f(-1.5), CIHigh: f(2)}, value: "10", lo: "-2", hi: "2"},
		{name: "wide mean", kind: dp.AggMean, cell: dp.Cell{Value: f(27.52002264552216), CILow: f(16.453), CIHigh: f(38.587)}, value: "28", lo: "16", hi: "39"},
		{name: "narrow mean", kind: dp.AggMean, cell: dp.Cell{Value: f(27.52002264552216), CILow: f(27.15), CIHigh: f(27.89)}, value: "27.52", lo: "27.15", hi: "27.89"},
		{name: "very wide sum", kind: dp.AggSum, cell: dp.Cell{Value: f(123456.7), CILow: f(23456.7), CIHigh: f(223456.7)}, value: "123457", lo: "23456", hi: "223457"},
		{name: "negative zero", kind: dp.AggMean, cell: dp.Cell{Value: f(-0.01), CILow: f(-3), CIHigh: f(3)}, value: "0.0", lo: "-3.0", hi: "3.0"},
		{name: "no interval", kind: dp.AggMean, cell: dp.Cell{Value: f(27.52002264552216)}, value: "27.52002264552216"},
		{name: "suppressed", kind: dp.AggCount, cell: dp.Cell{Suppressed: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, lo, hi := FormatCell(dp.Column{Name: "x", Kind: string(tt.kind)}, tt.cell)
			if v != tt.value || lo != tt.lo || hi != tt.hi {
				t.Errorf("FormatCell = %q [%q, %q], want %q [%q, %q]", v, lo, hi, tt.value, tt.lo, tt.hi)
			}
		})
	}
}

func TestNeutraliseCell(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{"equals", "=1+1", "'=1+1"},
		{"plus", "+1", "'+1"},
		{"minus", "-1", "'-1"},
		{"at", "@x", "'@x"},
		{"tab", "\tx", "'\tx"},
		{"cr", "\rx", "'\rx"},
		{"plain", "London", "London"},
		{"empty", "", ""},
		{"inner equals", "a=b", "a=b"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := neutraliseCell(tt.in); got != tt.want {
				t.Errorf("neutraliseCell(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}
