package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/nhs-tre/tre/api"
	"github.com/nhs-tre/tre/broker"
)

// ProjectMain is `tre project create|list`.
type ProjectMain struct {
	Stdout, Stderr io.Writer
	Getenv         func(string) string

	verb   string
	flags  clientFlags
	client *api.Client
	req    api.ProjectRequest
	limit  int
	offset int
}

// NewProjectMain returns the command with the process environment.
func NewProjectMain(stdout, stderr io.Writer) Command {
	return &ProjectMain{Stdout: stdout, Stderr: stderr, Getenv: os.Getenv}
}

const projectUsage = `usage: tre project <verb> [flags]
  create --title T --org O --purpose P --lawful-basis L --member SUB [--member SUB2]
         --dataset D --epsilon E [--delta D] --expires 2027-03-31 [--starts DATE] [--dsa REF]
  list   [--limit N] [--offset N]
common flags: --broker URL, --token-file F (default: $TRE_TOKEN_ADMIN, else $TRE_TOKEN), --json, --timeout D`

// listFlag collects a repeatable string flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error { *l = append(*l, s); return nil }

// dateFlag parses 2006-01-02 or RFC 3339.
type dateFlag struct{ t *time.Time }

func (d dateFlag) String() string {
	if d.t == nil || d.t.IsZero() {
		return ""
	}
	return d.t.Format(time.RFC3339)
}

func (d dateFlag) Set(s string) error {
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		*d.t = t
		return nil
	}
	t, err := time.Parse("2006-01-02", s)
	if err != nil {
		return fmt.Errorf("%q is not a date (2006-01-02) or RFC 3339 time", s)
	}
	*d.t = t
	return nil
}

// ParseFlags parses the verb and its flags.
func (m *ProjectMain) ParseFlags(ctx context.Context, args []string) error {
	verb, err := verbOf(args, projectUsage, m.Stderr)
	if err != nil {
		return err
	}
	m.verb = verb
	fs := NewFlagSet("project "+m.verb, m.Stderr)
	m.flags.role = broker.RoleAdmin
	m.flags.register(fs, m.Getenv)
	var members, datasets listFlag
	switch m.verb {
	case "create":
		fs.StringVar(&m.req.Title, "title", "", "project title (public)")
		fs.StringVar(&m.req.Organisation, "org", "", "organisation (public)")
		fs.StringVar(&m.req.Purpose, "purpose", "", "purpose (public)")
		fs.StringVar(&m.req.LawfulBasis, "lawful-basis", "", "lawful basis, e.g. UK GDPR 6(1)(e) and 9(2)(j)")
		fs.StringVar(&m.req.DataSharingAgreement, "dsa", "", "data sharing agreement reference")
		fs.Var(&members, "member", "member subject (repeatable)")
		fs.Var(&datasets, "dataset", "dataset (repeatable)")
		fs.Float64Var(&m.req.EpsilonBudget, "epsilon", 0, "total ε budget")
		fs.Float64Var(&m.req.DeltaBudget, "delta", 0, "total δ budget")
		fs.Var(dateFlag{&m.req.ExpiresAt}, "expires", "expiry date (required)")
		fs.Var(dateFlag{&m.req.StartsAt}, "starts", "start date (default now)")
	case "list":
		fs.IntVar(&m.limit, "limit", 0, "page size")
		fs.IntVar(&m.offset, "offset", 0, "items to skip")
	default:
		return fmt.Errorf("unknown verb %q\n%s", m.verb, projectUsage)
	}
	pos, err := parseInterleaved(fs, args[1:])
	if err != nil {
		return err
	}
	if err := needArgs(pos, 0, "tre project "+m.verb+" [flags]"); err != nil {
		return err
	}
	if m.verb == "create" {
		m.req.Members, m.req.Datasets = members, datasets
		switch {
		case m.req.Title == "":
			return errors.New("--title is required")
		case m.req.ExpiresAt.IsZero():
			return errors.New("--expires is required")
		case len(datasets) == 0:
			return errors.New("at least one --dataset is required")
		}
	}
	m.client, err = m.flags.client(m.Getenv)
	return err
}

// Run calls the broker.
func (m *ProjectMain) Run(ctx context.Context) error { return apiExit(m.run(ctx)) }

func (m *ProjectMain) run(ctx context.Context) error {
	if m.verb == "create" {
		p, err := m.client.CreateProject(ctx, m.req)
		if err != nil {
			return err
		}
		if m.flags.json {
			return PrintJSON(m.Stdout, p)
		}
		fmt.Fprintf(m.Stdout, "project %d created: %s\n", p.ID, p.Title)
		return nil
	}
	l, err := m.client.Projects(ctx, api.ListOptions{Limit: m.limit, Offset: m.offset})
	if err != nil {
		return err
	}
	if m.flags.json {
		return PrintJSON(m.Stdout, l)
	}
	tw := NewTable(m.Stdout)
	fmt.Fprintln(tw, "ID\tTITLE\tORGANISATION\tSTATUS\tEXPIRES\tε SPENT\tε RESERVED\tε LEFT\tMEMBERS")
	for _, p := range l.Items {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", p.ID, oneLine(p.Title, 40), oneLine(p.Organisation, 30), p.Status,
			fmtTime(p.ExpiresAt), fmtFloat(p.Budget.EpsilonSpent), fmtFloat(p.Budget.EpsilonReserved),
			fmtFloat(p.Budget.EpsilonRemaining), strings.Join(p.Members, ","))
	}
	return tw.Flush()
}

// Close releases nothing.
func (m *ProjectMain) Close() error { return nil }
