package flow

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/nhs-tre/tre/e2e"
	"github.com/nhs-tre/tre/queries"
)

// TestBench runs `tre bench` small and checks the report's structure: every
// section, every typical query with its ratios, every target. It never
// looks at a timing's value.
func TestBench(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real sandbox processes and a broker; skipped with -short")
	}
	out := filepath.Join(t.TempDir(), "report.md")
	var stdout, stderr bytes.Buffer
	args := []string{"--patients", "2000", "--reps", "1", "--warmup", "0", "--starts", "2",
		"--submissions", "16", "--reads", "32", "--clients", "2", "--out", out}
	if code := e2e.RunTre(context.Background(), append([]string{"bench"}, args...), &stdout, &stderr); code != 0 {
		t.Fatalf("tre bench exited %d\nstderr:\n%s", code, stderr.String())
	}
	report := stdout.String()
	file, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if string(file) != report {
		t.Errorf("--out file differs from the printed report")
	}
	for _, want := range []string{
		"## tre bench: 2,000 patients",
		"### 1. Typical queries: raw DuckDB vs protected",
		"CPU time (user+system", "| CPU/request |",
		"### 2. PostgreSQL", "Not run (no `--postgres`)",
		"### 3. Sandbox start",
		"### 4. Broker API",
		"### 5. Synth",
		"### Targets",
		"| sqlite | submit | 16 | 0 |",
		"| sqlite | read | 32 | 0 |",
		"| protected / raw DuckDB, 10M patients |",
		"| sandbox start |",
		"| cold ≈ warm: pooled cold / warm (issue 24) |",
		"| job start with the pool (issue 24) |",
		"Job start (`Runner.Run` until the child has the request",
		"| submissions/s (SQLite) |",
		"| reads/s (SQLite) |",
		"| synth 10M patients |",
		"tre bench " + strings.Join(args, " "),
	} {
		if !strings.Contains(report, want) {
			t.Errorf("report lacks %q", want)
		}
	}
	// Each typical query has a row with a raw time, warm, cold and pooled
	// times and the four ratios.
	for _, tq := range queries.TypicalQueries {
		row := regexp.MustCompile(`(?m)^\| ` + regexp.QuoteMeta(tq.Name) + ` \| [^|]*\d[^|]* \| [^|]*\d[^|]* \| [^|]*\d[^|]* \| [^|]*\d[^|]* \| \d+\.\d\d× \| \d+\.\d\d× \| \d+\.\d\d× \| \d+\.\d\d× \| \d+→\d+ \|$`)
		if !row.MatchString(report) {
			t.Errorf("report has no complete row for %s", tq.Name)
		}
	}
	for _, stage := range []string{"patients", "clinical_events", "medications"} {
		if !regexp.MustCompile(`(?m)^\| ` + stage + ` \| [\d,]+ \| [^|]*\d[^|]* \| [\d,]+ \| [\d.]+ (KiB|MiB|GiB) \|$`).MatchString(report) {
			t.Errorf("synth section lacks the %s stage with rows, rate and peak memory", stage)
		}
	}
	if strings.Contains(report, "DEGRADED") && !strings.Contains(report, "missing layers") {
		t.Errorf("a degraded sandbox is reported without its missing layers")
	}
}

// TestBenchAPIOnly runs only the broker API phases from a catalog: the
// report has the API table and nothing of the DuckDB phases.
func TestBenchAPIOnly(t *testing.T) {
	var stdout, stderr bytes.Buffer
	args := []string{"--api-only", "--catalog", e2e.TestCatalogPath,
		"--submissions", "12", "--reads", "24", "--clients", "3"}
	if code := e2e.RunTre(context.Background(), append([]string{"bench"}, args...), &stdout, &stderr); code != 0 {
		t.Fatalf("tre bench exited %d\nstderr:\n%s", code, stderr.String())
	}
	report := stdout.String()
	for _, want := range []string{"## tre bench --api-only", "### 4. Broker API", "| sqlite | submit | 12 | 0 |", "| sqlite | read | 24 | 0 |"} {
		if !strings.Contains(report, want) {
			t.Errorf("report lacks %q:\n%s", want, report)
		}
	}
	for _, not := range []string{"### 1. Typical queries", "### 3. Sandbox start", "### 5. Synth"} {
		if strings.Contains(report, not) {
			t.Errorf("--api-only report has %q", not)
		}
	}
}

// TestBenchFederated runs `tre bench --federated 3` small: three sites'
// sandboxes over one file and a real broker. The report has a complete
// row for every typical query the broker federates and lists the others
// with the broker's reason; it never looks at a timing's value.
func TestBenchFederated(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real sandbox processes and a broker; skipped with -short")
	}
	var stdout, stderr bytes.Buffer
	args := []string{"--federated", "3", "--patients", "1000", "--reps", "1", "--warmup", "0"}
	if code := e2e.RunTre(context.Background(), append([]string{"bench"}, args...), &stdout, &stderr); code != 0 {
		t.Fatalf("tre bench exited %d\nstderr:\n%s", code, stderr.String())
	}
	report := stdout.String()
	for _, want := range []string{
		"## tre bench --federated 3: 1,000 patients at each site",
		"### Federated queries over 3 sites (issue 21)",
		"| query | slowest own | federated | federated / own | broker work | last upload | dp.Combine | concurrent | concurrent / own | ≤ 1.2× + 100 ms |",
		"tre bench " + strings.Join(args, " "),
	} {
		if !strings.Contains(report, want) {
			t.Errorf("report lacks %q", want)
		}
	}
	rows, refused := 0, 0
	for _, tq := range queries.TypicalQueries {
		row := regexp.MustCompile(`(?m)^\| ` + regexp.QuoteMeta(tq.Name) + ` \|( [^|]*\d[^|]* \|){2} \d+\.\d\d× \|( [^|]*\d[^|]* \|){4} \d+\.\d\d× \| (yes|\*\*no\*\*) \|$`)
		switch {
		case row.MatchString(report):
			rows++
		case strings.Contains(report, " "+tq.Name+" ("):
			refused++
		default:
			t.Errorf("report neither measures nor lists %s", tq.Name)
		}
	}
	// Every typical query federates today; one that is refused must be
	// listed with the broker's reason.
	if rows == 0 {
		t.Errorf("%d queries measured, %d refused; want some measured", rows, refused)
	}
	if listed := strings.Contains(report, "Not federated (the broker refuses them over several sites): "); listed != (refused > 0) {
		t.Errorf("%d queries refused, but the report's list of refused queries is there: %v", refused, listed)
	}
}
