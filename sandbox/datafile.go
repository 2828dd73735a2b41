package sandbox

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// absolute returns c with its paths made absolute against the working
// directory of the process that configures it. The child runs in its job
// directory, so a relative path would name a file there; resolving here,
// before anything crosses into the sandbox, keeps `--data gp.duckdb` the
// file the operator meant.
func (c Config) absolute() (Config, error) {
	for _, p := range []*string{&c.DataPath, &c.ScratchDir} {
		abs, err := filepath.Abs(*p)
		if err != nil {
			return c, fmt.Errorf("sandbox config: %s: %w", *p, err)
		}
		*p = abs
	}
	return c, nil
}

// duckDBMagic is what every DuckDB database file holds at byte 8.
var duckDBMagic = []byte("DUCK")

// checkDataFile reports, at start-up and with the path and the reason, the
// data-file problems that would otherwise fail every job inside the sandbox
// with only "the site's data could not be opened": a missing or unreadable
// file, something other than a DuckDB database, or a write-ahead log beside
// it. The child may read the database file alone (Landlock), so DuckDB
// cannot replay a WAL there; a WAL means a writer has the file open or
// stopped without a checkpoint, and either way every job would fail.
func checkDataFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("data file: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("data file: %w", err)
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("data file %s is not a regular file (%s)", path, st.Mode().Type())
	}
	head := make([]byte, 12)
	if _, err := io.ReadFull(f, head); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return fmt.Errorf("data file %s is not a DuckDB database (%d bytes)", path, st.Size())
		}
		return fmt.Errorf("data file %s: %w", path, err)
	}
	if !bytes.Equal(head[8:12], duckDBMagic) {
		return fmt.Errorf("data file %s is not a DuckDB database", path)
	}
	if _, err := os.Lstat(path + ".wal"); !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("data file %s has a write-ahead log beside it (%s.wal): a writer has it open or stopped without a checkpoint, "+
			"and the sandbox reads the database file alone; stop the writer, or run CHECKPOINT on the file read-write (duckdb %s 'CHECKPOINT'), then start again",
			path, path, path)
	}
	return nil
}
