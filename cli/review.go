package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"

	"github.com/nhs-tre/tre/api"
	"github.com/nhs-tre/tre/broker"
)

// ReviewMain is `tre review queue|approve|reject` and, with output set,
// `tre output queue|show|release|withhold`: the two human checkpoints share
// their shape.
type ReviewMain struct {
	Stdout, Stderr io.Writer
	Getenv         func(string) string

	output bool // output check rather than review
	verb   string
	flags  clientFlags
	wait   waitFlags
	client *api.Client

	id      int64
	comment string
	reason  string
	limit   int
	offset  int
}

// NewReviewMain returns `tre review`.
func NewReviewMain(stdout, stderr io.Writer) Command {
	return &ReviewMain{Stdout: stdout, Stderr: stderr, Getenv: os.Getenv}
}

// NewOutputMain returns `tre output`.
func NewOutputMain(stdout, stderr io.Writer) Command {
	return &ReviewMain{Stdout: stdout, Stderr: stderr, Getenv: os.Getenv, output: true}
}

func (m *ReviewMain) usage() string {
	if m.output {
		return `usage: tre output <verb> [flags]
  queue                     results awaiting output check
  show     ID               the protected table and its disclosure report
  release  ID [--comment C] [--wait]   --wait: until the site has run it, then release
  withhold ID --reason R
common flags: --broker URL, --token-file F (default: $TRE_TOKEN_OUTPUT_CHECKER, else $TRE_TOKEN), --json, --timeout D`
	}
	return `usage: tre review <verb> [flags]
  queue                     submitted queries, oldest first
  approve ID [--comment C] [--wait]   reserves the budget; --wait: until the site has run it
  reject  ID --reason R
common flags: --broker URL, --token-file F (default: $TRE_TOKEN_REVIEWER, else $TRE_TOKEN), --json, --timeout D`
}

func (m *ReviewMain) name() string {
	if m.output {
		return "output"
	}
	return "review"
}

// ParseFlags parses the verb and its flags.
func (m *ReviewMain) ParseFlags(ctx context.Context, args []string) error {
	verb, err := verbOf(args, m.usage(), m.Stderr)
	if err != nil {
		return err
	}
	m.verb = verb
	fs := NewFlagSet(m.name()+" "+m.verb, m.Stderr)
	m.flags.role = broker.RoleReviewer
	if m.output {
		m.flags.role = broker.RoleOutputChecker
	}
	m.flags.register(fs, m.Getenv)
	needID := true
	switch {
	case m.verb == "queue":
		needID = false
		fs.IntVar(&m.limit, "limit", 0, "page size")
		fs.IntVar(&m.offset, "offset", 0, "items to skip")
	case m.verb == "approve" && !m.output:
		fs.StringVar(&m.comment, "comment", "", "note for the record")
		m.wait.register(fs, "after approving, wait until the site has run the query")
	case m.verb == "release" && m.output:
		fs.StringVar(&m.comment, "comment", "", "note for the record")
		m.wait.register(fs, "first wait until the site has run the query")
	case m.verb == "reject" && !m.output, m.verb == "withhold" && m.output:
		fs.StringVar(&m.reason, "reason", "", "why (required; the researcher sees it)")
	case m.verb == "show" && m.output:
	default:
		return fmt.Errorf("unknown verb %q\n%s", m.verb, m.usage())
	}
	pos, err := parseInterleaved(fs, args[1:])
	if err != nil {
		return err
	}
	if needID {
		if err := needArgs(pos, 1, "tre "+m.name()+" "+m.verb+" ID"); err != nil {
			return err
		}
		if m.id, err = parseID("query", pos[0]); err != nil {
			return err
		}
	} else if err := needArgs(pos, 0, "tre "+m.name()+" queue"); err != nil {
		return err
	}
	if (m.verb == "reject" || m.verb == "withhold") && strings.TrimSpace(m.reason) == "" {
		return fmt.Errorf("--reason is required to %s", m.verb)
	}
	m.client, err = m.flags.client(m.Getenv)
	return err
}

