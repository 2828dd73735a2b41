package sandbox

import (
	"context"
	"sync"
	"testing"

	"github.com/nhs-tre/tre/job"
)

// waitPoolSettled waits until no child is being started for the pool and
// returns how many are idle.
func (r *Runner) waitPoolSettled(tb testing.TB) int {
	tb.Helper()
	if err := r.PoolReady(context.Background()); err != nil {
		tb.Fatal(err)
	}
	r.poolMu.Lock()
	defer r.poolMu.Unlock()
	return len(r.pool.idle)
}

// takenFromPool lists the pids of the children the pool handed out.
func (r *Runner) takenFromPool() []int {
	r.poolMu.Lock()
	defer r.poolMu.Unlock()
	return append([]int(nil), r.pool.taken...)
}

// TestPoolSingleUse runs jobs, several at once, through a pool of two: each
// pooled child is handed out once (a pid never twice), every job gets a
// correct answer, and Close leaves no child behind.
func TestPoolSingleUse(t *testing.T) {
	cfg := testConfig(t, MustFixture(t, 60))
	cfg.PoolSize = 2
	r := MustRunner(t, cfg)
	ctx := context.Background()
	if err := r.Prepare(ctx); err != nil {
		t.Fatal(err)
	}
	const jobs = 8
	var wg sync.WaitGroup
	errs := make([]error, jobs)
	for i := range jobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out, err := r.Run(ctx, newJob("SELECT sex, count(*) AS n FROM patients GROUP BY sex"))
			if err == nil && (len(out.Columns) != 2 || !out.Report.OptOut.Applied) {
				err = job.Errorf(job.CodeInternal, "unexpected answer")
			}
			errs[i] = err
		}()
		if i%2 == 1 {
			wg.Wait() // pairs at once, then let the pool refill
			r.waitPoolSettled(t)
		}
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("job %d: %v", i, err)
		}
	}
	taken := r.takenFromPool()
	if len(taken) < jobs/2 {
		t.Errorf("only %d of %d jobs had a pooled child", len(taken), jobs)
	}
	seen := map[int]bool{}
	for _, pid := range taken {
		if seen[pid] {
			t.Errorf("child %d handed out twice", pid)
		}
		seen[pid] = true
	}
	idle := r.waitPoolSettled(t)
	if idle != cfg.PoolSize {
		t.Errorf("%d idle children after the jobs, want %d", idle, cfg.PoolSize)
	}
	r.poolMu.Lock()
	pids := []int{}
	for _, c := range r.pool.idle {
		pids = append(pids, c.cmd.Process.Pid)
	}
	r.poolMu.Unlock()
	r.Close()
	for _, pid := range pids {
		if seen[pid] {
			t.Errorf("idle child %d was handed out before", pid)
		}
		if _, err := rssBytes(pid); err == nil {
			t.Errorf("idle child %d still runs after Close", pid)
		}
	}
}

// TestPoolMemoryCap: a child that would take the idle children past
// PoolMaxIdleBytes is killed, and jobs start their own.
func TestPoolMemoryCap(t *testing.T) {
	cfg := testConfig(t, MustFixture(t, 20))
	cfg.PoolSize = 2
	cfg.PoolMaxIdleBytes = 1 << 20 // below any child's resident size
	r := MustRunner(t, cfg)
	ctx := context.Background()
	if err := r.Prepare(ctx); err != nil {
		t.Fatal(err)
	}
	if n := r.waitPoolSettled(t); n != 0 {
		t.Errorf("%d children idle over the memory cap", n)
	}
	if _, err := r.Run(ctx, newJob("SELECT count(*) AS n FROM patients")); err != nil {
		t.Fatal(err)
	}
	if n := len(r.takenFromPool()); n != 0 {
		t.Errorf("%d children handed out from a pool over its cap", n)
	}
}
