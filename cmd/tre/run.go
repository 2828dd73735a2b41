package main

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/nhs-tre/tre/dp"
	"github.com/nhs-tre/tre/queries"
	"github.com/nhs-tre/tre/sandbox"
)

// RunMain is `tre run`: one query through exactly the pipeline the site
// agent uses — a real sandbox child, the site's catalog, DP protection —
// printing the protected table and its disclosure report. It never prints an
// exact aggregate: none reaches this process.
type RunMain struct {
	stdout, stderr io.Writer

	data, catalog, format, scratch string
	epsilon                        float64
	allowWeak                      bool
	timeout                        time.Duration
	sql                            string
}

func newRunMain(stdout, stderr io.Writer) command { return &RunMain{stdout: stdout, stderr: stderr} }

func (m *RunMain) ParseFlags(ctx context.Context, args []string) error {
	fs := newFlagSet("run", m.stderr)
	fs.StringVar(&m.data, "data", "", "the site's DuckDB file (opened read-only)")
	fs.StringVar(&m.catalog, "catalog", "", "the dataset catalog YAML")
	fs.Float64Var(&m.epsilon, "epsilon", 0, "privacy budget to spend (0: the catalog default)")
	fs.StringVar(&m.format, "format", "table", "table, json or csv")
	fs.StringVar(&m.scratch, "scratch-dir", "", "scratch directory for the sandbox (default: a temporary one)")
	fs.DurationVar(&m.timeout, "timeout", 5*time.Minute, "time limit of the query")
	fs.BoolVar(&m.allowWeak, "allow-weak-sandbox", false, "run even if an isolation layer is unavailable (the report says degraded)")
	fs.Usage = func() {
		fmt.Fprintln(m.stderr, "Usage: tre run --data FILE.duckdb --catalog FILE.yaml [flags] 'SQL'")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	switch {
	case m.data == "":
		return errors.New("--data is required")
	case m.catalog == "":
		return errors.New("--catalog is required")
	case fs.NArg() != 1:
		return errors.New("exactly one SQL argument is required (quote it)")
	case m.format != "table" && m.format != "json" && m.format != "csv":
		return fmt.Errorf("--format must be table, json or csv, not %q", m.format)
	case m.timeout <= 0:
		return errors.New("--timeout must be positive")
	case m.epsilon < 0:
		return errors.New("--epsilon must not be negative")
	}
	m.sql = fs.Arg(0)
	return nil
}

func (m *RunMain) Run(ctx context.Context) error {
	cat, err := queries.LoadCatalog(m.catalog)
	if err != nil {
		return err
	}
	scratch := m.scratch
	if scratch == "" {
		scratch, err = os.MkdirTemp("", "tre-run-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(scratch)
	}
	cfg := sandbox.DefaultConfig()
	cfg.DataPath = m.data
	cfg.Catalog = cat
	cfg.ScratchDir = scratch
	cfg.Timeout = m.timeout
	cfg.AllowWeak = m.allowWeak
	cfg.Logger = slog.New(slog.NewTextHandler(m.stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	r, err := sandbox.NewRunner(cfg)
	if err != nil {
		return err
	}
	defer r.Close() // the child's exit and job directory removal
	res, err := r.Run(ctx, sandbox.Job{QueryID: "local", SQL: m.sql, SQLHash: queries.SQLHash(m.sql), Epsilon: m.epsilon})
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return exitError{code: 1, err: errors.New(codedMessage(sandbox.ErrorCode(err), sandbox.ErrorMessage(err)))}
	}
	return m.print(res)
}

func (m *RunMain) print(res *dp.Result) error {
	switch m.format {
	case "json":
		enc := json.NewEncoder(m.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(res)
	case "csv":
		if err := writeResultCSV(m.stdout, res); err != nil {
			return err
		}
		// The report goes beside the data, not into it.
		enc := json.NewEncoder(m.stderr)
		enc.SetIndent("", "  ")
		return enc.Encode(res.Report)
	}
	if err := printResultTable(m.stdout, res.Columns, res.Rows); err != nil {
		return err
	}
	fmt.Fprintln(m.stdout, "\nDisclosure report:")
	enc := json.NewEncoder(m.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(res.Report)
}

// codedMessage prefixes msg with its code unless it already starts with it
// (a refusal reads "refused: …").
func codedMessage(code, msg string) string {
	if strings.HasPrefix(msg, code+": ") {
		return msg
	}
	return code + ": " + msg
}

// writeResultCSV writes the protected table; suppressed cells are empty.
func writeResultCSV(w io.Writer, res *dp.Result) error {
	cw := csv.NewWriter(w)
	head := make([]string, len(res.Columns))
	for i, c := range res.Columns {
		head[i] = c.Name
	}
	if err := cw.Write(head); err != nil {
		return err
	}
	for _, row := range res.Rows {
		rec := make([]string, len(res.Columns))
		for i, c := range res.Columns {
			if i >= len(row) {
				continue
			}
			switch cell := row[i]; {
			case c.Kind == "group" && !cell.Null:
				rec[i] = cell.Key
			case cell.Value != nil && !cell.Suppressed:
				rec[i] = strconv.FormatFloat(*cell.Value, 'f', -1, 64)
			}
		}
		if err := cw.Write(rec); err != nil {
			return err
		}
	}
	cw.Flush()
	return cw.Error()
}

// Close releases nothing: Run owns the runner and its scratch directory.
func (m *RunMain) Close() error { return nil }
