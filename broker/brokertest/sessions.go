package brokertest

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nhs-tre/tre/broker"
)

// testSessions checks the web session store: a session written through one
// broker process is found, with its user, by another over the same
// database; deleting it on one ends it on both; expired sessions are purged
// when a new one is created; an id is never reused (issue 25).
func testSessions(t *testing.T, cfg Config) {
	ctx := context.Background()
	one, two := cfg.OpenPair(t)
	clock := NewClock(time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC))
	a := broker.NewService(one, nil, broker.Options{Now: clock.Now})
	b := broker.NewService(two, nil, broker.Options{Now: clock.Now})
	now := clock.Now()
	user := broker.User{Subject: "res1", Name: "Res One", Org: "Uni", Roles: []broker.Role{broker.RoleResearcher, broker.RoleReviewer}}
	s1 := &broker.Session{IDHash: strings.Repeat("a1", 32), User: user, TokenHash: strings.Repeat("b2", 32), CreatedAt: now, ExpiresAt: now.Add(time.Hour)}
	if err := a.CreateSession(ctx, s1); err != nil {
		t.Fatalf("create: %v", err)
	}
	got, err := b.FindSession(ctx, s1.IDHash)
	if err != nil {
		t.Fatalf("find on the other process: %v", err)
	}
	if got.User.Subject != user.Subject || got.User.Name != user.Name || len(got.User.Roles) != 2 || got.User.Roles[1] != broker.RoleReviewer ||
		got.TokenHash != s1.TokenHash || !got.CreatedAt.Equal(now) || !got.ExpiresAt.Equal(s1.ExpiresAt) {
		t.Fatalf("found %+v, want %+v", got, s1)
	}
	MustCode(t, a.CreateSession(ctx, s1), broker.ECONFLICT)
	_, err = a.FindSession(ctx, strings.Repeat("c3", 32))
	MustCode(t, err, broker.ENOTFOUND)

	// A session created after s1 expired purges it.
	later := now.Add(2 * time.Hour)
	s2 := &broker.Session{IDHash: strings.Repeat("d4", 32), User: user, TokenHash: s1.TokenHash, CreatedAt: later, ExpiresAt: later.Add(time.Hour)}
	if err := b.CreateSession(ctx, s2); err != nil {
		t.Fatalf("create: %v", err)
	}
	_, err = a.FindSession(ctx, s1.IDHash)
	MustCode(t, err, broker.ENOTFOUND)

	// Deleted on one process, gone on the other; deleting again is fine.
	if err := a.DeleteSession(ctx, s2.IDHash); err != nil {
		t.Fatalf("delete: %v", err)
	}
	_, err = b.FindSession(ctx, s2.IDHash)
	MustCode(t, err, broker.ENOTFOUND)
	if err := b.DeleteSession(ctx, s2.IDHash); err != nil {
		t.Fatalf("delete twice: %v", err)
	}
	MustCode(t, a.CreateSession(ctx, &broker.Session{IDHash: "x", CreatedAt: now, ExpiresAt: now.Add(time.Hour)}), broker.EINVALID)
}

// testSessionBounds checks that the sessions table stays bounded: a user's
// sessions beyond broker.MaxSessionsPerUser end, oldest first, and not
// another user's; expired sessions are deleted by later sign-ins in
// bounded batches until none is left.
func testSessionBounds(t *testing.T, cfg Config) {
	ctx := context.Background()
	one, two := cfg.OpenPair(t)
	clock := NewClock(time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC))
	a := broker.NewService(one, nil, broker.Options{Now: clock.Now})
	b := broker.NewService(two, nil, broker.Options{Now: clock.Now})
	start := clock.Now()
	n := 0
	create := func(svc *broker.Service, subject string, at time.Time, ttl time.Duration) string {
		t.Helper()
		n++
		id := fmt.Sprintf("%064x", n)
		s := &broker.Session{IDHash: id, User: broker.User{Subject: subject}, TokenHash: id, CreatedAt: at, ExpiresAt: at.Add(ttl)}
		if err := svc.CreateSession(ctx, s); err != nil {
			t.Fatalf("create session %d: %v", n, err)
		}
		return id
	}
	live := func(ids []string) int {
		t.Helper()
		k := 0
		for _, id := range ids {
			_, err := a.FindSession(ctx, id)
			if err == nil {
				k++
			} else if broker.ErrorCode(err) != broker.ENOTFOUND {
				t.Fatal(err)
			}
		}
		return k
	}

	// A client that never keeps its cookie: each request a new session,
	// alternately through two processes. Only the newest stay.
	other := create(a, "other", start, time.Hour)
	var cookieless []string
	for i := range broker.MaxSessionsPerUser + 7 {
		svc := []*broker.Service{a, b}[i%2]
		cookieless = append(cookieless, create(svc, "curl", start.Add(time.Duration(i)*time.Second), time.Hour))
	}
	if got := live(cookieless[:7]); got != 0 {
		t.Errorf("%d of the 7 oldest sessions beyond the cap are still there", got)
	}
	if got := live(cookieless[7:]); got != broker.MaxSessionsPerUser {
		t.Errorf("%d of the newest %d sessions are there", got, broker.MaxSessionsPerUser)
	}
	if live([]string{other}) != 1 {
		t.Error("another user's session ended")
	}

	// 250 users' sessions expire (more than a sign-in deletes at once);
	// later sign-ins delete them a batch at a time, none left in the end.
	var expired []string
	for i := range 250 {
		expired = append(expired, create(b, fmt.Sprintf("u%d", i), start.Add(time.Minute), time.Minute))
	}
	later := start.Add(3 * time.Hour)
	create(a, "late", later, time.Hour)
	left := live(expired)
	if left == 0 || left == len(expired) {
		t.Errorf("one sign-in after 250 sessions expired left %d of them: want a bounded batch deleted", left)
	}
	for i := 0; i < 5 && live(expired) > 0; i++ {
		create(b, "late", later.Add(time.Duration(i+1)*time.Second), time.Hour)
	}
	if got := live(expired); got != 0 {
		t.Errorf("%d expired sessions left after six more sign-ins", got)
	}
	// The first user's sessions (expired an hour after start) are gone too.
	if got := live(append(cookieless, other)); got != 0 {
		t.Errorf("%d sessions that expired at start+1h are left", got)
	}
}
