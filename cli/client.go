package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nhs-tre/tre/api"
	"github.com/nhs-tre/tre/broker"
	"github.com/nhs-tre/tre/dp"
)

// Exit codes of the client commands (documented in docs/cli.md); a bad
// flag or argument exits 2 (run).
const (
	exitAPIError     = 1 // the broker refused for a domain reason (conflict, budget, invalid input, unreachable)
	exitNotAuthed    = 3 // 401 or 403: no valid token, or not allowed
	exitNotFoundOrNo = 4 // 404 not found, or 422 SQL refused
)

// defaultBroker is used when neither --broker nor TRE_BROKER is set.
const defaultBroker = "http://127.0.0.1:8080"

// clientFlags are the flags every client command shares.
type clientFlags struct {
	broker    string
	tokenFile string
	json      bool
	timeout   time.Duration
	// role is whose token the command reads from the environment when no
	// --token-file is given: TRE_TOKEN_<ROLE> (as tre demo's tokens.env
	// sets them), else TRE_TOKEN.
	role broker.Role
}

// tokenVar is the environment variable of the command's role, or
// TRE_TOKEN for a command without one.
func (f *clientFlags) tokenVar() string {
	if f.role == "" {
		return "TRE_TOKEN"
	}
	return "TRE_TOKEN_" + strings.ToUpper(string(f.role))
}

func (f *clientFlags) register(fs *flag.FlagSet, getenv func(string) string) {
	def := getenv("TRE_BROKER")
	if def == "" {
		def = defaultBroker
	}
	fs.StringVar(&f.broker, "broker", def, "broker URL, from TRE_BROKER if set")
	fs.StringVar(&f.tokenFile, "token-file", "", "file holding the bearer token (default: the "+f.tokenVar()+" variable, else TRE_TOKEN)")
	fs.BoolVar(&f.json, "json", false, "print JSON for scripts instead of tables")
	fs.DurationVar(&f.timeout, "timeout", 60*time.Second, "give up on one request to the broker after this long")
}

// client builds an API client from the flags and the environment.
func (f *clientFlags) client(getenv func(string) string) (*api.Client, error) {
	token := strings.TrimSpace(getenv(f.tokenVar()))
	if token == "" {
		token = strings.TrimSpace(getenv("TRE_TOKEN"))
	}
	if f.tokenFile != "" {
		data, err := os.ReadFile(f.tokenFile)
		if err != nil {
			return nil, UsageError{Err: fmt.Errorf("read token file: %w", err)}
		}
		token = strings.TrimSpace(string(data))
	}
	if token == "" {
		return nil, UsageError{Err: fmt.Errorf("no token: set %s or TRE_TOKEN (tre demo writes them to tokens.env), or pass --token-file", f.tokenVar())}
	}
	if !strings.HasPrefix(f.broker, "http://") && !strings.HasPrefix(f.broker, "https://") {
		return nil, UsageError{Err: fmt.Errorf("--broker %q must be an http:// or https:// URL", f.broker)}
	}
	return &api.Client{BaseURL: f.broker, Token: token, HTTPClient: &http.Client{Timeout: f.timeout}}, nil
}

// waitFlags are --wait and --wait-timeout of the commands that hand a query
// on to someone else.
type waitFlags struct {
	on      bool
	timeout time.Duration
	// poll is how often the query is read while waiting.
	poll time.Duration
}

func (w *waitFlags) register(fs *flag.FlagSet, what string) {
	fs.BoolVar(&w.on, "wait", false, what+" (progress on standard error)")
	fs.DurationVar(&w.timeout, "wait-timeout", 15*time.Minute, "give up waiting after this long")
	if w.poll == 0 {
		w.poll = time.Second
	}
}

// ended reports whether a query in status s will not change again.
func ended(s broker.Status) bool {
	switch s {
	case broker.StatusReleased, broker.StatusRejected, broker.StatusWithheld, broker.StatusFailed, broker.StatusCancelled:
		return true
	}
	return false
}

// atSite reports whether a query in status s waits for, or is in, its run
// at the site.
func atSite(s broker.Status) bool { return s == broker.StatusApproved || s == broker.StatusRunning }

