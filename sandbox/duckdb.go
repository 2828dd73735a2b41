package sandbox

import (
	"bytes"
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"math"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/duckdb/duckdb-go/v2"

	"github.com/nhs-tre/tre/job"
	"github.com/nhs-tre/tre/queries"
)

// lockedDB is a DuckDB database opened read-only and locked down, with the
// one connection every statement of the job runs on (temp views live on it).
type lockedDB struct {
	db   *sql.DB
	conn *sql.Conn
	// keys are the data's single-column keys (queries.UniqueColumnsSQL),
	// read by openData: nothing of a job is needed for them, so with the
	// early open they are read before the job arrives.
	keys []queries.UniqueColumn
	// codelists: attachCodelists created the job's codelists table.
	codelists bool
}

func (l *lockedDB) Close() error {
	return errors.Join(l.conn.Close(), l.db.Close())
}

// openLocked opens the data file and locks it down (openData, then
// lockDown) for a job with these views.
func openLocked(ctx context.Context, cc *childConfig, views []string) (*lockedDB, error) {
	l, err := openData(ctx, cc)
	if err != nil {
		return nil, err
	}
	if err := l.lockDown(ctx, cc, views); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

// openData opens the data file read-only with every setting DuckDB takes
// at open time, then on its one connection sets the temp directory (only
// possible while external access is still on) and switches external access
// off. It needs nothing of a job, so the child can run it while the plugin
// handshake completes; lockDown must follow before any job's SQL.
func openData(ctx context.Context, cc *childConfig) (*lockedDB, error) {
	if strings.ContainsAny(cc.DataPath, "?#") {
		return nil, errors.New("data path must not contain ? or #")
	}
	db, err := sql.Open("duckdb", dataDSN(cc))
	if err != nil {
		return nil, fmt.Errorf("open data: %w", err)
	}
	db.SetMaxOpenConns(1)
	conn, err := db.Conn(ctx)
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open data: %w", err)
	}
	l := &lockedDB{db: db, conn: conn}
	for _, s := range []string{
		"SET temp_directory = " + quoteLiteral(cc.tempDir()),
		"SET enable_external_access = false",
	} {
		if _, err := conn.ExecContext(ctx, s); err != nil {
			l.Close()
			return nil, fmt.Errorf("lock down: %w", err)
		}
	}
	if l.keys, err = queries.ReadUniqueColumns(ctx, conn); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

// dataDSN opens cc.DataPath read-only with every setting DuckDB takes at
// open time. The path holds no ? or # (Config.Validate).
func dataDSN(cc *childConfig) string {
	return fmt.Sprintf("%s?access_mode=READ_ONLY"+
		"&autoload_known_extensions=false&autoinstall_known_extensions=false"+
		"&allow_community_extensions=false&allow_unsigned_extensions=false"+
		"&allow_persistent_secrets=false&allocator_background_threads=true"+
		"&memory_limit=%dB&max_temp_directory_size=%dB&threads=%d&max_expression_depth=%d",
		cc.DataPath, cc.MemoryLimit, cc.TempDirMaxSize, cc.Threads, cc.MaxExpressionDepth)
}

// lockDown creates the views on the connection openData left, locks the
// configuration and reads every setting back. Any difference refuses the
// job.
func (l *lockedDB) lockDown(ctx context.Context, cc *childConfig, views []string) error {
	for _, s := range append(slices.Clone(views), "SET lock_configuration = true") {
		if _, err := l.conn.ExecContext(ctx, s); err != nil {
			return fmt.Errorf("lock down: %w", err)
		}
	}
	return verifySettings(ctx, l.conn, cc)
}

func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// verifySettings reads back what openLocked set; DuckDB silently ignoring
// or renaming a setting in a future version must stop the job, not weaken it.
func verifySettings(ctx context.Context, conn *sql.Conn, cc *childConfig) error {
	rows, err := conn.QueryContext(ctx, "SELECT name, CAST(value AS VARCHAR) FROM duckdb_settings()")
	if err != nil {
		return fmt.Errorf("read settings: %w", err)
	}
	defer rows.Close()
	got := map[string]string{}
	for rows.Next() {
		var name string
		var value sql.NullString
		if err := rows.Scan(&name, &value); err != nil {
			return fmt.Errorf("read settings: %w", err)
		}
		got[name] = value.String
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read settings: %w", err)
	}
	exact := map[string]string{
		"access_mode":                  "read_only",
		"autoload_known_extensions":    "false",
		"autoinstall_known_extensions": "false",
		"allow_community_extensions":   "false",
		"allow_unsigned_extensions":    "false",
		"allow_persistent_secrets":     "false",
		"allocator_background_threads": "true",
		"enable_external_access":       "false",
		"lock_configuration":           "true",
		"threads":                      strconv.Itoa(cc.Threads),
		"max_expression_depth":         strconv.Itoa(cc.MaxExpressionDepth),
		"temp_directory":               cc.tempDir(),
	}
	for name, want := range exact {
		v, ok := got[name]
		if !ok || !strings.EqualFold(v, want) {
			return fmt.Errorf("duckdb setting %s is %q, want %q", name, v, want)
		}
	}
	for name, want := range map[string]int64{"memory_limit": cc.MemoryLimit, "max_temp_directory_size": cc.TempDirMaxSize} {
		v, err := parseSize(got[name])
		if err != nil || math.Abs(float64(v-want)) > 0.06*float64(want) {
			return fmt.Errorf("duckdb setting %s is %q, want %d bytes", name, got[name], want)
		}
	}
	// With external access off DuckDB allows only its own files: the
	// database and its WAL siblings, and the temp directory. Anything else
	// in these lists means a path was let in.
	dataDir := filepath.Dir(cc.DataPath)
	for _, p := range parseList(got["allowed_paths"]) {
		if filepath.Dir(p) != dataDir || !strings.HasPrefix(filepath.Base(p), filepath.Base(cc.DataPath)) {
			return fmt.Errorf("duckdb allowed_paths holds %q", p)
		}
	}
	for _, d := range parseList(got["allowed_directories"]) {
		if filepath.Clean(d) != filepath.Clean(cc.tempDir()) {
			return fmt.Errorf("duckdb allowed_directories holds %q", d)
		}
	}
	return nil
}

// parseList splits DuckDB's "[a, b]" rendering of a VARCHAR list.
func parseList(s string) []string {
	s = strings.TrimSpace(s)
	s = strings.TrimPrefix(s, "[")
	s = strings.TrimSuffix(s, "]")
	if strings.TrimSpace(s) == "" {
		return nil
	}
	parts := strings.Split(s, ",")
	for i := range parts {
		parts[i] = strings.TrimSpace(parts[i])
	}
	return parts
}

// parseSize reads DuckDB's rendering of a byte size ("61.0 MiB", "2.0 GiB",
// "0 bytes").
func parseSize(s string) (int64, error) {
	f := strings.Fields(s)
	if len(f) != 2 {
		return 0, fmt.Errorf("size %q", s)
	}
	n, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		return 0, fmt.Errorf("size %q", s)
	}
	units := map[string]float64{
		"bytes": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40,
		"KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12,
	}
	u, ok := units[f[1]]
	if !ok {
		return 0, fmt.Errorf("size %q", s)
	}
	return int64(n * u), nil
}

