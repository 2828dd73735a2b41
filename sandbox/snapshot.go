package sandbox

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"time"

	"github.com/duckdb/duckdb-go/v2"
	"golang.org/x/sys/unix"

	"github.com/nhs-tre/tre/job"
	"github.com/nhs-tre/tre/queries"
)

// Opt-out first, by construction. No job's child ever opens the site's data
// file: it opens a release snapshot (queries.ReleaseStatements) that holds
// no row of an opted-out patient and no row without a patient id, so no
// expression of a researcher's is ever evaluated on their rows, whatever
// order DuckDB evaluates filters in. A dedicated child builds the snapshot
// from the data file once per version of it, before any researcher SQL, in
// a process that runs nothing else:
//
//   - A version is a fileIdentity (device, inode, size, modification and
//     change times). The builder reads the identity of the file its DuckDB
//     opened, and fails if the file was written while it read it.
//   - A snapshot is built only from a file whose times are at least
//     racyWindow old when the build starts (a write in the same clock tick
//     as the last could leave the identity unchanged): a job on a file
//     changed more recently waits out the rest of the window first.
//   - Snapshots live in <scratch>/snapshots, named by a key over the data
//     version, the catalog and the versions of the sandbox and DuckDB, with
//     a sidecar .json holding the version and the opt-out hash; a later
//     Runner (a restarted agent, another tre run) reuses them.
//   - A job holds a shared lock (flock) on its snapshot while its child
//     runs; a snapshot of an older version is removed once no job of any
//     process holds it.
//   - A write-ahead log beside the data file, a NULL in the opt-out table, or
//     data that does not convert to its catalog types fails the build,
//     naming the problem for the site's operator, and so every job until
//     the data is fixed: an opt-out must never fail open.
//
// Disk: a snapshot is about the size of the data file (less the forbidden
// columns and opted-out rows), and while a new version is built the old one
// stays until its last job ends: up to twice the data file.

// snapshotFormat changes whenever what a snapshot holds changes, so older
// files are not reused.
const snapshotFormat = "2"

// snapshot is a release snapshot the Runner has, and the jobs using it.
type snapshot struct {
	path string
	key  string
	// source is the data file version it was built from.
	source fileIdentity
	// hash is the opt-out snapshot hash of that version.
	hash string
	refs int
	// current: the snapshot of its version, kept for later jobs. A
	// superseded one is removed when its last job ends.
	current bool
}

// snapshotMeta is the sidecar beside a kept snapshot.
type snapshotMeta struct {
	Format string       `json:"format"`
	Source fileIdentity `json:"source"`
	Hash   string       `json:"hash"`
}

// snapshotFile is the file name the builder child writes in its job dir.
const snapshotFile = "release.duckdb"

func (r *Runner) snapshotDir() string { return filepath.Join(r.cfg.ScratchDir, "snapshots") }

// snapshotKey names the snapshot of data version id for this Runner's
// catalog, DuckDB and sandbox.
func (r *Runner) snapshotKey(id fileIdentity) string {
	cat, _ := json.Marshal(r.cfg.Catalog)
	ident, _ := json.Marshal(id)
	h := sha256.New()
	for _, part := range [][]byte{[]byte(snapshotFormat), []byte(sandboxVersion), []byte(duckdbVersion()), ident, cat} {
		h.Write(part)
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil))[:32]
}

// duckdbVersion is the version of the DuckDB library linked in, from the
// build information (a snapshot written by one DuckDB version is not
// reused by another).
func duckdbVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, m := range bi.Deps {
			if m.Path == "github.com/duckdb/duckdb-go-bindings" {
				return m.Version
			}
		}
	}
	return "unknown"
}

// acquireSnapshot returns the snapshot of the data file as it is now,
// building it first if need be, with a shared lock on its file held until
// release is called. Errors are *job.Error: the build's failures name the
// problem for the site's operator.
func (r *Runner) acquireSnapshot(ctx context.Context) (s *snapshot, release func(), err error) {
	for attempt := 0; ; attempt++ {
		s, err := r.snapshotFor(ctx)
		if err != nil {
			return nil, nil, err
		}
		f, err := os.Open(s.path)
		if err == nil {
			err = unix.Flock(int(f.Fd()), unix.LOCK_SH)
		}
		if err == nil {
			return s, func() { f.Close(); r.releaseSnapshot(s) }, nil
		}
		if f != nil {
			f.Close()
		}
		// Removed by another process between the choice and the lock:
		// forget it and build again (once).
		r.snapMu.Lock()
		if r.snaps[s.source] == s {
			delete(r.snaps, s.source)
		}
		r.snapMu.Unlock()
		r.releaseSnapshot(s)
		if attempt > 0 {
			r.cfg.Logger.Error("sandbox: release snapshot vanished", "error", err)
			return nil, nil, job.Errorf(job.CodeUnavailable, "the site's release snapshot could not be opened")
		}
	}
}

