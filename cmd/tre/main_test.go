package main

import (
	"context"
	"os"
	"testing"
)

// The end-to-end tests run tre's real processes: the sandbox child (which
// the runner re-executes through /proc/self/exe) and, for the multi-process
// tests, `tre serve` and `tre agent`. In a test binary /proc/self/exe is the
// test binary, so TestMain plays tre when asked to.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "__sandbox" {
		os.Exit(run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
	}
	if os.Getenv(envPlayTre) == "1" {
		os.Unsetenv(envPlayTre)
		os.Exit(main2(os.Args[1:]))
	}
	// tre run and tre agent keep release snapshots under the user's cache
	// directory by default: the tests' go to a directory of their own.
	cache, err := os.MkdirTemp("", "tre-test-cache-")
	if err != nil {
		panic(err)
	}
	os.Setenv("XDG_CACHE_HOME", cache)
	code := m.Run()
	os.RemoveAll(cache)
	os.Exit(code)
}

// envPlayTre makes the test binary behave as the tre binary.
const envPlayTre = "TRE_TEST_PLAY_TRE"

// main2 is main without os.Exit, for the test binary playing tre.
func main2(args []string) int {
	ctx, stop := signalContext()
	defer stop()
	return run(ctx, args, os.Stdout, os.Stderr)
}
