// Package ctxtime holds the one timing helper the sandbox, the site agent
// and the benchmark share.
package ctxtime

import (
	"context"
	"time"
)

// Sleep waits for d, or until ctx ends, when it returns ctx's error.
func Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
