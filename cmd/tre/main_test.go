package main

import (
	"context"
	"os"
	"testing"
)

// TestMain plays the sandbox child when the runner re-executes the test
// binary (/proc/self/exe) for `tre run` and the dry runs tested here. The
// tests that run tre's real processes are in e2e/.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "__sandbox" {
		os.Exit(run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
	}
	// tre run keeps release snapshots under the user's cache directory by
	// default: the tests' go to a directory of their own.
	cache, err := os.MkdirTemp("", "tre-test-cache-")
	if err != nil {
		panic(err)
	}
	os.Setenv("XDG_CACHE_HOME", cache)
	code := m.Run()
	os.RemoveAll(cache)
	os.Exit(code)
}
