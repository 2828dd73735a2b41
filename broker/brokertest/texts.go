package brokertest

import (
	"context"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/nhs-tre/tre/broker"
)

// testRewrittenApart: a query's rewritten SQL is stored apart from its row
// (migration 9) and every read of queries leaves it out unless the context
// asks for it (broker.WithRewritten), for researchers and staff alike.
func testRewrittenApart(t *testing.T, f *Fixture) {
	q := f.MustSubmit(f.Researcher, DefaultSQL, 0.1)
	other := f.MustSubmit(f.Researcher, "SELECT region, count(*) FROM patients GROUP BY region", 0.1)
	if q.Rewritten == "" || other.Rewritten == "" || q.Rewritten == other.Rewritten {
		t.Fatalf("submissions' rewritten SQL: %q and %q", q.Rewritten, other.Rewritten)
	}
	checkRewritten(t, f, map[int64]string{q.ID: q.Rewritten, other.ID: other.Rewritten})
}

// checkRewritten checks that each query of want reads back with its
// rewritten SQL exactly when asked, by id and in lists and the review
// queue, for its researcher and for staff.
func checkRewritten(t *testing.T, f *Fixture, want map[int64]string) {
	t.Helper()
	for id, text := range want {
		for _, who := range []struct {
			name string
			ctx  context.Context
		}{{"researcher", f.Researcher}, {"reviewer", f.Reviewer}, {"admin", f.Admin}} {
			got, err := f.Service.FindQueryByID(who.ctx, id)
			if err != nil {
				t.Fatalf("%s reads query %d: %v", who.name, id, err)
			}
			if got.Rewritten != "" {
				t.Errorf("%s reads query %d without asking: rewritten SQL %.40q…", who.name, id, got.Rewritten)
			}
			if got, err = f.Service.FindQueryByID(broker.WithRewritten(who.ctx), id); err != nil {
				t.Fatalf("%s reads query %d with its rewritten SQL: %v", who.name, id, err)
			}
			if got.Rewritten != text {
				t.Errorf("%s reads query %d with its rewritten SQL: %.60q…, want %.60q…", who.name, id, got.Rewritten, text)
			}
		}
	}
	lists := []struct {
		name string
		read func(ctx context.Context) ([]*broker.Query, error)
	}{
		{"researcher's list", func(ctx context.Context) ([]*broker.Query, error) {
			qs, _, err := f.Service.FindQueries(broker.NewContext(ctx, broker.UserFromContext(f.Researcher)), broker.QueryFilter{})
			return qs, err
		}},
		{"admin's list", func(ctx context.Context) ([]*broker.Query, error) {
			qs, _, err := f.Service.FindQueries(broker.NewContext(ctx, broker.UserFromContext(f.Admin)), broker.QueryFilter{})
			return qs, err
		}},
		{"review queue", func(ctx context.Context) ([]*broker.Query, error) {
			return f.Service.ReviewQueue(broker.NewContext(ctx, broker.UserFromContext(f.Reviewer)))
		}},
	}
	for _, l := range lists {
		for _, asked := range []bool{false, true} {
			ctx := context.Background()
			if asked {
				ctx = broker.WithRewritten(ctx)
			}
			qs, err := l.read(ctx)
			if err != nil {
				t.Fatalf("%s: %v", l.name, err)
			}
			seen := 0
			for _, q := range qs {
				text, ok := want[q.ID]
				if !ok {
					continue
				}
				seen++
				if !asked && q.Rewritten != "" || asked && q.Rewritten != text {
					t.Errorf("%s (rewritten SQL asked for: %v): query %d has %.40q…", l.name, asked, q.ID, q.Rewritten)
				}
			}
			if seen != len(want) {
				t.Errorf("%s: %d of the %d queries listed", l.name, seen, len(want))
			}
		}
	}
}

