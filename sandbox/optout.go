package sandbox

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nhs-tre/tre/queries"
)

// The opt-out snapshot hash (canonical form on optOutReport) depends only on
// the data file's contents, yet computing it sorts every opted-out id: ~13 ms
// per job at 1M patients, ~135 ms at 10M. It is therefore computed once per
// version of the data file and reused, under these rules:
//
//   - A version is a fileIdentity: device, inode, size, and modification and
//     change times in nanoseconds. An in-place write changes the times (and
//     ctime cannot be set back by a user); a new file renamed over the path
//     has a new inode.
//   - A hash is cached only if a dedicated child computed it before running
//     anything else (no researcher SQL had run in that process), and only if
//     the file's times were at least racyWindow older than the start of that
//     computation: file times come from a coarse clock (a few ms on Linux, 2 s
//     on FAT), so a write in the same tick as the last one could otherwise
//     leave the identity unchanged ("racy git").
//   - The host sends the cached hash with the identity it was computed for.
//     The job's child fstat's the file DuckDB actually opened and uses the
//     hash only if that identity is equal and no WAL file lies beside the
//     data; otherwise it computes the hash itself. At the end of the job it
//     fstat's the same descriptor again and fails the job if the file was
//     written while the job ran (a new file renamed over the path is not a
//     change: DuckDB goes on reading the one it opened).
//
// Whatever happens, the report carries the hash of the file the job's
// DuckDB read: in doubt, the child computes.

// racyWindow is how much older than a hash computation a file's times must
// be for the hash to be cached.
const racyWindow = 3 * time.Second

// maxCachedOptOuts bounds the cache; it is cleared when full.
const maxCachedOptOuts = 8

// fileIdentity is one version of the data file, as stat reports it.
type fileIdentity struct {
	Dev     uint64 `json:"dev"`
	Ino     uint64 `json:"ino"`
	Size    int64  `json:"size"`
	MtimeNs int64  `json:"mtime_ns"`
	CtimeNs int64  `json:"ctime_ns"`
}

func identityOf(st *unix.Stat_t) fileIdentity {
	return fileIdentity{
		Dev: st.Dev, Ino: st.Ino, Size: st.Size,
		MtimeNs: st.Mtim.Nano(), CtimeNs: st.Ctim.Nano(),
	}
}

// racy reports whether the file's last change is too recent, at t, for a
// later change to be told apart by its times.
func (id fileIdentity) racy(t time.Time) bool {
	return t.Sub(time.Unix(0, max(id.MtimeNs, id.CtimeNs))) < racyWindow
}

// optOutSnapshot is an opt-out snapshot hash and the version of the data
// file it was computed on (nil: not known, so not reusable).
type optOutSnapshot struct {
	File *fileIdentity `json:"file,omitempty"`
	Hash string        `json:"hash"`
	// Computed says the child computed Hash in this process rather than
	// taking the host's.
	Computed bool `json:"computed,omitempty"`
}

func validHash(h string) bool {
	b, err := hex.DecodeString(h)
	return err == nil && len(b) == sha256.Size && h == hex.EncodeToString(b)
}

// statIdentity is the host's view of the data file at path: the identity of
// the file it names (symlinks followed), or nil when a WAL file lies beside
// it (its contents are then not the file's alone) or it cannot be read.
func statIdentity(path string) *fileIdentity {
	if walPresent(path) {
		return nil
	}
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil
	}
	id := identityOf(&st)
	return &id
}

// walPresent reports whether DuckDB's WAL file for path exists, or might:
// any error but "does not exist" counts as present.
func walPresent(path string) bool {
	_, err := os.Lstat(path + ".wal")
	return !errors.Is(err, fs.ErrNotExist)
}

// openedData is the data file as this process's DuckDB opened it: the
// descriptor DuckDB holds and its identity then.
type openedData struct {
	fd int
	id fileIdentity
}

// findOpenedData finds the descriptor through which this process holds
// path open (DuckDB's, once the database is open) by reading the links in
// /proc/self/fd, and fstat's it. It fails unless exactly one file matches:
// the identity is of the file being read, not of whatever the path names
// now. The caller must hold no other descriptor of path.
func findOpenedData(path string) (*openedData, error) {
	want := map[string]bool{filepath.Clean(path): true}
	if real, err := filepath.EvalSymlinks(path); err == nil {
		want[real] = true
	}
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return nil, err
	}
	var found *openedData
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		target, err := os.Readlink("/proc/self/fd/" + e.Name())
		if err != nil || !want[target] {
			continue
		}
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			return nil, err
		}
		id := identityOf(&st)
		if found != nil && found.id != id {
			return nil, errors.New("the data path is open as two different files")
		}
		if found == nil {
			found = &openedData{fd: fd, id: id}
		}
	}
	if found == nil {
		return nil, errors.New("the data file is not open")
	}
	return found, nil
}

// unchanged reports whether the descriptor still refers to the same file
// with the same size and modification time. The change time is left out:
// renaming a new file over the path (how a new snapshot is published)
// unlinks the open one, which sets its ctime but not its contents.
func (o *openedData) unchanged() bool {
	var st unix.Stat_t
	if unix.Fstat(o.fd, &st) != nil {
		return false
	}
	now := identityOf(&st)
	now.CtimeNs = o.id.CtimeNs
	return now == o.id
}

// applyOptOut returns the opt-out snapshot of the file the job's DuckDB
// opened: known's hash when known was computed for exactly that file and no
// WAL lies beside it, otherwise a hash computed now on ldb's connection.
func applyOptOut(ctx context.Context, ldb *lockedDB, cat *queries.Catalog, dataPath string, opened *openedData, known *optOutSnapshot) (*optOutSnapshot, error) {
	var id *fileIdentity
	if opened != nil && !walPresent(dataPath) {
		id = &opened.id
	}
	if id != nil && known != nil && known.File != nil && *known.File == *id && validHash(known.Hash) {
		return &optOutSnapshot{File: id, Hash: known.Hash}, nil
	}
	rep, err := optOutReport(ctx, ldb, cat)
	if err != nil {
		return nil, err
	}
	return &optOutSnapshot{File: id, Hash: rep.SnapshotHash, Computed: true}, nil
}
