package server

import (
	"context"
	"math"
	"sync"
	"time"
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
	buckets map[string]*bucket
	sweep   time.Time
}

type bucket struct {
	tokens float64
	last   time.Time
}

func newLimiter(cfg RateLimit, now func() time.Time) *limiter {
	if cfg.PerMinute <= 0 {
		return nil
	}
	return &limiter{rate: cfg.PerMinute / 60, burst: cfg.burst(), now: now, buckets: map[string]*bucket{}}
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
			if now.Sub(b.last) > full {
				delete(l.buckets, k)
			}
		}
	}
	b, ok := l.buckets[key]
	if !ok {
		b = &bucket{tokens: l.burst, last: now}
		l.buckets[key] = b
	}
	if el := now.Sub(b.last).Seconds(); el > 0 {
		b.tokens = math.Min(l.burst, b.tokens+el*l.rate)
		b.last = now
	}
	if b.tokens >= 1 {
		b.tokens--
		return true, 0
	}
	wait := time.Duration((1 - b.tokens) / l.rate * float64(time.Second))
	return false, wait
}
