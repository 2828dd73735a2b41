package sandbox

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	_ "github.com/duckdb/duckdb-go/v2"

	"github.com/nhs-tre/tre/dp"
	"github.com/nhs-tre/tre/job"
	"github.com/nhs-tre/tre/queries"
)

// secretMarker is planted in patient data; no error or result that reaches
// the host may ever contain it.
const secretMarker = "SECRET-PRACTICE-7731"

// MustFixture writes a small DuckDB file with the agreed schema: n patients
// with deterministic attributes, a few events each, and every 20th patient
// opted out.
func MustFixture(tb testing.TB, n int) string {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "data.duckdb")
	db, err := sql.Open("duckdb", path)
	if err != nil {
		tb.Fatal(err)
	}
	defer db.Close()
	stmts := []string{
		`CREATE TABLE patients(patient_id BIGINT, date_of_birth DATE, sex VARCHAR, ethnicity VARCHAR, region VARCHAR, imd_quintile INTEGER, practice_id VARCHAR, registration_start DATE, registration_end DATE, date_of_death DATE)`,
		`INSERT INTO patients SELECT 100003 + i*7919, DATE '1940-01-01' + INTERVAL (i % 600) MONTH, ['female','male','unknown'][1 + (i % 3)], ['White','Mixed','Asian','Black','Other','Unknown'][1 + (i % 6)], ['North East','North West','Yorkshire and The Humber','East Midlands','West Midlands','East of England','London','South East','South West'][1 + (i % 9)], 1 + (i % 5), '` + secretMarker + `-' || (i % 50), DATE '2000-01-01', NULL, NULL FROM range(` + itoa(n) + `) t(i)`,
		`CREATE TABLE clinical_events(patient_id BIGINT, date DATE, snomed_code VARCHAR, numeric_value DOUBLE)`,
		`INSERT INTO clinical_events SELECT p.patient_id, DATE '2020-01-01' + INTERVAL (j) DAY, ['44054006','38341003','195967001','999791000000106'][1 + ((p.patient_id + j) % 4)], CASE WHEN (p.patient_id + j) % 4 = 3 THEN 40 + (p.patient_id % 50) END FROM patients p, range(3) r(j)`,
		`CREATE TABLE medications(patient_id BIGINT, date DATE, dmd_code VARCHAR)`,
		`INSERT INTO medications SELECT patient_id, DATE '2021-01-01', '325278007' FROM patients WHERE patient_id % 3 = 0`,
		`CREATE TABLE hospital_admissions(patient_id BIGINT, admission_date DATE, discharge_date DATE, primary_diagnosis VARCHAR, admission_method VARCHAR)`,
		`INSERT INTO hospital_admissions SELECT patient_id, DATE '2022-01-01', DATE '2022-01-05', 'I50.0', 'emergency' FROM patients WHERE patient_id % 7 = 0`,
		`CREATE TABLE vaccinations(patient_id BIGINT, date DATE, vaccine VARCHAR)`,
		`INSERT INTO vaccinations SELECT patient_id, DATE '2023-10-01', 'influenza' FROM patients WHERE patient_id % 2 = 0`,
		`CREATE TABLE optouts(patient_id BIGINT, kind VARCHAR)`,
		`INSERT INTO optouts SELECT patient_id, 'type1' FROM patients WHERE (patient_id - 100003) / 7919 % 20 = 0`,
		`CREATE TABLE snomed_codes(snomed_code VARCHAR, term VARCHAR, condition VARCHAR)`,
		`INSERT INTO snomed_codes VALUES ('44054006','Type 2 diabetes mellitus','diabetes'), ('38341003','Hypertension','hypertension')`,
		`CREATE TABLE dmd_codes(dmd_code VARCHAR, name VARCHAR, drug_class VARCHAR)`,
		`INSERT INTO dmd_codes VALUES ('325278007','Metformin 500mg tablets','metformin')`,
	}
	for _, s := range stmts {
		if _, err := db.Exec(s); err != nil {
			tb.Fatalf("fixture: %v", err)
		}
	}
	return path
}

func itoa(n int) string { return fmtInt(int64(n)) }

func fmtInt(n int64) string {
	return string(appendInt(nil, n))
}

func appendInt(b []byte, n int64) []byte {
	if n < 0 {
		b = append(b, '-')
		n = -n
	}
	var tmp [20]byte
	i := len(tmp)
	for {
		i--
		tmp[i] = byte('0' + n%10)
		n /= 10
		if n == 0 {
			break
		}
	}
	return append(b, tmp[i:]...)
}

// MustCatalog loads the test catalog.
func MustCatalog(tb testing.TB) *queries.Catalog {
	tb.Helper()
	cat, err := queries.LoadCatalog("testdata/catalog.yaml")
	if err != nil {
		tb.Fatal(err)
	}
	return cat
}

// testConfig is a runner config re-executing the test binary as the child.
func testConfig(tb testing.TB, data string) Config {
	tb.Helper()
	return Config{
		DataPath:    data,
		Catalog:     MustCatalog(tb),
		ScratchDir:  tb.TempDir(),
		MemoryLimit: 256 << 20,
		Threads:     2,
		Timeout:     20 * time.Second,
		KillGrace:   2 * time.Second,
		MaxRows:     10_000,
		// A federated part carries every node of its quantile trees: as
		// much as the broker accepts from a site (a 4 MiB cap failed the
		// federated ROLLUP quantiles with too_large).
		MaxBytes:   dp.MaxPartialBytes,
		Executable: os.Args[0],
		Args:       []string{childArg},
		Logger:     slog.New(slog.NewTextHandler(testWriter{tb}, nil)),
	}
}

type testWriter struct{ tb testing.TB }

func (w testWriter) Write(p []byte) (int, error) { w.tb.Log(string(p)); return len(p), nil }

// MustRunner returns a runner over cfg.
// MustRunner returns a Runner for cfg whose clock is an hour ahead: every
// fixture was written moments ago, and would otherwise be too recent for
// its release snapshot to be kept (TestSnapshotRacyFile tests that rule).
func MustRunner(tb testing.TB, cfg Config) *Runner {
	tb.Helper()
	r, err := NewRunner(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	r.now = func() time.Time { return time.Now().Add(time.Hour) }
	tb.Cleanup(func() { r.Close() })
	return r
}

func hashSQL(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

func newJob(sql string) job.Job {
	return job.Job{QueryID: 1, SQL: sql, SQLHash: hashSQL(sql), Epsilon: 1}
}

// callJob runs req in a job child on the runner's current release
// snapshot, as Run does, and returns the child's whole response.
func (r *Runner) callJob(ctx context.Context, req *request) (*response, []string, error) {
	snap, release, err := r.acquireSnapshot(ctx)
	if err != nil {
		return nil, nil, err
	}
	defer release()
	return r.call(ctx, req, callOptions{dataPath: snap.path, timeout: r.cfg.Timeout}, nil)
}
