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

// QueryMain is `tre query submit|dry-run|list|show|cancel|result|km`.
type QueryMain struct {
	Stdout, Stderr io.Writer
	Getenv         func(string) string

	verb   string
	flags  clientFlags
	wait   waitFlags
	quiet  bool
	client *api.Client

	// submit and dry-run
	project int64
	dataset string
	epsilon float64
	purpose string
	sql     string
	// list
	status string
	limit  int
	offset int
	// show, cancel, result
	id        int64
	format    string
	out       string
	rewritten bool
	// km
	deaths, censored string
}

// NewQueryMain returns the command with the process environment.
func NewQueryMain(stdout, stderr io.Writer) Command {
	return &QueryMain{Stdout: stdout, Stderr: stderr, Getenv: os.Getenv}
}

const queryUsage = `usage: tre query <verb> [flags]
  submit  --project ID --purpose P [--epsilon E] [--dataset D] [--wait] [--quiet] (--file F.sql | 'SQL')
  dry-run --project ID [--epsilon E] [--dataset D] (--file F.sql | 'SQL')
  list    [--status S] [--project ID] [--limit N] [--offset N]
  show    ID [--rewritten]
  cancel  ID
  result  ID [--format csv|json] [--out FILE] [--wait]
  km      ID [--deaths COL] [--censored COL] [--wait]   Kaplan–Meier curve of a released survival table
common flags: --broker URL, --token-file F (default: $TRE_TOKEN_RESEARCHER, else $TRE_TOKEN), --json, --timeout D`

// ParseFlags parses the verb and its flags.
func (m *QueryMain) ParseFlags(ctx context.Context, args []string) error {
	verb, err := verbOf(args, queryUsage, m.Stderr)
	if err != nil {
		return err
	}
	m.verb = verb
	fs := NewFlagSet("query "+m.verb, m.Stderr)
	m.flags.role = broker.RoleResearcher
	m.flags.register(fs, m.Getenv)
	var file string
	switch m.verb {
	case "submit", "dry-run":
		fs.Int64Var(&m.project, "project", 0, "project id (required)")
		fs.StringVar(&m.dataset, "dataset", "", "dataset (default: the project's only dataset)")
		fs.Float64Var(&m.epsilon, "epsilon", 0, "privacy budget to spend (default: the catalog's)")
		fs.StringVar(&m.purpose, "purpose", "", "why this query is needed (required to submit; reviewers judge the query by it)")
		fs.StringVar(&file, "file", "", "read the SQL from this file")
		if m.verb == "submit" {
			m.wait.register(fs, "wait until the query is released or has ended")
			fs.BoolVar(&m.quiet, "quiet", false, "print only the new query's id (for scripts)")
		}
	case "list":
		fs.StringVar(&m.status, "status", "", "only queries in this status")
		fs.Int64Var(&m.project, "project", 0, "only this project's queries")
		fs.IntVar(&m.limit, "limit", 0, "page size")
		fs.IntVar(&m.offset, "offset", 0, "items to skip")
	case "show":
		fs.BoolVar(&m.rewritten, "rewritten", false, "also print the rewritten SQL the sandbox runs (contribution-bounded, over the opt-out-filtered views)")
	case "cancel":
	case "result":
		fs.StringVar(&m.format, "format", "", "csv (default) or json")
		fs.StringVar(&m.out, "out", "", "write to this file instead of standard output")
		m.wait.register(fs, "first wait until the query is released to you")
	case "km":
		fs.StringVar(&m.deaths, "deaths", "deaths", "the released column of deaths per band")
		fs.StringVar(&m.censored, "censored", "censored", "the released column of censorings per band")
		m.wait.register(fs, "first wait until the query is released to you")
	default:
		return fmt.Errorf("unknown verb %q\n%s", m.verb, queryUsage)
	}
	pos, err := parseInterleaved(fs, args[1:])
	if err != nil {
		return err
	}
	switch m.verb {
	case "submit", "dry-run":
		if m.project <= 0 {
			return errors.New("--project is required")
		}
		switch {
		case file != "" && len(pos) > 0:
			return errors.New("give the SQL either with --file or as an argument, not both")
		case file != "":
			data, err := os.ReadFile(file)
			if err != nil {
				return fmt.Errorf("read SQL: %w", err)
			}
			m.sql = string(data)
		case len(pos) == 1:
			m.sql = pos[0]
		default:
			return fmt.Errorf("usage: tre query %s --project ID (--file F.sql | 'SQL')", m.verb)
		}
		if strings.TrimSpace(m.sql) == "" {
			return errors.New("the SQL is empty")
		}
		if m.verb == "submit" && strings.TrimSpace(m.purpose) == "" {
			return errors.New("--purpose is required: say why the query is needed (reviewers judge it by this)")
		}
	case "list":
		if err := needArgs(pos, 0, "tre query list [--status S] [--project ID]"); err != nil {
			return err
		}
	default:
		if err := needArgs(pos, 1, "tre query "+m.verb+" ID"); err != nil {
			return err
		}
		if m.id, err = parseID("query", pos[0]); err != nil {
			return err
		}
		if m.verb == "result" {
			if m.format == "" {
				m.format = "csv"
				if m.flags.json {
					m.format = "json"
				}
			}
			if m.format != "csv" && m.format != "json" {
				return fmt.Errorf("--format must be csv or json, not %q", m.format)
			}
		}
	}
	m.client, err = m.flags.client(m.Getenv)
	return err
}

