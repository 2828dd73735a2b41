package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/nhs-tre/tre/api/auth"
	"github.com/nhs-tre/tre/broker"
)

// TokenMain is `tre token`: it mints a dev-mode HS256 token with the key in
// the data directory. Only a broker started with --dev accepts it.
type TokenMain struct {
	Stdout, Stderr io.Writer
	Now            func() time.Time

	dataDir string
	claims  auth.DevClaims
}

// NewTokenMain returns the command.
func NewTokenMain(stdout, stderr io.Writer) Command {
	return &TokenMain{Stdout: stdout, Stderr: stderr, Now: time.Now}
}

// ParseFlags parses and checks the flags.
func (m *TokenMain) ParseFlags(ctx context.Context, args []string) error {
	fs := NewFlagSet("token", m.Stderr)
	var roles listFlag
	fs.StringVar(&m.dataDir, "data-dir", "", "the broker's data directory (holds dev-signing.key)")
	fs.StringVar(&m.claims.Subject, "sub", "", "subject: the user's stable id (required)")
	fs.Var(&roles, "role", "role: researcher, reviewer, output_checker, admin or agent (repeatable)")
	fs.StringVar(&m.claims.Org, "org", "", "organisation")
	fs.StringVar(&m.claims.Name, "name", "", "display name")
	fs.StringVar(&m.claims.Site, "site", "", "the site an agent token acts for (required with --role agent)")
	fs.DurationVar(&m.claims.TTL, "ttl", 8*time.Hour, "how long the token is valid")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := NoArgs(fs); err != nil {
		return err
	}
	switch {
	case m.dataDir == "":
		return errors.New("--data-dir is required")
	case m.claims.Subject == "":
		return errors.New("--sub is required")
	case len(roles) == 0:
		return errors.New("at least one --role is required")
	case m.claims.TTL <= 0 || m.claims.TTL > 30*24*time.Hour:
		return errors.New("--ttl must be positive and at most 720h")
	}
	agent := false
	for _, r := range roles {
		role := broker.Role(r)
		switch role {
		case broker.RoleResearcher, broker.RoleReviewer, broker.RoleOutputChecker, broker.RoleAdmin, broker.RoleAgent:
			m.claims.Roles = append(m.claims.Roles, role)
		default:
			return fmt.Errorf("unknown role %q (researcher, reviewer, output_checker, admin, agent)", r)
		}
		agent = agent || role == broker.RoleAgent
	}
	switch {
	case agent && m.claims.Site == "":
		return errors.New("--role agent needs --site: an agent token acts for one registered site")
	case !agent && m.claims.Site != "":
		return errors.New("--site applies to agent tokens only (--role agent)")
	}
	return nil
}

// Run prints the token on standard output.
func (m *TokenMain) Run(ctx context.Context) error {
	key, err := auth.LoadOrCreateDevKey(m.dataDir)
	if err != nil {
		return err
	}
	m.claims.IssuedAt = m.Now()
	tok, err := auth.MintDevToken(key, m.claims)
	if err != nil {
		return err
	}
	fmt.Fprintln(m.Stdout, tok)
	return nil
}

// Close releases nothing.
func (m *TokenMain) Close() error { return nil }
