package bench

import (
	"fmt"
	"strings"
	"time"

	"github.com/nhs-tre/tre/sandbox"
)

// markdown renders the report: the sections of the issue in order, then
// the targets with what this run measured against each.
func (r *benchReport) markdown() string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }

	w("## tre bench: %s patients, %s\n\n", fmtInt(int64(r.Patients)), r.When.Format("2006-01-02 15:04 MST"))
	w("- command: `%s`\n", r.Command)
	w("- machine: %d CPUs (%s), %s RAM, Linux %s, %s\n", r.Machine.CPUs, r.Machine.CPU, r.Machine.Memory, r.Machine.Kernel, r.Machine.Go)
	w("- load average (1/5/15 min) at start %s, at end %s: other processes on the machine inflate every timing\n", r.Machine.LoadStart, r.Machine.LoadEnd)
	w("- DuckDB threads %d, memory limit %s (the sandbox's for a job limit of %s), for raw and protected runs alike\n",
		r.Threads, fmtBytes(sandbox.DuckDBMemoryLimit(r.MemLimit)), fmtBytes(r.MemLimit))
	w("- repetitions: %d measured after %d warm-up; times are median (min–max)\n", r.Reps, r.Warmup)
	var rows []string
	for _, t := range r.DataRows {
		rows = append(rows, fmt.Sprintf("%s %s", t.Name, fmtInt(t.Rows)))
	}
	w("- rows: %s\n", strings.Join(rows, ", "))
	for _, f := range r.Failed {
		w("- **FAILED: %s** (%s): its section and the ones after it that depend on it are missing or partial\n", f.Phase, f.Err)
	}
	if len(r.Degraded) > 0 {
		w("- sandbox DEGRADED (missing layers: %s): timings lack those layers' cost\n", strings.Join(r.Degraded, "; "))
	}
	w("\n")

	w("### 1. Typical queries: raw DuckDB vs protected\n\n")
	w("raw = the researcher's SQL as-is on the same file (one open read-only connection); ")
	w("warm = the protected pipeline in-process on an open connection with the views, as the child runs it, on the release snapshot (table constraints, parser on the connection, compile, rewritten SQL, dp.Protect; the snapshot is built once per data file version, as the agent's Runner keeps it); ")
	w("cold = a fresh sandbox process per run (`Runner.Run`: start, hardening, handshake, DuckDB open and lock-down, then the warm steps); ")
	w("pooled = cold with a pool of one child started, hardened and handshaken ahead of the job, which has read the snapshot and run one join while it waited (warm.go in sandbox; used once, then killed; the run waits for the pool's refill and warming before it starts, as a job arriving after a pause finds it")
	if r.PoolIdle > 0 {
		w(", then %s more (--pool-idle)", r.PoolIdle)
	}
	w("); each query's raw and warm runs also wait for the pool's warming.\n\n")
	w("| query | raw | warm | cold | pooled | warm/raw | cold/raw | pooled/raw | pooled/warm | rows raw→protected |\n|---|---|---|---|---|---|---|---|---|---|\n")
	for _, q := range r.Queries {
		w("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %d→%d |\n", q.Name, q.Raw.spread(), q.Warm.spread(), q.Cold.spread(), q.Pooled.spread(),
			ratio(q.Warm, q.Raw), ratio(q.Cold, q.Raw), ratio(q.Pooled, q.Raw), ratio(q.Pooled, q.Warm), q.RawRows, q.Rows)
	}
	raw, warm, pooled := sumMedian(r.Queries, rawOf), sumMedian(r.Queries, warmOf), sumMedian(r.Queries, pooledOf)
	w("| **all (sum of medians)** | %s | %s | %s | %s | %s | %s | %s | %s | |\n\n", fmtDur(raw), fmtDur(warm), fmtDur(sumMedian(r.Queries, coldOf)), fmtDur(pooled),
		ratioDur(warm, raw), ratioDur(sumMedian(r.Queries, coldOf), raw), ratioDur(pooled, raw), ratioDur(pooled, warm))
	w("Job start (`Runner.Run` until the child has the request; every cold run, warm-ups included): without the pool median %s (p90 %s, %d runs); with the pool median %s (p90 %s, %d runs, %d found no child ready).\n\n",
		fmtDur(r.JobStart.median()), fmtDur(r.JobStart.quantile(0.9)), r.JobStart.n(), fmtDur(r.PooledStart.median()), fmtDur(r.PooledStart.quantile(0.9)), r.PooledStart.n(), r.PooledMissed)
	w("CPU time (user+system, median; cold includes the sandbox child). Wall time above is inflated when other processes compete for the cores; CPU time much less so, and on an idle machine a run cannot take less wall time than CPU time / %d threads:\n\n", r.Threads)
	w("| query | CPU raw | CPU warm | CPU cold | warm/raw | cold/raw |\n|---|---|---|---|---|---|\n")
	for _, q := range r.Queries {
		w("| %s | %s | %s | %s | %s | %s |\n", q.Name, fmtDur(q.RawCPU.median()), fmtDur(q.WarmCPU.median()), fmtDur(q.ColdCPU.median()), ratio(q.WarmCPU, q.RawCPU), ratio(q.ColdCPU, q.RawCPU))
	}
	w("| **all (sum of medians)** | %s | %s | %s | %s | %s |\n\n", fmtDur(sumMedian(r.Queries, rawCPUOf)), fmtDur(sumMedian(r.Queries, warmCPUOf)), fmtDur(sumMedian(r.Queries, coldCPUOf)),
		ratioDur(sumMedian(r.Queries, warmCPUOf), sumMedian(r.Queries, rawCPUOf)), ratioDur(sumMedian(r.Queries, coldCPUOf), sumMedian(r.Queries, rawCPUOf)))
	w("Where the warm time goes (medians):\n\n| query | compile | execute rewritten SQL | dp.Protect |\n|---|---|---|---|\n")
	for _, q := range r.Queries {
		w("| %s | %s | %s | %s |\n", q.Name, fmtDur(q.Parts[0].median()), fmtDur(q.Parts[1].median()), fmtDur(q.Parts[2].median()))
	}
	w("\nThe release snapshot (the data without opted-out patients, forbidden columns or dates outside 0001–9999, which every job reads), built by the sandbox's builder child once per data file version: %s.\n\n", fmtDur(r.Snapshot))

	if len(r.Pairs) > 0 {
		b.WriteString(pairsMarkdown(r.Pairs))
	}

	w("### 2. PostgreSQL\n\n")
	if r.Postgres == nil {
		w("Not run (no `--postgres`).\n\n")
	} else {
		pg := r.Postgres
		w("PostgreSQL %s, the same rows (%s) exported from DuckDB as CSV in %s and loaded with COPY into a fresh schema, plus the patients primary key and ANALYZE, in %s; default server settings; the schema is dropped afterwards. ",
			pg.Version, fmtInt(pg.Rows), fmtDur(pg.Export), fmtDur(pg.Load))
		w("The SQL is each query's PostgreSQL form (same question; `date_diff` and `arg_max` translated).\n\n")
		w("| query | PostgreSQL | PG/raw DuckDB | PG/warm protected | PG/cold protected | rows PG (raw DuckDB) |\n|---|---|---|---|---|---|\n")
		for _, q := range r.Queries {
			if q.PGNote != "" {
				w("| %s | %s | | | | |\n", q.Name, q.PGNote)
				continue
			}
			w("| %s | %s | %s | %s | %s | %d (%d) |\n", q.Name, q.PG.spread(), ratio(q.PG, q.Raw), ratio(q.PG, q.Warm), ratio(q.PG, q.Cold), q.PGRows, q.RawRows)
		}
		w("| **all (sum of medians)** | %s | %s | %s | %s | |\n\n", fmtDur(sumMedian(r.Queries, pgOf)),
			ratioDur(sumMedian(r.Queries, pgOf), sumMedian(r.Queries, rawOf)), ratioDur(sumMedian(r.Queries, pgOf), sumMedian(r.Queries, warmOf)), ratioDur(sumMedian(r.Queries, pgOf), sumMedian(r.Queries, coldOf)))
	}

	w("### 3. Sandbox start\n\n")
	if r.Start.n() == 0 {
		w("Not measured.\n\n")
	} else {
		w("%s: median %s, p90 %s, min %s, max %s; CPU time (host and child) %s per start.\n\n", r.StartNote, fmtDur(r.Start.median()), fmtDur(r.Start.quantile(0.9)), fmtDur(r.Start.min()), fmtDur(r.Start.max()), fmtDur(cpuPer(r.StartCPU, r.Start.n())))
	}

	r.apiMarkdown(&b)

	if r.Codelist != nil {
		r.Codelist.markdown(w)
	}

	w("### 5. Synth\n\n")
	if r.Synth == nil {
		w("Not run (`--data` reused an existing file).\n\n")
	} else {
		s := r.Synth
		peakNote := "peak RSS of the whole process during the stage (VmHWM, reset at each stage start)"
		if !s.PerStage {
			peakNote = "peak RSS of the process so far (the kernel refused to reset VmHWM)"
		}
		w("In this process (DuckDB memory limit 3GB, all cores). Peak = %s.\n\n", peakNote)
		w("| stage | rows | time | rows/s | peak RSS |\n|---|---|---|---|---|\n")
		for _, st := range s.Stats.Stages {
			rate := "–"
			if st.Rows > 0 && st.Duration > 0 {
				rate = fmtInt(int64(float64(st.Rows) / st.Duration.Seconds()))
			}
			w("| %s | %s | %s | %s | %s |\n", st.Name, fmtInt(st.Rows), fmtDur(st.Duration), rate, fmtBytes(s.Peak[st.Name]))
		}
		w("| **total** | %s | %s | %s patients/s | %s |\n\n", fmtInt(totalRows(s)), fmtDur(s.Stats.Total),
			fmtInt(int64(float64(s.Stats.Patients)/s.Stats.Total.Seconds())), fmtBytes(s.PeakTotal))
	}

	w("### Targets\n\n| measure | target | this run | met |\n|---|---|---|---|\n")
	for _, t := range r.targets() {
		w("| %s | %s | %s | %s |\n", t[0], t[1], t[2], t[3])
	}
	w("\n")
	return b.String()
}

