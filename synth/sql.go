package synth

import (
	"fmt"
	"strconv"
	"strings"
)

// Random numbers. Every draw is hash(seed, patient id, stream[, index])
// mapped to [0, 1): a pure function of its inputs, so the result is the same
// whatever the thread count or the order DuckDB processes rows in. DuckDB's
// random() is not used: its per-thread state makes the output depend on
// scheduling. Each use of a random number has its own stream number (below)
// so draws are independent.
func macros(seed int64) []string {
	s := strconv.FormatInt(seed, 10)
	return []string{
		// 53 high bits → exactly representable doubles in [0, 1). DuckDB's
		// multi-argument hash only combines the arguments' hashes, so draws
		// for neighbouring streams are strongly correlated (r ≈ 0.87); hashing
		// the combination again mixes it fully (r ≈ 0).
		"CREATE TEMP MACRO u(id, k) AS (hash(hash(" + s + "::BIGINT, id, k::INTEGER)) >> 11)::DOUBLE / 9007199254740992.0",
		"CREATE TEMP MACRO uj(id, k, j) AS (hash(hash(" + s + "::BIGINT, id, k::INTEGER, j::BIGINT)) >> 11)::DOUBLE / 9007199254740992.0",
		// Standard normal from one uniform by Tukey's lambda approximation of
		// the inverse normal CDF (λ = 0.14: sd 0.999, kurtosis error < 0.05,
		// quantiles within 1%): cheaper than Box–Muller and one draw, not two.
		"CREATE TEMP MACRO tukey(p) AS 4.91 * (pow(p, 0.14) - pow(1 - p, 0.14))",
		"CREATE TEMP MACRO z(id, k) AS tukey(u(id, k))",
		"CREATE TEMP MACRO zj(id, k, j) AS tukey(uj(id, k, j))",
		// Exponential with the given mean, for lengths of stay.
		"CREATE TEMP MACRO expo(id, k, j, m) AS -ln(1 - uj(id, k, j)) * m",
	}
}

// quote returns s as an SQL string literal.
func quote(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// num formats a float for SQL without exponent surprises.
func num(f float64) string { return strconv.FormatFloat(f, 'g', 17, 64) }

// pickCum returns a CASE choosing index i when uexpr falls in the i-th slice
// of the cumulative distribution of weights (normalised).
func pickCum(uexpr string, weights []float64, values []string) string {
	total := sum(weights)
	var b strings.Builder
	b.WriteString("CASE")
	var c float64
	for i := 0; i < len(weights)-1; i++ {
		c += weights[i] / total
		fmt.Fprintf(&b, " WHEN %s < %s THEN %s", uexpr, num(c), values[i])
	}
	fmt.Fprintf(&b, " ELSE %s END", values[len(values)-1])
	return b.String()
}

// pickUniform returns a CASE choosing one of values uniformly by uexpr.
func pickUniform(uexpr string, values []string) string {
	quoted := make([]string, len(values))
	w := make([]float64, len(values))
	for i, v := range values {
		quoted[i] = quote(v)
		w[i] = 1
	}
	return pickCum(uexpr, w, quoted)
}

// caseIndex maps an integer index column to string values.
func caseIndex(col string, values []string) string {
	var b strings.Builder
	b.WriteString("CASE " + col)
	for i, v := range values {
		fmt.Fprintf(&b, " WHEN %d THEN %s", i, quote(v))
	}
	b.WriteString(" END")
	return b.String()
}

func ints(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = strconv.Itoa(i)
	}
	return out
}

// Stream numbers of the per-patient draws. Never reuse one for two purposes.
const (
	sBand = 1 + iota
	sAgeInBand
	sBirthMonth
	sSex
	sRegion
	sIMD
	sEthnicity
	sRegType
	sRegDate
	sDeath
	sDeathDate
	sLeft
	sLeftDate
	sPractice
)

const (
	sCondition     = 20  // + condition index
	sDiagDate      = 200 // + condition index
	sDiagRepeats   = 250 // + condition index
	sDiagRepeatDay = 300 // + condition index
	sMeasure       = 400 // + 10*measure + 0..9
	sDrug          = 500 // + 10*class + 0..9
	sAdmission     = 600 // + 10*kind + 0..9
	sVaccine       = 700 // + 10*vaccine + 0..9
	sOptout        = 800
	sOutlier       = 900
)

// hasCond is the SQL test of a condition bit in the pt table.
func hasCond(c int) string { return fmt.Sprintf("(conds & %d) <> 0", 1<<c) }

