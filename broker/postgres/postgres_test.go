package postgres_test

import (
	"context"
	"testing"

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
