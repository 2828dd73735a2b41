package sandbox

import (
	"context"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// The pool (issue 24) takes a job's fixed cost off its critical path:
// Config.PoolSize children are started ahead of the jobs, each exactly as a
// job's own child would be (the same configuration, hardened by itself
// before it serves, its release snapshot opening), and wait, idle, for one
// request each:
//
//   - Single use: a child leaves the pool under its lock, runs one job and
//     is killed (finish), like any other. Nothing is ever put back.
//   - A pooled child is for one release snapshot and one set of limits
//     (callOptions): a job takes one started for exactly its own, and
//     children for a superseded snapshot, or older than maxPoolAge, are
//     killed instead. While pooled, a child holds its snapshot as a job
//     does (a reference and a shared lock), so the file stays.
//   - The pool is refilled in the background once a job's own child is
//     gone, so a refill does not compete with the job for the cores. A job
//     that finds the pool empty while a refill is starting waits for that
//     child rather than start another.
//   - Memory: idle children's resident size is summed as each one joins;
//     one that would take the sum past Config.PoolMaxIdleBytes is killed and
//     the pool stays smaller.
//   - Builder children (snapshot.go) are never pooled.

// maxPoolAge is how long a child may wait in the pool (its TLS certificate
// is valid for 48 hours; a fresh one costs a start).
const maxPoolAge = time.Hour

// poolState is the Runner's pool.
type poolState struct {
	idle []*child
	// filling counts children being started for the pool, by data path.
	filling map[string]int
	// changed is closed (and replaced) whenever a started child joins or
	// a start fails, waking jobs waiting for one.
	changed chan struct{}
	closed  bool
	// taken lists the pids of the children handed out (tests read it).
	taken []int
}

// takePooled returns a pooled child started for opts, waiting for one
// being started if there is none; nil when the pool has none for opts.
func (r *Runner) takePooled(ctx context.Context, opts callOptions) (*child, error) {
	if r.cfg.PoolSize <= 0 || opts.build {
		return nil, nil
	}
	for {
		r.poolMu.Lock()
		got, stale := r.pickIdle(opts)
		changed := r.pool.changed
		filling := r.pool.filling[opts.dataPath]
		if got != nil {
			r.pool.taken = append(r.pool.taken, got.cmd.Process.Pid)
		}
		r.poolMu.Unlock()
		r.discard(stale)
		if got != nil {
			got.release()
			got.release = nil
			return got, nil
		}
		if filling == 0 {
			return nil, nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// pickIdle removes from the pool the first live child started for opts,
// and every child that can no longer be used (another snapshot or limits,
// too old, exited), which it returns to be discarded. r.poolMu is held.
func (r *Runner) pickIdle(opts callOptions) (got *child, stale []*child) {
	keep := r.pool.idle[:0]
	for _, c := range r.pool.idle {
		switch {
		case c.opts != opts || time.Since(c.started) > maxPoolAge || c.pc.Exited():
			stale = append(stale, c)
		case got == nil:
			got = c
		default:
			keep = append(keep, c)
		}
	}
	clear(r.pool.idle[len(keep):])
	r.pool.idle = keep
	return got, stale
}

// discard kills pooled children that will not be used.
func (r *Runner) discard(cs []*child) {
	for _, c := range cs {
		r.finish(c.pc, c.cmd, c.jobDir, false)
		c.release()
	}
}

// refill starts children in the background until the pool holds
// PoolSize for opts (a job's options: its snapshot and limits).
func (r *Runner) refill(opts callOptions) {
	if r.cfg.PoolSize <= 0 || opts.build {
		return
	}
	r.poolMu.Lock()
	defer r.poolMu.Unlock()
	for !r.pool.closed && len(r.pool.idle)+r.pool.filling[opts.dataPath] < r.cfg.PoolSize {
		release := r.holdSnapshot(opts.dataPath)
		if release == nil {
			return // superseded: the next job's refill is for the current one
		}
		r.pool.filling[opts.dataPath]++
		r.exiting.Add(1)
		go r.fillOne(opts, release)
	}
}

// fillOne starts one child for the pool.
func (r *Runner) fillOne(opts callOptions, release func()) {
	defer r.exiting.Done()
	ch, err := r.startChild(opts, warmBudget(r.cfg))
	r.poolMu.Lock()
	r.pool.filling[opts.dataPath]--
	close(r.pool.changed)
	r.pool.changed = make(chan struct{})
	if err == nil && !r.pool.closed && r.idleBytes()+childBytes(ch) <= r.cfg.PoolMaxIdleBytes {
		ch.release = release
		r.pool.idle = append(r.pool.idle, ch)
		r.poolMu.Unlock()
		return
	}
	r.poolMu.Unlock()
	if err != nil {
		r.cfg.Logger.Warn("sandbox: pool child failed to start", "error", err)
	} else {
		r.finish(ch.pc, ch.cmd, ch.jobDir, false)
	}
	release()
}

// idleBytes is the resident size of the idle children. r.poolMu is held.
func (r *Runner) idleBytes() int64 {
	var n int64
	for _, c := range r.pool.idle {
		n += childBytes(c)
	}
	return n
}

// childBytes is a child's resident size (0 once it has gone).
func childBytes(c *child) int64 {
	n, err := rssBytes(c.cmd.Process.Pid)
	if err != nil {
		return 0
	}
	return n
}

// holdSnapshot takes a reference and a shared lock on the current release
// snapshot at path, as a job does, for a pooled child; nil when path is not
// the current snapshot.
func (r *Runner) holdSnapshot(path string) func() {
	r.snapMu.Lock()
	var s *snapshot
	for _, c := range r.snaps {
		if c.path == path && c.current {
			s = c
		}
	}
	if s == nil {
		r.snapMu.Unlock()
		return nil
	}
	s.refs++
	r.snapMu.Unlock()
	f, err := os.Open(path)
	if err == nil {
		err = unix.Flock(int(f.Fd()), unix.LOCK_SH)
	}
	if err != nil {
		if f != nil {
			f.Close()
		}
		r.releaseSnapshot(s)
		return nil
	}
	return func() { f.Close(); r.releaseSnapshot(s) }
}

// closePool kills the idle children; no child joins afterwards.
func (r *Runner) closePool() {
	r.poolMu.Lock()
	r.pool.closed = true
	idle := r.pool.idle
	r.pool.idle = nil
	r.poolMu.Unlock()
	r.discard(idle)
}

// PoolReady waits until no child is being started for the pool and every
// idle one has warmed (warm.go), so that the next job finds the pool as
// full and warm as its memory cap allows (a benchmark times jobs that
// arrive after a pause, as a site's do).
func (r *Runner) PoolReady(ctx context.Context) error {
	for {
		r.poolMu.Lock()
		filling := 0
		for _, n := range r.pool.filling {
			filling += n
		}
		changed := r.pool.changed
		r.poolMu.Unlock()
		if filling == 0 {
			return r.waitWarm(ctx)
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
