package brokertest

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nhs-tre/tre/broker"
)

// testSharedRateLimit checks TakeToken's bucket over two broker processes
// on one database: tokens taken on one are gone on the other, it refills
// with the clock, and concurrent takers on both never get more than the
// bucket holds (issue 25).
func testSharedRateLimit(t *testing.T, cfg Config) {
	ctx := context.Background()
	one, two := cfg.OpenPair(t)
	clock := NewClock(time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC))
	a := broker.NewService(one, nil, broker.Options{Now: clock.Now})
	b := broker.NewService(two, nil, broker.Options{Now: clock.Now})
	take := func(s *broker.Service, key string) (bool, time.Duration) {
		t.Helper()
		ok, wait, err := s.TakeToken(ctx, key, 6, 2) // one token every 10 s
		if err != nil {
			t.Fatalf("take: %v", err)
		}
		return ok, wait
	}
	if ok, _ := take(a, "submit:alice"); !ok {
		t.Fatal("first token refused")
	}
	if ok, _ := take(b, "submit:alice"); !ok {
		t.Fatal("second token (other process) refused")
	}
	if ok, wait := take(a, "submit:alice"); ok || wait != 10*time.Second {
		t.Fatalf("third token = %v, wait %s; want refused, 10s", ok, wait)
	}
	if ok, _ := take(b, "submit:alice"); ok {
		t.Fatal("third token on the other process allowed")
	}
	if ok, _ := take(b, "submit:bob"); !ok {
		t.Fatal("another key's first token refused")
	}
	clock.Advance(10 * time.Second)
	if ok, _ := take(b, "submit:alice"); !ok {
		t.Fatal("refilled token refused")
	}
	if ok, _ := take(a, "submit:alice"); ok {
		t.Fatal("more than the refill allowed")
	}
	// Idle buckets are swept; a swept bucket is full again.
	clock.Advance(time.Hour)
	if ok, _ := take(a, "submit:carol"); !ok {
		t.Fatal("token after an hour refused")
	}
	for range 2 {
		if ok, _ := take(b, "submit:alice"); !ok {
			t.Fatal("a bucket idle for an hour is not full")
		}
	}

	// Concurrent takers on both processes: exactly the burst is granted.
	const burst, takers = 5, 24
	var granted atomic.Int64
	var wg sync.WaitGroup
	for i := range takers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := a
			if i%2 == 1 {
				s = b
			}
			ok, _, err := s.TakeToken(ctx, "submit:dave", 0.001, burst)
			if err != nil {
				t.Errorf("concurrent take: %v", err)
			}
			if ok {
				granted.Add(1)
			}
		}()
	}
	wg.Wait()
	if g := granted.Load(); g != burst {
		t.Fatalf("%d concurrent takers on two processes got %d tokens from a bucket of %d", takers, g, burst)
	}
	if ok, _, _ := a.TakeToken(ctx, "anything", 0, 0); !ok {
		t.Fatal("a zero rate limits")
	}
}

// testSwapBucket checks Store.SwapBucket, TakeToken's one-statement path:
// it stores the next state only over the exact state given, never over a
// bucket changed since (tokens or time) and never into a missing one.
func testSwapBucket(t *testing.T, store Store) {
	ctx := context.Background()
	at := time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC)
	swap := func(old, next broker.Bucket) bool {
		t.Helper()
		ok, err := store.SwapBucket(ctx, "submit:erin", old, next)
		if err != nil {
			t.Fatalf("swap: %v", err)
		}
		return ok
	}
	stored := func() broker.Bucket {
		t.Helper()
		var b broker.Bucket
		err := store.Update(ctx, func(tx broker.Tx) error {
			var err error
			b.Tokens, b.Last, err = tx.LockBucket(ctx, "submit:erin", 2, at)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	if swap(broker.Bucket{Tokens: 2, Last: at}, broker.Bucket{Tokens: 1, Last: at}) {
		t.Fatal("swapped into a bucket that does not exist")
	}
	first := stored() // created full
	if first.Tokens != 2 || !first.Last.Equal(at) {
		t.Fatalf("new bucket = %+v, want 2 tokens at %s", first, at)
	}
	// A third of a token, a time with microseconds: stored and compared exactly.
	next := broker.Bucket{Tokens: 1.0 / 3, Last: at.Add(1234567 * time.Microsecond)}
	if !swap(first, next) {
		t.Fatal("swap over the stored state refused")
	}
	for _, stale := range []broker.Bucket{first, {Tokens: next.Tokens, Last: first.Last}, {Tokens: 1, Last: next.Last}} {
		if swap(stale, broker.Bucket{Tokens: 2, Last: next.Last.Add(time.Second)}) {
			t.Fatalf("swapped over %+v, but the bucket holds %+v", stale, next)
		}
	}
	if got := stored(); got.Tokens != next.Tokens || !got.Last.Equal(next.Last) {
		t.Fatalf("bucket = %+v, want %+v", got, next)
	}
	if !swap(next, broker.Bucket{Tokens: 0, Last: next.Last}) {
		t.Fatal("a second swap over the state the first stored refused")
	}
}
