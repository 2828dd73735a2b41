//go:build linux && cgo

package sandbox

import (
	"database/sql"
	"fmt"
	"testing"
)

// TestAllocatorDecay checks the mallctl glue against the DuckDB linked in:
// its compiled-in decay is the one the pooled child restores for its job,
// and setAllocatorDecay reaches the defaults and every arena in use.
func TestAllocatorDecay(t *testing.T) {
	db, err := sql.Open("duckdb", "")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	// An aggregate on DuckDB's own threads, so that their arenas exist.
	if _, err := db.Exec("SELECT count(DISTINCT i % 1000) FROM range(1000000) t(i)"); err != nil {
		t.Fatal(err)
	}
	read := func() map[string]int64 {
		t.Helper()
		got := map[string]int64{}
		n, err := jeArenas()
		if err != nil {
			t.Fatal(err)
		}
		for _, kind := range []string{"dirty", "muzzy"} {
			name := "arenas." + kind + "_decay_ms"
			if got[name], err = jeGet(name); err != nil {
				t.Fatal(err)
			}
			name = fmt.Sprintf("arena.0.%s_decay_ms", kind)
			if got[name], err = jeGet(name); err != nil {
				t.Fatal(err)
			}
		}
		if n < 1 {
			t.Fatalf("arenas.narenas = %d", n)
		}
		return got
	}
	for name, v := range read() {
		if v != duckdbDecayMS {
			t.Errorf("%s = %d, want DuckDB's %d (duckdbDecayMS is out of date)", name, v, duckdbDecayMS)
		}
	}
	t.Cleanup(func() {
		if err := setAllocatorDecay(duckdbDecayMS); err != nil {
			t.Error(err)
		}
	})
	for _, ms := range []int64{-1, duckdbDecayMS} {
		if err := setAllocatorDecay(ms); err != nil {
			t.Fatal(err)
		}
		for name, v := range read() {
			if v != ms {
				t.Errorf("after setAllocatorDecay(%d): %s = %d", ms, name, v)
			}
		}
	}
}
