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

func config() brokertest.Config {
	return brokertest.Config{
		Open: func(tb testing.TB) brokertest.Store { return mustOpen(tb, brokertest.PostgresURL(tb)) },
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
