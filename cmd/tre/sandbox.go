package main

import (
	"context"
	"io"

	"github.com/nhs-tre/tre/cli"
	"github.com/nhs-tre/tre/sandbox"
)

// SandboxMain is `tre __sandbox`, the hidden entry point the site agent
// re-executes (through /proc/self/exe) as the sandbox child of one job. It
// takes no flags: everything comes from the environment the agent sets.
type SandboxMain struct{}

func newSandboxMain(_, _ io.Writer) cli.Command { return &SandboxMain{} }

func (m *SandboxMain) ParseFlags(ctx context.Context, args []string) error { return nil }

// Run serves the plugin until the agent kills the process; a hardening or
// handshake failure exits non-zero so the agent reports the job crashed.
func (m *SandboxMain) Run(ctx context.Context) error {
	if code := sandbox.Serve(sandbox.ServeOptions{}); code != 0 {
		return cli.ExitError{Code: code}
	}
	return nil
}

func (m *SandboxMain) Close() error { return nil }