// targets compares this run with the targets. A target defined at
// a size this run did not use is shown but not judged.
func (r *benchReport) targets() [][4]string {
	var out [][4]string
	judge := func(ok bool) string {
		if ok {
			return "yes"
		}
		return "**no**"
	}
	warm, raw, cold := sumMedian(r.Queries, warmOf), sumMedian(r.Queries, rawOf), sumMedian(r.Queries, coldOf)
	at := fmt.Sprintf("at %s patients", fmtInt(int64(r.Patients)))
	verdict := "n/a (10M only)"
	if r.Patients >= 10_000_000 {
		verdict = judge(float64(warm) <= 1.5*float64(raw))
	}
	worst := ""
	worstRatio := 0.0
	for _, q := range r.Queries {
		if q.Raw.median() > 0 {
			if x := float64(q.Warm.median()) / float64(q.Raw.median()); x > worstRatio {
				worstRatio, worst = x, q.Name
			}
		}
	}
	measured := fmt.Sprintf("wall: warm %s, cold %s (all queries, %s); worst warm %.2f× (%s); CPU: warm %s, cold %s", ratioDur(warm, raw), ratioDur(cold, raw), at, worstRatio, worst,
		ratioDur(sumMedian(r.Queries, warmCPUOf), sumMedian(r.Queries, rawCPUOf)), ratioDur(sumMedian(r.Queries, coldCPUOf), sumMedian(r.Queries, rawCPUOf)))
	// The engine issue sets the same ratio at 1M patients.
	verdict1M := "n/a (1M only)"
	if r.Patients >= 1_000_000 && r.Patients < 10_000_000 {
		verdict1M = judge(float64(warm) <= 1.5*float64(raw))
	}
	shown := func(v string) string {
		if strings.HasPrefix(v, "n/a") {
			return "this run is " + at
		}
		return measured
	}
	out = append(out, [4]string{"protected / raw DuckDB, 1M patients (engine issue)", "≤ 1.5×", shown(verdict1M), verdict1M})
	out = append(out, [4]string{"protected / raw DuckDB, 10M patients", "≤ 1.5×", shown(verdict), verdict})
	if r.Postgres != nil {
		pg := sumMedian(r.Queries, pgOf)
		best := ""
		bestRatio := 0.0
		for _, q := range r.Queries {
			if q.PG.n() > 0 && q.Warm.median() > 0 {
				if x := float64(q.PG.median()) / float64(q.Warm.median()); bestRatio == 0 || x < bestRatio {
					bestRatio, best = x, q.Name
				}
			}
		}
		out = append(out, [4]string{"PostgreSQL / protected", "≥ 10×",
			fmt.Sprintf("%s vs warm, %s vs cold (all queries); lowest %.2f× vs warm (%s)", ratioDur(pg, warm), ratioDur(pg, cold), bestRatio, best),
			judge(float64(pg) >= 10*float64(warm))})
	}
	pooled := sumMedian(r.Queries, pooledOf)
	out = append(out, [4]string{"cold ≈ warm: pooled cold / warm (issue 24)", "≤ 1.1× at 1M",
		fmt.Sprintf("%s (cold without the pool %s; all queries, %s)", ratioDur(pooled, warm), ratioDur(cold, warm), at),
		judge(pooled > 0 && float64(pooled) <= 1.1*float64(warm))})
	out = append(out, [4]string{"job start with the pool (issue 24)", "≤ 5 ms median",
		fmt.Sprintf("%s (without: %s)", fmtDur(r.PooledStart.median()), fmtDur(r.JobStart.median())),
		judge(r.PooledStart.n() > 0 && r.PooledStart.median() <= 5*time.Millisecond)})
	if peak := max(r.JobPeak, r.BuilderPeak); peak > 0 {
		out = append(out, [4]string{"sandbox child peak memory (issue 24)", "≤ memory limit + 200 MB",
			fmt.Sprintf("%s, the largest sandbox child's own peak RSS: %s (limit %s, %s)", fmtBytes(peak), r.peakWhose(), fmtBytes(r.MemLimit), at),
			judge(peak <= r.MemLimit+200<<20)})
	}
	out = append(out, [4]string{"sandbox start", "≤ 100 ms median", fmtDur(r.Start.median()), judge(r.Start.n() > 0 && r.Start.median() <= 100*time.Millisecond)})
	for _, a := range r.API {
		switch {
		case a.Store == "sqlite" && a.Op == "submit":
			out = append(out, [4]string{"submissions/s (SQLite)", "≥ 2,000, p99 ≤ 50 ms",
				fmt.Sprintf("%.0f/s, p99 %s (CPU-bound capacity %s/s)", a.perSecond(), fmtDur(a.Lat.quantile(0.99)), idleRate(a.cpuPerRequest(), r.Machine.CPUs)),
				judge(a.Errors == 0 && a.perSecond() >= 2000 && a.Lat.quantile(0.99) <= 50*time.Millisecond)})
		case a.Store == "sqlite" && a.Op == "read":
			out = append(out, [4]string{"reads/s (SQLite)", "≥ 10,000", fmt.Sprintf("%.0f/s (CPU-bound capacity %s/s)", a.perSecond(), idleRate(a.cpuPerRequest(), r.Machine.CPUs)), judge(a.Errors == 0 && a.perSecond() >= 10000)})
		case a.Store == "postgres" && a.Op == "submit":
			out = append(out, [4]string{"submissions/s (PostgreSQL)", "≥ 1,000", fmt.Sprintf("%.0f/s, p99 %s (CPU-bound capacity %s/s)", a.perSecond(), fmtDur(a.Lat.quantile(0.99)), idleRate(a.cpuPerRequest(), r.Machine.CPUs)), judge(a.Errors == 0 && a.perSecond() >= 1000)})
		}
	}
	if r.Synth != nil {
		v := "n/a (10M only)"
		if r.Synth.Stats.Patients >= 10_000_000 {
			v = judge(r.Synth.Stats.Total <= 60*time.Second && r.Synth.PeakTotal <= 4<<30)
		}
		out = append(out, [4]string{"synth 10M patients", "≤ 60 s, ≤ 4 GB", fmt.Sprintf("%s, peak %s (%s)", fmtDur(r.Synth.Stats.Total), fmtBytes(r.Synth.PeakTotal), at), v})
	}
	out = append(out, [4]string{"protected time 1M → 10M patients", "grows at most linearly", fmt.Sprintf("warm %s, cold %s in all (%s): compare the 1M and 10M runs", fmtDur(warm), fmtDur(cold), at), "see BENCHMARKS.md"})
	return out
}

