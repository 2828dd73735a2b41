package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"

	"github.com/nhs-tre/tre/cli"
	"github.com/nhs-tre/tre/queries"
)

// CheckMain is `tre check`: validate one query against a catalog and show
// what it would run and cost, without touching any data. A refusal prints
// the researcher-facing message and exits 1.
type CheckMain struct {
	Stdout, Stderr io.Writer

	catalog string
	epsilon float64
	seed    uint64
	json    bool
	sql     string
}

func newCheckMain(stdout, stderr io.Writer) cli.Command {
	return &CheckMain{Stdout: stdout, Stderr: stderr}
}

func (m *CheckMain) ParseFlags(ctx context.Context, args []string) error {
	fs := cli.NewFlagSet("check", m.Stderr)
	fs.StringVar(&m.catalog, "catalog", "", "the dataset catalog YAML")
	fs.Float64Var(&m.epsilon, "epsilon", 0, "privacy budget to spend (0: the catalog default)")
	fs.Uint64Var(&m.seed, "seed", 0, "seed of the keyed hash that selects rows when a patient exceeds the bounds")
	fs.BoolVar(&m.json, "json", false, "print the plan as JSON")
	fs.Usage = func() {
		fmt.Fprintln(m.Stderr, "Usage: tre check --catalog FILE.yaml [--epsilon E] [--json] 'SQL'")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	switch {
	case m.catalog == "":
		return errors.New("--catalog is required")
	case fs.NArg() != 1:
		return errors.New("exactly one SQL argument is required (quote it)")
	case math.IsNaN(m.epsilon) || math.IsInf(m.epsilon, 0) || m.epsilon < 0:
		return errors.New("--epsilon must be a finite number, at least 0")
	}
	m.sql = fs.Arg(0)
	return nil
}

func (m *CheckMain) Run(ctx context.Context) error {
	cat, err := queries.LoadCatalog(m.catalog)
	if err != nil {
		return err
	}
	p, err := queries.NewParser()
	if err != nil {
		return err
	}
	defer p.Close()
	plan, err := p.Compile(ctx, cat, m.sql, queries.Options{Epsilon: m.epsilon, Seed: m.seed})
	if err != nil {
		var r *queries.Refusal
		if errors.As(err, &r) {
			return cli.ExitError{Code: 1, Err: r}
		}
		return err
	}
	if m.json {
		enc := json.NewEncoder(m.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(plan)
	}
	return cli.PrintPlan(m.Stdout, plan)
}

// Close releases nothing: Run closes its parser.
func (m *CheckMain) Close() error { return nil }
