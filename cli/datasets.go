package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/nhs-tre/tre/api"
	"github.com/nhs-tre/tre/broker"
	"github.com/nhs-tre/tre/queries"
)

// DatasetsMain is `tre datasets`: what a researcher may query — each
// dataset's tables and columns with their roles, bounds, domains and
// example codes, and the policy every query over it gets.
type DatasetsMain struct {
	Stdout, Stderr io.Writer
	Getenv         func(string) string

	flags   clientFlags
	client  *api.Client
	dataset string
}

func NewDatasetsMain(stdout, stderr io.Writer) Command {
	return &DatasetsMain{Stdout: stdout, Stderr: stderr, Getenv: os.Getenv}
}

// ParseFlags parses --dataset and the client flags.
func (m *DatasetsMain) ParseFlags(ctx context.Context, args []string) error {
	fs := NewFlagSet("datasets", m.Stderr)
	m.flags.role = broker.RoleResearcher
	m.flags.register(fs, m.Getenv)
	fs.StringVar(&m.dataset, "dataset", "", "show only this dataset")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if err := needArgs(pos, 0, "tre datasets [--dataset NAME]"); err != nil {
		return err
	}
	m.client, err = m.flags.client(m.Getenv)
	return err
}

// Run fetches the catalogs and prints them.
func (m *DatasetsMain) Run(ctx context.Context) error { return apiExit(m.run(ctx)) }

func (m *DatasetsMain) run(ctx context.Context) error {
	list, err := m.client.Datasets(ctx, api.ListOptions{Limit: api.MaxPageLimit})
	if err != nil {
		return err
	}
	cats := list.Items
	if m.dataset != "" {
		cats = nil
		var names []string
		for _, c := range list.Items {
			names = append(names, c.Dataset)
			if strings.EqualFold(c.Dataset, m.dataset) {
				cats = append(cats, c)
			}
		}
		if len(cats) == 0 {
			return ExitError{Code: exitNotFoundOrNo, Err: fmt.Errorf("no dataset %q (datasets: %s)", m.dataset, strings.Join(names, ", "))}
		}
	}
	if m.flags.json {
		return PrintJSON(m.Stdout, cats)
	}
	if len(cats) == 0 {
		fmt.Fprintln(m.Stdout, "No datasets yet: no site agent has published its catalog.")
		return nil
	}
	for i := range cats {
		if i > 0 {
			fmt.Fprintln(m.Stdout)
		}
		if err := printCatalog(m.Stdout, &cats[i]); err != nil {
			return err
		}
	}
	return nil
}

// printCatalog prints one dataset for a researcher writing a query.
func printCatalog(w io.Writer, c *queries.Catalog) error {
	p := c.Policy
	fmt.Fprintf(w, "DATASET %s\n", c.Dataset)
	if c.Description != "" {
		fmt.Fprintf(w, "  %s\n", c.Description)
	}
	fmt.Fprintf(w, "  Each query spends ε %s unless it asks for another (at most %s). A patient counts in at most %s and with at most %s per group;\n",
		fmtFloat(p.DefaultEpsilon), fmtFloat(p.MaxEpsilon), api.Plural(p.MaxGroupsPerPatient, "group", "groups"), api.Plural(p.MaxRowsPerGroup, "row", "rows"))
	fmt.Fprintf(w, "  counts below %d are suppressed and counts are rounded to the nearest %d. %s is the patient id: join on it, never select it.\n",
		p.SmallCellThreshold, p.RoundingBase, c.PrivacyUnit)
	for _, t := range c.Tables {
		fmt.Fprintln(w)
		var notes []string
		switch {
		case strings.EqualFold(t.Name, p.OptOutTable):
			notes = append(notes, "the opt-out list: never queried, its patients are removed from every table")
		case t.Public:
			notes = append(notes, "public lookup table")
		case t.OnePerPatient:
			notes = append(notes, "one row per patient")
		}
		head := "TABLE " + t.Name
		if len(notes) > 0 {
			head += " (" + strings.Join(notes, "; ") + ")"
		}
		fmt.Fprintln(w, head)
		if t.Description != "" {
			fmt.Fprintf(w, "  %s\n", t.Description)
		}
		if strings.EqualFold(t.Name, p.OptOutTable) {
			continue
		}
		tw := NewTable(w)
		fmt.Fprintln(tw, "  COLUMN\tTYPE\tROLE\tVALUES\tDESCRIPTION")
		for _, col := range t.Columns {
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\n", col.Name, col.Type, col.Role, columnValues(col), oneLine(col.Description, 70))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		for _, col := range t.Columns {
			if len(col.Examples) == 0 {
				continue
			}
			fmt.Fprintf(w, "  Codes of %s (%s", col.Name, api.Plural(len(col.Examples), "example", "examples"))
			if col.CodeSystem != "" {
				fmt.Fprintf(w, ", %s", col.CodeSystem)
			}
			fmt.Fprintln(w, "):")
			tw := NewTable(w)
			for _, e := range col.Examples {
				fmt.Fprintf(tw, "    %s\t%s\n", e.Code, e.Term)
			}
			if err := tw.Flush(); err != nil {
				return err
			}
		}
	}
	return nil
}

// columnValues summarises what values a column takes, for the table.
func columnValues(col queries.Column) string {
	switch {
	case col.Role == queries.RolePrivacyUnit:
		return "joins only"
	case col.Role == queries.RoleForbidden:
		return "never usable"
	case col.Bounds != nil:
		return fmt.Sprintf("clamped to [%s, %s]", fmtFloat(col.Bounds[0]), fmtFloat(col.Bounds[1]))
	case len(col.Domain) > 0:
		return oneLine(strings.Join(col.Domain, ", "), 60)
	case len(col.Examples) > 0:
		return fmt.Sprintf("%s codes, see below", col.CodeSystem)
	case col.CodeSystem != "":
		return col.CodeSystem + " codes"
	}
	return "-"
}

// Close releases nothing.
func (m *DatasetsMain) Close() error { return nil }
