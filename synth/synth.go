// Package synth generates a synthetic NHS GP record extract: patients,
// clinical events, medications, hospital admissions, vaccinations and
// opt-outs shaped like an OpenSAFELY-style extract, with distributions that
// look like England (age–sex pyramid, regions, ethnicity, deprivation,
// recorded prevalence close to QOF figures), plus the public code lookups and
// the dataset catalog that describes it to tre.
//
// Everything is generated inside DuckDB with set-based SQL from hash-based
// pseudo-random numbers keyed by the seed and the patient id, so a seed
// always produces the same data whatever the thread count. The data is
// entirely synthetic: no real patient record is read, copied or sampled.
// synth must never read real patient data, and never leave a half-written
// dataset where a complete one is expected (it writes to a temporary file
// and renames it on success).
package synth

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	_ "github.com/duckdb/duckdb-go/v2" // registers the "duckdb" driver
)

// MaxPatients bounds the population: patient ids are a bijection of the
// row number modulo 2^40 computed in 64-bit integers, safe below 2^27.
const MaxPatients = 100_000_000

// Options says what to generate and where.
type Options struct {
	// Out is the DuckDB file to write. The catalog goes beside it (see
	// CatalogPath).
	Out      string
	Patients int
	Seed     int64
	// Dataset names the dataset in the catalog; empty means DatasetName.
	// Sites that each publish synthetic data to one broker need distinct
	// names: a dataset belongs to the one site that published it first.
	Dataset string
	// Force allows replacing an existing Out (and its catalog).
	Force bool
	// Progress, if set, is called when each stage starts (done = stages
	// finished so far) and once more at the end with done == total.
	Progress func(stage string, done, total int)
	// MemoryLimit is DuckDB's memory_limit; empty means 3GB, which keeps the
	// process's peak RSS under 4 GB for 10M patients.
	MemoryLimit string
	// Threads is DuckDB's thread count; 0 means DuckDB's default (all cores).
	Threads int
	// Now is the clock for stage timings; nil means time.Now.
	Now func() time.Time
}

// Stage is one generation step: the table it wrote, the rows written and how
// long it took.
type Stage struct {
	Name     string        `json:"name"`
	Rows     int64         `json:"rows"`
	Duration time.Duration `json:"duration"`
}

// Stats describes a finished generation.
type Stats struct {
	Out         string        `json:"out"`
	CatalogPath string        `json:"catalog_path"`
	Patients    int           `json:"patients"`
	Seed        int64         `json:"seed"`
	Stages      []Stage       `json:"stages"`
	Total       time.Duration `json:"total"`
}

// Stage names besides the tables.
const (
	stagePrepare = "prepare"
	stageLookups = "lookups"
	stageFinish  = "finish"
)

// CatalogPath returns where the catalog of the dataset at out is written:
// x.duckdb → x.catalog.yaml.
func CatalogPath(out string) string {
	return strings.TrimSuffix(out, filepath.Ext(out)) + ".catalog.yaml"
}

func (o Options) validate() error {
	if o.Out == "" {
		return errors.New("output file is required")
	}
	if o.Patients < 1 || o.Patients > MaxPatients {
		return fmt.Errorf("patients must be between 1 and %d, got %d", MaxPatients, o.Patients)
	}
	if o.Threads < 0 {
		return fmt.Errorf("threads must not be negative, got %d", o.Threads)
	}
	for _, r := range o.Dataset {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return fmt.Errorf("dataset %q may contain only letters, digits, '-', '_' and '.'", o.Dataset)
		}
	}
	if len(o.Dataset) > 128 {
		return fmt.Errorf("dataset name is longer than 128 characters")
	}
	if o.MemoryLimit != "" && strings.ContainsAny(o.MemoryLimit, "'\\;") {
		return fmt.Errorf("memory limit %q is not a size like 3GB", o.MemoryLimit)
	}
	return nil
}

