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
//
// The bucket's state as this service last wrote it is remembered: the
// next take computes from it and stores the result only if the stored
// state is still that one (Store.SwapBucket, one statement). If another
// process, or a concurrent take here, changed it in between, or the bucket
// was swept, the take runs again in a transaction that locks the row. The
// remembered state is only a guess the database confirms, so it can never
// grant a token the stored bucket does not hold.
func (s *Service) TakeToken(ctx context.Context, key string, perMinute float64, burst int) (bool, time.Duration, error) {
	if perMinute <= 0 {
		return true, 0, nil
	}
	rate := perMinute / 60 // tokens a second
	full := math.Max(float64(burst), 1)
	now := s.now().UTC().Truncate(time.Microsecond) // as stored
	if err := s.sweepBuckets(ctx, now, full, rate); err != nil {
		return false, 0, err
	}
	s.mu.Lock()
	old, known := s.buckets[key]
	s.mu.Unlock()
	if known {
		b := old
		ok, wait := b.Take(now, rate, full)
		swapped, err := s.store.SwapBucket(ctx, key, old, b)
		if err != nil {
			return false, 0, err
		}
		if swapped {
			s.rememberBucket(key, b)
			return ok, wait, nil
		}
	}
	var ok bool
	var wait time.Duration
	var b Bucket
	err := s.store.Update(ctx, func(tx Tx) error {
		b = Bucket{}
		var err error
		if b.Tokens, b.Last, err = tx.LockBucket(ctx, key, full, now); err != nil {
			return err
		}
		ok, wait = b.Take(now, rate, full)
		return tx.SetBucket(ctx, key, b.Tokens, b.Last)
	})
	if err != nil {
		return false, 0, err
	}
	s.rememberBucket(key, b)
	return ok, wait, nil
}

// maxRememberedBuckets bounds TakeToken's remembered states: beyond it
// they are forgotten (each then costs one transaction more).
const maxRememberedBuckets = 4096

func (s *Service) rememberBucket(key string, b Bucket) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.buckets) >= maxRememberedBuckets {
		clear(s.buckets)
	}
	s.buckets[key] = b
}

// sweepBuckets deletes, now and then, buckets idle for longer than it
// takes to refill: such a bucket is full, the same as no row.
func (s *Service) sweepBuckets(ctx context.Context, now time.Time, full, rate float64) error {
	s.mu.Lock()
	sweep := now.Sub(s.bucketSweep) > time.Minute
	if sweep {
		s.bucketSweep = now
	}
	s.mu.Unlock()
	if !sweep {
		return nil
	}
	return s.store.Update(ctx, func(tx Tx) error {
		return tx.DeleteIdleBuckets(ctx, now.Add(-time.Duration(full/rate*float64(time.Second))-time.Minute))
	})
}
