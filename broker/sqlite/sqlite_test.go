package sqlite_test

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/nhs-tre/tre/broker/brokertest"
	"github.com/nhs-tre/tre/broker/sqlite"
)

func mustOpen(tb testing.TB, path string) *sqlite.Store {
	tb.Helper()
	s, err := sqlite.Open(context.Background(), path)
	if err != nil {
		tb.Fatalf("open: %v", err)
	}
	tb.Cleanup(func() { s.Close() })
	return s
}

func config() brokertest.Config {
	return brokertest.Config{
		Open: func(tb testing.TB) brokertest.Store {
			return mustOpen(tb, filepath.Join(tb.TempDir(), sqlite.DefaultFilename))
		},
		OpenPair: func(tb testing.TB) (brokertest.Store, brokertest.Store) {
			path := filepath.Join(tb.TempDir(), sqlite.DefaultFilename)
			return mustOpen(tb, path), mustOpen(tb, path)
		},
		Reopen: func(tb testing.TB, s brokertest.Store) brokertest.Store {
			st := s.(*sqlite.Store)
			st.Close()
			return mustOpen(tb, st.Path())
		},
		SerialWrites: true,
	}
}

func TestConformance(t *testing.T) { brokertest.Run(t, config()) }

func TestReopenKeepsMigrations(t *testing.T) {
	path := filepath.Join(t.TempDir(), "b.db")
	s := mustOpen(t, path)
	if err := s.Ping(context.Background()); err != nil {
		t.Fatal(err)
	}
	s.Close()
	mustOpen(t, path)
}

func BenchmarkSubmitQuery(b *testing.B) { brokertest.BenchSubmitQuery(b, config()) }

func BenchmarkFindQueryByID(b *testing.B) { brokertest.BenchFindQueryByID(b, config()) }

// opener opens stores over the database file at path, closed when tb ends.
func opener(path string) brokertest.Opener {
	return func(ctx context.Context, tb testing.TB) (brokertest.Store, error) {
		s, err := sqlite.Open(ctx, path)
		if err != nil {
			return nil, err
		}
		tb.Cleanup(func() { s.Close() })
		return s, nil
	}
}

func TestOpenTogether(t *testing.T) {
	brokertest.TestOpenTogether(t, 3, opener(filepath.Join(t.TempDir(), sqlite.DefaultFilename)))
}

func TestRefuseNewerSchema(t *testing.T) {
	brokertest.TestRefuseNewerSchema(t, opener(filepath.Join(t.TempDir(), sqlite.DefaultFilename)))
}
