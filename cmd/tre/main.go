// Command tre is the single binary of the Trusted Research Environment query
// broker: it plays the broker, the site agent, the sandbox child process and
// the command-line client. This package only parses flags and wires parts
// together; the work lives in the packages it imports.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
)

// command is one subcommand: flags are parsed before anything runs, so a bad
// flag never leaves half-started work behind.
type command interface {
	ParseFlags(ctx context.Context, args []string) error
	Run(ctx context.Context) error
	Close() error
}

// commandInfo describes a subcommand for dispatch and usage.
type commandInfo struct {
	summary string
	new     func(stdout, stderr io.Writer) command
}

// commands is the dispatch table. A subcommand is listed only once it works.
func commands() map[string]commandInfo {
	return map[string]commandInfo{
		"__sandbox": {"internal: the sandbox child process of one job", newSandboxMain},
		"synth":     {"generate synthetic NHS GP records and their catalog", newSynthMain},
		"audit":     {"verify the audit hash chain (exit 0 iff intact)", newAuditMain},
		"check":     {"validate SQL against a catalog: rewrite, cost and expected accuracy", newCheckMain},
		"run":       {"run one query through the real sandbox and print the protected table and its report", newRunMain},
		"demo":      {"synthetic data, broker, site agent and sandbox in one process tree", newDemoMain},
		"serve":     {"run the broker (REST API, queues, budgets, audit)", newServeMain},
		"agent":     {"run a site agent next to the data (outbound to the broker only)", newAgentMain},
		"token":     {"mint a development token (brokers in --dev mode only)", newTokenMain},
		"query":     {"submit, dry-run, list, show, cancel queries; fetch results", newQueryMain},
		"review":    {"reviewer queue: approve or reject queries", newReviewMain},
		"output":    {"output-check queue: release or withhold results", newOutputMain},
		"bench":     {"measure queries (raw DuckDB, protected, PostgreSQL), sandbox start, broker API and synth", newBenchMain},
		"project":   {"create and list projects", newProjectMain},
		"site":      {"register sites and list their agents' health (admin)", newSiteMain},
		"datasets":  {"what a researcher may query: tables, columns, roles, bounds, domains, example codes", newDatasetsMain},
		"version":   {"print the version, the commit and the DuckDB version", newVersionMain},
	}
}

// usageError marks errors caused by the invocation (bad flags, unknown
// subcommand): they print usage and exit 2.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// exitError carries a specific exit code (e.g. `tre check` refusing SQL).
type exitError struct {
	code int
	err  error
}

func (e exitError) Error() string { return e.err.Error() }
func (e exitError) Unwrap() error { return e.err }

func main() {
	ctx, stop := signalContext()
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// signalContext is cancelled by Ctrl-C or SIGTERM: only main handles signals.
func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

// run dispatches args to a subcommand and returns the process exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cmds := commands()
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		printUsage(stderr, cmds)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	info, ok := cmds[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "tre: unknown command %q\n\n", args[0])
		printUsage(stderr, cmds)
		return 2
	}
	cmd := info.new(stdout, stderr)
	defer cmd.Close()
	if err := cmd.ParseFlags(ctx, args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "tre %s: %v\n", args[0], err)
		return 2
	}
	if err := cmd.Run(ctx); err != nil {
		var ue usageError
		var ee exitError
		switch {
		case errors.As(err, &ue):
			fmt.Fprintf(stderr, "tre %s: %v\n", args[0], err)
			return 2
		case errors.As(err, &ee):
			if ee.err != nil {
				fmt.Fprintf(stderr, "tre %s: %v\n", args[0], ee.err)
			}
			return ee.code
		case errors.Is(err, context.Canceled):
			return 130
		}
		fmt.Fprintf(stderr, "tre %s: %v\n", args[0], err)
		return 1
	}
	return 0
}

func printUsage(w io.Writer, cmds map[string]commandInfo) {
	names := make([]string, 0, len(cmds))
	for name := range cmds {
		if !strings.HasPrefix(name, "_") {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	fmt.Fprintln(w, "Usage: tre <command> [flags]")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Commands:")
	for _, name := range names {
		fmt.Fprintf(w, "  %-8s %s\n", name, cmds[name].summary)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Run 'tre <command> -h' for a command's flags.")
}

// newFlagSet returns a flag set that reports errors instead of exiting, and
// prints its usage to stderr.
func newFlagSet(name string, stderr io.Writer) *flag.FlagSet {
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

// noArgs rejects stray positional arguments.
func noArgs(fs *flag.FlagSet) error {
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	return nil
}
