package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nhs-tre/tre/internal/ctxtime"
	"github.com/nhs-tre/tre/job"
	"github.com/nhs-tre/tre/queries"
	"github.com/nhs-tre/tre/sandbox"
	"github.com/nhs-tre/tre/synth"
)

// Config is one `tre bench` run: what to measure and how often. cmd/tre
// fills it from flags and starts the broker the API phases drive.
type Config struct {
	// Patients to generate; 0 with Data set reuses that file.
	Patients int
	// Data is a DuckDB file written by tre synth to reuse instead of
	// generating one; Catalog its catalog (default: beside Data).
	Data, Catalog string
	// Postgres is a PostgreSQL URL: also load the rows into a fresh schema
	// and run the aggregates there, and benchmark the broker on PostgreSQL.
	Postgres string
	// Out, if set, is a file the Markdown report is also written to.
	Out string
	// Reps measured and Warmup unmeasured runs of each query; Starts
	// sandbox starts to time.
	Reps, Warmup, Starts int
	// Submissions and Reads are the API requests sent to each broker store
	// by Clients concurrent clients, each phase capped at LoadCap.
	Submissions, Reads, Clients int
	LoadCap                     time.Duration
	// SnapshotTimeout bounds building the release snapshot (0: the
	// sandbox's default, sandbox.DefaultConfig).
	SnapshotTimeout time.Duration
	// MemoryLimit is each sandbox child's memory limit in bytes, a site's
	// memory_limit (0: the sandbox's default); raw and warm runs get the
	// DuckDB share of it the child's DuckDB gets.
	MemoryLimit int64
	// PoolIdle is how long a pooled run waits, once the pool's child has
	// warmed, before its job: a job arriving after a pause.
	PoolIdle  time.Duration
	Seed      int64
	AllowWeak bool
	// Keep keeps the generated data directory.
	Keep bool
	// Explain names a typical query ("all": every one) whose EXPLAIN
	// ANALYZE to print instead of benchmarking.
	Explain string
	// APIOnly runs only the broker API phases (needs Data or Catalog).
	APIOnly bool
	// PerClient gives each API client its own project.
	PerClient bool
	// Replicas, above 1, also measures that many brokers on one
	// PostgreSQL database (needs Postgres), the clients spread over them.
	Replicas int
	// Federated, from 2, runs only the federated measurement (issue 21)
	// over that many sites holding the data (federated.go).
	Federated int

	// Command is the command line the report names (passwords redacted).
	Command string
	// Stdout gets the report; Stderr progress, as a bar when Terminal.
	Stdout, Stderr io.Writer
	Terminal       bool
	// StartBroker starts a broker as `tre serve --dev` does, keeping its
	// files under dir and its tables in databaseURL (SQLite when "").
	StartBroker func(ctx context.Context, dir, databaseURL string) (Broker, error)
	Now         func() time.Time
}

// DefaultConfig returns the sizes `tre bench` uses unless told otherwise.
func DefaultConfig() Config {
	return Config{Reps: 5, Warmup: 1, Starts: 20, Submissions: 2000, Reads: 20000, Clients: 4, LoadCap: 30 * time.Second, Seed: 1, Replicas: 1}
}

// Validate reports the first problem with c, naming its flag.
func (c Config) Validate() error {
	switch {
	case c.APIOnly && c.Data == "" && c.Catalog == "":
		return errors.New("--api-only needs --data or --catalog (the API phases need only the catalog)")
	case c.APIOnly && c.Explain != "":
		return errors.New("--api-only and --explain exclude each other")
	case !c.APIOnly && c.Data == "" && (c.Patients < 1 || c.Patients > synth.MaxPatients):
		return fmt.Errorf("--patients must be between 1 and %d (or give --data)", synth.MaxPatients)
	case c.Reps < 1:
		return errors.New("--reps must be at least 1")
	case c.Warmup < 0:
		return errors.New("--warmup must not be negative")
	case c.Starts < 1:
		return errors.New("--starts must be at least 1")
	case c.Submissions < 1 || c.Reads < 1:
		return errors.New("--submissions and --reads must be at least 1")
	case c.Clients < 1 || c.Clients > 256:
		return errors.New("--clients must be between 1 and 256")
	case c.Replicas < 1 || c.Replicas > 16:
		return errors.New("--replicas must be between 1 and 16")
	case c.Replicas > 1 && c.Postgres == "":
		return errors.New("--replicas needs --postgres: replicas share a PostgreSQL database")
	case c.LoadCap <= 0:
		return errors.New("--load-time-cap must be positive")
	case c.SnapshotTimeout < 0:
		return errors.New("--snapshot-timeout must not be negative")
	case c.PoolIdle < 0 || c.PoolIdle > 10*time.Minute:
		return errors.New("--pool-idle must be between 0 and 10m")
	case c.Federated != 0 && (c.Federated < 2 || c.Federated > 8):
		return errors.New("--federated must be between 2 and 8 sites")
	case c.Federated != 0 && (c.APIOnly || c.Explain != ""):
		return errors.New("--federated excludes --api-only and --explain")
	case c.Explain != "" && c.Explain != "all" && typicalSQL(c.Explain) == "":
		return fmt.Errorf("--explain: no typical query is named %q", c.Explain)
	}
	return nil
}