// Generate writes the synthetic dataset to opts.Out and its catalog beside
// it. It refuses to replace existing files unless opts.Force. Data is built
// in a temporary directory next to Out and renamed into place only when
// complete, so an interrupted run leaves no partial dataset behind.
func Generate(ctx context.Context, opts Options) (*Stats, error) {
	if err := opts.validate(); err != nil {
		return nil, err
	}
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	catPath := CatalogPath(opts.Out)
	if !opts.Force {
		for _, p := range []string{opts.Out, catPath} {
			if _, err := os.Stat(p); err == nil {
				return nil, fmt.Errorf("%s already exists (use force to replace it)", p)
			} else if !errors.Is(err, os.ErrNotExist) {
				return nil, fmt.Errorf("check %s: %w", p, err)
			}
		}
	}
	dir := filepath.Dir(opts.Out)
	tmp, err := os.MkdirTemp(dir, ".synth-*")
	if err != nil {
		return nil, fmt.Errorf("create temporary directory beside %s: %w", opts.Out, err)
	}
	defer os.RemoveAll(tmp)

	tmpDB := filepath.Join(tmp, "data.duckdb")
	stats, err := generate(ctx, tmpDB, filepath.Join(tmp, "spill"), opts, now)
	if err != nil {
		return nil, err
	}
	cat := Catalog()
	if opts.Dataset != "" {
		cat.Dataset = opts.Dataset
	}
	tmpCat := filepath.Join(tmp, "catalog.yaml")
	if err := writeCatalog(tmpCat, cat); err != nil {
		return nil, err
	}
	// The data first: a catalog never describes a file that is not there.
	if err := os.Rename(tmpDB, opts.Out); err != nil {
		return nil, fmt.Errorf("move dataset into place: %w", err)
	}
	if err := os.Rename(tmpCat, catPath); err != nil {
		return nil, fmt.Errorf("move catalog into place: %w", err)
	}
	stats.Out, stats.CatalogPath = opts.Out, catPath
	return stats, nil
}

// specials picks the outlier and rare-condition patients. They are chosen in
// Go with a seeded PCG so their number is exact (a handful of outliers, about
// one Fabry patient per 50,000) rather than left to chance.
func specials(n int, seed int64, mulA, addB uint64) (outliers, fabry string) {
	r := rand.New(rand.NewPCG(uint64(seed), 0x5eed0f5ec1a15))
	nOut := 2 + n/500_000
	nFabry := max(1, int(float64(n)*fabryRate+0.5))
	pick := func(k int, taken map[int]bool) string {
		ids := make([]string, 0, k)
		for len(ids) < min(k, n-len(taken)) {
			i := r.IntN(n)
			if taken[i] {
				continue
			}
			taken[i] = true
			pid := (uint64(i)*mulA+addB)%(1<<40) + 1
			ids = append(ids, strconv.FormatUint(pid, 10))
		}
		if len(ids) == 0 {
			return "NULL"
		}
		return strings.Join(ids, ", ")
	}
	taken := map[int]bool{}
	outliers = pick(nOut, taken)
	fabry = pick(nFabry, taken)
	return outliers, fabry
}

// idMap returns the multiplier (odd, below 2^32) and offset of the bijection
// row number → pseudonymous patient id: (i·A + B) mod 2^40 + 1.
func idMap(seed int64) (mulA, addB uint64) {
	x := uint64(seed)
	next := func() uint64 { // splitmix64
		x += 0x9e3779b97f4a7c15
		z := x
		z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
		z = (z ^ (z >> 27)) * 0x94d049bb133111eb
		return z ^ (z >> 31)
	}
	mulA = (next() & 0xffffffff) | 1
	addB = next() % (1 << 40)
	return mulA, addB
}

type step struct {
	name  string
	stmts []string
	table string // counted for Stats; empty for none
}

