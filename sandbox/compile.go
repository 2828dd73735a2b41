package sandbox

import (
	"context"
	"database/sql"
	"fmt"

	"github.com/nhs-tre/tre/queries"
)

// compile checks and rewrites the researcher's SQL inside the child with the
// site's own catalog: the sandbox never runs SQL rewritten elsewhere. The
// parser runs json_serialize_sql on conn, the job's locked-down data
// connection (it only parses: nothing of the text is bound or executed), so
// the child opens no second DuckDB database for it.
func compile(ctx context.Context, conn *sql.Conn, cat *queries.Catalog, sqlText string, opts queries.Options) (*queries.Plan, error) {
	p, err := queries.NewParserConn(ctx, conn)
	if err != nil {
		return nil, fmt.Errorf("start parser: %w", err)
	}
	defer p.Close()
	return p.Compile(ctx, cat, sqlText, opts)
}
