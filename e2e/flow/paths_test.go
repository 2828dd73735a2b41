package flow

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nhs-tre/tre/api"
	"github.com/nhs-tre/tre/broker"
	"github.com/nhs-tre/tre/e2e"
)

// TestRunRelativePaths: `tre run --data gp.duckdb` in the data's directory
// runs the query through the sandbox; problems with the data file are
// reported before any job with the file's path and the reason; a refusal
// is printed once, without a doubled "refused:".
func TestRunRelativePaths(t *testing.T) {
	if testing.Short() {
		t.Skip("runs real sandbox children; skipped with -short")
	}
	dir := t.TempDir()
	if out, code := e2e.RunTreIn(t, dir, "synth", "--out", "gp.duckdb", "--patients", "1500"); code != 0 {
		t.Fatalf("synth exited %d:\n%s", code, out)
	}
	sql := "SELECT p.sex, count(*) AS n FROM patients p GROUP BY p.sex"
	out, code := e2e.RunTreIn(t, dir, "run", "--data", "gp.duckdb", "--catalog", "gp.catalog.yaml", sql)
	if code != 0 || !strings.Contains(out, "female") {
		t.Fatalf("tre run with relative paths exited %d:\n%s", code, out)
	}

	out, code = e2e.RunTreIn(t, dir, "run", "--data", "gp.duckdb", "--catalog", "gp.catalog.yaml", "SELECT p.sexx, count(*) AS n FROM patients p GROUP BY p.sexx")
	if code != 1 || strings.Count(out, "refused:") != 1 || !strings.Contains(out, "did you mean p.sex?") {
		t.Errorf("refused query: exit %d, output:\n%s", code, out)
	}

	missing := filepath.Join(dir, "missing.duckdb")
	out, code = e2e.RunTreIn(t, dir, "run", "--data", "missing.duckdb", "--catalog", "gp.catalog.yaml", sql)
	if code != 1 || !strings.Contains(out, missing) || !strings.Contains(out, "no such file or directory") {
		t.Errorf("missing data file: exit %d, output:\n%s", code, out)
	}
	if err := os.WriteFile(filepath.Join(dir, "gp.duckdb.wal"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	out, code = e2e.RunTreIn(t, dir, "run", "--data", "gp.duckdb", "--catalog", "gp.catalog.yaml", sql)
	if code != 1 || !strings.Contains(out, filepath.Join(dir, "gp.duckdb")) || !strings.Contains(out, "write-ahead log") {
		t.Errorf("leftover WAL: exit %d, output:\n%s", code, out)
	}
}

// TestAgentRelativePaths: `tre agent --data gp.duckdb --catalog … --token-file
// …` started in the data's directory runs jobs; with a data file it cannot
// use it stops at start-up, naming the file, instead of failing every job.
func TestAgentRelativePaths(t *testing.T) {
	s := e2e.StartSite(t, 2000)
	s.Agent.Stop()
	args := []string{"agent", "--broker", s.URL, "--site-id", "site-1", "--token-file", "agent.token",
		"--data", "gp.duckdb", "--catalog", "gp.catalog.yaml", "--poll-interval", "100ms", "--memory-limit", "512MB",
		"--scratch-dir", "relative-scratch"}

	out, code := e2e.RunTreIn(t, s.Dir, append(args[:len(args):len(args)], "--data", "nope.duckdb")...)
	if code != 1 || !strings.Contains(out, filepath.Join(s.Dir, "nope.duckdb")) || !strings.Contains(out, "no such file or directory") {
		t.Errorf("agent with a missing data file: exit %d, output:\n%s", code, out)
	}

	e2e.StartTreIn(t, s.Dir, args...)
	projectID := s.CreateProject(t, 5)
	ctx := context.Background()
	q, err := s.As("alice").SubmitQuery(ctx, api.QueryRequest{ProjectID: projectID, Purpose: "relative paths",
		SQL: "SELECT p.region, count(*) AS n FROM patients p GROUP BY p.region", Epsilon: 0.5})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.As("bob").ApproveQuery(ctx, q.ID, "ok"); err != nil {
		t.Fatal(err)
	}
	e2e.WaitStatus(t, s.As("bob"), q.ID, broker.StatusAwaitingOutputCheck)
}
