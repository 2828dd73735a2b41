package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/nhs-tre/tre/broker"
	"github.com/nhs-tre/tre/broker/postgres"
	"github.com/nhs-tre/tre/broker/sqlite"
)

// AuditMain is `tre audit verify`: recompute the audit hash chain straight
// from the database and exit 0 only if it is intact; otherwise print the
// first bad entry and exit 1.
type AuditMain struct {
	Stdout, Stderr io.Writer

	dataDir     string
	databaseURL string
	store       broker.Store
}

func newAuditMain(stdout, stderr io.Writer) command {
	return &AuditMain{Stdout: stdout, Stderr: stderr}
}

func (m *AuditMain) ParseFlags(ctx context.Context, args []string) error {
	if len(args) == 0 || args[0] != "verify" {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
			fmt.Fprintln(m.Stderr, "Usage: tre audit verify --data-dir DIR | --database-url URL")
			return nil
		}
		return errors.New("usage: tre audit verify --data-dir DIR | --database-url URL")
	}
	fs := newFlagSet("audit verify", m.Stderr)
	fs.StringVar(&m.dataDir, "data-dir", os.Getenv("TRE_DATA_DIR"), "the broker's data directory (SQLite store)")
	fs.StringVar(&m.databaseURL, "database-url", os.Getenv("TRE_DATABASE_URL"), "PostgreSQL URL of the broker's store")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if err := noArgs(fs); err != nil {
		return err
	}
	if (m.dataDir == "") == (m.databaseURL == "") {
		return errors.New("give exactly one of --data-dir and --database-url")
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
	v, err := broker.VerifyChain(ctx, m.store)
	if err != nil {
		return err
	}
	if !v.OK {
		return exitError{code: 1, err: fmt.Errorf("audit chain broken at entry %d: %s (%d entries verified before it)", v.FirstBadSeq, v.Reason, v.Entries)}
	}
	fmt.Fprintf(m.Stdout, "audit chain intact: %d entries, head %s\n", v.Entries, v.Head)
	return nil
}

func (m *AuditMain) Close() error {
	if m.store != nil {
		return m.store.Close()
	}
	return nil
}
