package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSynthParseFlags(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{"ok", []string{"--out", "x.duckdb", "--patients", "10", "--seed", "3"}, ""},
		{"no out", []string{"--patients", "10"}, "--out is required"},
		{"no patients", []string{"--out", "x.duckdb"}, "--patients must be"},
		{"negative patients", []string{"--out", "x.duckdb", "--patients", "-1"}, "--patients must be"},
		{"bad seed", []string{"--out", "x.duckdb", "--patients", "10", "--seed", "x"}, "invalid value"},
		{"stray argument", []string{"--out", "x.duckdb", "--patients", "10", "extra"}, "unexpected argument"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stderr bytes.Buffer
			m := newSynthMain(&bytes.Buffer{}, &stderr)
			err := m.ParseFlags(context.Background(), tt.args)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("err = %v, want it to contain %q", err, tt.wantErr)
			}
		})
	}
}

func TestSynthRun(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "gp.duckdb")
	run := func(args ...string) (string, string, error) {
		t.Helper()
		var stdout, stderr bytes.Buffer
		m := newSynthMain(&stdout, &stderr)
		defer m.Close()
		if err := m.ParseFlags(context.Background(), args); err != nil {
			t.Fatal(err)
		}
		err := m.Run(context.Background())
		return stdout.String(), stderr.String(), err
	}
	stdout, stderr, err := run("--out", out, "--patients", "200", "--seed", "5")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stderr, "synth: [2/9] patients") || strings.Contains(stderr, "\r") {
		t.Errorf("stderr is not plain stage lines:\n%s", stderr)
	}
	if !strings.Contains(stdout, "wrote "+out) || !strings.Contains(stdout, "medications") {
		t.Errorf("stdout:\n%s", stdout)
	}
	for _, p := range []string{out, filepath.Join(dir, "gp.catalog.yaml")} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("%s: %v", p, err)
		}
	}
	if _, _, err := run("--out", out, "--patients", "200"); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("second run without --force: err = %v", err)
	}
	if _, _, err := run("--out", out, "--patients", "50", "--force"); err != nil {
		t.Errorf("run with --force: %v", err)
	}
}

// TestSynthProgressBarEndsFull: the bar's last frame is 100% once the last
// stage is done, on its own line.
func TestSynthProgressBarEndsFull(t *testing.T) {
	var buf bytes.Buffer
	progress, finish := progressBar(&buf)
	for i, stage := range []string{"prepare", "patients", "finish"} {
		progress(stage, i, 3)
	}
	progress("done", 3, 3)
	finish()
	out := buf.String()
	if !strings.HasSuffix(out, "\n") {
		t.Errorf("the bar's line is not ended: %q", out)
	}
	var last string
	for _, frame := range strings.Split(strings.TrimSuffix(out, "\n"), "\r") {
		if strings.TrimSpace(frame) != "" {
			last = frame
		}
	}
	if !strings.Contains(last, "100%") || !strings.Contains(last, "(3/3)") || !strings.Contains(last, "done") {
		t.Errorf("last frame %q, want done at 100%% (3/3)", last)
	}
}