// harness is one run in progress.
type harness struct {
	Config
	startCPU time.Duration // CPU time of all measured sandbox starts
	// jobStart and pooledStart are the job starts (Run until the child has
	// the request) of the cold runs without and with the pool;
	// pooledMissed counts pooled runs that found no child ready.
	jobStart, pooledStart sample
	pooledMissed          int
	// jobPeak is the largest peak resident size a job's child reported
	// (sandbox.Config.ObserveChildPeak), and jobPeakAt the job it was
	// (peakAt when it reported: the typical query and phase in progress);
	// builderPeak the release snapshot builder's. The report takes them
	// once the typical queries are done; later phases' reports reach
	// neither.
	jobPeak, builderPeak int64
	jobPeakAt, peakAt    string
}

// notePeak keeps the largest job child's peak and where it was, and the
// builder's. The runners call it from Run, on the bench's one goroutine.
func (m *harness) notePeak(peak int64, builder bool) {
	switch {
	case builder:
		m.builderPeak = max(m.builderPeak, peak)
	case peak > m.jobPeak:
		m.jobPeak, m.jobPeakAt = peak, m.peakAt
	}
}

// Run generates or opens the data, runs every measurement in turn and
// prints one Markdown report: tre against the physical limit (raw DuckDB
// running the unprotected aggregate on the same file) and against
// PostgreSQL, plus sandbox start, broker API throughput and synth. Data
// files live in a temporary directory (removed afterwards) unless Data
// names an existing one.
func Run(ctx context.Context, cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.StartBroker == nil {
		return errors.New("bench: StartBroker is required")
	}
	m := &harness{Config: cfg}
	return m.run(ctx)
}

// benchReport is everything one run measured.
type benchReport struct {
	When      time.Time
	Command   string
	Machine   machineInfo
	Patients  int
	Data      string
	DataRows  []Table
	Threads   int
	MemLimit  int64
	Reps      int
	Warmup    int
	PoolIdle  time.Duration
	Synth     *synthResult
	Queries   []queryResult
	Pairs     []pairResult
	Postgres  *pgLoad
	Start     sample
	StartNote string
	// JobStart and PooledStart: see harness; PooledMissed likewise.
	JobStart, PooledStart sample
	PooledMissed          int
	API                   []apiResult
	Degraded              []string
	Clients               int
	// PerClient: each API client submitted to its own project.
	PerClient bool
	StartCPU  time.Duration
	// Snapshot is how long the sandbox's builder child took to build the
	// release snapshot, once per data file version (every job then reads
	// it; sandbox/snapshot.go).
	Snapshot time.Duration
	// Codelist compares a codelist join with IN (…).
	Codelist *codelistResult
	// JobPeak is the largest peak resident size a typical query's job
	// child reported as its answer came (cold or pooled), JobPeakAt which
	// query and how; BuilderPeak the release snapshot builder's. Each is
	// the child's own high-water mark (VmHWM), not the kernel's maximum
	// over the children, which counts this process's own peak too
	// (sandbox/harden_linux.go, peakRSSBytes).
	JobPeak, BuilderPeak int64
	JobPeakAt            string
	// Federated is `tre bench --federated N`'s measurement.
	Federated []fedResult
	// Failed lists the phases that failed, in order; the report keeps
	// what the others measured.
	Failed []phaseFailure
}

