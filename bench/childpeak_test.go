package bench

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/nhs-tre/tre/job"
	"github.com/nhs-tre/tre/queries"
	"github.com/nhs-tre/tre/sandbox"
	"github.com/nhs-tre/tre/synth"
)

// BenchmarkChildPeak runs one query per sub-benchmark in a fresh sandbox
// child with the sandbox's default limits, as the bench's cold and codelist
// phases do, and reports the largest peak resident size (VmHWM) its job
// children reported (sandbox.Config.ObserveChildPeak). It needs a `tre synth`
// file (TRE_BENCH_DATA, its catalog beside it), the tre binary the children
// run (TRE_BENCH_TRE) and a scratch directory kept between runs
// (TRE_BENCH_SCRATCH), where the release snapshot is built once and then
// reused: at 10M patients it takes 12-18 minutes. With TRE_BENCH_POOL=1
// each query runs in a pooled child instead, started and warmed before the
// job comes (sandbox.Runner.PoolReady), as a site's pool does. Skipped when
// unset.
func BenchmarkChildPeak(b *testing.B) {
	data, exe, scratch := os.Getenv("TRE_BENCH_DATA"), os.Getenv("TRE_BENCH_TRE"), os.Getenv("TRE_BENCH_SCRATCH")
	if data == "" || exe == "" || scratch == "" {
		b.Skip("TRE_BENCH_DATA, TRE_BENCH_TRE and TRE_BENCH_SCRATCH not all set")
	}
	cat, err := queries.LoadCatalog(synth.CatalogPath(data))
	if err != nil {
		b.Fatal(err)
	}
	cfg := sandbox.DefaultConfig()
	cfg.DataPath, cfg.Catalog, cfg.ScratchDir, cfg.Executable = data, cat, filepath.Clean(scratch), exe
	var peak int64 // the current sub-benchmark's largest job child
	cfg.ObserveChildPeak = func(p int64, builder bool) {
		if !builder {
			peak = max(peak, p)
		}
	}
	pooled := os.Getenv("TRE_BENCH_POOL") == "1"
	if pooled {
		cfg.PoolSize = 1
	}
	r, err := sandbox.NewRunner(cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	if err := r.Prepare(context.Background()); err != nil {
		b.Fatal(err)
	}
	cl, joinSQL, inSQL := codelistBenchQueries(cat)
	jobs := []struct {
		name string
		job  job.Job
	}{
		{"codelist_join", job.Job{SQL: joinSQL, SQLHash: queries.SQLHash(joinSQL), Codelists: []job.Codelist{cl}}},
		{"codelist_in", job.Job{SQL: inSQL, SQLHash: queries.SQLHash(inSQL)}},
	}
	for _, tq := range queries.TypicalQueries {
		jobs = append(jobs, struct {
			name string
			job  job.Job
		}{tq.Name, job.Job{SQL: tq.SQL, SQLHash: queries.SQLHash(tq.SQL)}})
	}
	for _, j := range jobs {
		b.Run(j.name, func(b *testing.B) {
			peak = 0
			for b.Loop() {
				if pooled {
					b.StopTimer()
					if err := r.PoolReady(context.Background()); err != nil {
						b.Fatal(err)
					}
					b.StartTimer()
				}
				if _, err := r.Run(context.Background(), j.job); err != nil {
					b.Fatalf("%s: %s", job.Code(err), job.Message(err))
				}
			}
			b.ReportMetric(float64(peak)/(1<<20), "peak-MiB")
		})
	}
}
