package postgres_test

import (
	"context"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/nhs-tre/tre/broker"
	"github.com/nhs-tre/tre/broker/brokertest"
	"github.com/nhs-tre/tre/broker/postgres"
)

func mustOpen(tb testing.TB, u string) *postgres.Store {
	tb.Helper()
	s, err := postgres.Open(context.Background(), u)
	if err != nil {
		tb.Fatalf("open: %v", err)
	}
	tb.Cleanup(func() { s.Close() })
	return s
}

// store remembers its database URL so the suite can reopen it.
type store struct {
	*postgres.Store
	url string
}

func config() brokertest.Config {
	return brokertest.Config{
		Open: func(tb testing.TB) brokertest.Store {
			u := brokertest.PostgresURL(tb)
			return store{mustOpen(tb, u), u}
		},
		Reopen: func(tb testing.TB, s brokertest.Store) brokertest.Store {
			st := s.(store)
			st.Close()
			return store{mustOpen(tb, st.url), st.url}
		},
		OpenPair: func(tb testing.TB) (brokertest.Store, brokertest.Store) {
			u := brokertest.PostgresURL(tb)
			return mustOpen(tb, u), mustOpen(tb, u)
		},
	}
}

func TestConformance(t *testing.T) {
	brokertest.PostgresBaseURL(t)
	brokertest.Run(t, config())
}

func BenchmarkSubmitQuery(b *testing.B) {
	brokertest.PostgresBaseURL(b)
	brokertest.BenchSubmitQuery(b, config())
}

func BenchmarkFindQueryByID(b *testing.B) {
	brokertest.PostgresBaseURL(b)
	brokertest.BenchFindQueryByID(b, config())
}

// opener opens stores over the database at u, closed when tb ends.
func opener(u string) brokertest.Opener {
	return func(ctx context.Context, tb testing.TB) (brokertest.Store, error) {
		s, err := postgres.Open(ctx, u)
		if err != nil {
			return nil, err
		}
		tb.Cleanup(func() { s.Close() })
		return s, nil
	}
}

// TestOpenTogether is three brokers started at once on a fresh database
// (issue 25): the migrations must run once, the others wait and go on.
func TestOpenTogether(t *testing.T) {
	brokertest.PostgresBaseURL(t)
	for range 3 {
		brokertest.TestOpenTogether(t, 3, opener(brokertest.PostgresURL(t)))
	}
}

func TestRefuseNewerSchema(t *testing.T) {
	brokertest.PostgresBaseURL(t)
	brokertest.TestRefuseNewerSchema(t, opener(brokertest.PostgresURL(t)))
}

// statementCounter counts the statements (round trips) the connections
// send, BEGIN and COMMIT included.
type statementCounter struct{ n atomic.Int64 }

func (c *statementCounter) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	c.n.Add(1)
	return ctx
}

func (c *statementCounter) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// TestTakeTokenOneStatement: a rate-limit token from a bucket this broker
// stored last costs one statement (Store.SwapBucket), not a transaction
// of four, and grants what the bucket holds.
func TestTakeTokenOneStatement(t *testing.T) {
	brokertest.PostgresBaseURL(t)
	ctx := context.Background()
	var count statementCounter
	s, err := postgres.OpenTraced(ctx, brokertest.PostgresURL(t), &count)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	clock := brokertest.NewClock(time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC))
	svc := broker.NewService(s, nil, broker.Options{Now: clock.Now})
	take := func() bool {
		t.Helper()
		ok, _, err := svc.TakeToken(ctx, "submit:res1", 6, 3) // 3 tokens, one more every 10 s
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}
	if !take() { // creates the bucket: 2 left
		t.Fatal("first token refused")
	}
	before := count.n.Load()
	var granted []bool
	for range 5 {
		clock.Advance(time.Second) // 2.1 → 1.1, 1.2 → 0.2, then 0.3, 0.4, 0.5: refused
		granted = append(granted, take())
	}
	if want := []bool{true, true, false, false, false}; !slices.Equal(granted, want) {
		t.Errorf("granted %v, want %v", granted, want)
	}
	if n := count.n.Load() - before; n != 5 {
		t.Errorf("5 takes cost %d statements, want 5", n)
	}
}

// BenchmarkSubmitStatements is what the API does per submission on
// PostgreSQL, the shared rate-limit token and the submission, reporting
// the statements each costs (issue 24: round trips are most of its CPU, in
// the broker and in PostgreSQL), cycling through BenchSubmitQuery's
// queries in the fixture's project.
func BenchmarkSubmitStatements(b *testing.B) {
	brokertest.PostgresBaseURL(b)
	ctx := context.Background()
	var count statementCounter
	s, err := postgres.OpenTraced(ctx, brokertest.PostgresURL(b), &count)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	f := brokertest.NewFixture(b, config(), s, broker.Options{})
	sqls := []string{
		brokertest.DefaultSQL,
		"SELECT region, count(*) FROM patients GROUP BY region",
		"SELECT sex, count(*) FROM patients WHERE region = 'London' GROUP BY sex",
		"SELECT imd_quintile, count(*) FROM patients GROUP BY imd_quintile",
	}
	var n atomic.Int64
	b.ResetTimer()
	before := count.n.Load()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			sql := sqls[int(n.Add(1))%len(sqls)]
			if _, _, err := f.Service.TakeToken(ctx, "submit:res1", 1<<30, 1<<30); err != nil {
				b.Error(err)
				return
			}
			if _, err := f.Service.SubmitQuery(f.Researcher, broker.QuerySubmission{ProjectID: f.Project.ID, SQL: sql, Purpose: "benchmark", Epsilon: 0.1}); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(count.n.Load()-before)/float64(b.N), "statements/op")
}
