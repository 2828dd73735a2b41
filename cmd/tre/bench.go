package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/schollz/progressbar/v3"

	"github.com/nhs-tre/tre/queries"
	"github.com/nhs-tre/tre/sandbox"
	"github.com/nhs-tre/tre/sandbox/bench"
	"github.com/nhs-tre/tre/synth"
)

// BenchMain is `tre bench`: it measures tre against the physical limit (raw
// DuckDB running the unprotected aggregate on the same file) and against
// PostgreSQL, plus sandbox start, broker API throughput and synth, and
// prints one Markdown report. Data files live in a temporary directory
// (removed afterwards) unless --data names an existing one.
type BenchMain struct {
	stdout, stderr io.Writer

	patients      int
	data, catalog string
	postgres      string
	out           string
	reps, warmup  int
	starts        int
	submissions   int
	reads         int
	clients       int
	loadCap       time.Duration
	seed          int64
	allowWeak     bool
	keep          bool
	explain       string
	apiOnly       bool
	perClient     bool          // one project per API client (--api-projects per-client)
	startCPU      time.Duration // CPU time of all measured sandbox starts
	args          []string
	now           func() time.Time
}

func newBenchMain(stdout, stderr io.Writer) command {
	return &BenchMain{stdout: stdout, stderr: stderr, now: time.Now}
}

