package brokertest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nhs-tre/tre/broker/sqlstore"
)

// Opener opens a store over one database (the same one on every call), as
// a broker starting would: migrations included. The store is closed when tb
// ends.
type Opener func(ctx context.Context, tb testing.TB) (Store, error)

// TestOpenTogether opens n stores over one fresh database at once, as an
// orchestrator starting n broker replicas would: every one must open (the
// migrations run once; the others wait and go on) and see the same schema.
func TestOpenTogether(t *testing.T, n int, open Opener) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	stores := make([]Store, n)
	errs := make([]error, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start
			stores[i], errs[i] = open(ctx, t)
		})
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("store %d of %d opened together: %v", i+1, n, err)
		}
	}
	if t.Failed() {
		return
	}
	// Each migration is recorded once, and every store works.
	for i, s := range stores {
		if err := s.Exec(ctx, `INSERT INTO schema_migrations (version, name, applied_at) VALUES (1, 'again', 0)`); err == nil {
			t.Errorf("store %d: migration 1 recorded twice would be allowed", i+1)
		}
		if err := s.Ping(ctx); err != nil {
			t.Errorf("store %d: ping: %v", i+1, err)
		}
	}
}

// TestRefuseNewerSchema records a migration newer than any this binary has,
// as a newer tre would after migrating, and checks that opening the
// database again is refused with a clear message rather than run against a
// schema this binary does not know.
func TestRefuseNewerSchema(t *testing.T, open Opener) {
	t.Helper()
	ctx := context.Background()
	s, err := open(ctx, t)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	var binary int
	if err := s.Exec(ctx, `INSERT INTO schema_migrations (version, name, applied_at) VALUES (9999, '9999_from_the_future.sql', 0)`); err != nil {
		t.Fatalf("record a newer migration: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	_, err = open(ctx, t)
	var tooNew *sqlstore.SchemaTooNewError
	if !errors.As(err, &tooNew) {
		t.Fatalf("open a database of schema version 9999: got %v, want a SchemaTooNewError", err)
	}
	binary = tooNew.Binary
	if tooNew.Database != 9999 || binary < 1 || binary >= 9999 {
		t.Errorf("SchemaTooNewError = %+v, want database 9999 and this binary's newest migration", tooNew)
	}
	want := fmt.Sprintf("database schema version 9999 is newer than this binary's %d: upgrade tre", binary)
	if got := tooNew.Error(); got != want {
		t.Errorf("message = %q, want %q", got, want)
	}
}