// Run calls the broker.
func (m *ReviewMain) Run(ctx context.Context) error { return apiExit(m.run(ctx)) }

func (m *ReviewMain) run(ctx context.Context) error {
	c := m.client
	var q *broker.Query
	var err error
	switch m.verb {
	case "queue":
		return m.queue(ctx)
	case "show":
		out, err := c.Output(ctx, m.id)
		if err != nil {
			return err
		}
		if m.flags.json {
			return PrintJSON(m.Stdout, out)
		}
		return PrintOutput(m.Stdout, out)
	case "approve":
		q, err = c.ApproveQuery(ctx, m.id, m.comment)
		if err == nil && m.wait.on {
			q, err = m.wait.until(ctx, c, m.id, m.Stderr, func(s broker.Status) bool { return !atSite(s) })
		}
	case "reject":
		q, err = c.RejectQuery(ctx, m.id, m.reason)
	case "release":
		if m.wait.on {
			// Through the review too: a checker may start waiting early.
			run := func(s broker.Status) bool { return s != broker.StatusSubmitted && !atSite(s) }
			if q, err = m.wait.until(ctx, c, m.id, m.Stderr, run); err != nil {
				return err
			}
		}
		q, err = c.ReleaseQuery(ctx, m.id, m.comment)
		if isConflict(err) && !m.wait.on {
			if cur, qerr := c.Query(ctx, m.id); qerr == nil && atSite(cur.Status) {
				err = fmt.Errorf("%w (the site has not finished running it: add --wait to release it once it has)", err)
			}
		}
	case "withhold":
		q, err = c.WithholdQuery(ctx, m.id, m.reason)
	}
	if err != nil {
		return err
	}
	if m.flags.json {
		return PrintJSON(m.Stdout, q)
	}
	fmt.Fprintf(m.Stdout, "query %d is now %s\n", q.ID, q.Status)
	return nil
}

