package main

import (
	"context"
	"sync/atomic"
	"testing"
	"time"
)

// TestPeriodically: the broker's periodic duties (the failure flush, the
// federation deadline sweep) run until their stop is called or the
// server's context ends, and stop returns only once no run is left.
func TestPeriodically(t *testing.T) {
	for _, byContext := range []bool{false, true} {
		ctx, cancel := context.WithCancel(context.Background())
		var runs atomic.Int64
		ran := make(chan struct{}, 1)
		stop := periodically(ctx, time.Millisecond, func(context.Context) {
			runs.Add(1)
			select {
			case ran <- struct{}{}:
			default:
			}
		})
		for range 2 {
			select {
			case <-ran:
			case <-time.After(time.Minute):
				t.Fatal("fn never ran")
			}
		}
		if byContext {
			cancel() // the server's context ending stops it; stop then returns at once
		}
		stop()
		n := runs.Load()
		time.Sleep(20 * time.Millisecond)
		if got := runs.Load(); got != n {
			t.Errorf("byContext %v: %d runs after stop, want none", byContext, got-n)
		}
		cancel()
	}
}