// Run calls the broker.
func (m *QueryMain) Run(ctx context.Context) error {
	return apiExit(m.run(ctx))
}

func (m *QueryMain) run(ctx context.Context) error {
	c := m.client
	req := api.QueryRequest{ProjectID: m.project, Dataset: m.dataset, SQL: m.sql, Purpose: m.purpose, Epsilon: m.epsilon}
	switch m.verb {
	case "submit":
		q, err := c.SubmitQuery(ctx, req)
		if err != nil {
			return err
		}
		if m.quiet {
			fmt.Fprintln(m.Stdout, q.ID)
		}
		if !m.wait.on {
			if m.quiet {
				return nil
			}
			return m.printQuery(q)
		}
		if q, err = m.wait.until(ctx, c, q.ID, m.Stderr, ended); err != nil {
			return err
		}
		if !m.quiet {
			if err := m.printQuery(q); err != nil {
				return err
			}
		}
		if q.Status != broker.StatusReleased {
			return fmt.Errorf("query %d ended %s", q.ID, q.Status)
		}
		fmt.Fprintf(m.Stderr, "query %d is released: tre query result %d\n", q.ID, q.ID)
		return nil
	case "dry-run":
		r, err := c.DryRun(ctx, req)
		if err != nil {
			return err
		}
		if m.flags.json {
			return PrintJSON(m.Stdout, r)
		}
		return printDryRun(m.Stdout, r)
	case "list":
		opts := api.QueryListOptions{ListOptions: api.ListOptions{Limit: m.limit, Offset: m.offset}, Status: broker.Status(m.status), ProjectID: m.project}
		l, err := c.Queries(ctx, opts)
		if err != nil {
			return err
		}
		if m.flags.json {
			return PrintJSON(m.Stdout, l)
		}
		return printQueryList(m.Stdout, l.Items, l.Total, l.Offset)
	case "show":
		get := c.Query
		if m.rewritten {
			get = c.QueryWithRewritten
		}
		q, err := get(ctx, m.id)
		if err != nil {
			return err
		}
		return m.printQuery(q)
	case "cancel":
		q, err := c.CancelQuery(ctx, m.id)
		if err != nil {
			return err
		}
		return m.printQuery(q)
	case "km":
		return m.km(ctx)
	case "result":
		if m.wait.on {
			q, err := m.wait.until(ctx, c, m.id, m.Stderr, ended)
			if err != nil {
				return err
			}
			if q.Status != broker.StatusReleased {
				return fmt.Errorf("query %d ended %s: there is no result to download", q.ID, q.Status)
			}
		}
		data, err := c.ResultRaw(ctx, m.id, m.format)
		if err != nil {
			return err
		}
		if m.out == "" {
			_, err = m.Stdout.Write(data)
			return err
		}
		if err := os.WriteFile(m.out, data, 0o600); err != nil {
			return fmt.Errorf("write result: %w", err)
		}
		fmt.Fprintf(m.Stderr, "wrote %s (%d bytes)\n", m.out, len(data))
		return nil
	}
	return fmt.Errorf("unknown verb %q", m.verb)
}