// diagDate is the date a condition is first recorded: early in the
// observation period more often than late (most recorded conditions are
// prevalent at the start of an extract).
func diagDate(c int) string {
	return fmt.Sprintf("(obs_start + floor(pow(u(pid, %d), 2) * (obs_end - obs_start + 1))::INTEGER)", sDiagDate+c)
}

// ptSQL builds the per-patient working table: demographics drawn from the
// population model, registration and death dates, and the condition mask.
func ptSQL(n int, mulA, addB uint64, specials string) string {
	bandW := ageBands[:]
	bandV := ints(19)
	// P(sex | band): female, male, unknown.
	var sexCase strings.Builder
	sexCase.WriteString("CASE WHEN u_sex < " + num(unknownSexShare) + " THEN 2")
	for b := range 19 {
		fmt.Fprintf(&sexCase, " WHEN band = %d THEN CASE WHEN u_sex < %s THEN 0 ELSE 1 END",
			b, num(unknownSexShare+(1-unknownSexShare)*femaleShare[b]))
	}
	sexCase.WriteString(" END")

	var imdCase strings.Builder
	imdCase.WriteString("CASE region_i")
	for r := range 9 {
		fmt.Fprintf(&imdCase, " WHEN %d THEN %s", r, pickCum("u_imd", imdByRegion[r][:], []string{"1", "2", "3", "4", "5"}))
	}
	imdCase.WriteString(" END")

	london, rest := ethnicityByRegion()
	ethCase := fmt.Sprintf("CASE WHEN region_i = %d THEN %s ELSE %s END", londonIndex,
		pickCum("u_eth", london[:], ints(6)),
		pickCum("u_eth", rest[:], ints(6)))

	var condMask strings.Builder
	for c := range nConditions {
		if c > 0 {
			condMask.WriteString(" + ")
		}
		fmt.Fprintf(&condMask, "(u(pid, %d) < r.p%d)::INTEGER * %d", sCondition+c, c, 1<<c)
	}

	return fmt.Sprintf(`CREATE TEMP TABLE pt AS
WITH a0 AS (
  SELECT ((i * %[1]d + %[2]d) %% 1099511627776) + 1 AS pid FROM ids
), a AS (
  -- Each draw once, as a column: the CASEs below test it many times.
  SELECT pid, u(pid, %[24]d) AS u_band, u(pid, %[4]d) AS u_age, u(pid, %[25]d) AS u_sex, u(pid, %[26]d) AS u_region,
    u(pid, %[27]d) AS u_imd, u(pid, %[28]d) AS u_eth
  FROM a0
), b AS (
  SELECT *, %[3]s AS band FROM a
), c AS (
  SELECT pid, band, u_imd, u_eth,
    CASE WHEN band = 18 THEN 90 + floor(10 * pow(u_age, 2))::INTEGER ELSE band * 5 + floor(5 * u_age)::INTEGER END AS age,
    floor(12 * u(pid, %[5]d))::INTEGER AS mon,
    %[6]s AS sex_i,
    %[7]s AS region_i
  FROM b
), d AS (
  SELECT * EXCLUDE (u_imd, u_eth), %[8]s AS imd, %[9]s AS eth_i,
    CAST(%[10]s - to_months(12 * age + mon) AS DATE) AS dob
  FROM c
), e AS (
  SELECT *, greatest(dob + 14, CASE WHEN u(pid, %[11]d) < 0.8
      THEN DATE '1990-01-01' + floor(u(pid, %[12]d) * (%[13]s - DATE '1990-01-01'))::INTEGER
      ELSE %[13]s + floor(u(pid, %[12]d) * (%[14]s - %[13]s - 30))::INTEGER END) AS registration_start
  FROM d
), f AS (
  SELECT *, greatest(registration_start, %[13]s) AS obs_start FROM e
), g AS (
  SELECT *,
    CASE WHEN u(pid, %[15]d) < %[16]s THEN obs_start + floor(u(pid, %[17]d) * (%[14]s - obs_start + 1))::INTEGER END AS date_of_death
  FROM f
), h AS (
  SELECT *,
    CASE WHEN date_of_death IS NOT NULL THEN date_of_death
         WHEN u(pid, %[18]d) < 0.06 THEN obs_start + floor(u(pid, %[19]d) * (%[14]s - obs_start + 1))::INTEGER END AS registration_end
  FROM g
)
SELECT pid, age, sex_i, region_i, imd, eth_i, dob, registration_start, registration_end, date_of_death,
  obs_start, coalesce(registration_end, %[14]s) AS obs_end,
  (%[20]s) | CASE WHEN pid IN (%[21]s) THEN %[22]d ELSE 0 END AS conds
FROM h JOIN risk r ON r.k = %[23]s`,
		mulA, addB,
		pickCum("u_band", bandW, bandV),
		sAgeInBand, sBirthMonth, sexCase.String(),
		pickCum("u_region", regionShare[:], ints(9)),
		imdCase.String(), ethCase, indexMonthSQL,
		sRegType, sRegDate, windowStartSQL, windowEndSQL,
		sDeath, mortality5ySQL, sDeathDate, sLeft, sLeftDate,
		condMask.String(), specials, outlierConds, riskKeySQL,
		sBand, sSex, sRegion, sIMD, sEthnicity)
}

