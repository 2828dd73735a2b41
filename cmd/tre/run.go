package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/nhs-tre/tre/api"
	"github.com/nhs-tre/tre/broker"
	"github.com/nhs-tre/tre/cli"
	"github.com/nhs-tre/tre/dp"
	"github.com/nhs-tre/tre/job"
	"github.com/nhs-tre/tre/queries"
	"github.com/nhs-tre/tre/sandbox"
)

// RunMain is `tre run`: one query through exactly the pipeline the site
// agent uses — a real sandbox child, the site's catalog, DP protection —
// printing exactly what a researcher would receive: the protected table and
// the researcher's part of the disclosure report (dp.ResearcherResult), or,
// when the run fails, the generic message a researcher sees once an output
// checker releases the failure notice. --checker adds what the output
// checker sees: the full report (dominance flags, rows dropped by bounding,
// partitions not released, opt-out and sandbox), or the failure's class and
// detail. It never prints an exact aggregate: none reaches this process.
type RunMain struct {
	stdout, stderr io.Writer

	data, catalog, format, scratch string
	epsilon                        float64
	allowWeak, checker             bool
	timeout                        time.Duration
	sql                            string
}

func newRunMain(stdout, stderr io.Writer) cli.Command {
	return &RunMain{stdout: stdout, stderr: stderr}
}

func (m *RunMain) ParseFlags(ctx context.Context, args []string) error {
	fs := cli.NewFlagSet("run", m.stderr)
	fs.StringVar(&m.data, "data", "", "the site's DuckDB file (opened read-only)")
	fs.StringVar(&m.catalog, "catalog", "", "the dataset catalog YAML")
	fs.Float64Var(&m.epsilon, "epsilon", 0, "privacy budget to spend (0: the catalog default)")
	fs.StringVar(&m.format, "format", "table", "table, json or csv")
	fs.StringVar(&m.scratch, "scratch-dir", "", "scratch directory for the sandbox and its release snapshot of the data (default: one per data file under $XDG_CACHE_HOME/tre/run)")
	fs.DurationVar(&m.timeout, "timeout", 5*time.Minute, "time limit of the query")
	fs.BoolVar(&m.allowWeak, "allow-weak-sandbox", false, "run even if an isolation layer is unavailable (the report says degraded)")
	fs.BoolVar(&m.checker, "checker", false, "also print what the output checker sees (the full disclosure report, the failure class)")
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
		if scratch, err = defaultScratchDir(os.Getenv, "run", m.data); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(scratch, 0o700); err != nil {
		return fmt.Errorf("scratch directory: %w", err)
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
	res, err := r.Run(ctx, job.Job{SQL: m.sql, SQLHash: queries.SQLHash(m.sql), Epsilon: m.epsilon})
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return m.failed(err)
	}
	return m.print(res)
}

// failed reports a failed run as a researcher would learn of it, and with
// --checker as the output checker sees the failure notice; exit status 1.
// A refusal is what the broker tells a researcher at submission already
// (the same compiler, the same words), so it is printed as it is.
func (m *RunMain) failed(err error) error {
	code, detail := job.Code(err), job.Message(err)
	if code == job.CodeRefused {
		return cli.ExitError{Code: 1, Err: errors.New(codedMessage(code, detail))}
	}
	msg := "failed: " + broker.FailedMessage
	if m.checker {
		msg += "\noutput checker's failure notice: " + codedMessage(code, detail)
	}
	return cli.ExitError{Code: 1, Err: errors.New(msg)}
}

// codedMessage prefixes msg with its code unless it already starts with it
// (a refusal reads "refused: …").
func codedMessage(code, msg string) string {
	if strings.HasPrefix(msg, code+": ") {
		return msg
	}
	return code + ": " + msg
}

// runJSON is `tre run --checker --format json`: both views.
type runJSON struct {
	Researcher *dp.ResearcherResult `json:"researcher"`
	Checker    *dp.Result           `json:"checker"`
}

func (m *RunMain) print(res *dp.Result) error {
	view := res.ForResearcher()
	switch m.format {
	case "json":
		var v any = view
		if m.checker {
			v = runJSON{Researcher: view, Checker: res}
		}
		return cli.PrintJSON(m.stdout, v)
	case "csv":
		// The researcher's CSV download, byte for byte.
		if err := api.WriteResultCSV(m.stdout, view); err != nil {
			return err
		}
		// The report goes beside the data, not into it.
		if m.checker {
			return cli.PrintJSON(m.stderr, runJSON{Researcher: view, Checker: res})
		}
		return cli.PrintJSON(m.stderr, view.Report)
	}
	if err := cli.PrintResultTable(m.stdout, view.Columns, view.Rows); err != nil {
		return err
	}
	fmt.Fprintln(m.stdout, "\nDisclosure report (as the researcher receives it):")
	if err := cli.PrintJSON(m.stdout, view.Report); err != nil {
		return err
	}
	if !m.checker {
		return nil
	}
	fmt.Fprintln(m.stdout, "\nOutput checker's view (exact diagnostics: never shown to a researcher):")
	return cli.PrintOutput(m.stdout, &broker.Output{Result: res})
}

// Close releases nothing: Run owns the runner and its scratch directory.
func (m *RunMain) Close() error { return nil }
