package main

import (
	"runtime/debug"
	"strings"
	"testing"
)

// The broker sets the collector's target from gc_percent, except when the
// operator set GOGC, and refuses a target outside its bounds.
func TestTuneGC(t *testing.T) {
	prev := debug.SetGCPercent(100)
	t.Cleanup(func() { debug.SetGCPercent(prev) })
	unset := func(string) (string, bool) { return "", false }
	if got := tuneGC(400, unset); got != 400 {
		t.Errorf("without GOGC: tuneGC = %d, want 400", got)
	}
	if cur := debug.SetGCPercent(100); cur != 400 {
		t.Errorf("without GOGC: the collector's target is %d, want 400", cur)
	}
	gogc := func(k string) (string, bool) { return "150", k == "GOGC" }
	if got := tuneGC(400, gogc); got != -1 {
		t.Errorf("with GOGC set: tuneGC = %d, want -1", got)
	}
	if cur := debug.SetGCPercent(100); cur != 100 {
		t.Errorf("with GOGC set: the collector's target is %d, want it left at 100", cur)
	}

	cfg := DefaultServeConfig()
	cfg.DataDir, cfg.Dev = t.TempDir(), true
	if err := cfg.Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	for _, p := range []int{0, 49, 2001} {
		cfg.GCPercent = p
		if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "gc_percent") {
			t.Errorf("gc_percent %d: Validate = %v, want an error naming gc_percent", p, err)
		}
	}
}