// outlierConds: the outlier patients are multimorbid (hypertension, type 2
// diabetes, COPD), as the heaviest real users of primary care are.
const outlierConds = 1<<condHypertension | 1<<condT2D | 1<<condCOPD

// patientsSQL writes the patients table from pt.
func patientsSQL(n int) string {
	// Practices: about one per 9,000 registered patients (England: ~6,300
	// practices, ~63M registrations), list sizes skewed by drawing the
	// practice index from u^1.5.
	var nprac strings.Builder
	nprac.WriteString("CASE region_i")
	total := sum(regionShare[:])
	for r := range 9 {
		np := max(1, int(float64(n)*regionShare[r]/total/9000+0.5))
		fmt.Fprintf(&nprac, " WHEN %d THEN %d", r, np)
	}
	nprac.WriteString(" END")
	return fmt.Sprintf(`CREATE TABLE patients AS
SELECT pid::BIGINT AS patient_id,
  dob::DATE AS date_of_birth,
  %s::VARCHAR AS sex,
  %s::VARCHAR AS ethnicity,
  %s::VARCHAR AS region,
  imd::INTEGER AS imd_quintile,
  ('S' || (region_i + 1)::VARCHAR || lpad(floor(pow(u(pid, %d), 1.5) * %s)::INTEGER::VARCHAR, 4, '0'))::VARCHAR AS practice_id,
  registration_start::DATE AS registration_start,
  registration_end::DATE AS registration_end,
  date_of_death::DATE AS date_of_death
FROM pt`,
		caseIndex("sex_i", sexes[:]), caseIndex("eth_i", ethnicities[:]), caseIndex("region_i", regions[:]),
		sPractice, nprac.String())
}

// slots returns rows of pt (plus columns j and d) for events that happen at
// rate events per year between dates from and to (inclusive). The count per
// patient is floor(λ·E + u) with E exponential(1) and λ = rate × years: its
// mean is λ and it is overdispersed like real health-care use (most people
// have none, a few have many), and it costs one row per event, not per
// candidate. Dates are uniform in [from, to]. With seasonal, candidates are
// drawn at 1.6 × the rate and kept with probability
// (1 + 0.6 cos(2π(day − 20)/365.25)) / 1.6: a late-January peak, as in GP
// antibiotic prescribing, with the same expected count.
func slots(stream int, where, from, to, rate string, seasonal bool) string {
	w, keep := "1.0", ""
	if seasonal {
		w = "1.6"
		keep = fmt.Sprintf("WHERE uj(pid, %d, j) * 1.6 < 1 + 0.6 * cos(2 * pi() * (dayofyear(d) - 20) / 365.25)", stream+3)
	}
	return fmt.Sprintf(`(SELECT * FROM (
  SELECT *, s_from + floor(uj(pid, %[1]d, j) * s_len)::INTEGER AS d FROM (
    SELECT *, unnest(range(s_n)) AS j FROM (
      SELECT *, floor(s_rate * %[2]s * s_len / 365.25 * -ln(1 - u(pid, %[7]d)) + u(pid, %[8]d))::BIGINT AS s_n FROM (
        SELECT %[10]s, (%[3]s)::DATE AS s_from, ((%[4]s) - (%[3]s) + 1)::BIGINT AS s_len, (%[5]s)::DOUBLE AS s_rate
        FROM pt WHERE %[6]s)
      WHERE s_len > 0 AND s_rate > 0)
    WHERE s_n > 0))
  %[9]s)`,
		stream, w, from, to, rate, where, stream+1, stream+2, keep, ptCols)
}

// repeats returns rows of pt (plus j) for a count drawn as floor(x + u):
// the expected count is x.
// person is a per-patient value computed once, before the rows are
// expanded, available as pv.
func repeats(stream int, where, expected, person string) string {
	return fmt.Sprintf(`(SELECT %[5]s, (%[4]s)::DOUBLE AS pv, unnest(range(floor((%[2]s) + u(pid, %[1]d))::BIGINT)) AS j FROM pt WHERE %[3]s)`, stream, expected, where, person, ptCols)
}

