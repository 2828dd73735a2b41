package brokertest

import (
	"context"
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
