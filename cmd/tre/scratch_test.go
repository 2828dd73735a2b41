package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestDefaultScratchDir(t *testing.T) {
	env := func(kv map[string]string) func(string) string { return func(k string) string { return kv[k] } }
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	xdg, err := defaultScratchDir(env(map[string]string{"XDG_CACHE_HOME": "/c", "HOME": "/h"}), "run", "gp.duckdb")
	if err != nil || !strings.HasPrefix(xdg, "/c/tre/run/") {
		t.Errorf("with XDG_CACHE_HOME: %q, %v", xdg, err)
	}
	home, err := defaultScratchDir(env(map[string]string{"HOME": "/h"}), "agent", "gp.duckdb")
	if err != nil || !strings.HasPrefix(home, "/h/.cache/tre/agent/") {
		t.Errorf("with HOME only: %q, %v", home, err)
	}
	if _, err := defaultScratchDir(env(nil), "run", "gp.duckdb"); err == nil {
		t.Error("no XDG_CACHE_HOME or HOME: want an error naming --scratch-dir")
	}
	// A relative and an absolute path to the same file share a directory;
	// another file gets its own.
	abs, _ := defaultScratchDir(env(map[string]string{"HOME": "/h"}), "run", filepath.Join(wd, "gp.duckdb"))
	rel, _ := defaultScratchDir(env(map[string]string{"HOME": "/h"}), "run", "gp.duckdb")
	other, _ := defaultScratchDir(env(map[string]string{"HOME": "/h"}), "run", "other.duckdb")
	if abs != rel || abs == other {
		t.Errorf("same file: %q and %q; other file: %q", abs, rel, other)
	}
}