// snapshotFor returns, with a reference taken, the snapshot of the current
// version of the data file: cached, adopted from an earlier Runner's file,
// or built now (one build at a time; jobs arriving meanwhile wait for it).
func (r *Runner) snapshotFor(ctx context.Context) (*snapshot, error) {
	for {
		id := statIdentity(r.cfg.DataPath)
		if id == nil {
			if walPresent(r.cfg.DataPath) {
				return nil, job.Errorf(job.CodeUnavailable, "the site's data file has a write-ahead log beside it; checkpoint it or publish a new file")
			}
			return nil, job.Errorf(job.CodeUnavailable, "the site's data file cannot be read")
		}
		if wait := racyWindow - r.now().Sub(time.Unix(0, max(id.MtimeNs, id.CtimeNs))); wait > 0 {
			// Changed too recently to be told from a later change.
			if err := r.sleep(ctx, min(wait, racyWindow)); err != nil {
				return nil, err
			}
			continue
		}
		r.snapMu.Lock()
		if s := r.snaps[*id]; s != nil {
			s.refs++
			r.snapMu.Unlock()
			return s, nil
		}
		if s := r.adopt(*id); s != nil {
			r.snapMu.Unlock()
			return s, nil
		}
		if fill := r.snapFill; fill != nil {
			r.snapMu.Unlock()
			select {
			case <-fill:
				continue
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		fill := make(chan struct{})
		r.snapFill = fill
		r.snapBuilds++
		r.snapMu.Unlock()

		started := r.now()
		s, err := r.buildSnapshot(ctx)

		r.snapMu.Lock()
		r.snapFill = nil
		close(fill)
		if err != nil {
			r.snapMu.Unlock()
			return nil, err
		}
		if s.source.racy(started) {
			// A new file renamed over the path while this one was built:
			// it is the newer file's snapshot, but too recent to keep.
			r.removeSnapshot(s)
			r.snapMu.Unlock()
			continue
		}
		s.refs = 1
		r.keep(s)
		r.snapMu.Unlock()
		return s, nil
	}
}

// adopt takes over a snapshot of version id that an earlier Runner kept,
// with a reference; nil when there is none. r.snapMu is held.
func (r *Runner) adopt(id fileIdentity) *snapshot {
	key := r.snapshotKey(id)
	base := filepath.Join(r.snapshotDir(), key)
	b, err := os.ReadFile(base + ".json")
	if err != nil {
		return nil
	}
	var m snapshotMeta
	if json.Unmarshal(b, &m) != nil || m.Format != snapshotFormat || m.Source != id || !validHash(m.Hash) {
		return nil
	}
	if _, err := os.Stat(base + ".duckdb"); err != nil {
		return nil
	}
	s := &snapshot{path: base + ".duckdb", key: key, source: id, hash: m.Hash, refs: 1}
	r.keep(s)
	return s
}

// keep makes s the snapshot of its version and supersedes the others.
// r.snapMu is held.
func (r *Runner) keep(s *snapshot) {
	s.current = true
	for id, old := range r.snaps {
		delete(r.snaps, id)
		old.current = false
		if old.refs == 0 {
			r.removeSnapshot(old)
		}
	}
	r.snaps[s.source] = s
	r.sweepSnapshots(s.key)
}

// releaseSnapshot drops a job's reference, removing the snapshot if it is
// no longer current and no job uses it.
func (r *Runner) releaseSnapshot(s *snapshot) {
	r.snapMu.Lock()
	defer r.snapMu.Unlock()
	s.refs--
	if s.refs == 0 && !s.current {
		r.removeSnapshot(s)
	}
}

// removeSnapshot deletes s's files unless a job of any process holds them.
func (r *Runner) removeSnapshot(s *snapshot) {
	if removeUnlocked(s.path) {
		os.Remove(strings.TrimSuffix(s.path, ".duckdb") + ".json")
	}
}

// sweepSnapshots removes the kept snapshots other than keep's that no job
// of any process holds: older versions, other catalogs.
func (r *Runner) sweepSnapshots(keep string) {
	ents, err := os.ReadDir(r.snapshotDir())
	if err != nil {
		return
	}
	for _, e := range ents {
		name := e.Name()
		if !strings.HasSuffix(name, ".duckdb") || strings.HasPrefix(name, keep) {
			continue
		}
		path := filepath.Join(r.snapshotDir(), name)
		if removeUnlocked(path) {
			os.Remove(strings.TrimSuffix(path, ".duckdb") + ".json")
		}
	}
}

// removeUnlocked removes path if no process holds a lock on it, and
// reports whether it is gone.
func removeUnlocked(path string) bool {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return true
	} else if err != nil {
		return false
	}
	defer f.Close()
	if unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) != nil {
		return false
	}
	err = os.Remove(path)
	return err == nil || errors.Is(err, fs.ErrNotExist)
}

