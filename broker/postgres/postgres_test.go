package postgres_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/url"
	"os"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/nhs-tre/tre/broker/brokertest"
	"github.com/nhs-tre/tre/broker/postgres"
)

// databaseURL returns TRE_TEST_DATABASE_URL, skipping the test when it is
// unset unless TRE_REQUIRE_POSTGRES=1, which makes that a failure.
func databaseURL(tb testing.TB) string {
	tb.Helper()
	u := os.Getenv("TRE_TEST_DATABASE_URL")
	if u == "" {
		if os.Getenv("TRE_REQUIRE_POSTGRES") == "1" {
			tb.Fatal("TRE_TEST_DATABASE_URL is not set and TRE_REQUIRE_POSTGRES=1")
		}
		tb.Skip("TRE_TEST_DATABASE_URL is not set")
	}
	return u
}

// freshSchema creates a uniquely named schema, dropped when tb ends, and
// returns a URL whose connections use it.
func freshSchema(tb testing.TB) string {
	tb.Helper()
	base := databaseURL(tb)
	ctx := context.Background()
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		tb.Fatal(err)
	}
	schema := "tre_test_" + hex.EncodeToString(b)
	conn, err := pgx.Connect(ctx, base)
	if err != nil {
		tb.Fatalf("connect: %v", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE SCHEMA "+schema); err != nil {
		tb.Fatalf("create schema: %v", err)
	}
	tb.Cleanup(func() {
		c, err := pgx.Connect(context.Background(), base)
		if err != nil {
			tb.Errorf("connect to drop schema: %v", err)
			return
		}
		defer c.Close(context.Background())
		if _, err := c.Exec(context.Background(), "DROP SCHEMA "+schema+" CASCADE"); err != nil {
			tb.Errorf("drop schema: %v", err)
		}
	})
	if strings.HasPrefix(base, "postgres://") || strings.HasPrefix(base, "postgresql://") {
		u, err := url.Parse(base)
		if err != nil {
			tb.Fatal(err)
		}
		q := u.Query()
		q.Set("search_path", schema)
		u.RawQuery = q.Encode()
		return u.String()
	}
	return base + " search_path=" + schema
}

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
		Open: func(tb testing.TB) brokertest.Store { return mustOpen(tb, freshSchema(tb)) },
		OpenPair: func(tb testing.TB) (brokertest.Store, brokertest.Store) {
			u := freshSchema(tb)
			return mustOpen(tb, u), mustOpen(tb, u)
		},
	}
}

func TestConformance(t *testing.T) {
	databaseURL(t)
	brokertest.Run(t, config())
}

func BenchmarkSubmitQuery(b *testing.B) {
	databaseURL(b)
	brokertest.BenchSubmitQuery(b, config())
}

func BenchmarkFindQueryByID(b *testing.B) {
	databaseURL(b)
	brokertest.BenchFindQueryByID(b, config())
}
