package bench

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
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

// TestChildPeakTarget: the sandbox child's peak memory is judged against
// its memory limit + 200 MB, and is left out when the kernel did not say.
func TestChildPeakTarget(t *testing.T) {
	const name = "sandbox child peak memory (issue 24)"
	row := func(peak int64) ([4]string, bool) {
		r := &benchReport{Patients: 1_000_000, MemLimit: 1 << 30, ChildPeak: peak}
		for _, row := range r.targets() {
			if row[0] == name {
				return row, true
			}
		}
		return [4]string{}, false
	}
	for _, tt := range []struct {
		peak int64
		want string
	}{{1<<30 + 200<<20, "yes"}, {1<<30 + 201<<20, "**no**"}} {
		got, ok := row(tt.peak)
		if !ok || got[3] != tt.want {
			t.Errorf("peak %d: row %q, want verdict %q", tt.peak, got, tt.want)
		}
	}
	if got, ok := row(0); ok {
		t.Errorf("no peak known, yet a row %q", got)
	}
	for _, tt := range []struct {
		builder, peak int64
		want          string
	}{
		{1 << 30, 1 << 30, "the release snapshot's builder (the jobs' children peaked no higher)"},
		{1 << 30, 2 << 30, "a job's (the release snapshot's builder: 1.00 GiB)"},
		{0, 1 << 30, "a job's (no release snapshot builder ran)"},
	} {
		r := &benchReport{ChildPeak: tt.peak, BuilderPeak: tt.builder}
		if got := r.peakWhose(); got != tt.want {
			t.Errorf("builder %d, peak %d: %q, want %q", tt.builder, tt.peak, got, tt.want)
		}
	}
}

// The job child that peaked highest is named in the row, with its query
// and phase, once the runners reported one; the harness keeps the largest.
func TestJobPeakNamed(t *testing.T) {
	m := &harness{}
	for _, o := range []struct {
		at   string
		peak int64
	}{{"flu, cold", 900 << 20}, {"hba1c, pooled", 1 << 30}, {"flu, pooled", 950 << 20}} {
		m.peakAt = o.at
		m.notePeak(o.peak)
	}
	if m.jobPeak != 1<<30 || m.jobPeakAt != "hba1c, pooled" {
		t.Fatalf("kept %d at %q, want 1 GiB at hba1c, pooled", m.jobPeak, m.jobPeakAt)
	}
	r := &benchReport{Patients: 1_000_000, MemLimit: 2 << 30, ChildPeak: 3 << 30, JobPeak: m.jobPeak, JobPeakAt: m.jobPeakAt}
	found := false
	for _, row := range r.targets() {
		if row[0] == "sandbox child peak memory (issue 24)" {
			found = true
			if want := "the largest job child, as it answered: 1.00 GiB (hba1c, pooled)"; !strings.Contains(row[2], want) {
				t.Errorf("row %q lacks %q", row[2], want)
			}
		}
	}
	if !found {
		t.Error("no child peak row")
	}
	if note := (&benchReport{}).jobPeakNote(); note != "" {
		t.Errorf("no job peak reported, yet %q", note)
	}
}

// TestChildPeakRSS: after a child that touched 64 MiB has been waited
// for, the children's peak RSS is at least that. The child is this test
// binary, re-run to allocate and exit.
func TestChildPeakRSS(t *testing.T) {
	if os.Getenv("TRE_BENCH_TOUCH_64M") == "1" {
		b := make([]byte, 64<<20)
		for i := 0; i < len(b); i += 4096 {
			b[i] = 1
		}
		os.Exit(int(b[len(b)-4096]) - 1)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestChildPeakRSS$")
	cmd.Env = append(os.Environ(), "TRE_BENCH_TOUCH_64M=1")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	if got := childPeakRSS(); got < 64<<20 {
		t.Errorf("children's peak RSS %d bytes after a 64 MiB child", got)
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