// ptCols are the pt columns the event queries use: expanding rows carries
// only these, not the whole working table.
const ptCols = "pid, age, sex_i, imd, eth_i, conds, dob, obs_start, obs_end"

const years = "((obs_end - obs_start + 1) / 365.25)"

// clinicalEventsSQL builds clinical_events: diagnosis codes (recorded one to
// three times), measurements and the outliers' extra readings.
func clinicalEventsSQL(specialsFabry, specialsOutlier string) string {
	var parts []string
	for c := range nConditions {
		parts = append(parts, fmt.Sprintf(`SELECT pid, CASE WHEN j = 0 THEN dd ELSE dd + floor(uj(pid, %[1]d, j) * (obs_end - dd + 1))::INTEGER END AS date,
  %[2]s AS snomed_code, NULL::DOUBLE AS numeric_value
FROM (SELECT pid, obs_end, %[3]s AS dd, unnest(range(1 + floor(3 * u(pid, %[4]d))::BIGINT)) AS j FROM pt WHERE %[5]s)`,
			sDiagRepeatDay+c, quote(conditions[c].code), diagDate(c), sDiagRepeats+c, hasCond(c)))
	}
	parts = append(parts, fmt.Sprintf(`SELECT pid, obs_start + floor(u(pid, %d) * (obs_end - obs_start + 1))::INTEGER, %s, NULL::DOUBLE FROM pt WHERE pid IN (%s)`,
		sDiagDate+nConditions, quote(fabryCode), specialsFabry))

	t2d, ht := hasCond(condT2D), hasCond(condHypertension)
	monitored := fmt.Sprintf("(conds & %d) <> 0 OR age >= 65", 1<<condT2D|1<<condHypertension|1<<condCHD|1<<condHeartFailure)
	type measure struct {
		code, where, rate, person, value string
	}
	// Values: a person-level level (pv) plus reading-level noise, so a
	// patient's readings are correlated as real ones are.
	measures := []measure{
		// BMI: log-normal (right-skewed), mean ≈ 27.5, sd ≈ 5.3; higher in
		// type 2 diabetes. Recorded about every 3 years, yearly with diabetes
		// or hypertension.
		{codeBMI, "age >= 18", fmt.Sprintf("0.3 + 0.7 * ((%s) OR (%s))::INTEGER", t2d, ht),
			fmt.Sprintf("exp(ln(26.6) + 0.19 * z(pid, %d)) + 3.0 * (%s)::INTEGER", sMeasure+1, t2d),
			fmt.Sprintf("round(pv * exp(0.025 * zj(pid, %d, j)), 1)", sMeasure+2)},
		// Systolic BP: rises with age, ~10 mmHg higher with hypertension;
		// overall mean ≈ 130, sd ≈ 17. Yearly-ish for hypertension.
		{codeSBP, "age >= 18", fmt.Sprintf("0.4 + 1.1 * (%s)::INTEGER", ht),
			fmt.Sprintf("112 + 0.4 * (age - 18) + 10 * (%s)::INTEGER + 12 * z(pid, %d)", ht, sMeasure+11),
			fmt.Sprintf("least(250, greatest(80, round(pv + 8 * zj(pid, %d, j))))", sMeasure+12)},
		// HbA1c: twice a year in diabetes (mean 58, sd ≈ 14 mmol/mol);
		// occasional screening otherwise (mean 36).
		{codeHbA1c, fmt.Sprintf("(%s) OR age >= 40", t2d), fmt.Sprintf("CASE WHEN %s THEN 2.0 ELSE 0.15 END", t2d),
			fmt.Sprintf("CASE WHEN %[1]s THEN 58 + 11 * z(pid, %[2]d) ELSE 36 + 3 * z(pid, %[2]d) END", t2d, sMeasure+21),
			fmt.Sprintf("CASE WHEN %s THEN greatest(30, round(pv + 9 * zj(pid, %[2]d, j))) ELSE greatest(20, round(pv + 2.5 * zj(pid, %[2]d, j))) END", t2d, sMeasure+22)},
		// eGFR: falls with age, lower in heart failure; yearly for the
		// monitored (diabetes, hypertension, CHD, HF, 65+).
		{codeEGFR, "age >= 18", fmt.Sprintf("CASE WHEN %s THEN 1.0 ELSE 0.25 END", monitored),
			fmt.Sprintf("125 - 0.8 * age - 15 * (%s)::INTEGER + 12 * z(pid, %d)", hasCond(condHeartFailure), sMeasure+31),
			fmt.Sprintf("least(150, greatest(5, round(pv + 5 * zj(pid, %d, j))))", sMeasure+32)},
	}
	for i, m := range measures {
		parts = append(parts, fmt.Sprintf(`SELECT pid, obs_start + floor(uj(pid, %d, j) * (obs_end - obs_start + 1))::INTEGER, %s, (%s)::DOUBLE FROM %s`,
			sMeasure+10*i+3, quote(m.code), m.value, repeats(sMeasure+10*i+4, m.where, "("+m.rate+") * "+years, m.person)))
	}
	// Outliers: 400 blood-pressure readings each, spread over their record.
	parts = append(parts, fmt.Sprintf(`SELECT pid, obs_start + floor(j * (obs_end - obs_start + 1) / 400)::INTEGER, %s,
  least(250, greatest(80, round(140 + 15 * zj(pid, %d, j))))::DOUBLE
FROM (SELECT `+ptCols+`, unnest(range(400)) AS j FROM pt WHERE pid IN (%s))`, quote(codeSBP), sOutlier+1, specialsOutlier))

	return "CREATE TABLE clinical_events AS SELECT pid::BIGINT AS patient_id, date::DATE AS date, snomed_code::VARCHAR AS snomed_code, numeric_value::DOUBLE AS numeric_value FROM (\n" +
		strings.Join(parts, "\nUNION ALL\n") + ")"
}

