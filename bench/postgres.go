package bench

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// postgresQueries are the typical queries (queries.TypicalQueries, same
// names) in PostgreSQL's dialect, asking exactly the same question:
// DuckDB's date_diff('year', a, b) counts year boundaries, i.e.
// year(b) − year(a); arg_max(v, d) per patient is DISTINCT ON … ORDER BY d
// DESC. Queries already valid in both dialects are repeated unchanged so the
// table is the whole comparison.
var postgresQueries = map[string]string{
	"t2d_table1_by_sex_age": `WITH t2d AS (
  SELECT patient_id, min(date) AS diagnosed
  FROM clinical_events
  WHERE snomed_code = '44054006'
  GROUP BY patient_id
), bmi AS (
  SELECT DISTINCT ON (patient_id) patient_id, numeric_value AS bmi
  FROM clinical_events
  WHERE snomed_code = '60621009' AND date IS NOT NULL
  ORDER BY patient_id, date DESC
)
SELECT p.sex,
  CASE
    WHEN 2024 - extract(year FROM p.date_of_birth) < 40 THEN '0-39'
    WHEN 2024 - extract(year FROM p.date_of_birth) < 60 THEN '40-59'
    WHEN 2024 - extract(year FROM p.date_of_birth) < 80 THEN '60-79'
    ELSE '80+'
  END AS age_band,
  count(*) AS patients,
  percentile_cont(0.25) WITHIN GROUP (ORDER BY greatest(12, least(70, b.bmi))) FILTER (WHERE b.bmi IS NOT NULL) AS bmi_q1,
  percentile_cont(0.5) WITHIN GROUP (ORDER BY greatest(12, least(70, b.bmi))) FILTER (WHERE b.bmi IS NOT NULL) AS bmi_median,
  percentile_cont(0.75) WITHIN GROUP (ORDER BY greatest(12, least(70, b.bmi))) FILTER (WHERE b.bmi IS NOT NULL) AS bmi_q3,
  count(*) FILTER (WHERE b.bmi >= 30)::float8 / count(*) AS share_bmi_30_plus
FROM t2d t
JOIN patients p ON p.patient_id = t.patient_id
LEFT JOIN bmi b ON b.patient_id = t.patient_id
GROUP BY ROLLUP (p.sex, age_band)`,
	"t2d_prevalence_by_age_sex_region": `WITH t2d AS (
  SELECT patient_id, 1 AS has_t2d
  FROM clinical_events
  WHERE snomed_code = '44054006'
  GROUP BY patient_id
)
SELECT
  CASE
    WHEN 2024 - extract(year FROM p.date_of_birth) < 18 THEN '0-17'
    WHEN 2024 - extract(year FROM p.date_of_birth) < 40 THEN '18-39'
    WHEN 2024 - extract(year FROM p.date_of_birth) < 60 THEN '40-59'
    WHEN 2024 - extract(year FROM p.date_of_birth) < 80 THEN '60-79'
    ELSE '80+'
  END AS age_band,
  p.sex,
  p.region,
  count(*) AS patients,
  avg(coalesce(t.has_t2d, 0)) AS prevalence
FROM patients p
LEFT JOIN t2d t ON t.patient_id = p.patient_id
WHERE p.date_of_death IS NULL
GROUP BY age_band, p.sex, p.region`,
	"monthly_statin_prescribing": `SELECT date_trunc('month', m.date) AS month,
  count(*) AS prescriptions,
  count(DISTINCT m.patient_id) AS patients_prescribed
FROM medications m
JOIN dmd_codes d ON m.dmd_code = d.dmd_code
WHERE d.drug_class = 'statin'
  AND m.date >= DATE '2023-01-01' AND m.date < DATE '2024-01-01'
GROUP BY month`,
	"registered_population_denominator": `SELECT count(*) AS registered
FROM patients
WHERE registration_start <= DATE '2023-06-30'
  AND (registration_end IS NULL OR registration_end >= DATE '2023-06-30')`,
	"heart_failure_admissions_by_imd": `SELECT p.imd_quintile,
  count(*) AS admissions,
  count(DISTINCT a.patient_id) AS patients_admitted
FROM hospital_admissions a
JOIN patients p ON a.patient_id = p.patient_id
WHERE a.primary_diagnosis LIKE 'I50%'
GROUP BY p.imd_quintile`,
	"flu_vaccine_uptake_by_ethnicity_age": `WITH flu AS (
  SELECT patient_id, 1 AS vaccinated
  FROM vaccinations
  WHERE vaccine = 'influenza' AND date >= DATE '2023-09-01' AND date < DATE '2024-04-01'
  GROUP BY patient_id
)
SELECT p.ethnicity,
  CASE WHEN 2023 - extract(year FROM p.date_of_birth) >= 65 THEN '65+' ELSE 'under 65' END AS age_band,
  count(*) AS patients,
  avg(coalesce(f.vaccinated, 0)) AS uptake
FROM patients p
LEFT JOIN flu f ON f.patient_id = p.patient_id
GROUP BY p.ethnicity, age_band`,
	"diabetics_hba1c_below_58_by_region": `WITH diabetics AS (
  SELECT patient_id, min(date) AS first_diagnosis
  FROM clinical_events
  WHERE snomed_code = '44054006'
  GROUP BY patient_id
),
latest_hba1c AS (
  SELECT DISTINCT ON (patient_id) patient_id, numeric_value AS hba1c
  FROM clinical_events
  WHERE snomed_code = '999791000000106' AND numeric_value IS NOT NULL
  ORDER BY patient_id, date DESC
)
SELECT p.region,
  count(*) AS diabetics_with_hba1c,
  avg(CASE WHEN h.hba1c < 58 THEN 1 ELSE 0 END) AS share_below_58
FROM diabetics d
JOIN latest_hba1c h ON h.patient_id = d.patient_id
JOIN patients p ON p.patient_id = d.patient_id
GROUP BY p.region`,
	"mean_bmi_by_statin_exposure": `WITH statin AS (
  SELECT m.patient_id, 1 AS exposed
  FROM medications m
  JOIN dmd_codes d ON d.dmd_code = m.dmd_code
  WHERE d.drug_class = 'statin'
  GROUP BY m.patient_id
),
bmi AS (
  SELECT DISTINCT ON (patient_id) patient_id, numeric_value AS bmi
  FROM clinical_events
  WHERE snomed_code = '60621009' AND date IS NOT NULL
  ORDER BY patient_id, date DESC
)
SELECT CASE WHEN s.exposed = 1 THEN 'statin' ELSE 'no statin' END AS exposure,
  count(*) AS patients,
  avg(b.bmi) AS mean_bmi,
  stddev(b.bmi) AS sd_bmi
FROM bmi b
LEFT JOIN statin s ON s.patient_id = b.patient_id
GROUP BY exposure`,
	"antibiotic_prescriptions_by_month_region": `SELECT date_trunc('month', m.date) AS month,
  p.region,
  count(*) AS prescriptions
FROM medications m
JOIN dmd_codes d ON m.dmd_code = d.dmd_code
JOIN patients p ON p.patient_id = m.patient_id
WHERE d.drug_class = 'antibiotic' AND m.date >= DATE '2023-01-01' AND m.date < DATE '2025-01-01'
GROUP BY month, p.region`,
	"bmi_median_iqr_by_sex": `WITH bmi AS (
  SELECT DISTINCT ON (patient_id) patient_id, numeric_value AS bmi
  FROM clinical_events
  WHERE snomed_code = '60621009' AND date IS NOT NULL
  ORDER BY patient_id, date DESC
)
SELECT p.sex,
  count(*) AS patients,
  percentile_cont(0.25) WITHIN GROUP (ORDER BY greatest(12, least(70, b.bmi))) AS bmi_q1,
  percentile_cont(0.5) WITHIN GROUP (ORDER BY greatest(12, least(70, b.bmi))) AS bmi_median,
  percentile_cont(0.75) WITHIN GROUP (ORDER BY greatest(12, least(70, b.bmi))) AS bmi_q3
FROM bmi b
JOIN patients p ON p.patient_id = b.patient_id
GROUP BY p.sex`,
	"hba1c_median_by_region": `SELECT p.region,
  count(*) AS readings,
  percentile_cont(0.5) WITHIN GROUP (ORDER BY greatest(20, least(150, e.numeric_value))) AS median_hba1c
FROM clinical_events e
JOIN patients p ON p.patient_id = e.patient_id
WHERE e.snomed_code = '999791000000106' AND e.date >= DATE '2023-01-01'
GROUP BY p.region`,
	"t2d_survival_table": `WITH dx AS (
  SELECT patient_id, min(date) AS diagnosed
  FROM clinical_events
  WHERE snomed_code = '44054006'
  GROUP BY patient_id
)
SELECT
  CASE
    WHEN extract(year FROM coalesce(p.date_of_death, DATE '2024-01-01')) - extract(year FROM d.diagnosed) < 1 THEN '0-1'
    WHEN extract(year FROM coalesce(p.date_of_death, DATE '2024-01-01')) - extract(year FROM d.diagnosed) < 2 THEN '1-2'
    WHEN extract(year FROM coalesce(p.date_of_death, DATE '2024-01-01')) - extract(year FROM d.diagnosed) < 5 THEN '2-5'
    WHEN extract(year FROM coalesce(p.date_of_death, DATE '2024-01-01')) - extract(year FROM d.diagnosed) < 10 THEN '5-10'
    ELSE '10+'
  END AS years_band,
  count(*) FILTER (WHERE p.date_of_death IS NOT NULL) AS deaths,
  count(*) FILTER (WHERE p.date_of_death IS NULL) AS censored
FROM dx d
JOIN patients p ON p.patient_id = d.patient_id
GROUP BY years_band`,
	"hba1c_monthly_measure": `SELECT extract(month FROM e.date)::int AS month,
  p.region,
  count(DISTINCT e.patient_id) FILTER (WHERE e.snomed_code = '999791000000106')::double precision
    / nullif(count(DISTINCT e.patient_id), 0) AS tested_share,
  count(DISTINCT e.patient_id) AS patients
FROM clinical_events e
JOIN patients p ON p.patient_id = e.patient_id
WHERE e.date >= DATE '2023-01-01' AND e.date < DATE '2024-01-01'
GROUP BY month, p.region`,
}