func rawOf(q queryResult) sample  { return q.Raw }
func warmOf(q queryResult) sample { return q.Warm }
func coldOf(q queryResult) sample { return q.Cold }

func pooledOf(q queryResult) sample { return q.Pooled }
func pgOf(q queryResult) sample     { return q.PG }

func rawCPUOf(q queryResult) sample  { return q.RawCPU }
func warmCPUOf(q queryResult) sample { return q.WarmCPU }
func coldCPUOf(q queryResult) sample { return q.ColdCPU }

// sumMedian adds the medians of one measure over the queries.
func sumMedian(qs []queryResult, f func(queryResult) sample) time.Duration {
	var t time.Duration
	for _, q := range qs {
		t += f(q).median()
	}
	return t
}

// cpuPer is total / n, 0 for no runs.
func cpuPer(total time.Duration, n int) time.Duration {
	if n == 0 {
		return 0
	}
	return total / time.Duration(n)
}

// idleRate is how many requests per second cpus cores could serve at
// perRequest CPU each.
func idleRate(perRequest time.Duration, cpus int) string {
	if perRequest <= 0 {
		return "–"
	}
	return fmt.Sprintf("%.0f", float64(cpus)/perRequest.Seconds())
}

func ratioDur(a, b time.Duration) string {
	if a == 0 || b == 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f×", float64(a)/float64(b))
}

