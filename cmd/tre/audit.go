package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/nhs-tre/tre/api"
	"github.com/nhs-tre/tre/broker"
	"github.com/nhs-tre/tre/broker/postgres"
	"github.com/nhs-tre/tre/broker/sqlite"
	"github.com/nhs-tre/tre/cli"
)

// AuditMain is `tre audit verify`: recompute the audit hash chain straight
// from the database and exit 0 only if it is intact; otherwise print the
// first bad entry and exit 1.
type AuditMain struct {
	Stdout, Stderr io.Writer

	dataDir     string
	databaseURL string
	expect      broker.AuditHead
	store       broker.Store
}

func newAuditMain(stdout, stderr io.Writer) cli.Command {
	return &AuditMain{Stdout: stdout, Stderr: stderr}
}

func (m *AuditMain) ParseFlags(ctx context.Context, args []string) error {
	if len(args) == 0 || args[0] != "verify" {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
			fmt.Fprintln(m.Stderr, "Usage: tre audit verify --data-dir DIR | --database-url URL [--expect-head HASH] [--expect-count N]")
			return nil
		}
		return errors.New("usage: tre audit verify --data-dir DIR | --database-url URL [--expect-head HASH] [--expect-count N]")
	}
	fs := cli.NewFlagSet("audit verify", m.Stderr)
	fs.StringVar(&m.dataDir, "data-dir", os.Getenv("TRE_DATA_DIR"), "the broker's data directory (SQLite store)")
	fs.StringVar(&m.databaseURL, "database-url", os.Getenv("TRE_DATABASE_URL"), "PostgreSQL URL of the broker's store")
	fs.StringVar(&m.expect.Hash, "expect-head", "", "a head hash published earlier (the public register shows it): the chain must still hold that entry")
	fs.Int64Var(&m.expect.Entries, "expect-count", 0, "the entry count published with the head: the chain must hold at least that many, the last of them the head")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if err := cli.NoArgs(fs); err != nil {
		return err
	}
	if (m.dataDir == "") == (m.databaseURL == "") {
		return errors.New("give exactly one of --data-dir and --database-url")
	}
	if m.expect.Entries < 0 {
		return errors.New("--expect-count must not be negative")
	}
	if h := m.expect.Hash; h != "" && (len(h) != 64 || strings.Trim(h, "0123456789abcdef") != "") {
		return fmt.Errorf("--expect-head %q is not a hash: 64 lower-case hex digits, as the register shows", h)
	}
	return nil
}

func (m *AuditMain) Run(ctx context.Context) error {
	if m.dataDir == "" && m.databaseURL == "" {
		return nil // help was printed
	}
	if m.databaseURL != "" {
		s, err := postgres.Open(ctx, m.databaseURL)
		if err != nil {
			return err
		}
		m.store = s
	} else {
		path := filepath.Join(m.dataDir, sqlite.DefaultFilename)
		if _, err := os.Stat(path); err != nil {
			return fmt.Errorf("no broker database at %s", path)
		}
		s, err := sqlite.Open(ctx, path)
		if err != nil {
			return err
		}
		m.store = s
	}
	var expect *broker.AuditHead
	if m.expect != (broker.AuditHead{}) {
		expect = &m.expect
	}
	v, err := broker.VerifyChain(ctx, m.store, expect)
	if err != nil {
		return err
	}
	if !v.OK {
		return cli.ExitError{Code: 1, Err: fmt.Errorf("audit chain broken at entry %d: %s (%s verified before it)", v.FirstBadSeq, v.Reason, api.Plural(int(v.Entries), "entry", "entries"))}
	}
	fmt.Fprintf(m.Stdout, "audit chain intact: %s, head %s\n", api.Plural(int(v.Entries), "entry", "entries"), v.Head)
	if expect != nil {
		fmt.Fprintln(m.Stdout, "the published head is in the chain: nothing was cut after it")
	}
	return nil
}

func (m *AuditMain) Close() error {
	if m.store != nil {
		return m.store.Close()
	}
	return nil
}
