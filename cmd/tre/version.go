package main

import (
	"context"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
	"strings"

	"github.com/nhs-tre/tre/cli"
	"github.com/nhs-tre/tre/queries"
)

// VersionMain is `tre version`: the version and commit of this binary and
// the DuckDB library it runs queries with.
type VersionMain struct {
	stdout, stderr io.Writer
	json           bool
}

func newVersionMain(stdout, stderr io.Writer) cli.Command {
	return &VersionMain{stdout: stdout, stderr: stderr}
}

// ParseFlags parses --json.
func (m *VersionMain) ParseFlags(ctx context.Context, args []string) error {
	fs := cli.NewFlagSet("version", m.stderr)
	fs.BoolVar(&m.json, "json", false, "print JSON")
	if err := fs.Parse(args); err != nil {
		return err
	}
	return cli.NoArgs(fs)
}

// versionInfo is what `tre version` reports.
type versionInfo struct {
	Version  string `json:"version"`
	Commit   string `json:"commit,omitempty"`
	Time     string `json:"commit_time,omitempty"`
	Modified bool   `json:"modified,omitempty"`
	Go       string `json:"go"`
	Platform string `json:"platform"`
	DuckDB   string `json:"duckdb,omitempty"`
}

// readVersionInfo reads the binary's build information: the module version
// (or "(devel)") and, when the binary was built from a git checkout with
// VCS stamping (go build's default), the commit.
func readVersionInfo() versionInfo {
	v := versionInfo{Version: "unknown", Go: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return v
	}
	v.Version = info.Main.Version
	if v.Version == "" {
		v.Version = "(devel)"
	}
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			v.Commit = s.Value
		case "vcs.time":
			v.Time = s.Value
		case "vcs.modified":
			v.Modified = s.Value == "true"
		}
	}
	return v
}

// buildVersion is this binary's version in one short string: the module
// version and the first 12 digits of the commit, "+dirty" when the tree
// had changes. The site agent reports it to the broker, which shows it on
// the sites page.
func buildVersion() string {
	v := readVersionInfo()
	rev := v.Commit
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if v.Modified {
		rev += "+dirty"
	}
	return strings.TrimSpace("tre " + v.Version + " " + rev)
}

// Run prints the versions.
func (m *VersionMain) Run(ctx context.Context) error {
	v := readVersionInfo()
	duck, err := queries.DuckDBVersion(ctx)
	if err != nil {
		return err
	}
	v.DuckDB = duck
	if m.json {
		return cli.PrintJSON(m.stdout, v)
	}
	tw := cli.NewTable(m.stdout)
	fmt.Fprintf(tw, "tre\t%s\n", v.Version)
	switch {
	case v.Commit == "":
		fmt.Fprintf(tw, "commit\tunknown (built without VCS stamping: -buildvcs=false, or not from a git checkout)\n")
	case v.Modified:
		fmt.Fprintf(tw, "commit\t%s (%s, with uncommitted changes)\n", v.Commit, v.Time)
	default:
		fmt.Fprintf(tw, "commit\t%s (%s)\n", v.Commit, v.Time)
	}
	fmt.Fprintf(tw, "go\t%s %s\n", v.Go, v.Platform)
	fmt.Fprintf(tw, "duckdb\t%s\n", v.DuckDB)
	return tw.Flush()
}

// Close releases nothing.
func (m *VersionMain) Close() error { return nil }