// buildSnapshot runs a builder child on the data file and moves the
// snapshot it wrote into the snapshot directory, under its key, with its
// sidecar.
func (r *Runner) buildSnapshot(ctx context.Context) (*snapshot, error) {
	var s *snapshot
	resp, _, err := r.call(ctx, &request{Job: job.Job{SQLHash: queries.SQLHash("")}, Catalog: r.cfg.Catalog},
		callOptions{dataPath: r.cfg.DataPath, build: true, timeout: r.cfg.SnapshotTimeout},
		func(resp *response, jobDir string) error {
			b := resp.Snapshot
			if b == nil || b.Source == nil || !validHash(b.Hash) {
				return job.Errorf(job.CodeInternal, "the snapshot builder returned no snapshot")
			}
			if err := os.MkdirAll(r.snapshotDir(), 0o700); err != nil {
				return fmt.Errorf("snapshot dir: %w", err)
			}
			key := r.snapshotKey(*b.Source)
			base := filepath.Join(r.snapshotDir(), key)
			if err := os.Rename(filepath.Join(jobDir, snapshotFile), base+".duckdb"); err != nil {
				return fmt.Errorf("move snapshot: %w", err)
			}
			s = &snapshot{path: base + ".duckdb", key: key, source: *b.Source, hash: b.Hash}
			meta, err := json.Marshal(snapshotMeta{Format: snapshotFormat, Source: *b.Source, Hash: b.Hash})
			if err == nil {
				err = os.WriteFile(base+".json.tmp", meta, 0o600)
			}
			if err == nil {
				err = os.Rename(base+".json.tmp", base+".json")
			}
			return err
		})
	if err != nil {
		var se *job.Error
		if !errors.As(err, &se) && ctx.Err() == nil {
			r.cfg.Logger.Error("sandbox: release snapshot not built", "error", err)
			err = job.Errorf(job.CodeUnavailable, "the site's release snapshot could not be built")
		}
		return nil, err
	}
	if resp.Snapshot.Hash != s.hash {
		return nil, job.Errorf(job.CodeInternal, "the snapshot builder returned two hashes")
	}
	r.cfg.Logger.Info("sandbox: release snapshot built", "file", s.path)
	return s, nil
}

// snapshotBuilt is what a builder child reports.
type snapshotBuilt struct {
	// Source is the data file version it read.
	Source *fileIdentity `json:"source"`
	// Hash is the opt-out snapshot hash of that version.
	Hash string `json:"hash"`
}

