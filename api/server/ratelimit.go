package server

import (
	"context"
	"math"
	"sync"
	"time"

	"github.com/nhs-tre/tre/broker"
)

// RateLimit configures the per-subject token bucket on submissions.
type RateLimit struct {
	// PerMinute is the sustained rate; Burst the bucket size (default:
	// PerMinute, so a quiet user may send a minute's worth at once).
	// PerMinute 0 disables the limit.
	PerMinute float64
	Burst     int
	// Shared, when set, keeps the buckets in the broker's database instead
	// of this process's memory, so that every replica on the database draws
	// on one bucket per subject (issue 25). *broker.Service satisfies it.
	Shared SharedBuckets
}

// SharedBuckets takes a token from a bucket every broker process shares.
type SharedBuckets interface {
	TakeToken(ctx context.Context, key string, perMinute float64, burst int) (bool, time.Duration, error)
}

// burst is the bucket size cfg means.
func (cfg RateLimit) burst() float64 {
	if cfg.Burst <= 0 {
		return math.Max(math.Floor(cfg.PerMinute), 1)
	}
	return math.Max(float64(cfg.Burst), 1)
}

// limiter is a token bucket per subject. Idle, full buckets are dropped so
// the map cannot grow without bound.
type limiter struct {
	rate  float64 // tokens per second
	burst float64
	now   func() time.Time

	mu      sync.Mutex
	buckets map[string]*broker.Bucket
	sweep   time.Time
}

func newLimiter(cfg RateLimit, now func() time.Time) *limiter {
	if cfg.PerMinute <= 0 {
		return nil
	}
	return &limiter{rate: cfg.PerMinute / 60, burst: cfg.burst(), now: now, buckets: map[string]*broker.Bucket{}}
}

// allow takes a token for key. When none is left it returns how long until
// one will be.
func (l *limiter) allow(key string) (bool, time.Duration) {
	if l == nil {
		return true, 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	if now.Sub(l.sweep) > time.Minute {
		l.sweep = now
		full := time.Duration(l.burst / l.rate * float64(time.Second))
		for k, b := range l.buckets {
			if now.Sub(b.Last) > full {
				delete(l.buckets, k)
			}
		}
	}
	b, ok := l.buckets[key]
	if !ok {
		b = &broker.Bucket{Tokens: l.burst, Last: now}
		l.buckets[key] = b
	}
	return b.Take(now, l.rate, l.burst)
}