// pgLoad is the data loaded into a throwaway PostgreSQL schema.
type pgLoad struct {
	conn    *pgx.Conn
	schema  string
	Export  time.Duration // DuckDB → CSV
	Load    time.Duration // COPY + primary key + ANALYZE
	Rows    int64
	Version string
}

// loadPostgres exports every table of the data file to CSV and loads it with
// COPY into a fresh schema, adds the patients primary key (what a
// PostgreSQL-based TRE would have) and ANALYZEs, so the planner has
// statistics.
func loadPostgres(ctx context.Context, url, data string, tables []Table, dir string, opts Options) (*pgLoad, error) {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	pg := &pgLoad{conn: conn, schema: "tre_bench_" + randomSuffix()}
	ok := false
	defer func() {
		if !ok {
			pg.drop(context.WithoutCancel(ctx))
		}
	}()
	if err := conn.QueryRow(ctx, "SHOW server_version").Scan(&pg.Version); err != nil {
		return nil, err
	}
	for _, s := range []string{"CREATE SCHEMA " + pg.schema, "SET search_path TO " + pg.schema} {
		if _, err := conn.Exec(ctx, s); err != nil {
			return nil, err
		}
	}
	csvDir := dir + "/pg-export"
	if err := os.MkdirAll(csvDir, 0o700); err != nil {
		return nil, err
	}
	defer os.RemoveAll(csvDir)
	names := make([]string, len(tables))
	for i, t := range tables {
		names[i] = t.Name
	}
	start := time.Now()
	files, err := ExportCSV(ctx, data, names, csvDir, opts)
	if err != nil {
		return nil, err
	}
	pg.Export = time.Since(start)

	start = time.Now()
	for _, t := range tables {
		cols := make([]string, len(t.Columns))
		for i, c := range t.Columns {
			ty, err := postgresType(c.Type)
			if err != nil {
				return nil, fmt.Errorf("table %s column %s: %w", t.Name, c.Name, err)
			}
			cols[i] = pgx.Identifier{c.Name}.Sanitize() + " " + ty
		}
		if _, err := conn.Exec(ctx, fmt.Sprintf("CREATE TABLE %s (%s)", pgx.Identifier{t.Name}.Sanitize(), strings.Join(cols, ", "))); err != nil {
			return nil, err
		}
		f, err := os.Open(files[t.Name])
		if err != nil {
			return nil, err
		}
		tag, err := conn.PgConn().CopyFrom(ctx, f, fmt.Sprintf("COPY %s FROM STDIN (FORMAT csv, HEADER true)", pgx.Identifier{t.Name}.Sanitize()))
		f.Close()
		os.Remove(files[t.Name])
		if err != nil {
			return nil, fmt.Errorf("COPY %s: %w", t.Name, err)
		}
		pg.Rows += tag.RowsAffected()
	}
	for _, s := range []string{"ALTER TABLE patients ADD PRIMARY KEY (patient_id)", "ANALYZE"} {
		if _, err := conn.Exec(ctx, s); err != nil {
			return nil, err
		}
	}
	pg.Load = time.Since(start)
	ok = true
	return pg, nil
}

