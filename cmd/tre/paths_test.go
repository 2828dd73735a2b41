package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nhs-tre/tre/api"
	"github.com/nhs-tre/tre/broker"
)

// runTreIn runs `tre args…` to completion in the working directory dir and
// returns its combined output and exit code.
func runTreIn(tb testing.TB, dir string, args ...string) (string, int) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), envPlayTre+"=1")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return out.String(), 0
	case errors.As(err, &ee):
		return out.String(), ee.ExitCode()
	}
	tb.Fatalf("tre %s: %v", args[0], err)
	return "", 0
}

// TestRunRelativePaths: `tre run --data gp.duckdb` in the data's directory
// runs the query through the sandbox; problems with the data file are
// reported before any job with the file's path and the reason; a refusal
// is printed once, without a doubled "refused:".
func TestRunRelativePaths(t *testing.T) {
	if testing.Short() {
		t.Skip("runs real sandbox children; skipped with -short")
	}
	dir := t.TempDir()
	if out, code := runTreIn(t, dir, "synth", "--out", "gp.duckdb", "--patients", "1500"); code != 0 {
		t.Fatalf("synth exited %d:\n%s", code, out)
	}
	sql := "SELECT p.sex, count(*) AS n FROM patients p GROUP BY p.sex"
	out, code := runTreIn(t, dir, "run", "--data", "gp.duckdb", "--catalog", "gp.catalog.yaml", sql)
	if code != 0 || !strings.Contains(out, "female") {
		t.Fatalf("tre run with relative paths exited %d:\n%s", code, out)
	}

	out, code = runTreIn(t, dir, "run", "--data", "gp.duckdb", "--catalog", "gp.catalog.yaml", "SELECT p.sexx, count(*) AS n FROM patients p GROUP BY p.sexx")
	if code != 1 || strings.Count(out, "refused:") != 1 || !strings.Contains(out, "did you mean p.sex?") {
		t.Errorf("refused query: exit %d, output:\n%s", code, out)
	}

	missing := filepath.Join(dir, "missing.duckdb")
	out, code = runTreIn(t, dir, "run", "--data", "missing.duckdb", "--catalog", "gp.catalog.yaml", sql)
	if code != 1 || !strings.Contains(out, missing) || !strings.Contains(out, "no such file or directory") {
		t.Errorf("missing data file: exit %d, output:\n%s", code, out)
	}
	if err := os.WriteFile(filepath.Join(dir, "gp.duckdb.wal"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	out, code = runTreIn(t, dir, "run", "--data", "gp.duckdb", "--catalog", "gp.catalog.yaml", sql)
	if code != 1 || !strings.Contains(out, filepath.Join(dir, "gp.duckdb")) || !strings.Contains(out, "write-ahead log") {
		t.Errorf("leftover WAL: exit %d, output:\n%s", code, out)
	}
}

// TestAgentRelativePaths: `tre agent --data gp.duckdb --catalog … --token-file
// …` started in the data's directory runs jobs; with a data file it cannot
// use it stops at start-up, naming the file, instead of failing every job.
func TestAgentRelativePaths(t *testing.T) {
	s := startSite(t, 2000)
	s.agent.stop()
	args := []string{"agent", "--broker", s.url, "--site-id", "site-1", "--token-file", "agent.token",
		"--data", "gp.duckdb", "--catalog", "gp.catalog.yaml", "--poll-interval", "100ms", "--memory-limit", "512MB",
		"--scratch-dir", "relative-scratch"}

	out, code := runTreIn(t, s.dir, append(args[:len(args):len(args)], "--data", "nope.duckdb")...)
	if code != 1 || !strings.Contains(out, filepath.Join(s.dir, "nope.duckdb")) || !strings.Contains(out, "no such file or directory") {
		t.Errorf("agent with a missing data file: exit %d, output:\n%s", code, out)
	}

	startTreIn(t, s.dir, args...)
	projectID := s.createProject(t, 5)
	ctx := context.Background()
	q, err := s.as("alice").SubmitQuery(ctx, api.QueryRequest{ProjectID: projectID, Purpose: "relative paths",
		SQL: "SELECT p.region, count(*) AS n FROM patients p GROUP BY p.region", Epsilon: 0.5})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.as("bob").ApproveQuery(ctx, q.ID, "ok"); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, s.as("bob"), q.ID, broker.StatusAwaitingOutputCheck)
}
