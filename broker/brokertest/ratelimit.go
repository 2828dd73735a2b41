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