func totalRows(s *synthResult) int64 {
	var n int64
	for _, st := range s.Stats.Stages {
		n += st.Rows
	}
	return n
}

// fmtInt writes n with thousands separators.
func fmtInt(n int64) string {
	s := fmt.Sprint(n)
	if n < 0 {
		return "-" + fmtInt(-n)
	}
	var parts []string
	for len(s) > 3 {
		parts = append([]string{s[len(s)-3:]}, parts...)
		s = s[:len(s)-3]
	}
	return strings.Join(append([]string{s}, parts...), ",")
}

func fmtBytes(n int64) string {
	switch {
	case n <= 0:
		return "–"
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.0f MiB", float64(n)/(1<<20))
	}
	return fmt.Sprintf("%d KiB", n>>10)
}

// peakWhose says which child peaked highest, a job's (its typical query
// and phase) or the release snapshot builder's, and what the other did.
func (r *benchReport) peakWhose() string {
	job := "no job child reported"
	if r.JobPeak > 0 {
		job = fmt.Sprintf("the largest job child %s as it answered (%s)", fmtBytes(r.JobPeak), r.JobPeakAt)
	}
	switch {
	case r.BuilderPeak <= 0:
		return "a job's child: " + job + "; no release snapshot builder ran"
	case r.JobPeak >= r.BuilderPeak:
		return fmt.Sprintf("a job's child: %s; the release snapshot's builder %s", job, fmtBytes(r.BuilderPeak))
	default:
		return "the release snapshot's builder; " + job
	}
}
