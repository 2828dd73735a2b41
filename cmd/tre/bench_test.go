package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

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
	m := newBenchMain(&stdout, &stderr)
	args := []string{"--patients", "2000", "--reps", "1", "--warmup", "0", "--starts", "2",
		"--submissions", "16", "--reads", "32", "--clients", "2", "--out", out}
	if err := m.ParseFlags(context.Background(), args); err != nil {
		t.Fatal(err)
	}
	if err := m.Run(context.Background()); err != nil {
		t.Fatalf("bench: %v\nstderr:\n%s", err, stderr.String())
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
		"| submissions/s (SQLite) |",
		"| reads/s (SQLite) |",
		"| synth 10M patients |",
		"tre bench " + strings.Join(args, " "),
	} {
		if !strings.Contains(report, want) {
			t.Errorf("report lacks %q", want)
		}
	}
	// Each typical query has a row with a raw time, warm and cold times and
	// both ratios.
	for _, tq := range queries.TypicalQueries {
		row := regexp.MustCompile(`(?m)^\| ` + regexp.QuoteMeta(tq.Name) + ` \| [^|]*\d[^|]* \| [^|]*\d[^|]* \| [^|]*\d[^|]* \| \d+\.\d\d× \| \d+\.\d\d× \| \d+→\d+ \|$`)
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
	m := newBenchMain(&stdout, &stderr)
	args := []string{"--api-only", "--catalog", filepath.Join("..", "..", "queries", "testdata", "catalog.yaml"),
		"--submissions", "12", "--reads", "24", "--clients", "3"}
	if err := m.ParseFlags(context.Background(), args); err != nil {
		t.Fatal(err)
	}
	if err := m.Run(context.Background()); err != nil {
		t.Fatalf("bench: %v\nstderr:\n%s", err, stderr.String())
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

func TestBenchFlags(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no size", []string{}, "--patients"},
		{"zero reps", []string{"--patients", "10", "--reps", "0"}, "--reps"},
		{"negative warm-up", []string{"--patients", "10", "--warmup", "-1"}, "--warmup"},
		{"no clients", []string{"--patients", "10", "--clients", "0"}, "--clients"},
		{"stray argument", []string{"--patients", "10", "extra"}, "extra"},
		{"api-only without a catalog", []string{"--api-only", "--patients", "10"}, "--catalog"},
		{"api-only with explain", []string{"--api-only", "--catalog", "c.yaml", "--explain", "all"}, "--explain"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			err := newBenchMain(&buf, &buf).ParseFlags(context.Background(), tt.args)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("ParseFlags(%q) = %v, want an error naming %s", tt.args, err, tt.want)
			}
		})
	}
}

func TestRedactPassword(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{"password", "postgres://u:secret@h:5432/db", "postgres://u:***@h:5432/db"},
		{"no password", "postgres://postgres@127.0.0.1:5432/test?sslmode=disable", "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"},
		{"not a URL", "host=h user=u", "host=h user=u"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := redactPassword(tt.in); got != tt.want {
				t.Errorf("redactPassword(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

// TestBenchTargetsBySize: the protected/raw ratio is judged against the
// engine issue's 1M target only on a run of 1M–10M patients and against
// the 10M target only at 10M or more; the other row says the run's size.
func TestBenchTargetsBySize(t *testing.T) {
	ms := func(d ...int) sample {
		var s sample
		for _, x := range d {
			s.add(time.Duration(x) * time.Millisecond)
		}
		return s
	}
	q := queryResult{Name: "q", Raw: ms(100), Warm: ms(140), Cold: ms(400), RawCPU: ms(180), WarmCPU: ms(250), ColdCPU: ms(500)}
	for _, tt := range []struct {
		patients      int
		at1M, at10M   string
		notApplicable string
	}{
		{patients: 1_000_000, at1M: "yes", at10M: "n/a (10M only)"},
		{patients: 10_000_000, at1M: "n/a (1M only)", at10M: "yes"},
		{patients: 2_000, at1M: "n/a (1M only)", at10M: "n/a (10M only)"},
	} {
		r := &benchReport{Patients: tt.patients, Queries: []queryResult{q}}
		got := map[string][4]string{}
		for _, row := range r.targets() {
			got[row[0]] = row
		}
		for name, want := range map[string]string{"protected / raw DuckDB, 1M patients (engine issue)": tt.at1M, "protected / raw DuckDB, 10M patients": tt.at10M} {
			row, ok := got[name]
			if !ok {
				t.Fatalf("no %q row", name)
			}
			if row[3] != want {
				t.Errorf("%d patients, %s: verdict %q, want %q", tt.patients, name, row[3], want)
			}
			if judged := !strings.HasPrefix(want, "n/a"); judged != strings.Contains(row[2], "warm 1.40×") {
				t.Errorf("%d patients, %s: measured cell %q", tt.patients, name, row[2])
			}
		}
	}
	q.Warm = ms(151)
	r := &benchReport{Patients: 1_000_000, Queries: []queryResult{q}}
	if row := r.targets()[0]; row[3] != "**no**" {
		t.Errorf("1.51× judged %q", row[3])
	}
}