// course is one class of repeat prescribing: who gets it, from when, until
// when, how often an issue is made.
type course struct {
	class                int
	where, start, stop   string
	every                string
	product              string // SQL giving the product index within the class
	probability          string
	probabilityStreamOff int
}

// medicationsSQL builds the courses table (one row per patient per repeat
// course) and then expands it to issues; antibiotics are acute courses with
// a winter peak; outliers get daily issues.
func medicationsSQL(specialsOutlier string) []string {
	dd := diagDate
	prod := func(class, off int) string {
		return fmt.Sprintf("floor(u(pid, %d) * %d)::INTEGER", sDrug+10*class+off, len(drugs[class]))
	}
	jitter := func(class int) string { return fmt.Sprintf("floor(u(pid, %d) * 60)::INTEGER", sDrug+10*class+9) }
	statinStart := fmt.Sprintf("CASE WHEN %s THEN %s WHEN %s THEN %s ELSE obs_start + floor(u(pid, %d) * (obs_end - obs_start + 1) / 2)::INTEGER END",
		hasCond(condCHD), dd(condCHD), hasCond(condT2D), dd(condT2D), sDrug+10*drugStatin+8)
	statinP := fmt.Sprintf("1 - (1 - 0.8 * (%s)::INTEGER) * (1 - 0.65 * (%s)::INTEGER) * (1 - CASE WHEN age >= 65 THEN 0.3 WHEN age >= 50 THEN 0.12 WHEN age >= 40 THEN 0.03 ELSE 0 END)",
		hasCond(condCHD), hasCond(condT2D))
	courses := []course{
		{class: drugMetformin, where: hasCond(condT2D), start: dd(condT2D), stop: "obs_end", every: "28", probability: "0.82"},
		{class: drugStatin, where: "age >= 18", start: statinStart, stop: "obs_end", every: "28", probability: statinP},
		{class: drugAntihypertensive, where: hasCond(condHypertension), start: dd(condHypertension), stop: "obs_end", every: "28", probability: "0.8"},
		// A second antihypertensive for a third of the treated, a different product.
		{class: drugAntihypertensive, where: hasCond(condHypertension), start: dd(condHypertension) + " + 180", stop: "obs_end", every: "28", probability: "0.35",
			product:              fmt.Sprintf("(%s + 1 + floor(u(pid, %d) * %d)::INTEGER) %% %d", prod(drugAntihypertensive, 0), sDrug+10*drugAntihypertensive+2, len(drugs[drugAntihypertensive])-1, len(drugs[drugAntihypertensive])),
			probabilityStreamOff: 3},
		{class: drugAntihypertensive, where: hasCond(condHeartFailure), start: dd(condHeartFailure), stop: "obs_end", every: "28", probability: "0.7", probabilityStreamOff: 4,
			product: fmt.Sprintf("floor(u(pid, %d) * 2)::INTEGER * 3 + 1", sDrug+10*drugAntihypertensive+5)}, // ramipril or bisoprolol
		{class: drugICS, where: hasCond(condAsthma), start: dd(condAsthma), stop: "obs_end", every: "56", probability: "0.55"},
		{class: drugICS, where: hasCond(condCOPD), start: dd(condCOPD), stop: "obs_end", every: "56", probability: "0.7", probabilityStreamOff: 3},
		{class: drugSalbutamol, where: hasCond(condAsthma), start: dd(condAsthma), stop: "obs_end", every: fmt.Sprintf("(42 + floor(u(pid, %d) * 80))::INTEGER", sDrug+10*drugSalbutamol+7), probability: "0.85"},
		{class: drugSalbutamol, where: hasCond(condCOPD), start: dd(condCOPD), stop: "obs_end", every: fmt.Sprintf("(28 + floor(u(pid, %d) * 60))::INTEGER", sDrug+10*drugSalbutamol+6), probability: "0.8", probabilityStreamOff: 3},
		{class: drugAnticoagulant, where: hasCond(condAF), start: dd(condAF), stop: "obs_end", every: "28", probability: "0.8"},
		// Antidepressants: a course of six months to two years.
		{class: drugAntidepressant, where: hasCond(condDepression), start: dd(condDepression),
			stop: fmt.Sprintf("least(obs_end, %s + 180 + floor(u(pid, %d) * 540)::INTEGER)", dd(condDepression), sDrug+10*drugAntidepressant+8), every: "28", probability: "0.55"},
	}
	var cs []string
	for _, c := range courses {
		p := c.product
		if p == "" {
			p = prod(c.class, 0)
		}
		cs = append(cs, fmt.Sprintf(`SELECT pid, %[1]d * 10 + %[2]s AS k, (%[3]s + %[4]s)::DATE AS start, (%[5]s)::DATE AS stop, (%[6]s)::INTEGER AS every
FROM pt WHERE (%[7]s) AND u(pid, %[8]d) < %[9]s`,
			c.class, p, c.start, jitter(c.class), c.stop, c.every, c.where, sDrug+10*c.class+1+c.probabilityStreamOff, c.probability))
	}
	coursesSQL := "CREATE TEMP TABLE courses AS SELECT c.pid, c.start, c.stop, c.every, d.code FROM (\n" + strings.Join(cs, "\nUNION ALL\n") +
		"\n) c JOIN dmd_index d ON d.k = c.k WHERE c.stop >= c.start"

	// Antibiotics: ~0.5 courses a year, more for young children, the old,
	// COPD and asthma; winter peak.
	abRate := fmt.Sprintf("CASE WHEN age < 5 THEN 0.9 WHEN age >= 65 THEN 0.7 ELSE 0.4 END + 1.5 * (%s)::INTEGER + 0.5 * (%s)::INTEGER",
		hasCond(condCOPD), hasCond(condAsthma))
	// The product index is drawn once per row in an inner query: a CASE
	// on the draw itself would compute the hash once per branch.
	abCode := caseIndex("pick", codesOf(drugAntibiotic))
	allChronic := append(append(codesOf(drugAntihypertensive), codesOf(drugStatin)...), codesOf(drugMetformin)...)
	outlierCode := pickUniform(fmt.Sprintf("uj(pid, %d, j)", sOutlier+2), allChronic)

	meds := fmt.Sprintf(`CREATE TABLE medications AS SELECT patient_id::BIGINT AS patient_id, date::DATE AS date, dmd_code::VARCHAR AS dmd_code FROM (
SELECT pid AS patient_id, start + (j * every)::INTEGER AS date, code AS dmd_code
FROM (SELECT pid, start, every, code, unnest(range(((stop - start) // every + 1)::BIGINT)) AS j FROM courses)
UNION ALL
SELECT pid, d, %[1]s FROM (SELECT pid, d, floor(uj(pid, %[5]d, j) * %[6]d)::INTEGER AS pick FROM %[2]s)
UNION ALL
SELECT pid, obs_start + floor(j * (obs_end - obs_start + 1) / 3000)::INTEGER, %[3]s
FROM (SELECT `+ptCols+`, unnest(range(3000)) AS j FROM pt WHERE pid IN (%[4]s)))`,
		abCode, slots(sDrug+10*drugAntibiotic+3, "true", "obs_start", "obs_end", abRate, true), outlierCode, specialsOutlier,
		sDrug+10*drugAntibiotic+2, len(drugs[drugAntibiotic]))
	return []string{coursesSQL, meds}
}

