package sandbox

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// A version of the site's data file is told by its fileIdentity; a release
// snapshot is kept per version (snapshot.go).

// racyWindow is how much older than the start of a snapshot's build a data
// file's times must be for the snapshot to be kept for that version.
const racyWindow = 3 * time.Second

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

// validHash reports whether h is a SHA-256 in lower-case hex.
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
