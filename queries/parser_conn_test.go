package queries

import (
	"context"
	"database/sql"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// mustConn returns db's one connection, closed at the end of the test.
func mustConn(tb testing.TB, db *sql.DB) *sql.Conn {
	tb.Helper()
	conn, err := db.Conn(context.Background())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { conn.Close() })
	return conn
}

func mustExec(tb testing.TB, conn *sql.Conn, stmts ...string) {
	tb.Helper()
	for _, s := range stmts {
		if _, err := conn.ExecContext(context.Background(), s); err != nil {
			tb.Fatalf("%s: %v", s, err)
		}
	}
}

// TestParserConnLockedDown compiles every typical query on a connection
// locked down as the sandbox child's is (external access off, configuration
// locked, opt-out views in place) and expects exactly what a Parser with its
// own database produces.
func TestParserConnLockedDown(t *testing.T) {
	ctx := context.Background()
	cat := MustLoadTestCatalog(t)
	conn := mustConn(t, MustTestDB(t, cat, smallData))
	mustExec(t, conn,
		"SET enable_external_access = false",
		"SET autoinstall_known_extensions = false",
		"SET autoload_known_extensions = false",
		"SET lock_configuration = true",
	)
	pc, err := NewParserConn(ctx, conn)
	if err != nil {
		t.Fatalf("NewParserConn on a locked-down connection: %v", err)
	}
	defer pc.Close()
	own := MustParser(t)
	for _, tq := range TypicalQueries {
		t.Run(tq.Name, func(t *testing.T) {
			got, err := pc.Compile(ctx, cat, tq.SQL, Options{Seed: 7})
			if err != nil {
				t.Fatalf("compile on the connection: %v", err)
			}
			want, err := own.Compile(ctx, cat, tq.SQL, Options{Seed: 7})
			if err != nil {
				t.Fatalf("compile with NewParser: %v", err)
			}
			if diff := cmp.Diff(want.Rewritten, got.Rewritten); diff != "" {
				t.Errorf("rewritten SQL differs (-NewParser +NewParserConn):\n%s", diff)
			}
			if want.Normalized != got.Normalized {
				t.Error("normalized AST differs between NewParser and NewParserConn")
			}
		})
	}
	// The lock-down is still in force after parsing.
	if _, err := conn.ExecContext(ctx, "SET enable_external_access = true"); err == nil {
		t.Error("configuration unlocked after parsing")
	}
}

// TestParserConnParsesOnly parses statements that would change or read the
// connection's data if they were executed or bound, and checks nothing
// happened; then that Close leaves the caller's connection open.
func TestParserConnParsesOnly(t *testing.T) {
	ctx := context.Background()
	db, err := sql.Open("duckdb", "")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	conn := mustConn(t, db)
	mustExec(t, conn, "CREATE TABLE t (x INTEGER)", "INSERT INTO t VALUES (1)")
	p, err := NewParserConn(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	texts := []string{
		"INSERT INTO t VALUES (2)",
		"DELETE FROM t",
		"UPDATE t SET x = 3",
		"DROP TABLE t",
		"CREATE TABLE u AS SELECT 1 AS y",
		"CREATE TEMP VIEW v AS SELECT 1 AS y",
		"SET lock_configuration = true",
		"SELECT 1; DELETE FROM t",
		"WITH d AS (DELETE FROM t RETURNING x) SELECT * FROM d",
		"SELECT count(*) FROM t WHERE x = (SELECT max(y) FROM no_such_table)",
		"SELECT no_such_function(x) FROM t",
	}
	for _, text := range texts {
		// The outcome (an AST or a refusal) does not matter here, only
		// that nothing ran.
		_, _ = p.parse(ctx, text)
	}
	// Binding would fail on a missing table; parsing does not bind.
	if _, err := p.parse(ctx, "SELECT y FROM no_such_table"); err != nil {
		t.Errorf("parse of a text naming a missing table: %v (parsing must not bind)", err)
	}
	var n, x int
	if err := conn.QueryRowContext(ctx, "SELECT count(*), max(x) FROM t").Scan(&n, &x); err != nil {
		t.Fatalf("table t after parsing: %v", err)
	}
	if n != 1 || x != 1 {
		t.Errorf("table t has %d rows, max %d after parsing; want the one row 1", n, x)
	}
	var objs int
	if err := conn.QueryRowContext(ctx, "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'u'").Scan(&objs); err != nil {
		t.Fatal(err)
	}
	if err := conn.QueryRowContext(ctx, "SELECT count(*) FROM duckdb_views() WHERE view_name = 'v'").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if objs+n != 0 {
		t.Errorf("parsing created %d tables and %d views", objs, n)
	}
	var locked string
	if err := conn.QueryRowContext(ctx, "SELECT CAST(current_setting('lock_configuration') AS VARCHAR)").Scan(&locked); err != nil {
		t.Fatal(err)
	}
	if locked != "false" {
		t.Errorf("lock_configuration = %s after parsing a SET: the text was executed", locked)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := conn.QueryRowContext(ctx, "SELECT count(*) FROM t").Scan(&n); err != nil {
		t.Errorf("the caller's connection after Parser.Close: %v", err)
	}
}