// until polls query id until done holds for its status, telling progress
// about every change of status and, every half minute, that it is still
// waiting. It gives up after w.timeout.
func (w *waitFlags) until(ctx context.Context, c *api.Client, id int64, progress io.Writer, done func(broker.Status) bool) (*broker.Query, error) {
	ctx, cancel := context.WithTimeout(ctx, w.timeout)
	defer cancel()
	start := time.Now()
	var last broker.Status
	lastNote := start
	for {
		q, err := c.Query(ctx, id)
		switch {
		case err != nil && ctx.Err() != nil:
			return nil, waitTimeout(ctx, id, last, w.timeout)
		case err != nil:
			return nil, err
		}
		if q.Status != last {
			fmt.Fprintf(progress, "query %d: %s (%s)\n", id, describeStatus(q.Status), time.Since(start).Round(time.Second))
			last, lastNote = q.Status, time.Now()
		} else if time.Since(lastNote) >= 30*time.Second {
			fmt.Fprintf(progress, "query %d: still %s (%s)\n", id, describeStatus(q.Status), time.Since(start).Round(time.Second))
			lastNote = time.Now()
		}
		if done(q.Status) {
			return q, nil
		}
		select {
		case <-ctx.Done():
			return nil, waitTimeout(ctx, id, last, w.timeout)
		case <-time.After(w.poll):
		}
	}
}

func waitTimeout(ctx context.Context, id int64, last broker.Status, timeout time.Duration) error {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("query %d is still %s after %s (--wait-timeout)", id, last, timeout)
	}
	return ctx.Err()
}

// describeStatus says what a status means to someone waiting on it.
func describeStatus(s broker.Status) string {
	switch s {
	case broker.StatusSubmitted:
		return "submitted, waiting for a reviewer"
	case broker.StatusApproved:
		return "approved, waiting for the site agent to start it"
	case broker.StatusRunning:
		return "running at the site"
	case broker.StatusAwaitingOutputCheck:
		return "awaiting_output_check, waiting for an output checker"
	}
	return string(s)
}

// apiExit maps an API error to the exit code scripts rely on.
func apiExit(err error) error {
	if err == nil {
		return nil
	}
	var ae *api.Error
	if errors.As(err, &ae) {
		switch ae.Status {
		case http.StatusUnauthorized, http.StatusForbidden:
			return ExitError{Code: exitNotAuthed, Err: err}
		case http.StatusNotFound, http.StatusUnprocessableEntity:
			return ExitError{Code: exitNotFoundOrNo, Err: err}
		}
	}
	var ue UsageError
	var ee ExitError
	if errors.As(err, &ue) || errors.As(err, &ee) {
		return err
	}
	return ExitError{Code: exitAPIError, Err: err}
}

// parseInterleaved parses flags that may come after positional arguments
// (`tre query show 42 --json`) and returns the positionals.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// parseID reads a positive numeric id argument.
func parseID(what, s string) (int64, error) {
	id, err := strconv.ParseInt(s, 10, 64)
	if err != nil || id <= 0 {
		return 0, fmt.Errorf("%s id %q must be a positive integer", what, s)
	}
	return id, nil
}

// needArgs checks the number of positional arguments.
func needArgs(pos []string, n int, usage string) error {
	if len(pos) != n {
		return fmt.Errorf("usage: %s", usage)
	}
	return nil
}

func PrintJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// NewTable is the tab-aligned table every subcommand prints.
func NewTable(w io.Writer) *tabwriter.Writer {
	return tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
}

func fmtTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format("2006-01-02 15:04:05 UTC")
}

func fmtFloat(v float64) string { return strconv.FormatFloat(v, 'g', 6, 64) }

// oneLine shortens SQL for a table cell.
func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len([]rune(s)) > n {
		return string([]rune(s)[:n-1]) + "…"
	}
	return s
}

// printResultTable prints a protected table for people: suppressed cells
// show as "suppressed", intervals after the value.
func PrintResultTable(w io.Writer, cols []dp.Column, rows [][]dp.Cell) error {
	tw := NewTable(w)
	var head []string
	for _, c := range cols {
		head = append(head, c.Name)
	}
	fmt.Fprintln(tw, strings.Join(head, "\t"))
	for _, row := range rows {
		var cells []string
		for i, c := range cols {
			var cell dp.Cell
			if i < len(row) {
				cell = row[i]
			}
			cells = append(cells, fmtCell(c, cell))
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t"))
	}
	return tw.Flush()
}

func fmtCell(c dp.Column, cell dp.Cell) string {
	if c.Kind == "group" {
		if cell.Null {
			return "NULL"
		}
		return strings.NewReplacer("\t", " ", "\n", " ").Replace(cell.Key)
	}
	switch {
	case cell.Secondary:
		return "suppressed (secondary)"
	case cell.Suppressed:
		return "suppressed"
	case cell.Value == nil:
		return "-"
	}
	s, lo, hi := api.FormatCell(c, cell)
	if lo != "" && hi != "" {
		s = fmt.Sprintf("%s [%s, %s]", s, lo, hi)
	}
	if len(cell.Dominance) > 0 { // only in an output checker's table
		s += " dominance:" + strings.Join(cell.Dominance, ",")
	}
	return s
}
