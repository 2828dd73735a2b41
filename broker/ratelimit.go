package broker

import (
	"context"
	"math"
	"time"
)

// Bucket is a token bucket: Tokens left as of Last.
type Bucket struct {
	Tokens float64
	Last   time.Time
}

// Take refills b to now at rate tokens a second, up to full, and takes one
// token. When none is left it returns false and how long until one will
// be. The API's in-memory limiter and TakeToken both use it, so one broker
// and N replicas on one database count alike.
func (b *Bucket) Take(now time.Time, rate, full float64) (bool, time.Duration) {
	if el := now.Sub(b.Last).Seconds(); el > 0 {
		b.Tokens = math.Min(full, b.Tokens+el*rate)
		b.Last = now
	}
	if b.Tokens >= 1 {
		b.Tokens--
		return true, 0
	}
	return false, time.Duration((1 - b.Tokens) / rate * float64(time.Second))
}

// TakeToken takes one token from the token bucket named key, which holds at
// most burst tokens (at least 1) and refills at perMinute tokens a minute.
// The bucket is kept in the database, so every broker process sharing it
// draws on the same one (issue 25): N replicas allow what one does. When no
// token is left it returns false and how long until one will be. A
// perMinute of 0 or less allows everything. Every caller must use one rate
// and burst for all keys (the idle sweep assumes them).
func (s *Service) TakeToken(ctx context.Context, key string, perMinute float64, burst int) (bool, time.Duration, error) {
	if perMinute <= 0 {
		return true, 0, nil
	}
	rate := perMinute / 60 // tokens a second
	full := math.Max(float64(burst), 1)
	now := s.now().UTC().Truncate(time.Microsecond) // as stored
	var ok bool
	var wait time.Duration
	err := s.store.Update(ctx, func(tx Tx) error {
		var b Bucket
		var err error
		if b.Tokens, b.Last, err = tx.LockBucket(ctx, key, full, now); err != nil {
			return err
		}
		ok, wait = b.Take(now, rate, full)
		if err := tx.SetBucket(ctx, key, b.Tokens, b.Last); err != nil {
			return err
		}
		// A bucket idle for longer than it takes to refill is full: the
		// same as no row. Sweep such rows now and then.
		s.mu.Lock()
		sweep := now.Sub(s.bucketSweep) > time.Minute
		if sweep {
			s.bucketSweep = now
		}
		s.mu.Unlock()
		if sweep {
			return tx.DeleteIdleBuckets(ctx, now.Add(-time.Duration(full/rate*float64(time.Second))-time.Minute))
		}
		return nil
	})
	if err != nil {
		return false, 0, err
	}
	return ok, wait, nil
}
