package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/nhs-tre/tre/api"
	"github.com/nhs-tre/tre/broker"
)

// SiteMain is `tre site add|list`: an admin registers NHS sites, whose
// agents may then act with a token naming the site in its site claim.
type SiteMain struct {
	Stdout, Stderr io.Writer
	Getenv         func(string) string

	verb   string
	flags  clientFlags
	client *api.Client
	req    api.SiteRequest
	limit  int
	offset int
}

// NewSiteMain returns the command with the process environment.
func NewSiteMain(stdout, stderr io.Writer) Command {
	return &SiteMain{Stdout: stdout, Stderr: stderr, Getenv: os.Getenv}
}

const siteUsage = `usage: tre site <verb> [flags]
  add  --id SITE --name NAME --organisation ORG   register a site (admin)
  list [--limit N] [--offset N]                   sites and their agents' health (admin)
common flags: --broker URL, --token-file F (default: $TRE_TOKEN_ADMIN, else $TRE_TOKEN), --json, --timeout D`

// ParseFlags parses the verb and its flags.
func (m *SiteMain) ParseFlags(ctx context.Context, args []string) error {
	verb, err := verbOf(args, siteUsage, m.Stderr)
	if err != nil {
		return err
	}
	m.verb = verb
	fs := NewFlagSet("site "+m.verb, m.Stderr)
	m.flags.role = broker.RoleAdmin
	m.flags.register(fs, m.Getenv)
	switch m.verb {
	case "add":
		fs.StringVar(&m.req.ID, "id", "", "site id: letters, digits, '-', '_' and '.'; agent tokens name it in their site claim")
		fs.StringVar(&m.req.Name, "name", "", "the site's name, e.g. Leeds Teaching Hospitals")
		fs.StringVar(&m.req.Organisation, "organisation", "", "the organisation responsible for the site's data")
	case "list":
		fs.IntVar(&m.limit, "limit", 0, "page size")
		fs.IntVar(&m.offset, "offset", 0, "items to skip")
	default:
		return fmt.Errorf("unknown verb %q\n%s", m.verb, siteUsage)
	}
	pos, err := parseInterleaved(fs, args[1:])
	if err != nil {
		return err
	}
	if err := needArgs(pos, 0, "tre site "+m.verb+" [flags]"); err != nil {
		return err
	}
	if m.verb == "add" {
		switch {
		case m.req.ID == "":
			return errors.New("--id is required")
		case strings.TrimSpace(m.req.Name) == "":
			return errors.New("--name is required")
		case strings.TrimSpace(m.req.Organisation) == "":
			return errors.New("--organisation is required")
		}
	}
	m.client, err = m.flags.client(m.Getenv)
	return err
}

// Run calls the broker.
func (m *SiteMain) Run(ctx context.Context) error { return apiExit(m.run(ctx)) }

func (m *SiteMain) run(ctx context.Context) error {
	if m.verb == "add" {
		s, err := m.client.CreateSite(ctx, m.req)
		if err != nil {
			return err
		}
		if m.flags.json {
			return PrintJSON(m.Stdout, s)
		}
		fmt.Fprintf(m.Stdout, "site %s registered: %s (%s)\n", s.ID, s.Name, s.Organisation)
		return nil
	}
	l, err := m.client.Sites(ctx, api.ListOptions{Limit: m.limit, Offset: m.offset})
	if err != nil {
		return err
	}
	if m.flags.json {
		return PrintJSON(m.Stdout, l)
	}
	tw := NewTable(m.Stdout)
	fmt.Fprintln(tw, "ID\tNAME\tORGANISATION\tREGISTERED\tLAST SEEN\tAGENT VERSION\tDATASETS")
	for _, s := range l.Items {
		registered := "no"
		if s.Registered {
			registered = fmtTime(s.RegisteredAt)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", s.ID, oneLine(s.Name, 40), oneLine(s.Organisation, 30), registered,
			fmtTime(s.LastSeen), oneLine(s.Version, 30), strings.Join(s.Datasets, ","))
	}
	return tw.Flush()
}

// Close releases nothing.
func (m *SiteMain) Close() error { return nil }
