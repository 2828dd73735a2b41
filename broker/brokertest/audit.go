package brokertest

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nhs-tre/tre/broker"
)

// testAuditTampering alters, removes and swaps one row and expects verify
// to name it.
func testAuditTampering(t *testing.T, fresh func(*testing.T, broker.Options) *Fixture) {
	tests := []struct {
		name   string
		tamper func(ctx context.Context, s Store) error
		bad    int64
	}{
		{"update detail", func(ctx context.Context, s Store) error {
			return s.Exec(ctx, `UPDATE audit_log SET detail = ? WHERE seq = 4`, `from="submitted" to="approved"`)
		}, 4},
		{"update actor", func(ctx context.Context, s Store) error {
			return s.Exec(ctx, `UPDATE audit_log SET actor = ? WHERE seq = 5`, "someone-else")
		}, 5},
		{"delete row", func(ctx context.Context, s Store) error {
			return s.Exec(ctx, `DELETE FROM audit_log WHERE seq = 3`)
		}, 3},
		{"swap rows", func(ctx context.Context, s Store) error {
			// Move row 4's contents to seq 3 and row 3's to seq 4.
			if err := s.Exec(ctx, `UPDATE audit_log SET seq = -3 WHERE seq = 3`); err != nil {
				return err
			}
			if err := s.Exec(ctx, `UPDATE audit_log SET seq = 3 WHERE seq = 4`); err != nil {
				return err
			}
			return s.Exec(ctx, `UPDATE audit_log SET seq = 4 WHERE seq = -3`)
		}, 3},
		{"rewrite hash too", func(ctx context.Context, s Store) error {
			// Recomputing one entry's hash after editing it still breaks
			// the next link.
			return s.Exec(ctx, `UPDATE audit_log SET hash = ? WHERE seq = 4`, strings.Repeat("a", 64))
		}, 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := fresh(t, broker.Options{})
			q := f.MustSubmit(f.Researcher, DefaultSQL, 1)
			f.MustApprove(q.ID)
			f.MustLease(q.ID)
			v := f.MustVerify()
			if v.Entries < 5 {
				t.Fatalf("only %d entries", v.Entries)
			}
			if err := tt.tamper(context.Background(), f.Store); err != nil {
				t.Fatalf("tamper: %v", err)
			}
			got, err := f.Service.VerifyAudit(f.Admin)
			if err != nil {
				t.Fatal(err)
			}
			if got.OK || got.FirstBadSeq != tt.bad {
				t.Fatalf("verify = %+v, want first bad entry %d", got, tt.bad)
			}
		})
	}
}

// testAuditTruncation cuts entries from the end of the chain, which leaves
// a valid chain, and expects verification against a head published before
// the cut (the register's) to fail; a chain that only grew verifies.
func testAuditTruncation(t *testing.T, f *Fixture) {
	ctx := context.Background()
	q := f.MustSubmit(f.Researcher, DefaultSQL, 1)
	f.MustApprove(q.ID)
	published, err := f.Service.AuditHead(ctx)
	if err != nil {
		t.Fatal(err)
	}
	v := f.MustVerify()
	if published.Entries != v.Entries || published.Hash != v.Head || published.Entries < 4 {
		t.Fatalf("published head %+v, verification %+v", published, v)
	}
	f.MustLease(q.ID) // the chain grows past the published head
	for _, expect := range []*broker.AuditHead{published, {Hash: published.Hash}, {Entries: published.Entries}} {
		if got, err := broker.VerifyChain(ctx, f.Store, expect); err != nil || !got.OK {
			t.Fatalf("verify a grown chain against %+v = %+v, %v", expect, got, err)
		}
	}
	cut := published.Entries - 1
	if err := f.Store.Exec(ctx, `DELETE FROM audit_log WHERE seq >= ?`, cut); err != nil {
		t.Fatal(err)
	}
	if got, err := broker.VerifyChain(ctx, f.Store, nil); err != nil || !got.OK {
		t.Fatalf("a truncated chain alone = %+v, %v; want intact (only a published head shows the cut)", got, err)
	}
	for _, expect := range []*broker.AuditHead{published, {Hash: published.Hash}, {Entries: published.Entries}} {
		got, err := broker.VerifyChain(ctx, f.Store, expect)
		if err != nil {
			t.Fatal(err)
		}
		if got.OK || !strings.Contains(got.Reason, "removed") {
			t.Errorf("verify a truncated chain against %+v = %+v, want the cut reported", expect, got)
		}
	}
	// New entries appended after the cut make the chain as long again, but
	// the published head is gone.
	f.MustSubmit(f.Researcher, DefaultSQL, 1)
	f.MustSubmit(f.Researcher, DefaultSQL, 1)
	got, err := broker.VerifyChain(ctx, f.Store, published)
	if err != nil {
		t.Fatal(err)
	}
	if got.OK || got.FirstBadSeq != published.Entries {
		t.Errorf("verify a chain rewritten after the cut = %+v, want entry %d reported", got, published.Entries)
	}
}