// km prints the Kaplan–Meier curve of a released survival table
// (api.KaplanMeier): post-processing of the released counts.
func (m *QueryMain) km(ctx context.Context) error {
	c := m.client
	if m.wait.on {
		q, err := m.wait.until(ctx, c, m.id, m.Stderr, ended)
		if err != nil {
			return err
		}
		if q.Status != broker.StatusReleased {
			return fmt.Errorf("query %d ended %s: there is no result", q.ID, q.Status)
		}
	}
	r, err := c.Result(ctx, m.id)
	if err != nil {
		return err
	}
	curve, err := api.KaplanMeier(r.Columns, r.Rows, m.deaths, m.censored)
	if err != nil {
		return fmt.Errorf("query %d: %w", m.id, err)
	}
	if m.flags.json {
		return PrintJSON(m.Stdout, curve)
	}
	tw := NewTable(m.Stdout)
	strata := curve[0].Stratum != ""
	if strata {
		fmt.Fprint(tw, "stratum\t")
	}
	fmt.Fprintln(tw, "band\tat risk\tdeaths\tcensored\tsurvival\t95% interval")
	for _, b := range curve {
		if strata {
			fmt.Fprintf(tw, "%s\t", b.Stratum)
		}
		fmt.Fprintf(tw, "%s\t%.0f\t%.0f\t%.0f\t%.3f\t[%.3f, %.3f]\n", b.Band, b.AtRisk, b.Deaths, b.Censored, b.Survival, b.Low, b.High)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(m.Stdout, "life-table Kaplan–Meier from the released (noisy, rounded) counts; the interval adds Greenwood's variance and the counts' noise; no privacy budget spent")
	return nil
}

func (m *QueryMain) printQuery(q *broker.Query) error {
	if m.flags.json {
		return PrintJSON(m.Stdout, q)
	}
	return printQueryDetail(m.Stdout, q)
}

// printQueryDetail prints one query for people.
func printQueryDetail(w io.Writer, q *broker.Query) error {
	tw := NewTable(w)
	fmt.Fprintf(tw, "query\t%d\n", q.ID)
	fmt.Fprintf(tw, "status\t%s\n", q.Status)
	fmt.Fprintf(tw, "project\t%d\n", q.ProjectID)
	fmt.Fprintf(tw, "dataset\t%s\n", q.Dataset)
	fmt.Fprintf(tw, "submitted\t%s by %s\n", fmtTime(q.SubmittedAt), q.SubmittedBy)
	fmt.Fprintf(tw, "cost\tε=%s δ=%s\n", fmtFloat(q.Cost.Epsilon), fmtFloat(q.Cost.Delta))
	printFederation(tw, q)
	for _, a := range q.Accuracy {
		fmt.Fprintf(tw, "accuracy\t%s ±%s (95%%)\n", a.Column, fmtFloat(a.HalfWidth95))
	}
	if len(q.Accuracy) > 0 {
		fmt.Fprintf(tw, "released from\t%s patients (noisy count) per group\n", fmtFloat(q.Accuracy[0].ReleaseThreshold))
	}
	for _, f := range q.RiskFlags {
		fmt.Fprintf(tw, "risk\t%s: %s%s\n", f.Kind, f.Message, similarNote(f))
	}
	if q.ApprovedBy != "" {
		fmt.Fprintf(tw, "approved by\t%s\n", q.ApprovedBy)
	}
	switch {
	case q.FailureCode != "": // staff: the failure notice's class
		fmt.Fprintf(tw, "failure\t%s\n", q.FailureCode)
	case q.Status == broker.StatusFailed: // a researcher: the same words for every failure
		fmt.Fprintf(tw, "failure\t%s (ε %s spent)\n", broker.FailedMessage, fmtFloat(q.Cost.Epsilon))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(w, "\n%s\n", strings.TrimSpace(q.SQL))
	if q.Rewritten != "" {
		fmt.Fprintf(w, "\nrewritten SQL (over the opt-out-filtered views):\n%s\n", strings.TrimSpace(q.Rewritten))
	}
	if len(q.History) > 0 {
		fmt.Fprintln(w)
		tw = NewTable(w)
		fmt.Fprintln(tw, "WHEN\tFROM\tTO\tBY\tCOMMENT")
		for _, e := range q.History {
			from := string(e.From)
			if from == "" {
				from = "-"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", fmtTime(e.At), from, e.To, e.Actor, oneLine(e.Comment, 60))
		}
		return tw.Flush()
	}
	return nil
}

// printQueryList prints queries as a table.
func printQueryList(w io.Writer, qs []broker.Query, total, offset int) error {
	tw := NewTable(w)
	fmt.Fprintln(tw, "ID\tPROJECT\tSTATUS\tSUBMITTED\tBY\tε\tFLAGS\tSQL")
	for _, q := range qs {
		fmt.Fprintf(tw, "%d\t%d\t%s\t%s\t%s\t%s\t%d\t%s\n", q.ID, q.ProjectID, q.Status, fmtTime(q.SubmittedAt),
			q.SubmittedBy, fmtFloat(q.Cost.Epsilon), len(q.RiskFlags), oneLine(q.SQL, 50))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if total > len(qs) {
		fmt.Fprintf(w, "(%d–%d of %d; use --offset for more)\n", offset+1, offset+len(qs), total)
	}
	return nil
}

// Close releases nothing: the client holds no connections between calls.
func (m *QueryMain) Close() error { return nil }

// similarNote says where the earlier query of a risk flag stands, when the
// broker told (staff see it; researchers do not).
func similarNote(f broker.RiskFlag) string {
	switch {
	case f.SimilarReleased:
		return " (its answer has been released)"
	case f.SimilarStatus != "":
		return " (it is " + string(f.SimilarStatus) + ")"
	}
	return ""
}

// printFederation prints how a query over a dataset several sites hold
// runs and what it costs each site and the project.
func printFederation(tw io.Writer, q *broker.Query) {
	f := q.Federation
	if f == nil {
		return
	}
	how := "ε and δ once per site: a patient may be at several sites"
	if f.DisjointPopulations {
		how = "once: disjoint populations, parallel composition"
	}
	fmt.Fprintf(tw, "sites\t%d (each site's ledger ε=%s δ=%s; the project's ε=%s δ=%s, %s; accuracy of the combined answer)\n",
		f.Sites, fmtFloat(f.SiteCost.Epsilon), fmtFloat(f.SiteCost.Delta), fmtFloat(f.ProjectCost.Epsilon), fmtFloat(f.ProjectCost.Delta), how)
	for _, s := range q.Sites {
		st := s.SiteID
		if s.Status != "" {
			st += fmt.Sprintf(": %s, %d attempt(s)", s.Status, s.Attempts)
		}
		fmt.Fprintf(tw, "site\t%s\n", st)
	}
}

// printDryRun prints a dry run's table under what it is: synthetic data
// and, over a dataset several sites hold, one site's answer with the
// federated query's cost.
func printDryRun(w io.Writer, r *api.DryRunResponse) error {
	fmt.Fprintf(w, "SYNTHETIC DATA — not patient records. Dataset %s, would cost ε=%s δ=%s\n",
		r.Dataset, fmtFloat(r.Cost.Epsilon), fmtFloat(r.Cost.Delta))
	if f := r.Federation; f != nil {
		fmt.Fprintf(w, "ONE SITE'S ANSWER: %d sites hold the dataset; this table is the query run once on synthetic data, as one site alone would.\n"+
			"The submitted query runs at each site (ε=%s δ=%s each) and costs the project ε=%s δ=%s; its accuracy (--json) is the combined answer's.\n",
			f.Sites, fmtFloat(f.SiteCost.Epsilon), fmtFloat(f.SiteCost.Delta), fmtFloat(f.ProjectCost.Epsilon), fmtFloat(f.ProjectCost.Delta))
	}
	fmt.Fprintln(w)
	return PrintResultTable(w, r.Columns, r.Rows)
}
