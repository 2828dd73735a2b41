package queries

import (
	"context"
	"fmt"
)

// DuckDBVersion returns the version of the DuckDB library linked into this
// binary, which parses queries here and runs them in the sandbox, as
// DuckDB's own SELECT version() reports it.
func DuckDBVersion(ctx context.Context) (string, error) {
	p, err := NewParser()
	if err != nil {
		return "", err
	}
	defer p.Close()
	var v string
	if err := p.db.QueryRowContext(ctx, "SELECT version()").Scan(&v); err != nil {
		return "", fmt.Errorf("duckdb version: %w", err)
	}
	return v, nil
}