// drop removes the schema and closes the connection.
func (pg *pgLoad) drop(ctx context.Context) error {
	if pg.conn == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	_, err := pg.conn.Exec(ctx, "DROP SCHEMA IF EXISTS "+pg.schema+" CASCADE")
	pg.conn.Close(ctx)
	pg.conn = nil
	return err
}

// postgresType maps a DuckDB column type to PostgreSQL's.
func postgresType(duck string) (string, error) {
	t := strings.ToUpper(strings.TrimSpace(duck))
	switch {
	case t == "BIGINT" || t == "UINTEGER":
		return "bigint", nil
	case t == "INTEGER" || t == "USMALLINT":
		return "integer", nil
	case t == "SMALLINT" || t == "TINYINT" || t == "UTINYINT":
		return "smallint", nil
	case t == "HUGEINT" || t == "UBIGINT":
		return "numeric", nil
	case t == "DOUBLE":
		return "double precision", nil
	case t == "FLOAT":
		return "real", nil
	case strings.HasPrefix(t, "DECIMAL"):
		return "numeric" + strings.TrimPrefix(t, "DECIMAL"), nil
	case t == "VARCHAR":
		return "text", nil
	case t == "BOOLEAN":
		return "boolean", nil
	case t == "DATE":
		return "date", nil
	case t == "TIMESTAMP":
		return "timestamp", nil
	case t == "TIMESTAMP WITH TIME ZONE":
		return "timestamptz", nil
	}
	return "", fmt.Errorf("no PostgreSQL type for DuckDB type %s", duck)
}

// measurePostgres runs each query's PostgreSQL form with the same warm-up
// and repetitions as the DuckDB runs.
func (m *harness) measurePostgres(ctx context.Context, p *benchProgress, pg *pgLoad, results []queryResult) error {
	for i := range results {
		r := &results[i]
		q, ok := postgresQueries[r.Name]
		if !ok {
			r.PGNote = "no PostgreSQL form"
			continue
		}
		p.stage(r.Name + ": postgres")
		for j := range m.Warmup + m.Reps {
			start := time.Now()
			rows, err := pg.conn.Query(ctx, q)
			if err != nil {
				return fmt.Errorf("%s: %w", r.Name, err)
			}
			n := 0
			for rows.Next() {
				n++
			}
			rows.Close()
			d := time.Since(start)
			if err := rows.Err(); err != nil {
				return fmt.Errorf("%s: %w", r.Name, err)
			}
			r.PGRows = n
			if j >= m.Warmup {
				r.PG.add(d)
			}
			p.step()
		}
	}
	return nil
}
