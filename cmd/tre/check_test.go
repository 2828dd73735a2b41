package main

import (
	"bytes"
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
)

func TestCheckMain(t *testing.T) {
	catalog := filepath.Join("..", "..", "queries", "testdata", "catalog.yaml")
	tests := []struct {
		name       string
		args       []string
		code       int
		wantStdout string
		wantStderr string
	}{
		{name: "accepted", args: []string{"check", "--catalog", catalog, "SELECT region, count(*) AS n FROM patients GROUP BY region"}, code: 0, wantStdout: "cost: ε = 1, δ = 0"},
		{name: "epsilon", args: []string{"check", "--catalog", catalog, "--epsilon", "0.5", "SELECT count(*) FROM medications"}, code: 0, wantStdout: "ε = 0.5"},
		{name: "json", args: []string{"check", "--catalog", catalog, "--json", "SELECT count(*) FROM medications"}, code: 0, wantStdout: `"rewritten"`},
		{name: "refused", args: []string{"check", "--catalog", catalog, "SELECT count(*) FROM read_csv('/etc/passwd')"}, code: 1, wantStderr: "refused: function read_csv at position 21 is not allowed"},
		{name: "epsilon above max", args: []string{"check", "--catalog", catalog, "--epsilon", "9", "SELECT count(*) FROM medications"}, code: 1, wantStderr: "at most 2 per query"},
		{name: "no catalog", args: []string{"check", "SELECT 1"}, code: 2, wantStderr: "--catalog is required"},
		{name: "no sql", args: []string{"check", "--catalog", catalog}, code: 2, wantStderr: "exactly one SQL argument"},
		{name: "bad catalog", args: []string{"check", "--catalog", "missing.yaml", "SELECT 1"}, code: 1, wantStderr: "missing.yaml"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(context.Background(), tt.args, &stdout, &stderr)
			if code != tt.code {
				t.Fatalf("exit %d, want %d\nstdout: %s\nstderr: %s", code, tt.code, stdout.String(), stderr.String())
			}
			if !strings.Contains(stdout.String(), tt.wantStdout) {
				t.Errorf("stdout %q does not contain %q", stdout.String(), tt.wantStdout)
			}
			if !strings.Contains(stderr.String(), tt.wantStderr) {
				t.Errorf("stderr %q does not contain %q", stderr.String(), tt.wantStderr)
			}
			if tt.name == "json" {
				var plan map[string]any
				if err := json.Unmarshal(stdout.Bytes(), &plan); err != nil {
					t.Errorf("--json output is not JSON: %v", err)
				}
			}
		})
	}
}