func generate(ctx context.Context, path, spill string, opts Options, now func() time.Time) (*Stats, error) {
	risk, err := riskTable()
	if err != nil {
		return nil, err
	}
	mulA, addB := idMap(opts.Seed)
	outliers, fabry := specials(opts.Patients, opts.Seed, mulA, addB)

	// An in-memory instance that attaches the output file, so the file can
	// use DuckDB's current storage format (faster string compression than
	// the default, which stays readable by DuckDB 0.10). Readers need
	// DuckDB 1.5 or later, which every tre binary embeds.
	db, err := sql.Open("duckdb", "")
	if err != nil {
		return nil, fmt.Errorf("open DuckDB: %w", err)
	}
	defer db.Close()
	// One connection: temporary tables and macros live in it.
	conn, err := db.Conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", path, err)
	}
	defer conn.Close()

	mem := opts.MemoryLimit
	if mem == "" {
		mem = "3GB"
	}
	setup := []string{
		"ATTACH " + quote(path) + " AS gp (STORAGE_VERSION 'v1.5.0')",
		"USE gp",
		"SET memory_limit = " + quote(mem),
		"SET temp_directory = " + quote(spill),
		// Row order carries no meaning here; not preserving it lets DuckDB
		// write in parallel with less memory.
		"SET preserve_insertion_order = false",
	}
	if opts.Threads > 0 {
		setup = append(setup, fmt.Sprintf("SET threads = %d", opts.Threads))
	}
	setup = append(setup, macros(opts.Seed)...)
	setup = append(setup, riskTableSQL(risk)...)
	setup = append(setup, dmdIndexSQL(),
		fmt.Sprintf("CREATE TEMP TABLE ids AS SELECT range AS i FROM range(%d)", opts.Patients),
		ptSQL(opts.Patients, mulA, addB, fabry+", "+outliers))

	steps := []step{
		{name: stagePrepare, stmts: setup},
		// The primary key makes one row per patient a fact DuckDB enforces,
		// which lets queries over patients skip contribution bounding
		// (queries.UniqueColumnsSQL). It costs ~0.4 s at 1M patients and ~7 s at
		// 10M on two cores (BENCHMARKS.md).
		{name: "patients", stmts: []string{patientsSQL(opts.Patients), "ALTER TABLE patients ADD PRIMARY KEY (patient_id)"}, table: "patients"},
		{name: "clinical_events", stmts: []string{clinicalEventsSQL(fabry, outliers)}, table: "clinical_events"},
		{name: "medications", stmts: medicationsSQL(outliers), table: "medications"},
		{name: "hospital_admissions", stmts: []string{admissionsSQL(outliers)}, table: "hospital_admissions"},
		{name: "vaccinations", stmts: []string{vaccinationsSQL()}, table: "vaccinations"},
		{name: "optouts", stmts: []string{optoutsSQL()}, table: "optouts"},
		{name: stageLookups, stmts: lookupSQL()},
		{name: stageFinish, stmts: []string{"DROP TABLE pt", "DROP TABLE ids", "DROP TABLE courses", "CHECKPOINT gp", "USE memory", "DETACH gp"}},
	}

	stats := &Stats{Patients: opts.Patients, Seed: opts.Seed}
	start := now()
	for i, s := range steps {
		if opts.Progress != nil {
			opts.Progress(s.name, i, len(steps))
		}
		t0 := now()
		for _, q := range s.stmts {
			if _, err := conn.ExecContext(ctx, q); err != nil {
				if ctxErr := ctx.Err(); ctxErr != nil {
					return nil, ctxErr
				}
				return nil, fmt.Errorf("stage %s: %w", s.name, err)
			}
		}
		st := Stage{Name: s.name}
		if s.table != "" {
			if err := conn.QueryRowContext(ctx, "SELECT count(*) FROM "+s.table).Scan(&st.Rows); err != nil {
				return nil, fmt.Errorf("stage %s: count rows: %w", s.name, err)
			}
		}
		st.Duration = now().Sub(t0)
		stats.Stages = append(stats.Stages, st)
	}
	if err := conn.Close(); err != nil {
		return nil, fmt.Errorf("close %s: %w", path, err)
	}
	if err := db.Close(); err != nil {
		return nil, fmt.Errorf("close %s: %w", path, err)
	}
	stats.Total = now().Sub(start)
	if opts.Progress != nil {
		opts.Progress("done", len(steps), len(steps))
	}
	return stats, nil
}

// riskTableSQL loads the per-cell condition probabilities.
func riskTableSQL(cells []riskCell) []string {
	cols := make([]string, nConditions)
	for c := range cols {
		cols[c] = fmt.Sprintf("p%d DOUBLE", c)
	}
	stmts := []string{"CREATE TEMP TABLE risk (k INTEGER, " + strings.Join(cols, ", ") + ")"}
	const batch = 1000
	for lo := 0; lo < len(cells); lo += batch {
		var b strings.Builder
		b.WriteString("INSERT INTO risk VALUES ")
		for i, c := range cells[lo:min(lo+batch, len(cells))] {
			if i > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "(%d", riskKey(c.age, c.sex, c.imd, c.eth))
			for _, p := range c.p {
				b.WriteString(", " + num(p))
			}
			b.WriteString(")")
		}
		stmts = append(stmts, b.String())
	}
	return stmts
}

// dmdIndexSQL maps class*10 + product index to the product's code.
func dmdIndexSQL() string {
	var rows []string
	for c := range nDrugClasses {
		for i := range drugs[c] {
			rows = append(rows, fmt.Sprintf("(%d, %s)", c*10+i, quote(dmdCode(c, i))))
		}
	}
	return "CREATE TEMP TABLE dmd_index AS SELECT * FROM (VALUES " + strings.Join(rows, ", ") + ") t(k, code)"
}

// lookupSQL writes the public lookup tables.
func lookupSQL() []string {
	var sn []string
	for _, r := range snomedRows() {
		sn = append(sn, fmt.Sprintf("(%s, %s, %s)", quote(r.code), quote(r.term), quote(r.condition)))
	}
	var dm []string
	for c := range nDrugClasses {
		for i, name := range drugs[c] {
			dm = append(dm, fmt.Sprintf("(%s, %s, %s)", quote(dmdCode(c, i)), quote(name), quote(drugClassNames[c])))
		}
	}
	return []string{
		"CREATE TABLE snomed_codes (snomed_code VARCHAR, term VARCHAR, condition VARCHAR)",
		"INSERT INTO snomed_codes VALUES " + strings.Join(sn, ", "),
		"CREATE TABLE dmd_codes (dmd_code VARCHAR, name VARCHAR, drug_class VARCHAR)",
		"INSERT INTO dmd_codes VALUES " + strings.Join(dm, ", "),
	}
}
