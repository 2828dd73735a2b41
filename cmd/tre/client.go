package main

import (
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
	"github.com/nhs-tre/tre/dp"
)

// Exit codes of the client commands (documented in docs/cli.md).
const (
	exitAPIError     = 1 // the broker refused for a domain reason (conflict, budget, invalid input, unreachable)
	exitUsage        = 2 // bad flags or arguments
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
}

func (f *clientFlags) register(fs *flag.FlagSet, getenv func(string) string) {
	def := getenv("TRE_BROKER")
	if def == "" {
		def = defaultBroker
	}
	fs.StringVar(&f.broker, "broker", def, "broker URL (default from TRE_BROKER)")
	fs.StringVar(&f.tokenFile, "token-file", "", "file holding the bearer token (default: the TRE_TOKEN variable)")
	fs.BoolVar(&f.json, "json", false, "print JSON for scripts instead of tables")
	fs.DurationVar(&f.timeout, "timeout", 60*time.Second, "give up on the broker after this long")
}

// client builds an API client from the flags and the environment.
func (f *clientFlags) client(getenv func(string) string) (*api.Client, error) {
	token := strings.TrimSpace(getenv("TRE_TOKEN"))
	if f.tokenFile != "" {
		data, err := os.ReadFile(f.tokenFile)
		if err != nil {
			return nil, usageError{fmt.Errorf("read token file: %w", err)}
		}
		token = strings.TrimSpace(string(data))
	}
	if token == "" {
		return nil, usageError{errors.New("no token: set TRE_TOKEN or pass --token-file")}
	}
	if !strings.HasPrefix(f.broker, "http://") && !strings.HasPrefix(f.broker, "https://") {
		return nil, usageError{fmt.Errorf("--broker %q must be an http:// or https:// URL", f.broker)}
	}
	return &api.Client{BaseURL: f.broker, Token: token, HTTPClient: &http.Client{Timeout: f.timeout}}, nil
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
			return exitError{exitNotAuthed, err}
		case http.StatusNotFound, http.StatusUnprocessableEntity:
			return exitError{exitNotFoundOrNo, err}
		}
	}
	var ue usageError
	if errors.As(err, &ue) {
		return err
	}
	return exitError{exitAPIError, err}
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

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func newTable(w io.Writer) *tabwriter.Writer {
	return tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
}

func fmtTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format("2006-01-02 15:04")
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
func printResultTable(w io.Writer, cols []dp.Column, rows [][]dp.Cell) error {
	tw := newTable(w)
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
	s := fmtFloat(*cell.Value)
	if cell.CILow != nil && cell.CIHigh != nil {
		s += fmt.Sprintf(" [%s, %s]", fmtFloat(*cell.CILow), fmtFloat(*cell.CIHigh))
	}
	if len(cell.Dominance) > 0 { // only in an output checker's table
		s += " dominance:" + strings.Join(cell.Dominance, ",")
	}
	return s
}
