package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/schollz/progressbar/v3"

	"github.com/nhs-tre/tre/cli"
	"github.com/nhs-tre/tre/synth"
)

// SynthMain is `tre synth`: it writes a synthetic NHS GP extract and its
// catalog.
type SynthMain struct {
	stdout, stderr io.Writer
	opts           synth.Options
}

// newSynthMain returns the `tre synth` command writing to the given streams.
func newSynthMain(stdout, stderr io.Writer) cli.Command {
	return &SynthMain{stdout: stdout, stderr: stderr}
}

// ParseFlags reads --out, --patients, --seed, --dataset and --force.
func (m *SynthMain) ParseFlags(ctx context.Context, args []string) error {
	fs := cli.NewFlagSet("synth", m.stderr)
	fs.StringVar(&m.opts.Out, "out", "", "DuckDB file to write (required); the catalog goes beside it as FILE.catalog.yaml")
	fs.IntVar(&m.opts.Patients, "patients", 0, "number of patients to generate (required)")
	fs.Int64Var(&m.opts.Seed, "seed", 1, "seed: the same seed always gives the same data")
	fs.StringVar(&m.opts.Dataset, "dataset", synth.DatasetName, "the dataset's name in the catalog (each site publishing to one broker needs its own)")
	fs.BoolVar(&m.opts.Force, "force", false, "replace an existing output file and catalog")
	fs.StringVar(&m.opts.MemoryLimit, "memory-limit", "3GB", "DuckDB memory limit while generating")
	fs.Usage = func() {
		fmt.Fprintln(m.stderr, "Usage: tre synth --out FILE.duckdb --patients N [--seed S] [--dataset NAME] [--force]")
		fmt.Fprintln(m.stderr)
		fmt.Fprintln(m.stderr, "Writes synthetic primary-care records shaped like an NHS GP extract (no real patient data).")
		fmt.Fprintln(m.stderr)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := cli.NoArgs(fs); err != nil {
		return err
	}
	switch {
	case m.opts.Out == "":
		return errors.New("--out is required")
	case m.opts.Patients < 1 || m.opts.Patients > synth.MaxPatients:
		return fmt.Errorf("--patients must be between 1 and %d", synth.MaxPatients)
	}
	return nil
}

// Run generates the dataset, showing a progress bar when stderr is a
// terminal and plain stage lines otherwise (logs, CI).
func (m *SynthMain) Run(ctx context.Context) error {
	opts := m.opts
	var finish func()
	if isTerminal(m.stderr) {
		opts.Progress, finish = progressBar(m.stderr)
	} else {
		opts.Progress = func(stage string, done, total int) {
			if done < total {
				fmt.Fprintf(m.stderr, "synth: [%d/%d] %s\n", done+1, total, stage)
			}
		}
	}
	stats, err := synth.Generate(ctx, opts)
	if finish != nil {
		finish()
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(m.stdout, "wrote %s (%d patients, seed %d) and %s in %s\n",
		stats.Out, stats.Patients, stats.Seed, stats.CatalogPath, stats.Total.Round(10*time.Millisecond))
	for _, s := range stats.Stages {
		rows := ""
		if s.Rows > 0 {
			rows = fmt.Sprintf("%d rows", s.Rows)
		}
		fmt.Fprintf(m.stdout, "  %-20s %17s  %8s\n", s.Name, rows, s.Duration.Round(time.Millisecond))
	}
	return nil
}

// Close releases nothing: Generate closes its database before returning.
func (m *SynthMain) Close() error { return nil }

// progressBar returns a synth.Options.Progress that draws a bar on w, which
// ends at 100% with the last stage, and a finish that ends the bar's line
// (needed only when generation stopped early).
func progressBar(w io.Writer) (progress func(stage string, done, total int), finish func()) {
	var bar *progressbar.ProgressBar
	progress = func(stage string, done, total int) {
		if bar == nil {
			bar = progressbar.NewOptions(total,
				progressbar.OptionSetWriter(w),
				progressbar.OptionSetWidth(30),
				progressbar.OptionShowCount(),
				progressbar.OptionSetElapsedTime(true),
				progressbar.OptionSetPredictTime(false),
				progressbar.OptionOnCompletion(func() { fmt.Fprintln(w) }),
			)
		}
		// Redraws go to a terminal; a failed one is not an error of the run.
		if done >= total {
			bar.Describe(fmt.Sprintf("%-20s", stage))
			_ = bar.Finish()
			return
		}
		_ = bar.Set(done)
		bar.Describe(fmt.Sprintf("%-20s", stage))
	}
	finish = func() {
		if bar != nil && !bar.IsFinished() {
			_ = bar.Exit()
			fmt.Fprintln(w)
		}
	}
	return progress, finish
}

// isTerminal reports whether w is a character device (a terminal).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