func codesOf(class int) []string {
	out := make([]string, len(drugs[class]))
	for i := range out {
		out[i] = dmdCode(class, i)
	}
	return out
}

// admissionsSQL builds hospital_admissions.
func admissionsSQL(specialsOutlier string) string {
	type kind struct {
		where, from, rate, diag, method, los string
	}
	emergencyDiag := fmt.Sprintf("CASE WHEN age >= 75 AND uj(pid, %d, j) < 0.15 THEN 'S72.0' ELSE %s END",
		sAdmission+7, pickUniform(fmt.Sprintf("uj(pid, %d, j)", sAdmission+8), icdEmergency))
	emergencyMethod := fmt.Sprintf("CASE WHEN uj(pid, %d, j) < 0.03 THEN 'transfer' ELSE 'emergency' END", sAdmission+9)
	kinds := []kind{
		{hasCond(condHeartFailure), diagDate(condHeartFailure), "0.35",
			pickCum(fmt.Sprintf("uj(pid, %d, j)", sAdmission+2), []float64{0.5, 0.2, 0.3}, []string{"'I50.0'", "'I50.1'", "'I50.9'"}), "'emergency'", "9"},
		{hasCond(condCOPD), diagDate(condCOPD), "0.2",
			pickCum(fmt.Sprintf("uj(pid, %d, j)", sAdmission+2), []float64{0.7, 0.3}, []string{"'J44.1'", "'J44.0'"}), "'emergency'", "5"},
		{hasCond(condCHD), diagDate(condCHD), "0.04", "'I21.9'", "'emergency'", "6"},
		{hasCond(condAF), diagDate(condAF), "0.08", "'I48.9'", "'emergency'", "3"},
		{hasCond(condT2D), diagDate(condT2D), "0.02", "'E11.9'", "'emergency'", "4"},
		{hasCond(condAsthma), diagDate(condAsthma), "0.03", "'J45.9'", "'emergency'", "2"},
		{"true", "obs_start", "0.04 + 0.0025 * age", emergencyDiag, emergencyMethod, "(2 + age / 15.0)"},
		{"true", "obs_start", "0.03 + 0.0015 * age", pickUniform(fmt.Sprintf("uj(pid, %d, j)", sAdmission+2), icdElective), "'elective'", "1.2"},
		{"sex_i = 0 AND age BETWEEN 18 AND 45", "obs_start", "0.06",
			pickCum(fmt.Sprintf("uj(pid, %d, j)", sAdmission+2), []float64{0.75, 0.25}, []string{"'O80'", "'O82'"}), "'maternity'", "1.5"},
	}
	var parts []string
	for i, k := range kinds {
		s := sAdmission + 10*(i+1)
		// Streams of the kind's CASEs are offset so each kind draws anew.
		diag := strings.ReplaceAll(k.diag, fmt.Sprintf("uj(pid, %d,", sAdmission+2), fmt.Sprintf("uj(pid, %d,", s+2))
		parts = append(parts, fmt.Sprintf(`SELECT pid, d AS admission_date, least(obs_end, d + floor(expo(pid, %d, j, %s))::INTEGER) AS discharge_date, %s AS primary_diagnosis, %s AS admission_method
FROM %s`, s+4, k.los, diag, k.method, slots(s, k.where, k.from, "obs_end", k.rate, false)))
	}
	// Outliers: 30 emergency admissions each.
	parts = append(parts, fmt.Sprintf(`SELECT pid, obs_start + floor(j * (obs_end - obs_start + 1) / 30)::INTEGER AS d,
  least(obs_end, obs_start + floor(j * (obs_end - obs_start + 1) / 30)::INTEGER + 3), 'J44.1', 'emergency'
FROM (SELECT `+ptCols+`, unnest(range(30)) AS j FROM pt WHERE pid IN (%s))`, specialsOutlier))
	return "CREATE TABLE hospital_admissions AS SELECT pid::BIGINT AS patient_id, admission_date::DATE AS admission_date, discharge_date::DATE AS discharge_date, primary_diagnosis::VARCHAR AS primary_diagnosis, admission_method::VARCHAR AS admission_method FROM (\n" +
		strings.Join(parts, "\nUNION ALL\n") + ")"
}

