package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nhs-tre/tre/broker"
	"github.com/nhs-tre/tre/dp"
)

// TestRunViews runs queries through `tre run` with the real sandbox child:
// the default prints exactly what a researcher would receive, --checker
// adds the output checker's diagnostics; a failed run says only the
// researcher's generic words unless --checker.
func TestRunViews(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the real sandbox; skipped with -short")
	}
	dir := t.TempDir()
	data := filepath.Join(dir, "gp.duckdb")
	var out bytes.Buffer
	if code := run(context.Background(), []string{"synth", "--out", data, "--patients", "1500", "--seed", "3"}, &out, &out); code != 0 {
		t.Fatalf("tre synth exited %d:\n%s", code, out.String())
	}
	catalog := filepath.Join(dir, "gp.catalog.yaml")
	const sql = "SELECT region, count(*) AS n FROM patients GROUP BY region"
	tre := func(args ...string) (int, string, string) {
		t.Helper()
		var stdout, stderr bytes.Buffer
		args = append([]string{"run", "--data", data, "--catalog", catalog, "--allow-weak-sandbox"}, args...)
		code := run(context.Background(), args, &stdout, &stderr)
		return code, stdout.String(), stderr.String()
	}
	checkerOnly := []string{"dominance", "rows dropped", "rows_dropped_by_bounding", "partitions_not_released", "optout", "opt-out", "sandbox"}

	code, stdout, stderr := tre("--format", "json", sql)
	if code != 0 {
		t.Fatalf("tre run exited %d: %s", code, stderr)
	}
	var view dp.ResearcherResult
	dec := json.NewDecoder(strings.NewReader(stdout))
	dec.DisallowUnknownFields() // exactly the researcher's shape
	if err := dec.Decode(&view); err != nil || len(view.Rows) == 0 {
		t.Fatalf("default JSON is not a researcher's result: %v\n%s", err, stdout)
	}
	for _, args := range [][]string{{sql}, {"--format", "csv", sql}} {
		code, stdout, stderr := tre(args...)
		if code != 0 {
			t.Fatalf("tre run %v exited %d: %s", args, code, stderr)
		}
		for _, s := range checkerOnly {
			if strings.Contains(strings.ToLower(stdout+stderr), s) {
				t.Errorf("tre run %v (the researcher's view) prints %q:\n%s%s", args, s, stdout, stderr)
			}
		}
	}
	code, stdout, stderr = tre("--checker", sql)
	if code != 0 {
		t.Fatalf("tre run --checker exited %d: %s", code, stderr)
	}
	for _, s := range []string{"as the researcher receives it", "Output checker's view", "rows dropped by bounding", "opt-out applied"} {
		if !strings.Contains(stdout, s) {
			t.Errorf("tre run --checker lacks %q:\n%s", s, stdout)
		}
	}
	code, stdout, _ = tre("--checker", "--format", "json", sql)
	var both struct {
		Researcher *dp.ResearcherResult `json:"researcher"`
		Checker    *dp.Result           `json:"checker"`
	}
	if err := json.Unmarshal([]byte(stdout), &both); code != 0 || err != nil || both.Researcher == nil || both.Checker == nil {
		t.Fatalf("tre run --checker --format json: exit %d, %v\n%s", code, err, stdout)
	}

	// A run that fails at the site: the researcher's words, then the
	// checker's notice.
	code, stdout, stderr = tre("--timeout", "1ms", sql)
	// What the run says is its "tre run:" line; the site's own log lines
	// beside it may name the class (the child's, when it logs before it is
	// stopped).
	said := ""
	for _, line := range strings.Split(stderr, "\n") {
		if strings.HasPrefix(line, "tre run: ") {
			said = line
		}
	}
	if code != 1 || !strings.Contains(said, broker.FailedMessage) || strings.Contains(said, "timeout") || stdout != "" {
		t.Errorf("failed run: exit %d, stderr %q, stdout %q; want 1 and only the generic message", code, stderr, stdout)
	}
	code, _, stderr = tre("--timeout", "1ms", "--checker", sql)
	if code != 1 || !strings.Contains(stderr, broker.FailedMessage) || !strings.Contains(stderr, fmt.Sprintf("failure notice: %s", "timeout")) {
		t.Errorf("failed run with --checker: exit %d, stderr %q; want the failure class", code, stderr)
	}
}
