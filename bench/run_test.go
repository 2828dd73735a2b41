package bench

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nhs-tre/tre/sandbox"
)

func TestRedactPassword(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{"password", "postgres://u:secret@h:5432/db", "postgres://u:***@h:5432/db"},
		{"no password", "postgres://postgres@127.0.0.1:5432/test?sslmode=disable", "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"},
		{"not a URL", "host=h user=u", "host=h user=u"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := redactPassword(tt.in); got != tt.want {
				t.Errorf("redactPassword(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

// ms is a sample of the given times in milliseconds.
func ms(d ...int) sample {
	var s sample
	for _, x := range d {
		s.add(time.Duration(x) * time.Millisecond)
	}
	return s
}

// TestBenchTargetsBySize: the protected/raw ratio is judged against the
// engine issue's 1M target only on a run of 1M–10M patients and against
// the 10M target only at 10M or more; the other row says the run's size.
func TestBenchTargetsBySize(t *testing.T) {
	q := queryResult{Name: "q", Raw: ms(100), Warm: ms(140), Cold: ms(400), RawCPU: ms(180), WarmCPU: ms(250), ColdCPU: ms(500)}
	for _, tt := range []struct {
		patients      int
		at1M, at10M   string
		notApplicable string
	}{
		{patients: 1_000_000, at1M: "yes", at10M: "n/a (10M only)"},
		{patients: 10_000_000, at1M: "n/a (1M only)", at10M: "yes"},
		{patients: 2_000, at1M: "n/a (1M only)", at10M: "n/a (10M only)"},
	} {
		r := &benchReport{Patients: tt.patients, Queries: []queryResult{q}}
		got := map[string][4]string{}
		for _, row := range r.targets() {
			got[row[0]] = row
		}
		for name, want := range map[string]string{"protected / raw DuckDB, 1M patients (engine issue)": tt.at1M, "protected / raw DuckDB, 10M patients": tt.at10M} {
			row, ok := got[name]
			if !ok {
				t.Fatalf("no %q row", name)
			}
			if row[3] != want {
				t.Errorf("%d patients, %s: verdict %q, want %q", tt.patients, name, row[3], want)
			}
			if judged := !strings.HasPrefix(want, "n/a"); judged != strings.Contains(row[2], "warm 1.40×") {
				t.Errorf("%d patients, %s: measured cell %q", tt.patients, name, row[2])
			}
		}
	}
	q.Warm = ms(151)
	r := &benchReport{Patients: 1_000_000, Queries: []queryResult{q}}
	if row := r.targets()[0]; row[3] != "**no**" {
		t.Errorf("1.51× judged %q", row[3])
	}
}

// TestReplicasNeedPostgres: --replicas above 1 measures brokers sharing a
// PostgreSQL database, so it needs one; the stores follow the flag.
func TestReplicasNeedPostgres(t *testing.T) {
	c := DefaultConfig()
	c.APIOnly, c.Catalog = true, "gp.catalog.yaml"
	c.Replicas = 3
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "--replicas needs --postgres") {
		t.Fatalf("--replicas 3 without --postgres: %v", err)
	}
	c.Postgres = "postgres://localhost/test"
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range (&harness{Config: c}).apiStores() {
		names = append(names, s.String())
	}
	if got := strings.Join(names, ", "); got != "sqlite, postgres, postgres ×3" {
		t.Errorf("stores %s", got)
	}
	c.Replicas = 0
	if err := c.Validate(); err == nil {
		t.Error("--replicas 0 accepted")
	}
}

// TestChildPeakTarget: the sandbox children's peak memory is judged
// against the memory limit + 200 MB, on the larger of the builder's and
// the largest job child's, and is left out when no child reported.
func TestChildPeakTarget(t *testing.T) {
	const name = "sandbox child peak memory (issue 24)"
	row := func(r *benchReport) ([4]string, bool) {
		r.Patients, r.MemLimit = 1_000_000, 1<<30
		for _, row := range r.targets() {
			if row[0] == name {
				return row, true
			}
		}
		return [4]string{}, false
	}
	for _, tt := range []struct {
		job, builder int64
		want         string
	}{
		{1<<30 + 200<<20, 0, "yes"},
		{1<<30 + 201<<20, 0, "**no**"},
		{1 << 30, 1<<30 + 201<<20, "**no**"},
		{1<<30 + 200<<20, 1 << 30, "yes"},
	} {
		got, ok := row(&benchReport{JobPeak: tt.job, JobPeakAt: "flu, cold", BuilderPeak: tt.builder})
		if !ok || got[3] != tt.want {
			t.Errorf("job %d, builder %d: row %q, want verdict %q", tt.job, tt.builder, got, tt.want)
		}
	}
	if got, ok := row(&benchReport{}); ok {
		t.Errorf("no peak known, yet a row %q", got)
	}
	for _, tt := range []struct {
		builder, job int64
		want         string
	}{
		{1 << 30, 1 << 30, "a job's child: the largest job child 1.00 GiB as it answered (flu, cold); the release snapshot's builder 1.00 GiB"},
		{2 << 30, 1 << 30, "the release snapshot's builder; the largest job child 1.00 GiB as it answered (flu, cold)"},
		{0, 1 << 30, "a job's child: the largest job child 1.00 GiB as it answered (flu, cold); no release snapshot builder ran"},
		{1 << 30, 0, "the release snapshot's builder; no job child reported"},
	} {
		r := &benchReport{JobPeak: tt.job, JobPeakAt: "flu, cold", BuilderPeak: tt.builder}
		if got := r.peakWhose(); got != tt.want {
			t.Errorf("builder %d, job %d: %q, want %q", tt.builder, tt.job, got, tt.want)
		}
	}
}

// The job child that peaked highest is named in the row, with its query
// and phase; the harness keeps the largest job's and the builder's apart.
func TestJobPeakNamed(t *testing.T) {
	m := &harness{}
	m.notePeak(3<<30, true) // the builder, before any query
	for _, o := range []struct {
		at   string
		peak int64
	}{{"flu, cold", 900 << 20}, {"hba1c, pooled", 1 << 30}, {"flu, pooled", 950 << 20}} {
		m.peakAt = o.at
		m.notePeak(o.peak, false)
	}
	if m.jobPeak != 1<<30 || m.jobPeakAt != "hba1c, pooled" || m.builderPeak != 3<<30 {
		t.Fatalf("kept job %d at %q, builder %d; want 1 GiB at hba1c, pooled and 3 GiB", m.jobPeak, m.jobPeakAt, m.builderPeak)
	}
	r := &benchReport{Patients: 1_000_000, MemLimit: 2 << 30, BuilderPeak: m.builderPeak, JobPeak: m.jobPeak, JobPeakAt: m.jobPeakAt}
	found := false
	for _, row := range r.targets() {
		if row[0] == "sandbox child peak memory (issue 24)" {
			found = true
			if want := "3.00 GiB, the largest sandbox child's own peak RSS: the release snapshot's builder; the largest job child 1.00 GiB as it answered (hba1c, pooled)"; !strings.Contains(row[2], want) {
				t.Errorf("row %q lacks %q", row[2], want)
			}
		}
	}
	if !found {
		t.Error("no child peak row")
	}
}

// TestFailedPhaseReported: a phase that fails is recorded once (after
// cancellation only the first), and the report names it while keeping
// what the other phases measured.
func TestFailedPhaseReported(t *testing.T) {
	q := queryResult{Name: "measured query", Raw: ms(100), Warm: ms(140), Cold: ms(400)}
	r := &benchReport{Patients: 10_000_000, Queries: []queryResult{q}}
	ctx, cancel := context.WithCancel(context.Background())
	r.phase(ctx, "statistics pairs", nil)
	r.phase(ctx, "codelist join vs IN", errors.New("sandbox: resources: the query ran out of memory"))
	cancel()
	r.phase(ctx, "sandbox start", context.Canceled)
	r.phase(ctx, "broker API", context.Canceled)
	if len(r.Failed) != 1 || r.Failed[0].Phase != "codelist join vs IN" {
		t.Fatalf("failed phases %+v, want only the codelist phase", r.Failed)
	}
	text := r.markdown()
	for _, want := range []string{"**FAILED: codelist join vs IN** (sandbox: resources: the query ran out of memory)", "| measured query |", "### 3. Sandbox start\n\nNot measured."} {
		if !strings.Contains(text, want) {
			t.Errorf("report lacks %q", want)
		}
	}

	ctx = context.Background()
	r = &benchReport{}
	r.phase(ctx, "postgres", errors.New("connection refused"))
	r.phase(ctx, "broker API", errors.New("broker did not start"))
	if len(r.Failed) != 2 {
		t.Errorf("two independent failures recorded as %+v", r.Failed)
	}
}

// TestPoolIdle: --pool-idle is bounded, and a report says when pooled runs
// waited after warming.
func TestPoolIdle(t *testing.T) {
	c := DefaultConfig()
	c.Patients = 1000
	for _, d := range []time.Duration{-time.Second, 11 * time.Minute} {
		c.PoolIdle = d
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "--pool-idle") {
			t.Errorf("--pool-idle %v: %v", d, err)
		}
	}
	c.PoolIdle = 5 * time.Second
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	q := queryResult{Name: "q", Raw: ms(100), Warm: ms(140), Cold: ms(400), Pooled: ms(150)}
	for idle, want := range map[time.Duration]bool{0: false, 5 * time.Second: true} {
		r := &benchReport{Patients: 1000, PoolIdle: idle, Queries: []queryResult{q}}
		if got := strings.Contains(r.markdown(), "then 5s more (--pool-idle)"); got != want {
			t.Errorf("pool idle %v: report names the wait: %v, want %v", idle, got, want)
		}
	}
}

// TestApplyLimits: the run's memory and snapshot limits reach the
// sandboxes' config, and the sandbox's defaults stand where it sets none.
func TestApplyLimits(t *testing.T) {
	def := sandbox.DefaultConfig()
	for _, tt := range []struct {
		cfg  Config
		mem  int64
		snap time.Duration
	}{
		{Config{}, def.MemoryLimit, def.SnapshotTimeout},
		{Config{MemoryLimit: 800 << 20, SnapshotTimeout: time.Hour}, 800 << 20, time.Hour},
	} {
		scfg := sandbox.DefaultConfig()
		(&harness{Config: tt.cfg}).applyLimits(&scfg)
		if scfg.MemoryLimit != tt.mem || scfg.SnapshotTimeout != tt.snap {
			t.Errorf("%+v: memory limit %d, snapshot timeout %v; want %d, %v", tt.cfg, scfg.MemoryLimit, scfg.SnapshotTimeout, tt.mem, tt.snap)
		}
	}
}