// vaccinationsSQL builds vaccinations. Uptake follows UKHSA's published
// patterns: flu ~78% in over-65s, ~45% in children and at-risk adults;
// COVID-19 primary course ~88% of adults; lower uptake in the most deprived
// quintile and in Black and Asian groups.
func vaccinationsSQL() string {
	mult := "CASE imd WHEN 1 THEN 0.85 WHEN 2 THEN 0.92 WHEN 3 THEN 1.0 WHEN 4 THEN 1.04 ELSE 1.07 END * " +
		"CASE eth_i WHEN 3 THEN 0.6 WHEN 2 THEN 0.85 WHEN 1 THEN 0.85 WHEN 4 THEN 0.85 WHEN 5 THEN 0.9 ELSE 1.0 END"
	atRisk := fmt.Sprintf("(conds & %d) <> 0", 1<<condT2D|1<<condCOPD|1<<condAsthma|1<<condCHD|1<<condHeartFailure)
	// Age in the autumn of 2020+s is age - (4 - s).
	fluP := fmt.Sprintf(`CASE WHEN age - (4 - s) >= 65 THEN 0.78 WHEN age - (4 - s) BETWEEN 2 AND 16 THEN 0.45
  WHEN age - (4 - s) >= 18 AND %s THEN 0.45 WHEN age - (4 - s) >= 18 THEN 0.08 ELSE 0 END`, atRisk)
	v := sVaccine
	covid1 := fmt.Sprintf("age >= 21 AND u(pid, %d) < 0.88 * %s", v+10, mult)
	covidDate := fmt.Sprintf("(DATE '2020-12-15' + floor((100 - least(age, 100)) * 1.8 + u(pid, %d) * 21)::INTEGER)", v+11)
	parts := []string{
		fmt.Sprintf(`SELECT pid, make_date(2020 + s::INTEGER, 9, 1) + floor(uj(pid, %d, s) * 100)::INTEGER AS d, 'influenza' AS vaccine, obs_start, obs_end
FROM (SELECT `+ptCols+`, unnest(range(5)) AS s FROM pt) WHERE uj(pid, %d, s) < (%s) * %s`, v, v+1, fluP, mult),
		fmt.Sprintf(`SELECT pid, %s, 'covid19', obs_start, obs_end FROM pt WHERE %s`, covidDate, covid1),
		fmt.Sprintf(`SELECT pid, %s + 70 + floor(u(pid, %d) * 28)::INTEGER, 'covid19', obs_start, obs_end FROM pt WHERE %s AND u(pid, %d) < 0.95`, covidDate, v+12, covid1, v+13),
		fmt.Sprintf(`SELECT pid, DATE '2021-09-20' + floor(u(pid, %d) * 90)::INTEGER, 'covid19', obs_start, obs_end FROM pt WHERE %s AND age >= 53 AND u(pid, %d) < 0.85`, v+14, covid1, v+15),
		fmt.Sprintf(`SELECT pid, make_date(2022 + s::INTEGER, 9, 5) + floor(uj(pid, %d, s) * 100)::INTEGER, 'covid19', obs_start, obs_end
FROM (SELECT `+ptCols+`, unnest(range(3)) AS s FROM pt WHERE age >= 67) WHERE uj(pid, %d, s) < 0.7 * %s`, v+16, v+17, mult),
		fmt.Sprintf(`SELECT pid, CAST(dob + INTERVAL 65 YEAR AS DATE) + floor(u(pid, %d) * 365)::INTEGER, 'pneumococcal', obs_start, obs_end FROM pt WHERE age BETWEEN 65 AND 69 AND u(pid, %d) < 0.7 * %s`, v+20, v+21, mult),
		fmt.Sprintf(`SELECT pid, obs_start + floor(u(pid, %d) * (obs_end - obs_start + 1))::INTEGER, 'shingles', obs_start, obs_end FROM pt WHERE age BETWEEN 70 AND 79 AND u(pid, %d) < 0.45 * %s`, v+30, v+31, mult),
		fmt.Sprintf(`SELECT pid, CAST(dob + INTERVAL 12 MONTH AS DATE) + floor(u(pid, %d) * 60)::INTEGER, 'mmr', obs_start, obs_end FROM pt WHERE age <= 6 AND u(pid, %d) < 0.9`, v+40, v+41),
		fmt.Sprintf(`SELECT pid, CAST(dob + INTERVAL 40 MONTH AS DATE) + floor(u(pid, %d) * 90)::INTEGER, 'mmr', obs_start, obs_end FROM pt WHERE age <= 8 AND u(pid, %d) < 0.86`, v+42, v+43),
	}
	return "CREATE TABLE vaccinations AS SELECT pid::BIGINT AS patient_id, d::DATE AS date, vaccine::VARCHAR AS vaccine FROM (\n" +
		strings.Join(parts, "\nUNION ALL\n") + ") WHERE d BETWEEN obs_start AND obs_end"
}

// optoutsSQL: about 5% of patients opt out; of them 40% type 1 only, 45%
// national data opt-out only, 15% both (one row per kind).
func optoutsSQL() string {
	return fmt.Sprintf(`CREATE TABLE optouts AS SELECT pid::BIGINT AS patient_id, kind::VARCHAR AS kind FROM (
SELECT pid, 'type1' AS kind FROM pt WHERE u(pid, %[1]d) < 0.05 AND u(pid, %[2]d) < 0.55
UNION ALL
SELECT pid, 'ndop' FROM pt WHERE u(pid, %[1]d) < 0.05 AND u(pid, %[2]d) >= 0.40)`, sOptout, sOptout+1)
}