func (m *ReviewMain) queue(ctx context.Context) error {
	opts := api.ListOptions{Limit: m.limit, Offset: m.offset}
	if m.output {
		l, err := m.client.OutputQueue(ctx, opts)
		if err != nil {
			return err
		}
		if m.flags.json {
			return PrintJSON(m.Stdout, l)
		}
		return printQueryList(m.Stdout, l.Items, l.Total, l.Offset)
	}
	l, err := m.client.ReviewQueue(ctx, opts)
	if err != nil {
		return err
	}
	if m.flags.json {
		return PrintJSON(m.Stdout, l)
	}
	tw := NewTable(m.Stdout)
	fmt.Fprintln(tw, "ID\tPROJECT\tSUBMITTED\tBY\tε\tε LEFT\tRISK\tSQL")
	for _, it := range l.Items {
		left := "-"
		if it.ProjectBudget != nil {
			left = fmtFloat(it.ProjectBudget.EpsilonRemaining)
		}
		var risks []string
		for _, f := range it.RiskFlags {
			risks = append(risks, f.Kind)
		}
		risk := strings.Join(risks, ",")
		if risk == "" {
			risk = "-"
		}
		fmt.Fprintf(tw, "%d\t%d\t%s\t%s\t%s\t%s\t%s\t%s\n", it.ID, it.ProjectID, fmtTime(it.SubmittedAt), it.SubmittedBy,
			fmtFloat(it.Cost.Epsilon), left, risk, oneLine(it.SQL, 50))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if l.Total > len(l.Items) {
		fmt.Fprintf(m.Stdout, "(%d of %d; use --offset for more)\n", len(l.Items), l.Total)
	}
	return nil
}

// printOutput prints an output as the output checker sees it: the protected
// table and its full disclosure report, or the failure notice.
func PrintOutput(w io.Writer, out *broker.Output) error {
	if out.Failure != nil || out.Result == nil {
		code, detail := "unknown", ""
		if out.Failure != nil {
			code, detail = out.Failure.Code, out.Failure.Detail
		}
		fmt.Fprintf(w, "failure notice: the run failed at the site (%s)", code)
		if detail != "" {
			fmt.Fprintf(w, ": %s", detail)
		}
		fmt.Fprintf(w, "\nreleasing it tells the researcher only: %s\n", broker.FailedMessage)
		return printSiteOutputs(w, out.Sites)
	}
	if err := PrintResultTable(w, out.Result.Columns, out.Result.Rows); err != nil {
		return err
	}
	r := out.Result.Report
	fmt.Fprintln(w)
	tw := NewTable(w)
	fmt.Fprintf(tw, "ε, δ spent\t%s, %s (%s)\n", fmtFloat(r.Epsilon), fmtFloat(r.Delta), r.Mechanism)
	fmt.Fprintf(tw, "bounds\tk=%s per patient, C=%s per group\n", api.Plural(r.MaxGroupsPerPatient, "group", "groups"), api.Plural(r.MaxRowsPerGroup, "row", "rows"))
	if r.GroupingSets > 0 {
		fmt.Fprintf(tw, "totals\t%d grouping sets: a patient counts in up to k × %d cells\n", r.GroupingSets, r.GroupingSets)
	}
	fmt.Fprintf(tw, "suppression\tthreshold %d; %s suppressed, %d secondary\n", r.Threshold, api.Plural(r.CellsSuppressed, "cell", "cells"), r.CellsSecondary)
	fmt.Fprintf(tw, "rounding\tbase %d (%s), %s rounded\n", r.RoundingBase, r.Rounding, api.Plural(r.CellsRounded, "cell", "cells"))
	fmt.Fprintf(tw, "groups\t%d released, %d suppressed, partition selection %s\n", r.GroupsReleased, r.GroupsSuppressed, r.PartitionSelection)
	fmt.Fprintf(tw, "dominance flags\t%s\n", api.Plural(r.CellsDominanceFlags, "cell", "cells"))
	for _, x := range r.Ratios {
		fmt.Fprintf(tw, "ratio\t%s = noisy %s / max(1, noisy %s)%s, no budget of its own\n", x.Column, x.Numerator, x.Denominator, map[bool]string{true: " in [0, 1]"}[x.Proportion])
	}
	fmt.Fprintf(tw, "rows dropped by bounding\t%d\n", r.RowsDroppedByBounding)
	fmt.Fprintf(tw, "opt-out applied\t%v (%s)\n", r.OptOut.Applied, r.OptOut.Table)
	fmt.Fprintf(tw, "sandbox\t%s degraded=%v\n", strings.Join(r.Sandbox.Layers, ","), r.Sandbox.Degraded)
	if err := tw.Flush(); err != nil {
		return err
	}
	return printSiteOutputs(w, out.Sites)
}

// printSiteOutputs prints each site's part of a federated query's output:
// its state and its own disclosure report.
func printSiteOutputs(w io.Writer, sites []broker.SiteOutput) error {
	if len(sites) == 0 {
		return nil
	}
	fmt.Fprintf(w, "\n%d sites:\n", len(sites))
	tw := NewTable(w)
	fmt.Fprintf(tw, "site\tstate\tattempts\tfailure\trows dropped by bounding\topt-out applied\tsandbox\n")
	for _, s := range sites {
		failure, dropped, optout, layers := "-", "-", "-", "-"
		if s.Failure != nil {
			failure = s.Failure.Code
		}
		if r := s.Report; r != nil {
			dropped, optout, layers = fmt.Sprint(r.RowsDroppedByBounding), fmt.Sprint(r.OptOut.Applied), strings.Join(r.Sandbox.Layers, ",")
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\n", s.SiteID, s.Status, s.Attempts, failure, dropped, optout, layers)
	}
	return tw.Flush()
}

// isConflict reports whether err is the broker's 409.
func isConflict(err error) bool {
	var ae *api.Error
	return errors.As(err, &ae) && ae.Status == http.StatusConflict
}

// Close releases nothing.
func (m *ReviewMain) Close() error { return nil }
