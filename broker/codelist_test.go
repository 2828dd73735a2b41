package broker

import (
	"fmt"
	"strings"
	"testing"
)

// TestParseCodelistCSV checks OpenCodelists' formats are read (code and
// term in any order, dm+d's dmd_id and dmd_name, a byte-order mark, quoted
// fields, extra columns ignored) and every refusal names the line.
func TestParseCodelistCSV(t *testing.T) {
	codes, err := ParseCodelistCSV("\uFEFFterm,code\r\n\"Asthma, severe\",195967001\r\nAsthma,  XaIoX \r\n\r\n")
	if err != nil || len(codes) != 2 || codes[0].Code != "195967001" || codes[0].Term != "Asthma, severe" || codes[1].Code != "XaIoX" {
		t.Fatalf("codes %+v, %v", codes, err)
	}
	codes, err = ParseCodelistCSV("dmd_type,dmd_id,dmd_name,bnf_code\nVMP,39113611000001102,Salbutamol 100micrograms/dose inhaler,0301011R0\n")
	if err != nil || len(codes) != 1 || codes[0].Code != "39113611000001102" || codes[0].Term != "Salbutamol 100micrograms/dose inhaler" {
		t.Fatalf("dm+d codes %+v, %v", codes, err)
	}
	var big strings.Builder
	big.WriteString("code,term\n")
	for i := range MaxCodelistCodes {
		fmt.Fprintf(&big, "%d,t\n", i)
	}
	if codes, err := ParseCodelistCSV(big.String()); err != nil || len(codes) != MaxCodelistCodes {
		t.Fatalf("%d codes: %d, %v", MaxCodelistCodes, len(codes), err)
	}
	fmt.Fprintf(&big, "x,t\n")
	refusals := map[string]string{
		big.String():                 fmt.Sprintf("line %d: a codelist may hold at most 100000 codes", MaxCodelistCodes+2),
		"":                           "empty",
		"code\n1\n":                  "line 1: the header must name a code column",
		"code,term\n":                "no codes",
		"code,term\n1,a\n \t,b\n":    "line 3: the code is empty",
		"code,term\n1,a\n2,b\n1,c\n": `line 4: code "1" is listed twice (first on line 2)`,
		"code,term\n1,a\n2\n":        "line 3: the row has 1 columns",
		"code,term\n1,a\n\"2,b\n":    "line 3: malformed CSV",
		"code,term\n1,a\x01\n":       "line 2: the code or term holds a control character",
		"code,term\n" + "\xff,a\n":   "not valid UTF-8",
		"code,term\n" + strings.Repeat("9", 101) + ",a\n": "line 2: the code is longer than 100",
	}
	for in, want := range refusals {
		_, err := ParseCodelistCSV(in)
		if ErrorCode(err) != EINVALID || !strings.Contains(err.Error(), want) {
			t.Errorf("%.40q: %v, want %q", in, err, want)
		}
	}
}

// TestValidCodelistName checks names are ORG/SLUG/VERSION.
func TestValidCodelistName(t *testing.T) {
	for _, ok := range []string{"opensafely/asthma-diagnosis/2020-04-15", "nhsd-primary-care-domain-refsets/ast_cod/20210127", "a/b/1"} {
		if err := ValidCodelistName(ok); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "a/b", "a/b/c/d", "a//1", "a/b/", "a/b/1 ", "a/b/../1", "../b/1", "a/b/1;drop", strings.Repeat("a", 101) + "/b/1"} {
		if err := ValidCodelistName(bad); ErrorCode(err) != EINVALID {
			t.Errorf("%q: %v, want invalid", bad, err)
		}
	}
}