// dataset is the run's data file and catalog: --data (its catalog
// --catalog, else beside it), or a fresh `tre synth` of --patients in dir,
// whose generation rep.Synth records; synthStarts is called before it.
func (m *harness) dataset(ctx context.Context, dir string, rep *benchReport, synthStarts func()) (string, *queries.Catalog, error) {
	data, catPath := m.Data, m.Catalog
	if data == "" {
		data = filepath.Join(dir, "gp.duckdb")
		catPath = synth.CatalogPath(data)
		synthStarts()
		sr, err := runSynth(ctx, synth.Options{Out: data, Patients: m.Patients, Seed: m.Seed})
		if err != nil {
			return "", nil, fmt.Errorf("synth: %w", err)
		}
		rep.Synth = sr
	} else if catPath == "" {
		catPath = synth.CatalogPath(data)
	}
	rep.Data = data
	cat, err := queries.LoadCatalog(catPath)
	return data, cat, err
}

// run is the phases in the report's order, each a call; it stays one
// function so the order the report promises is read in one place.
func (m *harness) run(ctx context.Context) error {
	dir, err := os.MkdirTemp("", "tre-bench-")
	if err != nil {
		return err
	}
	if m.Keep {
		fmt.Fprintf(m.Stderr, "bench: keeping %s\n", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	rep := &benchReport{When: m.Now().UTC(), Command: redactURL(m.Command, m.Postgres), Machine: readMachine(), Reps: m.Reps, Warmup: m.Warmup, PoolIdle: m.PoolIdle, Clients: m.Clients, PerClient: m.PerClient}
	if m.APIOnly {
		return m.runAPIOnly(ctx, dir, rep)
	}
	if m.Federated > 0 {
		return m.runFederated(ctx, dir, rep)
	}

	p := newBenchProgress(m.Stderr, m.Terminal, m.totalSteps())
	defer p.finish()

	data, cat, err := m.dataset(ctx, dir, rep, func() { p.stage("synth") })
	if err != nil {
		return err
	}
	if rep.Synth != nil {
		p.step()
	}

	scfg, runner, pooled, err := m.newRunners(data, cat, dir)
	if err != nil {
		return err
	}
	defer runner.Close()
	defer pooled.Close()
	rep.Threads, rep.MemLimit = scfg.Threads, scfg.MemoryLimit
	// Raw and warm runs get the memory_limit the child's DuckDB gets.
	opts := Options{Threads: scfg.Threads, MemoryLimit: sandbox.DuckDBMemoryLimit(scfg.MemoryLimit)}

	raw, err := Open(ctx, data, opts)
	if err != nil {
		return err
	}
	rep.DataRows, err = raw.Tables(ctx)
	if err != nil {
		raw.Close()
		return fmt.Errorf("list tables: %w", err)
	}
	rep.Patients = patientsOf(rep)
	p.stage("release snapshot")
	start := time.Now()
	if err := runner.Prepare(ctx); err != nil {
		raw.Close()
		return fmt.Errorf("release snapshot: %w", err)
	}
	rep.Snapshot = time.Since(start)
	if err := pooled.Prepare(ctx); err != nil { // the kept snapshot, and the pool's first child
		raw.Close()
		return fmt.Errorf("release snapshot: %w", err)
	}
	pipe, err := OpenPipeline(ctx, data, cat, opts, dir)
	if err != nil {
		raw.Close()
		return err
	}
	if m.Explain != "" {
		p.finish()
		err := m.explainQueries(ctx, raw, pipe)
		pipe.Close()
		raw.Close()
		return err
	}
	// From here a phase that fails is named in the report, which keeps
	// every phase that finished (a 10M run is most of an hour); the run
	// still exits with an error.
	rep.Queries, err = m.measureQueries(ctx, p, raw, pipe, runner, pooled, rep)
	rep.JobStart, rep.PooledStart, rep.PooledMissed = m.jobStart, m.pooledStart, m.pooledMissed
	rep.JobPeak, rep.JobPeakAt, rep.BuilderPeak = m.jobPeak, m.jobPeakAt, m.builderPeak
	rep.phase(ctx, "typical queries", err)
	if err == nil {
		rep.Pairs, err = m.measurePairs(ctx, p, pipe)
		rep.phase(ctx, "statistics pairs", err)
	}
	pipe.Close()
	raw.Close()
	if ctx.Err() == nil {
		rep.Codelist, err = m.measureCodelist(ctx, p, runner, cat)
		rep.phase(ctx, "codelist join vs IN", err)
	}
	if m.Postgres != "" && ctx.Err() == nil {
		rep.phase(ctx, "postgres", m.runPostgres(ctx, p, data, dir, opts, rep))
	}
	if ctx.Err() == nil {
		p.stage("sandbox start")
		rep.Start, rep.StartNote, err = m.measureStart(ctx, p, dir, scfg)
		rep.StartCPU = m.startCPU
		rep.phase(ctx, "sandbox start", err)
	}
	if ctx.Err() == nil {
		rep.phase(ctx, "broker API", m.measureAPIs(ctx, p, dir, cat, rep))
	}
	p.finish()
	rep.Machine.LoadEnd = loadAverage()

	text := rep.markdown()
	if _, err := io.WriteString(m.Stdout, text); err != nil {
		return err
	}
	if m.Out != "" {
		if err := os.WriteFile(m.Out, []byte(text), 0o644); err != nil {
			return err
		}
	}
	if len(rep.Failed) > 0 {
		f := rep.Failed[0]
		return fmt.Errorf("%d phase(s) failed (the report above names each), first %s: %s", len(rep.Failed), f.Phase, f.Err)
	}
	return nil
}

// phaseFailure is a measurement phase that failed; the report names it.
type phaseFailure struct{ Phase, Err string }

// phase records err, if any, as phase's failure; once ctx is done, only
// the first phase it stopped is recorded.
func (rep *benchReport) phase(ctx context.Context, name string, err error) {
	if err == nil || (ctx.Err() != nil && len(rep.Failed) > 0) {
		return
	}
	rep.Failed = append(rep.Failed, phaseFailure{Phase: name, Err: err.Error()})
}

// runPostgres loads the data into PostgreSQL and runs the typical queries
// there, dropping the schema afterwards.
func (m *harness) runPostgres(ctx context.Context, p *benchProgress, data, dir string, opts Options, rep *benchReport) error {
	p.stage("postgres: load")
	pg, err := loadPostgres(ctx, m.Postgres, data, rep.DataRows, dir, opts)
	if err != nil {
		return err
	}
	p.step()
	err = m.measurePostgres(ctx, p, pg, rep.Queries)
	rep.Postgres = pg
	if derr := pg.drop(context.WithoutCancel(ctx)); derr != nil && err == nil {
		err = derr
	}
	return err
}

// applyLimits sets the memory limit and the snapshot's time limit the
// run asks for on scfg, leaving the sandbox's defaults where it asks for
// none.
func (m *harness) applyLimits(scfg *sandbox.Config) {
	if m.SnapshotTimeout > 0 {
		scfg.SnapshotTimeout = m.SnapshotTimeout
	}
	if m.MemoryLimit > 0 {
		scfg.MemoryLimit = m.MemoryLimit
	}
}

// newRunners starts the two sandboxes the report compares over the same
// data: one that starts a child per job (cold), and the same with a pool
// of one child started ahead of each job (sandbox/pool.go), so cold and
// pooled are measured side by side, and so is each job's start (Run until
// its child has the request). The caller closes both.
func (m *harness) newRunners(data string, cat *queries.Catalog, dir string) (sandbox.Config, *sandbox.Runner, *sandbox.Runner, error) {
	scfg := sandbox.DefaultConfig()
	scfg.DataPath = data
	scfg.Catalog = cat
	scfg.ScratchDir = filepath.Join(dir, "scratch")
	scfg.AllowWeak = m.AllowWeak
	m.applyLimits(&scfg)
	scfg.Logger = slog.New(slog.NewTextHandler(m.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	scfg.ObserveJobStart = func(d time.Duration, _ bool) { m.jobStart.add(d) }
	scfg.ObserveChildPeak = m.notePeak
	runner, err := sandbox.NewRunner(scfg)
	if err != nil {
		return scfg, nil, nil, err
	}
	pcfg := scfg
	pcfg.PoolSize = 1
	pcfg.ObserveJobStart = func(d time.Duration, pooled bool) {
		m.pooledStart.add(d)
		if !pooled {
			m.pooledMissed++
		}
	}
	pooled, err := sandbox.NewRunner(pcfg)
	if err != nil {
		runner.Close()
		return scfg, nil, nil, err
	}
	return scfg, runner, pooled, nil
}

// patientsOf is the number of patients the report is over: synthesised,
// or the rows of the data's patients table.
func patientsOf(rep *benchReport) int {
	if rep.Synth != nil {
		return rep.Synth.Stats.Patients
	}
	for _, t := range rep.DataRows {
		if t.Name == "patients" {
			return int(t.Rows)
		}
	}
	return 0
}

// totalSteps is the progress bar's length: one step per timed run.
func (m *harness) totalSteps() int {
	per := (m.Warmup + m.Reps) * 4
	if m.Postgres != "" {
		per += m.Warmup + m.Reps
	}
	n := len(queries.TypicalQueries)*per + len(statPairs)*(m.Warmup+m.Reps) + m.Starts + 1 + m.Warmup + m.Reps
	if m.Postgres != "" {
		n++ // the PostgreSQL load
	}
	if m.Data == "" {
		n++
	}
	return n + 2*len(m.apiStores())
}

// queryResult is one typical query measured every way.
type queryResult struct {
	Name    string
	RawRows int
	Rows    int // rows of the protected table
	Raw     sample
	Warm    sample
	Cold    sample
	// Pooled is cold with a pool of one child started ahead of the job
	// (waited for before each run, as a job arriving after a pause finds
	// it).
	Pooled sample
	Parts  [3]sample // warm: compile, execute, protect
	// CPU time (user+system) of each run: raw and warm in this process,
	// cold including the sandbox child. Less sensitive than wall time to
	// other work on the machine.
	RawCPU, WarmCPU, ColdCPU sample
	PG                       sample
	PGRows                   int
	PGNote                   string
	Degraded                 bool
}

func (m *harness) measureQueries(ctx context.Context, p *benchProgress, raw *DB, pipe *Pipeline, runner, pooled *sandbox.Runner, rep *benchReport) ([]queryResult, error) {
	var out []queryResult
	for _, tq := range queries.TypicalQueries {
		r := queryResult{Name: tq.Name}
		// The pool refills after the previous query's last pooled run: its
		// new child's warming must not run beside this query's raw and warm
		// runs (it did, and inflated them).
		if err := pooled.PoolReady(ctx); err != nil {
			return out, err
		}
		p.stage(tq.Name + ": raw")
		for i := range m.Warmup + m.Reps {
			start, cpu := time.Now(), cpuTime()
			n, err := raw.Raw(ctx, tq.SQL)
			d, c := time.Since(start), cpuTime()-cpu
			if err != nil {
				return out, fmt.Errorf("%s: raw DuckDB: %w", tq.Name, err)
			}
			r.RawRows = n
			if i >= m.Warmup {
				r.Raw.add(d)
				r.RawCPU.add(c)
			}
			p.step()
		}
		p.stage(tq.Name + ": warm")
		for i := range m.Warmup + m.Reps {
			cpu := cpuTime()
			t, err := pipe.Run(ctx, tq.SQL, 0)
			c := cpuTime() - cpu
			if err != nil {
				return out, fmt.Errorf("%s: warm pipeline: %w", tq.Name, err)
			}
			if i >= m.Warmup {
				r.Warm.add(t.Total())
				r.WarmCPU.add(c)
				r.Parts[0].add(t.Compile)
				r.Parts[1].add(t.Execute)
				r.Parts[2].add(t.Protect)
			}
			p.step()
		}
		p.stage(tq.Name + ": cold")
		m.peakAt = tq.Name + ", cold"
		j := job.Job{SQL: tq.SQL, SQLHash: queries.SQLHash(tq.SQL)}
		for i := range m.Warmup + m.Reps {
			start, cpu := time.Now(), cpuTime()
			res, err := runner.Run(ctx, j)
			d := time.Since(start)
			runner.Close() // the child is reaped in the background: count its CPU time here
			c := cpuTime() - cpu
			if err != nil {
				if ctx.Err() != nil {
					return out, ctx.Err()
				}
				return out, fmt.Errorf("%s: sandbox: %s: %s", tq.Name, job.Code(err), job.Message(err))
			}
			r.Rows = len(res.Rows)
			if res.Report.Sandbox.Degraded && !contains(rep.Degraded, strings.Join(res.Report.Sandbox.Missing, ", ")) {
				rep.Degraded = append(rep.Degraded, strings.Join(res.Report.Sandbox.Missing, ", "))
			}
			if i >= m.Warmup {
				r.Cold.add(d)
				r.ColdCPU.add(c)
			}
			p.step()
		}
		p.stage(tq.Name + ": pooled")
		m.peakAt = tq.Name + ", pooled"
		for i := range m.Warmup + m.Reps {
			if err := pooled.PoolReady(ctx); err != nil {
				return out, err
			}
			if m.PoolIdle > 0 {
				if err := ctxtime.Sleep(ctx, m.PoolIdle); err != nil {
					return out, err
				}
			}
			start := time.Now()
			_, err := pooled.Run(ctx, j)
			d := time.Since(start)
			if err != nil {
				if ctx.Err() != nil {
					return out, ctx.Err()
				}
				return out, fmt.Errorf("%s: pooled sandbox: %s: %s", tq.Name, job.Code(err), job.Message(err))
			}
			if i >= m.Warmup {
				r.Pooled.add(d)
			}
			p.step()
		}
		out = append(out, r)
	}
	return out, nil
}

// explainQueries prints DuckDB's profile of the raw and the rewritten SQL,
// to find where the protected pipeline spends its time.
func (m *harness) explainQueries(ctx context.Context, raw *DB, pipe *Pipeline) error {
	for _, tq := range queries.TypicalQueries {
		if m.Explain != "all" && tq.Name != m.Explain {
			continue
		}
		plan, err := pipe.Plan(ctx, tq.SQL)
		if err != nil {
			return fmt.Errorf("%s: %w", tq.Name, err)
		}
		rawProfile, err := raw.ExplainAnalyze(ctx, tq.SQL)
		if err != nil {
			return fmt.Errorf("%s: raw: %w", tq.Name, err)
		}
		protProfile, err := pipe.DB().ExplainAnalyze(ctx, plan.Rewritten)
		if err != nil {
			return fmt.Errorf("%s: rewritten: %w", tq.Name, err)
		}
		fmt.Fprintf(m.Stdout, "=== %s: raw SQL\n%s\n%s\n=== %s: rewritten SQL\n%s\n%s\n", tq.Name, tq.SQL, rawProfile, tq.Name, plan.Rewritten, protProfile)
	}
	return nil
}

// typicalSQL is the SQL of the typical query called name, or "".
func typicalSQL(name string) string {
	for _, tq := range queries.TypicalQueries {
		if tq.Name == name {
			return tq.SQL
		}
	}
	return ""
}

// measureStart times sandbox starts: a fresh Runner.Run of the smallest
// accepted query on a tiny dataset, so the figure is process start,
// hardening, handshake, DuckDB open and lock-down, compile, and almost no
// query work.
func (m *harness) measureStart(ctx context.Context, p *benchProgress, dir string, base sandbox.Config) (sample, string, error) {
	var s sample
	data := filepath.Join(dir, "start", "tiny.duckdb")
	if err := os.MkdirAll(filepath.Dir(data), 0o700); err != nil {
		return s, "", err
	}
	if _, err := synth.Generate(ctx, synth.Options{Out: data, Patients: 200, Seed: 1, MemoryLimit: "256MB", Threads: 1}); err != nil {
		return s, "", err
	}
	cat, err := queries.LoadCatalog(synth.CatalogPath(data))
	if err != nil {
		return s, "", err
	}
	cfg := base
	cfg.DataPath = data
	cfg.Catalog = cat
	cfg.ScratchDir = filepath.Join(dir, "start", "scratch")
	r, err := sandbox.NewRunner(cfg)
	if err != nil {
		return s, "", err
	}
	defer r.Close()
	const q = "SELECT count(*) AS patients FROM patients"
	j := job.Job{SQL: q, SQLHash: queries.SQLHash(q)}
	if _, err := r.Run(ctx, j); err != nil { // warm the page cache and the binary
		return s, "", fmt.Errorf("%s: %s", job.Code(err), job.Message(err))
	}
	cpu := cpuTime()
	defer func() { m.startCPU = cpuTime() - cpu }()
	for range m.Starts {
		start := time.Now()
		_, err := r.Run(ctx, j)
		d := time.Since(start)
		r.Close() // reaps the child, so that startCPU counts it
		if err != nil {
			return s, "", fmt.Errorf("%s: %s", job.Code(err), job.Message(err))
		}
		s.add(d)
		p.step()
	}
	return s, fmt.Sprintf("`%s` on a 200-patient file, %d starts after one unmeasured", q, m.Starts), nil
}
