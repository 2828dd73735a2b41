package sandbox

import (
	"context"
	"fmt"

	"github.com/nhs-tre/tre/queries"
)

// compile checks and rewrites the researcher's SQL inside the child with the
// site's own catalog: the sandbox never runs SQL rewritten elsewhere. The
// parser's in-memory DuckDB lives only for this job.
func compile(ctx context.Context, cat *queries.Catalog, sql string, opts queries.Options) (*queries.Plan, error) {
	p, err := queries.NewParser()
	if err != nil {
		return nil, fmt.Errorf("start parser: %w", err)
	}
	defer p.Close()
	return p.Compile(ctx, cat, sql, opts)
}
