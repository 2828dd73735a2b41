// Package cli is tre's command-line client: the subcommands that call a
// broker over its API (query, review, output, project, site, datasets) or
// mint a development token, how they print what the broker answers, and the
// flag and exit-code conventions every tre subcommand shares (documented in
// docs/cli.md). cmd/tre dispatches to it.
//
// cli talks to the broker only through the api client: it never opens a
// store, a data file or a sandbox, and never prints a token.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
)

// Command is one subcommand: flags are parsed before anything runs, so a
// bad flag never leaves half-started work behind.
type Command interface {
	ParseFlags(ctx context.Context, args []string) error
	Run(ctx context.Context) error
	Close() error
}

// UsageError marks errors caused by the invocation (bad flags, unknown
// subcommand): they print usage and exit 2.
type UsageError struct{ Err error }

func (e UsageError) Error() string { return e.Err.Error() }
func (e UsageError) Unwrap() error { return e.Err }

// ExitError carries a specific exit code (e.g. `tre check` refusing SQL).
type ExitError struct {
	Code int
	Err  error
}

func (e ExitError) Error() string { return e.Err.Error() }
func (e ExitError) Unwrap() error { return e.Err }

// NewFlagSet returns a flag set that reports errors instead of exiting, and
// prints its usage to stderr.
func NewFlagSet(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("tre "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

// verbOf returns the verb that must lead args of a client command such as
// "tre query": -h or --help prints usage and returns flag.ErrHelp; a missing
// verb or a flag in its place is a usage error.
func verbOf(args []string, usage string, stderr io.Writer) (string, error) {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
			fmt.Fprintln(stderr, usage)
			return "", flag.ErrHelp
		}
		return "", errors.New(usage)
	}
	return args[0], nil
}

// NoArgs rejects stray positional arguments.
func NoArgs(fs *flag.FlagSet) error {
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	return nil
}
