package main

import (
	"testing"
	"time"

	"github.com/nhs-tre/tre/api/metrics"
	"github.com/nhs-tre/tre/job"
	"github.com/nhs-tre/tre/sandbox"
)

// The agent's and the broker's dry-run sandboxes report to the metrics:
// a start and its run time, a kill for memory, a job child's peak memory.
func TestObserveSandboxes(t *testing.T) {
	reg := metrics.New(metrics.Options{})
	var sc sandbox.Config
	observeSandboxes(&sc, reg)
	sc.Observe(job.CodeMemory, time.Second)
	sc.ObserveChildPeak(900<<20, false)
	fams, err := reg.Gatherer().Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, f := range fams {
		for _, m := range f.GetMetric() {
			switch {
			case m.GetCounter() != nil:
				got[f.GetName()] += m.GetCounter().GetValue()
			case m.GetHistogram() != nil:
				got[f.GetName()] += float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	for _, name := range []string{"tre_sandbox_starts_total", "tre_sandbox_kills_total", "tre_sandbox_duration_seconds", "tre_sandbox_peak_resident_bytes"} {
		if got[name] != 1 {
			t.Errorf("%s: %v, want 1", name, got[name])
		}
	}
}

// A site that sets no memory_limit gets the sandbox's own default, the
// limit the benchmarks measure (it was "2GB", 1.86 GiB, once).
func TestAgentMemoryLimitDefault(t *testing.T) {
	got, err := parseByteSize(DefaultAgentConfig().MemoryLimit)
	if err != nil {
		t.Fatal(err)
	}
	if want := sandbox.DefaultConfig().MemoryLimit; got != want {
		t.Errorf("agent memory_limit default %d bytes, sandbox default %d", got, want)
	}
}