// ParseFlags reads the benchmark's size and repetition flags.
func (m *BenchMain) ParseFlags(ctx context.Context, args []string) error {
	fs := newFlagSet("bench", m.stderr)
	fs.IntVar(&m.patients, "patients", 0, "patients to generate (required unless --data)")
	fs.StringVar(&m.data, "data", "", "reuse this DuckDB file written by tre synth instead of generating one")
	fs.StringVar(&m.catalog, "catalog", "", "catalog of --data (default: DATA with .catalog.yaml)")
	fs.StringVar(&m.postgres, "postgres", "", "PostgreSQL URL: also load the rows with COPY into a fresh schema and run the aggregates there, and benchmark the broker on PostgreSQL (the schemas are dropped afterwards)")
	fs.StringVar(&m.out, "out", "", "also write the Markdown report to this file")
	fs.IntVar(&m.reps, "reps", 5, "measured repetitions of each query")
	fs.IntVar(&m.warmup, "warmup", 1, "unmeasured warm-up runs of each query")
	fs.IntVar(&m.starts, "starts", 20, "sandbox starts to time")
	fs.IntVar(&m.submissions, "submissions", 2000, "query submissions to send to each broker store")
	fs.IntVar(&m.reads, "reads", 20000, "query reads to send to each broker store")
	fs.IntVar(&m.clients, "clients", 4, "concurrent API clients of the load generator")
	fs.DurationVar(&m.loadCap, "load-time-cap", 30*time.Second, "time cap of each API load phase")
	fs.Int64Var(&m.seed, "seed", 1, "synth seed")
	fs.BoolVar(&m.allowWeak, "allow-weak-sandbox", false, "run sandboxes even if an isolation layer is unavailable (reported)")
	fs.BoolVar(&m.keep, "keep", false, "keep the generated data directory")
	fs.BoolVar(&m.apiOnly, "api-only", false, "run only the broker API phases (needs --data or --catalog for the dataset's catalog; no synth, queries or sandbox)")
	projects := fs.String("api-projects", "shared", "the API clients submit to one shared project (shared) or each to its own (per-client)")
	fs.StringVar(&m.explain, "explain", "", "instead of benchmarking, print DuckDB's EXPLAIN ANALYZE of the raw and the rewritten SQL of this typical query (\"all\": every one)")
	fs.Usage = func() {
		fmt.Fprintln(m.stderr, "Usage: tre bench --patients N [--data FILE] [--postgres URL] [--out report.md] [--reps R] [--warmup W]")
		fmt.Fprintln(m.stderr)
		fmt.Fprintln(m.stderr, "Measures the typical research queries raw (DuckDB) vs protected (sandbox, cold and warm),")
		fmt.Fprintln(m.stderr, "PostgreSQL, sandbox start, broker API throughput and synth, and prints a Markdown report.")
		fmt.Fprintln(m.stderr)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := noArgs(fs); err != nil {
		return err
	}
	switch {
	case m.apiOnly && m.data == "" && m.catalog == "":
		return errors.New("--api-only needs --data or --catalog (the API phases need only the catalog)")
	case m.apiOnly && m.explain != "":
		return errors.New("--api-only and --explain exclude each other")
	case !m.apiOnly && m.data == "" && (m.patients < 1 || m.patients > synth.MaxPatients):
		return fmt.Errorf("--patients must be between 1 and %d (or give --data)", synth.MaxPatients)
	case m.reps < 1:
		return errors.New("--reps must be at least 1")
	case m.warmup < 0:
		return errors.New("--warmup must not be negative")
	case m.starts < 1:
		return errors.New("--starts must be at least 1")
	case m.submissions < 1 || m.reads < 1:
		return errors.New("--submissions and --reads must be at least 1")
	case m.clients < 1 || m.clients > 256:
		return errors.New("--clients must be between 1 and 256")
	case m.loadCap <= 0:
		return errors.New("--load-time-cap must be positive")
	case m.explain != "" && m.explain != "all" && typicalSQL(m.explain) == "":
		return fmt.Errorf("--explain: no typical query is named %q", m.explain)
	case *projects != "shared" && *projects != "per-client":
		return fmt.Errorf("--api-projects %q: want shared or per-client", *projects)
	}
	m.perClient = *projects == "per-client"
	m.args = args
	return nil
}

// benchReport is everything one run measured.
type benchReport struct {
	When      time.Time
	Command   string
	Machine   machineInfo
	Patients  int
	Data      string
	DataRows  []bench.Table
	Threads   int
	MemLimit  int64
	Reps      int
	Warmup    int
	Synth     *synthResult
	Queries   []queryResult
	Postgres  *pgLoad
	Start     sample
	StartNote string
	API       []apiResult
	Degraded  []string
	Clients   int
	// PerClient: each API client submitted to its own project.
	PerClient bool
	StartCPU  time.Duration
	// Snapshot is how long the sandbox's builder child took to build the
	// release snapshot, once per data file version (every job then reads
	// it; sandbox/snapshot.go).
	Snapshot time.Duration
}

// Run generates or opens the data and runs every measurement in turn.
func (m *BenchMain) Run(ctx context.Context) error {
	dir, err := os.MkdirTemp("", "tre-bench-")
	if err != nil {
		return err
	}
	if m.keep {
		fmt.Fprintf(m.stderr, "bench: keeping %s\n", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	cmdline := "tre bench " + strings.Join(m.args, " ")
	rep := &benchReport{When: m.now().UTC(), Command: redactURL(cmdline, m.postgres), Machine: readMachine(), Reps: m.reps, Warmup: m.warmup, Clients: m.clients, PerClient: m.perClient}
	if m.apiOnly {
		return m.runAPIOnly(ctx, dir, rep)
	}

	p := newBenchProgress(m.stderr, m.totalSteps())
	defer p.finish()

	data, catPath := m.data, m.catalog
	if data == "" {
		data = filepath.Join(dir, "gp.duckdb")
		catPath = synth.CatalogPath(data)
		p.stage("synth")
		sr, err := runSynth(ctx, synth.Options{Out: data, Patients: m.patients, Seed: m.seed})
		if err != nil {
			return fmt.Errorf("synth: %w", err)
		}
		rep.Synth = sr
		p.step()
	} else if catPath == "" {
		catPath = synth.CatalogPath(data)
	}
	rep.Data = data
	cat, err := queries.LoadCatalog(catPath)
	if err != nil {
		return err
	}

	scfg := sandbox.DefaultConfig()
	scfg.DataPath = data
	scfg.Catalog = cat
	scfg.ScratchDir = filepath.Join(dir, "scratch")
	scfg.AllowWeak = m.allowWeak
	scfg.Logger = slog.New(slog.NewTextHandler(m.stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	rep.Threads, rep.MemLimit = scfg.Threads, scfg.MemoryLimit
	runner, err := sandbox.NewRunner(scfg)
	if err != nil {
		return err
	}
	defer runner.Close()
	opts := bench.Options{Threads: scfg.Threads, MemoryLimit: scfg.MemoryLimit}

	raw, err := bench.Open(ctx, data, opts)
	if err != nil {
		return err
	}
	rep.DataRows, err = raw.Tables(ctx)
	if err != nil {
		raw.Close()
		return fmt.Errorf("list tables: %w", err)
	}
	if rep.Synth != nil {
		rep.Patients = rep.Synth.Stats.Patients
	} else {
		for _, t := range rep.DataRows {
			if t.Name == "patients" {
				rep.Patients = int(t.Rows)
			}
		}
	}
	p.stage("release snapshot")
	start := time.Now()
	if err := runner.Prepare(ctx); err != nil {
		raw.Close()
		return fmt.Errorf("release snapshot: %w", err)
	}
	rep.Snapshot = time.Since(start)
	pipe, err := bench.OpenPipeline(ctx, data, cat, opts, dir)
	if err != nil {
		raw.Close()
		return err
	}
	if m.explain != "" {
		p.finish()
		err := m.explainQueries(ctx, raw, pipe)
		pipe.Close()
		raw.Close()
		return err
	}
	rep.Queries, err = m.measureQueries(ctx, p, raw, pipe, runner, rep)
	pipe.Close()
	raw.Close()
	if err != nil {
		return err
	}

	if m.postgres != "" {
		p.stage("postgres: load")
		pg, err := loadPostgres(ctx, m.postgres, data, rep.DataRows, dir, opts)
		if err != nil {
			return fmt.Errorf("postgres: %w", err)
		}
		p.step()
		err = m.measurePostgres(ctx, p, pg, rep.Queries)
		rep.Postgres = pg
		if derr := pg.drop(context.WithoutCancel(ctx)); derr != nil && err == nil {
			err = derr
		}
		if err != nil {
			return fmt.Errorf("postgres: %w", err)
		}
	}

	p.stage("sandbox start")
	rep.Start, rep.StartNote, err = m.measureStart(ctx, p, dir, scfg)
	rep.StartCPU = m.startCPU
	if err != nil {
		return fmt.Errorf("sandbox start: %w", err)
	}

	if err := m.measureAPIs(ctx, p, dir, cat, rep); err != nil {
		return err
	}
	p.finish()
	rep.Machine.LoadEnd = loadAverage()

	text := rep.markdown()
	if _, err := io.WriteString(m.stdout, text); err != nil {
		return err
	}
	if m.out != "" {
		if err := os.WriteFile(m.out, []byte(text), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// Close releases nothing: Run removes its temporary directory itself.
func (m *BenchMain) Close() error { return nil }

// totalSteps is the progress bar's length: one step per timed run.
func (m *BenchMain) totalSteps() int {
	per := (m.warmup + m.reps) * 3
	if m.postgres != "" {
		per += m.warmup + m.reps
	}
	n := len(queries.TypicalQueries)*per + m.starts + 1
	if m.postgres != "" {
		n++ // the PostgreSQL load
	}
	if m.data == "" {
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
	Parts   [3]sample // warm: compile, execute, protect
	// CPU time (user+system) of each run: raw and warm in this process,
	// cold including the sandbox child. Less sensitive than wall time to
	// other work on the machine.
	RawCPU, WarmCPU, ColdCPU sample
	PG                       sample
	PGRows                   int
	PGNote                   string
	Degraded                 bool
}

func (m *BenchMain) measureQueries(ctx context.Context, p *benchProgress, raw *bench.DB, pipe *bench.Pipeline, runner *sandbox.Runner, rep *benchReport) ([]queryResult, error) {
	var out []queryResult
	for _, tq := range queries.TypicalQueries {
		r := queryResult{Name: tq.Name}
		p.stage(tq.Name + ": raw")
		for i := range m.warmup + m.reps {
			start, cpu := time.Now(), cpuTime()
			n, err := raw.Raw(ctx, tq.SQL)
			d, c := time.Since(start), cpuTime()-cpu
			if err != nil {
				return nil, fmt.Errorf("%s: raw DuckDB: %w", tq.Name, err)
			}
			r.RawRows = n
			if i >= m.warmup {
				r.Raw.add(d)
				r.RawCPU.add(c)
			}
			p.step()
		}
		p.stage(tq.Name + ": warm")
		for i := range m.warmup + m.reps {
			cpu := cpuTime()
			t, err := pipe.Run(ctx, tq.SQL, 0)
			c := cpuTime() - cpu
			if err != nil {
				return nil, fmt.Errorf("%s: warm pipeline: %w", tq.Name, err)
			}
			if i >= m.warmup {
				r.Warm.add(t.Total())
				r.WarmCPU.add(c)
				r.Parts[0].add(t.Compile)
				r.Parts[1].add(t.Execute)
				r.Parts[2].add(t.Protect)
			}
			p.step()
		}
		p.stage(tq.Name + ": cold")
		job := sandbox.Job{QueryID: "bench", SQL: tq.SQL, SQLHash: queries.SQLHash(tq.SQL)}
		for i := range m.warmup + m.reps {
			start, cpu := time.Now(), cpuTime()
			res, err := runner.Run(ctx, job)
			d := time.Since(start)
			runner.Close() // the child is reaped in the background: count its CPU time here
			c := cpuTime() - cpu
			if err != nil {
				if ctx.Err() != nil {
					return nil, ctx.Err()
				}
				return nil, fmt.Errorf("%s: sandbox: %s: %s", tq.Name, sandbox.ErrorCode(err), sandbox.ErrorMessage(err))
			}
			r.Rows = len(res.Rows)
			if res.Report.Sandbox.Degraded && !contains(rep.Degraded, strings.Join(res.Report.Sandbox.Missing, ", ")) {
				rep.Degraded = append(rep.Degraded, strings.Join(res.Report.Sandbox.Missing, ", "))
			}
			if i >= m.warmup {
				r.Cold.add(d)
				r.ColdCPU.add(c)
			}
			p.step()
		}
		out = append(out, r)
	}
	return out, nil
}

// explainQueries prints DuckDB's profile of the raw and the rewritten SQL,
// to find where the protected pipeline spends its time.
func (m *BenchMain) explainQueries(ctx context.Context, raw *bench.DB, pipe *bench.Pipeline) error {
	for _, tq := range queries.TypicalQueries {
		if m.explain != "all" && tq.Name != m.explain {
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
		fmt.Fprintf(m.stdout, "=== %s: raw SQL\n%s\n%s\n=== %s: rewritten SQL\n%s\n%s\n", tq.Name, tq.SQL, rawProfile, tq.Name, plan.Rewritten, protProfile)
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
func (m *BenchMain) measureStart(ctx context.Context, p *benchProgress, dir string, base sandbox.Config) (sample, string, error) {
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
	job := sandbox.Job{QueryID: "bench-start", SQL: q, SQLHash: queries.SQLHash(q)}
	if _, err := r.Run(ctx, job); err != nil { // warm the page cache and the binary
		return s, "", fmt.Errorf("%s: %s", sandbox.ErrorCode(err), sandbox.ErrorMessage(err))
	}
	cpu := cpuTime()
	defer func() { m.startCPU = cpuTime() - cpu }()
	for range m.starts {
		start := time.Now()
		_, err := r.Run(ctx, job)
		d := time.Since(start)
		r.Close() // reaps the child, so that startCPU counts it
		if err != nil {
			return s, "", fmt.Errorf("%s: %s", sandbox.ErrorCode(err), sandbox.ErrorMessage(err))
		}
		s.add(d)
		p.step()
	}
	return s, fmt.Sprintf("`%s` on a 200-patient file, %d starts after one unmeasured", q, m.starts), nil
}

// cpuTime is the user+system CPU time of this process and of its waited-for
// children (the sandbox processes) so far.
func cpuTime() time.Duration {
	var self, children syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &self) != nil || syscall.Getrusage(syscall.RUSAGE_CHILDREN, &children) != nil {
		return 0
	}
	tv := func(t syscall.Timeval) time.Duration { return time.Duration(t.Nano()) }
	return tv(self.Utime) + tv(self.Stime) + tv(children.Utime) + tv(children.Stime)
}

// sample is a set of timings.
type sample struct{ d []time.Duration }

func (s *sample) add(d time.Duration) { s.d = append(s.d, d) }
func (s sample) n() int               { return len(s.d) }

func (s sample) sorted() []time.Duration {
	c := append([]time.Duration(nil), s.d...)
	sort.Slice(c, func(i, j int) bool { return c[i] < c[j] })
	return c
}

// quantile is the nearest-rank quantile (q in [0,1]); 0 for no data.
func (s sample) quantile(q float64) time.Duration {
	c := s.sorted()
	if len(c) == 0 {
		return 0
	}
	i := int(q*float64(len(c))+0.999999) - 1
	return c[max(0, min(i, len(c)-1))]
}

// median is the middle value (mean of the two middle ones for an even n).
func (s sample) median() time.Duration {
	c := s.sorted()
	switch {
	case len(c) == 0:
		return 0
	case len(c)%2 == 1:
		return c[len(c)/2]
	}
	return (c[len(c)/2-1] + c[len(c)/2]) / 2
}

func (s sample) min() time.Duration { return s.quantile(0) }
func (s sample) max() time.Duration { return s.quantile(1) }

// spread renders "median (min–max)".
func (s sample) spread() string {
	if s.n() == 0 {
		return "–"
	}
	if s.n() == 1 {
		return fmtDur(s.median())
	}
	return fmt.Sprintf("%s (%s–%s)", fmtDur(s.median()), fmtDur(s.min()), fmtDur(s.max()))
}

func fmtDur(d time.Duration) string {
	switch {
	case d >= 10*time.Second:
		return fmt.Sprintf("%.1f s", d.Seconds())
	case d >= time.Second:
		return fmt.Sprintf("%.2f s", d.Seconds())
	case d >= 10*time.Millisecond:
		return fmt.Sprintf("%.0f ms", float64(d)/1e6)
	case d >= time.Millisecond:
		return fmt.Sprintf("%.1f ms", float64(d)/1e6)
	}
	return fmt.Sprintf("%.0f µs", float64(d)/1e3)
}

// ratio is a/b of medians, "–" when either is missing.
func ratio(a, b sample) string {
	if a.n() == 0 || b.n() == 0 || b.median() == 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f×", float64(a.median())/float64(b.median()))
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// machineInfo is what the report says about the machine.
type machineInfo struct {
	CPUs   int
	CPU    string
	Memory string
	Kernel string
	Go     string
	// Load is /proc/loadavg's 1-, 5- and 15-minute load when the run started
	// and ended: other work on the machine inflates every timing.
	LoadStart, LoadEnd string
}

func readMachine() machineInfo {
	mi := machineInfo{CPUs: runtime.NumCPU(), Go: runtime.Version()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				mi.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if rest, ok := strings.CutPrefix(line, "MemTotal:"); ok {
				var kb int64
				fmt.Sscan(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), &kb)
				mi.Memory = fmt.Sprintf("%.1f GiB", float64(kb)/(1<<20))
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		mi.Kernel = strings.TrimSpace(string(b))
	}
	mi.LoadStart = loadAverage()
	return mi
}

// loadAverage is the first three fields of /proc/loadavg, or "unknown".
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(b)); err == nil && len(f) >= 3 {
		return strings.Join(f[:3], " ")
	}
	return "unknown"
}

// redactURL keeps a database password out of the report.
func redactURL(s, url string) string {
	if url == "" {
		return s
	}
	return strings.ReplaceAll(s, url, redactPassword(url))
}

func redactPassword(url string) string {
	scheme, rest, ok := strings.Cut(url, "://")
	if !ok {
		return url
	}
	userinfo, host, ok := strings.Cut(rest, "@")
	if !ok {
		return url
	}
	if user, _, hasPw := strings.Cut(userinfo, ":"); hasPw {
		return scheme + "://" + user + ":***@" + host
	}
	return url
}

// randomSuffix names throwaway schemas.
func randomSuffix() string {
	var b [6]byte
	_, _ = rand.Read(b[:]) // crypto/rand does not fail on Linux
	return hex.EncodeToString(b[:])
}

// benchProgress is a progress bar on a terminal and section lines
// otherwise.
type benchProgress struct {
	bar  *progressbar.ProgressBar
	w    io.Writer
	last string
	done bool
}

func newBenchProgress(w io.Writer, total int) *benchProgress {
	p := &benchProgress{w: w}
	if isTerminal(w) {
		p.bar = progressbar.NewOptions(total,
			progressbar.OptionSetWriter(w),
			progressbar.OptionSetWidth(30),
			progressbar.OptionShowCount(),
			progressbar.OptionSetElapsedTime(true),
			progressbar.OptionSetPredictTime(false),
			progressbar.OptionClearOnFinish(),
		)
	}
	return p
}

// stage names what runs now.
func (p *benchProgress) stage(name string) {
	if p.bar != nil {
		p.bar.Describe(fmt.Sprintf("%-48s", name))
		return
	}
	section, _, _ := strings.Cut(name, ":")
	if section != p.last {
		fmt.Fprintf(p.w, "bench: %s\n", section)
		p.last = section
	}
}

func (p *benchProgress) step() {
	if p.bar != nil {
		_ = p.bar.Add(1) // a failed redraw is not an error of the run
	}
}

func (p *benchProgress) finish() {
	if p.bar != nil && !p.done {
		_ = p.bar.Finish()
		p.done = true
	}
}