// build is the builder child's job: the release snapshot of the data file
// into the job dir. It runs no researcher SQL.
func (s *server) build(ctx context.Context, cat *queries.Catalog) (*snapshotBuilt, error) {
	if walPresent(s.cc.DataPath) {
		return nil, job.Errorf(job.CodeUnavailable, "the site's data file has a write-ahead log beside it: a writer has it open or stopped without a checkpoint; checkpoint it or publish a new file")
	}
	db, err := sql.Open("duckdb", dataDSN(s.cc))
	if err != nil {
		return nil, s.unavailable(ctx, "the site's data could not be opened", err)
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	conn, err := db.Conn(ctx)
	if err != nil {
		return nil, s.unavailable(ctx, "the site's data could not be opened", err)
	}
	defer conn.Close()
	opened, err := findOpenedData(s.cc.DataPath)
	if err != nil {
		s.log.Warn("sandbox: data file identity unknown", "error", err)
		return nil, job.Errorf(job.CodeUnavailable, "the site's data file could not be identified")
	}
	if _, err := conn.ExecContext(ctx, "SET temp_directory = "+quoteLiteral(s.cc.tempDir())); err != nil {
		return nil, s.unavailable(ctx, "the site's data could not be opened", err)
	}
	hash, err := WriteSnapshot(ctx, conn, cat, filepath.Join(s.cc.JobDir, snapshotFile))
	if err != nil {
		var se *job.Error
		if errors.As(err, &se) {
			return nil, se
		}
		var te *tableCopyError
		if errors.As(err, &te) {
			s.log.Warn("sandbox: release snapshot: copying a table failed", "table", te.Table, "memory_limit", s.cc.MemoryLimit, "max_temp_directory_size", s.cc.TempDirMaxSize)
		}
		return nil, s.unavailable(ctx, "the site's data could not be copied into a release snapshot; the agent's log says at which table", err)
	}
	if !opened.unchanged() {
		return nil, job.Errorf(job.CodeUnavailable, "the site's data file changed while its release snapshot was built; run the query again")
	}
	return &snapshotBuilt{Source: &opened.id, Hash: hash}, nil
}

// unavailable logs err by class (a DuckDB error's text can quote data) and
// returns a coded error with msg.
func (s *server) unavailable(ctx context.Context, msg string, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	s.safe(ctx, err)
	return job.Errorf(job.CodeUnavailable, "%s", msg)
}

// WriteSnapshot writes the release snapshot of the data open on conn (its
// default database, with external access still on) to a new DuckDB file at
// path, and returns its opt-out hash. The sandbox's builder child calls it
// and so does package bench, so the benchmark runs on what jobs run on.
// Errors a site's operator must act on are *job.Error naming the problem;
// others name the table whose copy failed and are logged by class only.
func WriteSnapshot(ctx context.Context, conn *sql.Conn, cat *queries.Catalog, path string) (string, error) {
	cols, err := queries.ReadUniqueColumns(ctx, conn)
	if err != nil {
		return "", err
	}
	var nulls int64
	if err := conn.QueryRowContext(ctx, queries.OptOutNullsSQL(cat)).Scan(&nulls); err != nil {
		return "", fmt.Errorf("opt-out table: %w", err)
	}
	if nulls > 0 {
		return "", job.Errorf(job.CodeUnavailable, "the opt-out table %s holds %d rows whose %s is NULL: tre cannot tell whom they opt out, so it runs no query until they are removed or corrected",
			cat.Policy.OptOutTable, nulls, cat.PrivacyUnit)
	}
	const dst = "tre_release"
	if _, err := conn.ExecContext(ctx, fmt.Sprintf("ATTACH %s AS %s (READ_WRITE)", quoteLiteral(path), dst)); err != nil {
		return "", fmt.Errorf("snapshot: attach: %w", err)
	}
	for _, st := range queries.ReleaseStatements(cat, dst, queries.UniqueTablesFrom(cols, cat)) {
		if _, err := conn.ExecContext(ctx, st.SQL); err != nil {
			return "", &tableCopyError{Table: st.Table, Err: err}
		}
	}
	var hash string
	if err := conn.QueryRowContext(ctx, "SELECT optout_hash FROM "+dst+"."+queries.SnapshotMetaTable).Scan(&hash); err != nil {
		return "", fmt.Errorf("snapshot: %w", err)
	}
	for _, s := range []string{"CHECKPOINT " + dst, "DETACH " + dst} {
		if _, err := conn.ExecContext(ctx, s); err != nil {
			return "", fmt.Errorf("snapshot: %w", err)
		}
	}
	if walPresent(path) {
		return "", errors.New("snapshot: a WAL was left beside the snapshot")
	}
	return hash, nil
}

// tableCopyError is a release statement of one table that failed; the
// table's name (catalog metadata, never data) goes to the site's log, the
// DuckDB error only by class (its text can quote data).
type tableCopyError struct {
	Table string
	Err   error
}

func (e *tableCopyError) Error() string { return "snapshot of table " + e.Table + ": " + e.Err.Error() }
func (e *tableCopyError) Unwrap() error { return e.Err }

// readSnapshotHash reads the opt-out hash a release snapshot was built
// with: the job reports the snapshot it read.
func readSnapshotHash(ctx context.Context, ldb *lockedDB) (string, error) {
	var hash string
	if err := ldb.conn.QueryRowContext(ctx, "SELECT optout_hash FROM "+queries.SnapshotMetaTable).Scan(&hash); err != nil {
		var de *duckdb.Error
		if errors.As(err, &de) {
			return "", fmt.Errorf("the data file is not a release snapshot: %s", safeTypeName(de.Type))
		}
		return "", err
	}
	if !validHash(hash) {
		return "", errors.New("the release snapshot's opt-out hash is malformed")
	}
	return hash, nil
}
