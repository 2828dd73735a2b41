package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/nhs-tre/tre/queries"
)

// TestVersionCommand: tre version names this binary's build and the DuckDB
// library it runs.
func TestVersionCommand(t *testing.T) {
	var out bytes.Buffer
	if code := run(context.Background(), []string{"version"}, &out, &out); code != 0 {
		t.Fatalf("exit %d: %s", code, out.String())
	}
	duck, err := queries.DuckDBVersion(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(duck, "v1.") {
		t.Errorf("DuckDB version %q", duck)
	}
	for _, want := range []string{"tre ", "commit ", "go ", "duckdb  " + duck} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}
