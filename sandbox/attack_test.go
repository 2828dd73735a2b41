package sandbox

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nhs-tre/tre/job"
)

// attacks are hostile queries. Each must be refused by the compiler, and,
// sent raw past it to the locked-down DuckDB in the child, be contained:
// an error with a safe code, or an output no larger than maxRows rows, with
// no file read or written and no data value in what reaches the host.
func attacks(dir string) []struct{ name, sql string } {
	out := filepath.Join(dir, "out")
	return []struct{ name, sql string }{
		{"read_csv", "SELECT * FROM read_csv('/etc/passwd')"},
		{"read_csv_auto", "SELECT count(*) FROM read_csv_auto('/etc/hostname')"},
		{"read_text", "SELECT content FROM read_text('/etc/passwd')"},
		{"read_blob", "SELECT content FROM read_blob('/etc/shadow')"},
		{"glob", "SELECT * FROM glob('/etc/*')"},
		{"from_path", "SELECT * FROM '/etc/passwd'"},
		{"quoted_function", `SELECT * FROM "read_csv"('/etc/passwd')`},
		{"schema_qualified", "SELECT * FROM main.read_csv('/etc/passwd')"},
		{"system_qualified", "SELECT * FROM system.main.read_text('/etc/passwd')"},
		{"read_parquet", "SELECT * FROM read_parquet('/tmp/x.parquet')"},
		{"read_json", "SELECT * FROM read_json('/etc/os-release')"},
		{"copy_to", "COPY (SELECT * FROM patients) TO '" + out + ".csv'"},
		{"copy_from", "COPY patients FROM '/etc/passwd'"},
		{"export_database", "EXPORT DATABASE '" + out + "'"},
		{"attach", "ATTACH '" + out + ".db' AS x"},
		{"attach_memory", "ATTACH ':memory:' AS m"},
		{"install", "INSTALL httpfs"},
		{"load", "LOAD httpfs"},
		{"set_external", "SET enable_external_access = true"},
		{"set_threads", "SET threads = 64"},
		{"reset", "RESET memory_limit"},
		{"pragma", "PRAGMA database_list"},
		{"pragma_settings", "SELECT * FROM pragma_database_size()"},
		{"query_fn", "SELECT * FROM query('SELECT * FROM patients')"},
		{"query_table_fn", "SELECT * FROM query_table('patients')"},
		{"duckdb_settings", "SELECT * FROM duckdb_settings()"},
		{"duckdb_tables", "SELECT sql FROM duckdb_tables()"},
		{"information_schema", "SELECT * FROM information_schema.columns"},
		{"multi_statement", "SELECT 1; COPY (SELECT * FROM patients) TO '" + out + "2.csv'"},
		{"multi_statement_set", "SET threads = 1; SELECT count(*) FROM patients"},
		{"cross_join_bomb", "SELECT count(*) FROM clinical_events a, clinical_events b, clinical_events c, clinical_events d"},
		{"recursive_cte", "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r"},
		{"generate_series", "SELECT count(*) FROM generate_series(1, 1000000000000)"},
		{"range_bomb", "SELECT * FROM range(100000000)"},
		{"huge_string", "SELECT length(repeat('x', 2000000000))"},
		{"huge_list", "SELECT len(list_value(range(1000000000)))"},
		{"deep_nesting", "SELECT " + strings.Repeat("(", 2000) + "1" + strings.Repeat(")", 2000)},
		{"sleep", "SELECT sleep_ms(600000)"},
		{"error_leak_cast", "SELECT CAST(practice_id AS INTEGER) FROM patients"},
		{"error_leak_error_fn", "SELECT error(practice_id) FROM patients"},
		{"row_exfil_group_by_id", "SELECT patient_id, practice_id, count(*) FROM patients GROUP BY patient_id, practice_id"},
		{"optout_table", "SELECT patient_id FROM optouts"},
		{"getenv", "SELECT getenv('HOME')"},
		{"create_table", "CREATE TABLE x AS SELECT * FROM patients"},
		{"checkpoint", "CHECKPOINT"},
	}
}

func TestAttacksContainedRaw(t *testing.T) {
	data := MustFixture(t, 300)
	cfg := testConfig(t, data)
	cfg.Timeout = 3 * time.Second
	cfg.KillGrace = 2 * time.Second
	cfg.MemoryLimit = 128 << 20
	cfg.RSSLimit = 768 << 20
	cfg.MaxRows = 1000
	r := MustRunner(t, cfg)
	dir := t.TempDir()
	for _, tt := range attacks(dir) {
		t.Run(tt.name, func(t *testing.T) {
			out, err := runRawSQL(t, r, tt.sql)
			switch {
			case err != nil:
				var se *job.Error
				if !errors.As(err, &se) {
					t.Fatalf("error is not a coded sandbox error: %v", err)
				}
				if strings.Contains(se.Message, "SECRET") || strings.Contains(se.Message, "root:") {
					t.Fatalf("error carries data: %v", se)
				}
				t.Logf("contained: %s", se.Code)
			default:
				if out.Rows > cfg.MaxRows {
					t.Fatalf("unbounded output: %d rows", out.Rows)
				}
				t.Logf("ran with bounded output: %d rows", out.Rows)
			}
			entries, err := os.ReadDir(dir)
			if err != nil {
				t.Fatal(err)
			}
			if len(entries) > 0 {
				t.Fatalf("attack wrote %s", entries[0].Name())
			}
		})
	}
	// The data directory holds only the data file afterwards.
	entries, err := os.ReadDir(filepath.Dir(data))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Name() != filepath.Base(data) {
			t.Errorf("unexpected file beside the data: %s", e.Name())
		}
	}
}
