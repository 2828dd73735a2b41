package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"text/tabwriter"

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

func newCheckMain(stdout, stderr io.Writer) command {
	return &CheckMain{Stdout: stdout, Stderr: stderr}
}

func (m *CheckMain) ParseFlags(ctx context.Context, args []string) error {
	fs := newFlagSet("check", m.Stderr)
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
			return exitError{code: 1, err: r}
		}
		return err
	}
	if m.json {
		enc := json.NewEncoder(m.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(plan)
	}
	return m.print(plan)
}

func (m *CheckMain) print(plan *queries.Plan) error {
	w := m.Stdout
	s := plan.Spec
	fmt.Fprintf(w, "accepted: dataset %s\n\n", plan.Dataset)
	fmt.Fprintf(w, "cost: ε = %g, δ = %g\n", plan.Cost.Epsilon, plan.Cost.Delta)
	fmt.Fprintf(w, "bounds: at most %d group(s) and %d row(s) per group per patient; cells below %d suppressed; counts rounded to %d (%s)\n",
		s.MaxGroupsPerPatient, s.MaxRowsPerGroup, s.Threshold, s.RoundingBase, s.Rounding)
	if len(s.Groups) > 0 {
		fmt.Fprintln(w, "groups:")
		for _, g := range s.Groups {
			if len(g.Domain) > 0 {
				fmt.Fprintf(w, "  %s (public domain of %d values: every key released)\n", g.Name, len(g.Domain))
			} else {
				fmt.Fprintf(w, "  %s (no public domain: keys pass DP partition selection)\n", g.Name)
			}
		}
	}
	fmt.Fprintln(w, "\nexpected accuracy (95% half-width of the noise):")
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  column\tkind\tbounds\t± 95%\tnote")
	for i, a := range s.Aggregates {
		bounds := "-"
		if a.Kind != "count" && a.Kind != "count_patients" {
			bounds = fmt.Sprintf("[%g, %g]", a.Lower, a.Upper)
		}
		half, note := "", ""
		if i < len(plan.Accuracy) {
			half, note = fmt.Sprintf("%.4g", plan.Accuracy[i].HalfWidth95), plan.Accuracy[i].Note
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\n", a.Name, a.Kind, bounds, half, note)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(w, "\nrewritten SQL (over the opt-out-filtered views):\n%s\n", plan.Rewritten)
	return nil
}

// Close releases nothing: Run closes its parser.
func (m *CheckMain) Close() error { return nil }
