package queries

// TypicalQueries are the research questions of issue 3 written against the
// synthetic NHS GP schema. Tests require every one to compile; the benchmark
// and the demo reuse them.
var TypicalQueries = []struct{ Name, SQL string }{
	{
		Name: "t2d_prevalence_by_age_sex_region",
		SQL: `WITH t2d AS (
  SELECT patient_id, 1 AS has_t2d
  FROM clinical_events
  WHERE snomed_code = '44054006'
  GROUP BY patient_id
)
SELECT
  CASE
    WHEN date_diff('year', p.date_of_birth, DATE '2024-01-01') < 18 THEN '0-17'
    WHEN date_diff('year', p.date_of_birth, DATE '2024-01-01') < 40 THEN '18-39'
    WHEN date_diff('year', p.date_of_birth, DATE '2024-01-01') < 60 THEN '40-59'
    WHEN date_diff('year', p.date_of_birth, DATE '2024-01-01') < 80 THEN '60-79'
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
	},
	{
		Name: "monthly_statin_prescribing",
		SQL: `SELECT date_trunc('month', m.date) AS month,
  count(*) AS prescriptions,
  count(DISTINCT m.patient_id) AS patients_prescribed
FROM medications m
JOIN dmd_codes d ON m.dmd_code = d.dmd_code
WHERE d.drug_class = 'statin'
  AND m.date >= DATE '2023-01-01' AND m.date < DATE '2024-01-01'
GROUP BY month`,
	},
	{
		Name: "registered_population_denominator",
		SQL: `SELECT count(*) AS registered
FROM patients
WHERE registration_start <= DATE '2023-06-30'
  AND (registration_end IS NULL OR registration_end >= DATE '2023-06-30')`,
	},
	{
		Name: "heart_failure_admissions_by_imd",
		SQL: `SELECT p.imd_quintile,
  count(*) AS admissions,
  count(DISTINCT a.patient_id) AS patients_admitted
FROM hospital_admissions a
JOIN patients p ON a.patient_id = p.patient_id
WHERE a.primary_diagnosis LIKE 'I50%'
GROUP BY p.imd_quintile`,
	},
	{
		Name: "flu_vaccine_uptake_by_ethnicity_age",
		SQL: `WITH flu AS (
  SELECT patient_id, 1 AS vaccinated
  FROM vaccinations
  WHERE vaccine = 'influenza' AND date >= DATE '2023-09-01' AND date < DATE '2024-04-01'
  GROUP BY patient_id
)
SELECT p.ethnicity,
  CASE WHEN date_diff('year', p.date_of_birth, DATE '2023-09-01') >= 65 THEN '65+' ELSE 'under 65' END AS age_band,
  count(*) AS patients,
  avg(coalesce(f.vaccinated, 0)) AS uptake
FROM patients p
LEFT JOIN flu f ON f.patient_id = p.patient_id
GROUP BY p.ethnicity, age_band`,
	},
	{
		Name: "diabetics_hba1c_below_58_by_region",
		SQL: `WITH diabetics AS (
  SELECT patient_id, min(date) AS first_diagnosis
  FROM clinical_events
  WHERE snomed_code = '44054006'
  GROUP BY patient_id
),
latest_hba1c AS (
  SELECT patient_id, arg_max(numeric_value, date) AS hba1c
  FROM clinical_events
  WHERE snomed_code = '999791000000106' AND numeric_value IS NOT NULL
  GROUP BY patient_id
)
SELECT p.region,
  count(*) AS diabetics_with_hba1c,
  avg(CASE WHEN h.hba1c < 58 THEN 1 ELSE 0 END) AS share_below_58
FROM diabetics d
JOIN latest_hba1c h ON h.patient_id = d.patient_id
JOIN patients p ON p.patient_id = d.patient_id
GROUP BY p.region`,
	},
	{
		Name: "mean_bmi_by_statin_exposure",
		SQL: `WITH statin AS (
  SELECT m.patient_id, 1 AS exposed
  FROM medications m
  JOIN dmd_codes d ON d.dmd_code = m.dmd_code
  WHERE d.drug_class = 'statin'
  GROUP BY m.patient_id
),
bmi AS (
  SELECT patient_id, arg_max(numeric_value, date) AS bmi
  FROM clinical_events
  WHERE snomed_code = '60621009'
  GROUP BY patient_id
)
SELECT CASE WHEN s.exposed = 1 THEN 'statin' ELSE 'no statin' END AS exposure,
  count(*) AS patients,
  avg(greatest(12, least(70, b.bmi))) AS mean_bmi,
  stddev(greatest(12, least(70, b.bmi))) AS sd_bmi
FROM bmi b
LEFT JOIN statin s ON s.patient_id = b.patient_id
GROUP BY exposure`,
	},
	{
		// Bounded on both sides, as a researcher states a study period:
		// the synthetic extract ends on 2024-12-31, so the rows are those
		// of the open-ended 2023-on query, and a federated run's months
		// (issue 21) come from these bounds.
		Name: "antibiotic_prescriptions_by_month_region",
		SQL: `SELECT date_trunc('month', m.date) AS month,
  p.region,
  count(*) AS prescriptions
FROM medications m
JOIN dmd_codes d ON m.dmd_code = d.dmd_code
JOIN patients p ON p.patient_id = m.patient_id
WHERE d.drug_class = 'antibiotic'
  AND m.date >= DATE '2023-01-01' AND m.date < DATE '2025-01-01'
GROUP BY month, p.region`,
	},
	{
		Name: "bmi_median_iqr_by_sex",
		SQL: `WITH bmi AS (
  SELECT patient_id, arg_max(numeric_value, date) AS bmi
  FROM clinical_events
  WHERE snomed_code = '60621009'
  GROUP BY patient_id
)
SELECT p.sex,
  count(*) AS patients,
  quantile_cont(greatest(12, least(70, b.bmi)), 0.25) AS bmi_q1,
  median(greatest(12, least(70, b.bmi))) AS bmi_median,
  quantile_cont(greatest(12, least(70, b.bmi)), 0.75) AS bmi_q3
FROM bmi b
JOIN patients p ON p.patient_id = b.patient_id
GROUP BY p.sex`,
	},
	{
		Name: "hba1c_median_by_region",
		SQL: `SELECT p.region,
  count(*) AS readings,
  median(greatest(20, least(150, e.numeric_value))) AS median_hba1c
FROM clinical_events e
JOIN patients p ON p.patient_id = e.patient_id
WHERE e.snomed_code = '999791000000106' AND e.date >= DATE '2023-01-01'
GROUP BY p.region`,
	},
	{
		Name: "t2d_survival_table",
		SQL: `WITH dx AS (
  SELECT patient_id, min(date) AS diagnosed
  FROM clinical_events
  WHERE snomed_code = '44054006'
  GROUP BY patient_id
)
SELECT
  CASE
    WHEN date_diff('year', d.diagnosed, coalesce(p.date_of_death, DATE '2024-01-01')) < 1 THEN '0-1'
    WHEN date_diff('year', d.diagnosed, coalesce(p.date_of_death, DATE '2024-01-01')) < 2 THEN '1-2'
    WHEN date_diff('year', d.diagnosed, coalesce(p.date_of_death, DATE '2024-01-01')) < 5 THEN '2-5'
    WHEN date_diff('year', d.diagnosed, coalesce(p.date_of_death, DATE '2024-01-01')) < 10 THEN '5-10'
    ELSE '10+'
  END AS years_band,
  count(*) FILTER (WHERE p.date_of_death IS NOT NULL) AS deaths,
  count(*) FILTER (WHERE p.date_of_death IS NULL) AS censored
FROM dx d
JOIN patients p ON p.patient_id = d.patient_id
GROUP BY years_band`,
	},
	{
		Name: "hba1c_monthly_measure",
		SQL: `SELECT month(e.date) AS month,
  p.region,
  count(DISTINCT e.patient_id) FILTER (WHERE e.snomed_code = '999791000000106')
    / count(DISTINCT e.patient_id) AS tested_share,
  count(DISTINCT e.patient_id) AS patients
FROM clinical_events e
JOIN patients p ON p.patient_id = e.patient_id
WHERE e.date >= DATE '2023-01-01' AND e.date < DATE '2024-01-01'
GROUP BY month, p.region`,
	},
	{
		// Table 1 of a type 2 diabetes cohort: patients, BMI median and
		// IQR (of those with a BMI: least(70, NULL) is 70 in DuckDB, hence
		// the FILTER), and the share with a BMI of 30 or more, by sex and age band
		// with subtotals by sex and the cohort total (docs/sql.md,
		// "Totals"): every cell and total noisy, k = 1 (each patient one
		// cell), L0 = 3 for the three grouping sets.
		Name: "t2d_table1_by_sex_age",
		SQL: `WITH t2d AS (
  SELECT patient_id, min(date) AS diagnosed
  FROM clinical_events
  WHERE snomed_code = '44054006'
  GROUP BY patient_id
), bmi AS (
  SELECT patient_id, arg_max(numeric_value, date) AS bmi
  FROM clinical_events
  WHERE snomed_code = '60621009'
  GROUP BY patient_id
)
SELECT p.sex,
  CASE
    WHEN date_diff('year', p.date_of_birth, DATE '2024-01-01') < 40 THEN '0-39'
    WHEN date_diff('year', p.date_of_birth, DATE '2024-01-01') < 60 THEN '40-59'
    WHEN date_diff('year', p.date_of_birth, DATE '2024-01-01') < 80 THEN '60-79'
    ELSE '80+'
  END AS age_band,
  count(*) AS patients,
  quantile_cont(greatest(12, least(70, b.bmi)), 0.25) FILTER (WHERE b.bmi IS NOT NULL) AS bmi_q1,
  median(greatest(12, least(70, b.bmi))) FILTER (WHERE b.bmi IS NOT NULL) AS bmi_median,
  quantile_cont(greatest(12, least(70, b.bmi)), 0.75) FILTER (WHERE b.bmi IS NOT NULL) AS bmi_q3,
  count(*) FILTER (WHERE b.bmi >= 30) / count(*) AS share_bmi_30_plus
FROM t2d t
JOIN patients p ON p.patient_id = t.patient_id
LEFT JOIN bmi b ON b.patient_id = t.patient_id
GROUP BY ROLLUP (p.sex, age_band)`,
	},
}
