// Package e2e holds what tre's system tests share: the tre binary, built
// once per test package (Main), real `tre serve` and `tre agent` processes
// over synthetic data (StartSite), a broker with no agent for the tests to
// play one (StartLonelyBroker), and raw HTTP requests. The tests live in
// its subpackages (flow, hostile, faults, readme, clients, replicas) so
// that `go test ./...` runs them in parallel with each other and with the
// unit tests, each package well inside go test's default timeout.
//
// e2e is test support: nothing but tests may import it, and it never
// reaches into tre's internals — it drives the binary and the HTTP API as
// an operator and a client would.
package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
	"time"
)

// tre is the path of the binary Main built.
var tre string

// Main builds the tre binary into a temporary directory, runs the tests of
// the calling package with it, and removes it. Call it from TestMain.
func Main(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "tre-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	tre = filepath.Join(dir, "tre")
	build := exec.Command("go", "build", "-o", tre, "./cmd/tre")
	build.Dir = RepoRoot()
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: go build ./cmd/tre: %v\n", err)
		return 1
	}
	// tre run and tre agent keep release snapshots under the user's cache
	// directory by default: the tests' go to a directory of their own.
	cache := filepath.Join(dir, "cache")
	if err := os.Mkdir(cache, 0o700); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	os.Setenv("XDG_CACHE_HOME", cache)
	return m.Run()
}

// Tre is the path of the tre binary Main built, for the tools a test runs
// that call tre themselves.
func Tre() string { return tre }

// RepoRoot is the repository's root directory.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(filepath.Dir(file))
}

// RunTre runs `tre args…` to completion with the given output and returns
// its exit code (-1 if it could not start or was killed).
func RunTre(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cmd := exec.CommandContext(ctx, tre, args...)
	cmd.Stdout, cmd.Stderr = stdout, stderr
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		return ee.ExitCode()
	}
	fmt.Fprintf(stderr, "tre %s: %v\n", args[0], err)
	return -1
}

// RunTreIn runs `tre args…` to completion in the working directory dir and
// returns its combined output and exit code.
func RunTreIn(tb testing.TB, dir string, args ...string) (string, int) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, tre, args...)
	cmd.Dir = dir
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