// testAuthFailureAggregation floods the service with failed
// authentications from one source and a few from another: each source gets
// one auth.failure entry per window, with the count, not one per request.
func testAuthFailureAggregation(t *testing.T, f *Fixture) {
	ctx := context.Background()
	svc := f.Service
	entries := func() []*broker.AuditEntry {
		t.Helper()
		action := "auth.failure"
		es, _, err := svc.FindAuditEntries(f.Admin, broker.AuditFilter{Action: &action, Limit: broker.MaxLimit})
		if err != nil {
			t.Fatal(err)
		}
		return es
	}
	start := len(entries())
	for i := range 1000 {
		svc.RecordAuthFailure(ctx, broker.AuthFailure{Source: "203.0.113.7", Action: "GET /api/v1/projects", Reason: []string{"malformed token", "invalid token signature or algorithm"}[i%2]})
	}
	for range 3 {
		svc.RecordAuthFailure(ctx, broker.AuthFailure{Source: "198.51.100.2", Subject: "res1", Action: "GET /api/v1/audit", Reason: "missing role"})
	}
	if n := len(entries()) - start; n != 0 {
		t.Fatalf("%d entries while the windows are open, want 0", n)
	}
	f.Clock.Advance(time.Minute)
	// The flood's source fails again: its first window is written.
	svc.RecordAuthFailure(ctx, broker.AuthFailure{Source: "203.0.113.7", Action: "GET /api/v1/projects", Reason: "malformed token"})
	svc.FlushAuthFailures(ctx, false) // the quiet source's window ended too
	es := entries()[start:]
	if len(es) != 2 {
		t.Fatalf("%d entries after the windows ended, want 2: %+v", len(es), es)
	}
	byObject := map[string]*broker.AuditEntry{}
	for _, e := range es {
		byObject[e.Object] = e
	}
	flood, quiet := byObject["source/203.0.113.7"], byObject["source/198.51.100.2"]
	if flood == nil || !strings.Contains(flood.Detail, `count="1000"`) || flood.Actor != "anonymous" ||
		!strings.Contains(flood.Detail, "malformed token") || !strings.Contains(flood.Detail, "invalid token signature") {
		t.Errorf("the flood's entry = %+v", flood)
	}
	if quiet == nil || !strings.Contains(quiet.Detail, `count="3"`) || quiet.Actor != "res1" {
		t.Errorf("the quiet source's entry = %+v", quiet)
	}
	svc.FlushAuthFailures(ctx, true) // shutdown: the open window too
	if es := entries()[start:]; len(es) != 3 || !strings.Contains(es[2].Detail, `count="1"`) {
		t.Errorf("after the final flush: %d entries, last %+v", len(es), es[len(es)-1])
	}
	f.MustVerify()
}
