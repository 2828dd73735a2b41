package brokertest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/url"
	"os"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
)

// PostgresBaseURL returns TRE_TEST_DATABASE_URL. When it is unset the test
// is skipped, unless TRE_REQUIRE_POSTGRES=1 (CI), which makes it a failure.
func PostgresBaseURL(tb testing.TB) string {
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

// PostgresURL creates a uniquely named schema on the test server, dropped
// when tb ends, and returns a URL whose connections use it: tests in
// different packages and processes never see each other's tables.
func PostgresURL(tb testing.TB) string {
	tb.Helper()
	base := PostgresBaseURL(tb)
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		tb.Fatal(err)
	}
	schema := "tre_test_" + hex.EncodeToString(b[:])
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, base)
	if err != nil {
		tb.Fatalf("connect to TRE_TEST_DATABASE_URL: %v", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE SCHEMA "+schema); err != nil {
		tb.Fatalf("create schema: %v", err)
	}
	tb.Cleanup(func() {
		c, err := pgx.Connect(context.Background(), base)
		if err != nil {
			tb.Errorf("connect to drop schema %s: %v", schema, err)
			return
		}
		defer c.Close(context.Background())
		if _, err := c.Exec(context.Background(), "DROP SCHEMA "+schema+" CASCADE"); err != nil {
			tb.Errorf("drop schema %s: %v", schema, err)
		}
	})
	if !strings.HasPrefix(base, "postgres://") && !strings.HasPrefix(base, "postgresql://") {
		return base + " search_path=" + schema // keyword/value form
	}
	u, err := url.Parse(base)
	if err != nil {
		tb.Fatalf("TRE_TEST_DATABASE_URL: %v", err)
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String()
}
