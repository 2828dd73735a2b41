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

// CodelistMain is `tre codelist upload|list|show`: codelists are public,
// versioned lists of clinical codes that queries join as the table
// codelists (docs/codelists.md).
type CodelistMain struct {
	Stdout, Stderr io.Writer
	Getenv         func(string) string
	// ReadFile reads the CSV to upload; os.ReadFile when nil.
	ReadFile func(string) ([]byte, error)

	verb   string
	flags  clientFlags
	client *api.Client
	req    api.CodelistRequest
	file   string
	name   string
	limit  int
	offset int
}

// NewCodelistMain returns the command with the process environment.
func NewCodelistMain(stdout, stderr io.Writer) Command {
	return &CodelistMain{Stdout: stdout, Stderr: stderr, Getenv: os.Getenv, ReadFile: os.ReadFile}
}

const codelistUsage = `usage: tre codelist <verb> [flags]
  upload --name ORG/SLUG/VERSION [--description TEXT] FILE.csv
                                   upload a codelist: OpenCodelists' CSV download (columns code and term;
                                   dmd_id and dmd_name for dm+d; other columns ignored)
  list [--limit N] [--offset N]    codelists, newest first
  show ORG/SLUG/VERSION            one codelist: its codes and terms, and the queries that used it
common flags: --broker URL, --token-file F (default: $TRE_TOKEN_RESEARCHER, else $TRE_TOKEN), --json, --timeout D`

// ParseFlags parses the verb and its flags.
func (m *CodelistMain) ParseFlags(ctx context.Context, args []string) error {
	verb, err := verbOf(args, codelistUsage, m.Stderr)
	if err != nil {
		return err
	}
	m.verb = verb
	fs := NewFlagSet("codelist "+m.verb, m.Stderr)
	m.flags.role = broker.RoleResearcher
	m.flags.register(fs, m.Getenv)
	want, usage := 0, "tre codelist "+m.verb+" [flags]"
	switch m.verb {
	case "upload":
		fs.StringVar(&m.req.Name, "name", "", "the codelist's name, ORG/SLUG/VERSION as OpenCodelists cites it")
		fs.StringVar(&m.req.Description, "description", "", "what the codelist defines")
		want, usage = 1, "tre codelist upload --name ORG/SLUG/VERSION FILE.csv"
	case "list":
		fs.IntVar(&m.limit, "limit", 0, "page size")
		fs.IntVar(&m.offset, "offset", 0, "items to skip")
	case "show":
		want, usage = 1, "tre codelist show ORG/SLUG/VERSION"
	default:
		return fmt.Errorf("unknown verb %q\n%s", m.verb, codelistUsage)
	}
	pos, err := parseInterleaved(fs, args[1:])
	if err != nil {
		return err
	}
	if err := needArgs(pos, want, usage); err != nil {
		return err
	}
	switch m.verb {
	case "upload":
		if m.req.Name == "" {
			return errors.New("--name ORG/SLUG/VERSION is required")
		}
		m.file = pos[0]
	case "show":
		m.name = pos[0]
	}
	m.client, err = m.flags.client(m.Getenv)
	return err
}

// Run calls the broker.
func (m *CodelistMain) Run(ctx context.Context) error { return apiExit(m.run(ctx)) }

func (m *CodelistMain) run(ctx context.Context) error {
	switch m.verb {
	case "upload":
		return m.upload(ctx)
	case "show":
		return m.show(ctx)
	}
	l, err := m.client.Codelists(ctx, api.ListOptions{Limit: m.limit, Offset: m.offset})
	if err != nil {
		return err
	}
	if m.flags.json {
		return PrintJSON(m.Stdout, l)
	}
	tw := NewTable(m.Stdout)
	fmt.Fprintln(tw, "NAME\tCODES\tUPLOADED BY\tUPLOADED\tSHA-256\tFIRST TERMS")
	for _, c := range l.Items {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\n", c.Name, c.CodeCount, c.UploadedBy, fmtTime(c.CreatedAt), oneLine(c.Hash, 13),
			oneLine(strings.Join(c.FirstTerms, "; "), 60))
	}
	return tw.Flush()
}

func (m *CodelistMain) upload(ctx context.Context) error {
	b, err := m.ReadFile(m.file)
	if err != nil {
		return fmt.Errorf("read %s: %w", m.file, err)
	}
	m.req.CSV = string(b)
	c, err := m.client.UploadCodelist(ctx, m.req)
	if err != nil {
		return err
	}
	if m.flags.json {
		return PrintJSON(m.Stdout, c)
	}
	fmt.Fprintf(m.Stdout, "codelist %s uploaded: %d codes, sha256 %s\n", c.Name, c.CodeCount, c.Hash)
	fmt.Fprintf(m.Stdout, "join it: JOIN codelists cl ON cl.code = e.snomed_code AND cl.codelist = '%s'\n", c.Name)
	return nil
}

func (m *CodelistMain) show(ctx context.Context) error {
	c, err := m.client.Codelist(ctx, m.name)
	if err != nil {
		return err
	}
	if m.flags.json {
		return PrintJSON(m.Stdout, c)
	}
	fmt.Fprintf(m.Stdout, "codelist:    %s\ncodes:       %d\nsha256:      %s\nuploaded by: %s at %s\n", c.Name, c.CodeCount, c.Hash, c.UploadedBy, fmtTime(c.CreatedAt))
	if c.Description != "" {
		fmt.Fprintf(m.Stdout, "description: %s\n", oneLine(c.Description, 200))
	}
	if len(c.UsedBy) > 0 {
		ids := make([]string, len(c.UsedBy))
		for i, u := range c.UsedBy {
			ids[i] = fmt.Sprintf("%d", u.QueryID)
		}
		fmt.Fprintf(m.Stdout, "used by:     queries %s\n", strings.Join(ids, ", "))
	}
	fmt.Fprintln(m.Stdout)
	tw := NewTable(m.Stdout)
	fmt.Fprintln(tw, "CODE\tTERM")
	for _, code := range c.Codes {
		fmt.Fprintf(tw, "%s\t%s\n", code.Code, oneLine(code.Term, 100))
	}
	return tw.Flush()
}

// Close releases nothing.
func (m *CodelistMain) Close() error { return nil }
