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

	"github.com/nhs-tre/tre/cli"
)

// commandInfo describes a subcommand for dispatch and usage.
type commandInfo struct {
	summary string
	new     func(stdout, stderr io.Writer) cli.Command
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
		"token":     {"mint a development token (brokers in --dev mode only)", cli.NewTokenMain},
		"query":     {"submit, dry-run, list, show, cancel queries; fetch results", cli.NewQueryMain},
		"review":    {"reviewer queue: approve or reject queries", cli.NewReviewMain},
		"output":    {"output-check queue: release or withhold results", cli.NewOutputMain},
		"bench":     {"measure queries (raw DuckDB, protected, PostgreSQL), sandbox start, broker API and synth", newBenchMain},
		"project":   {"create and list projects", cli.NewProjectMain},
		"site":      {"register sites and list their agents' health (admin)", cli.NewSiteMain},
		"codelist":  {"upload, list and show codelists: public code lists queries join", cli.NewCodelistMain},
		"datasets":  {"what a researcher may query: tables, columns, roles, bounds, domains, example codes", cli.NewDatasetsMain},
		"version":   {"print the version, the commit and the DuckDB version", newVersionMain},
	}
}

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
		var ue cli.UsageError
		var ee cli.ExitError
		switch {
		case errors.As(err, &ue):
			fmt.Fprintf(stderr, "tre %s: %v\n", args[0], err)
			return 2
		case errors.As(err, &ee):
			if ee.Err != nil {
				fmt.Fprintf(stderr, "tre %s: %v\n", args[0], ee.Err)
			}
			return ee.Code
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