// testRewrittenUpgrade takes a database back to the schema before
// migration 9, the rewritten SQL in the queries row, and checks that
// opening it again carries every query's rewritten SQL across.
func testRewrittenUpgrade(t *testing.T, cfg Config) {
	ctx := context.Background()
	store := cfg.Open(t)
	f := NewFixture(t, cfg, store, broker.Options{})
	q := f.MustSubmit(f.Researcher, DefaultSQL, 0.1)
	other := f.MustSubmit(f.Researcher, "SELECT region, count(*) FROM patients GROUP BY region", 0.1)
	// Back to the schema of migration 8, with each row's rewritten SQL in
	// the queries row (marked, so the test sees it is the row's that is
	// carried across).
	const mark = "-- stored before migration 9\n"
	for _, stmt := range []string{
		`ALTER TABLE queries ADD COLUMN rewritten TEXT NOT NULL DEFAULT ''`,
		`ALTER TABLE queries ADD COLUMN normalized TEXT NOT NULL DEFAULT ''`,
		`UPDATE queries SET rewritten = '` + mark + `' || (SELECT t.rewritten FROM query_texts t WHERE t.query_id = queries.id),
			normalized = (SELECT t.normalized FROM query_texts t WHERE t.query_id = queries.id)`,
		`DROP TABLE query_texts`,
		`DELETE FROM schema_migrations WHERE version = 9`,
	} {
		if err := store.Exec(ctx, stmt); err != nil {
			t.Fatalf("%s: %v", stmt, err)
		}
	}
	// PostgreSQL's migration 9 also made a function; SQLite has none.
	_ = store.Exec(ctx, `DROP FUNCTION tre_lock_audit_head`)
	f2 := NewFixture(t, cfg, cfg.Reopen(t, store), broker.Options{})
	f2.Project = f.Project
	checkRewritten(t, f2, map[int64]string{q.ID: mark + q.Rewritten, other.ID: mark + other.Rewritten})
	// New submissions and the audit chain work on the migrated schema.
	again := f2.MustSubmitTo(f2.Researcher, f.Project.ID, DefaultSQL, 0.1)
	got, err := f2.Service.FindQueryByID(broker.WithRewritten(f2.Researcher), again.ID)
	if err != nil {
		t.Fatalf("read a submission made after the migration: %v", err)
	}
	if got.Rewritten != q.Rewritten {
		t.Errorf("a submission after the migration reads back with %.60q…, want %.60q…", got.Rewritten, q.Rewritten)
	}
	if v := f2.MustVerify(); !v.OK {
		t.Errorf("audit chain after the migration: %+v", v)
	}
}

// testReadQueryView checks Store.ReadQuery, the one-statement read, against
// a transaction's FindQuery and FindEvents for queries in several states:
// the same query and events, the fields it leaves out empty, and the
// membership of a member and of an outsider.
func testReadQueryView(t *testing.T, f *Fixture) {
	ctx := context.Background()
	for _, st := range []broker.Status{broker.StatusSubmitted, broker.StatusRunning, broker.StatusReleased, broker.StatusRejected} {
		q, _ := f.QueryIn(st)
		var want *broker.QueryRecord
		var wantEvents []broker.Event
		err := f.Store.View(ctx, func(tx broker.Tx) error {
			var err error
			if want, err = tx.FindQuery(ctx, q.ID); err != nil {
				return err
			}
			wantEvents, err = tx.FindEvents(ctx, q.ID)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		for _, tt := range []struct {
			subject string
			member  bool
		}{{"res1", true}, {"res3", false}} {
			got, events, member, err := f.Store.ReadQuery(ctx, q.ID, tt.subject, false)
			if err != nil {
				t.Fatalf("%s: ReadQuery: %v", st, err)
			}
			if diff := cmp.Diff(want.Query, got.Query); diff != "" {
				t.Errorf("%s: ReadQuery's query differs from FindQuery's (-find +read):\n%s", st, diff)
			}
			if diff := cmp.Diff(wantEvents, events); diff != "" {
				t.Errorf("%s: ReadQuery's events differ from FindEvents' (-find +read):\n%s", st, diff)
			}
			if member != tt.member {
				t.Errorf("%s: %s is a member: %v, want %v", st, tt.subject, member, tt.member)
			}
			kept := broker.QueryRecord{Sites: want.Sites, Disjoint: want.Disjoint, LedgerFactor: want.LedgerFactor, DeadlineAt: want.DeadlineAt}
			read := *got
			read.Query = nil
			if diff := cmp.Diff(kept, read); diff != "" {
				t.Errorf("%s: ReadQuery's record (-want +got):\n%s", st, diff)
			}
		}
	}
}