// prepareOne is the sandbox's own multi-statement check, run on the exact
// text about to execute: the driver's plain Prepare extracts statements and
// refuses any count but one without executing anything (its QueryContext
// would silently run all but the last).
func prepareOne(conn *sql.Conn, query string) error {
	return conn.Raw(func(dc any) error {
		c, ok := dc.(driver.Conn)
		if !ok {
			return errors.New("unexpected driver connection")
		}
		st, err := c.Prepare(query)
		if err != nil {
			return err
		}
		return st.Close()
	})
}

// classify turns a DuckDB or context error into a safe code. The DuckDB
// message itself is never used: it can quote data values.
func classify(ctx context.Context, err error) *job.Error {
	var de *duckdb.Error
	switch {
	case ctx.Err() != nil:
		return job.Errorf(job.CodeTimeout, "the query ran past its time limit")
	case errors.As(err, &de) && de.Type == duckdb.ErrorTypeInterrupt:
		return job.Errorf(job.CodeTimeout, "the query ran past its time limit")
	case errors.As(err, &de) && de.Type == duckdb.ErrorTypeOutOfMemory:
		return job.Errorf(job.CodeMemory, "the query ran out of memory")
	case errors.As(err, &de):
		return job.Errorf(job.CodeRefused, "the database refused the query (%s error)", safeTypeName(de.Type))
	}
	return job.Errorf(job.CodeInternal, "the query failed")
}

// safeTypeName names a DuckDB error class from a fixed list, never from the
// message.
func safeTypeName(t duckdb.ErrorType) string {
	switch t {
	case duckdb.ErrorTypePermission:
		return "permission"
	case duckdb.ErrorTypeParser:
		return "parser"
	case duckdb.ErrorTypeBinder:
		return "binder"
	case duckdb.ErrorTypeCatalog:
		return "catalog"
	case duckdb.ErrorTypeConversion:
		return "conversion"
	case duckdb.ErrorTypeOutOfRange:
		return "out of range"
	case duckdb.ErrorTypeInvalidInput:
		return "invalid input"
	case duckdb.ErrorTypeNotImplemented:
		return "not implemented"
	}
	return "execution"
}

// statusBytes extracts a size field given in kB (VmRSS, VmHWM) from
// /proc/<pid>/status, in bytes.
func statusBytes(status []byte, field string) (int64, error) {
	prefix := []byte(field + ":")
	for _, line := range bytes.Split(status, []byte("\n")) {
		if rest, ok := bytes.CutPrefix(line, prefix); ok {
			f := strings.Fields(string(rest))
			if len(f) < 1 {
				break
			}
			kb, err := strconv.ParseInt(f[0], 10, 64)
			if err != nil {
				return 0, err
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("no %s", field)
}
