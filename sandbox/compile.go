package sandbox

import (
	"context"
	"database/sql"
	"fmt"

	"github.com/nhs-tre/tre/queries"
)

// compile checks and rewrites the researcher's SQL inside the child with the
// site's own catalog: the sandbox never runs SQL rewritten elsewhere. The
// parser runs json_serialize_sql on the job's locked-down data connection
// (it only parses: nothing of the text is bound or executed), so the child
// opens no second DuckDB database for it. The tables the data enforces
// unique per patient (from ldb.keys, read when the data was opened) are
// passed to the compiler so queries over them skip contribution bounding.
func compile(ctx context.Context, ldb *lockedDB, cat *queries.Catalog, sqlText string, opts queries.Options) (*queries.Plan, error) {
	opts.UniqueTables = queries.UniqueTablesFrom(ldb.keys, cat)
	p, err := queries.NewParserConn(ctx, ldb.conn)
	if err != nil {
		return nil, fmt.Errorf("start parser: %w", err)
	}
	defer p.Close()
	return p.Compile(ctx, cat, sqlText, opts)
}

// UniqueTables lists the tables of the open data whose privacy-unit column
// DuckDB enforces as unique and not NULL (queries.UniqueColumnsSQL): what
// queries.Options.UniqueTables expects. It reads constraints, not rows.
// Exported so package bench compiles exactly as the child does.
func UniqueTables(ctx context.Context, conn *sql.Conn, cat *queries.Catalog) ([]string, error) {
	cols, err := queries.ReadUniqueColumns(ctx, conn)
	if err != nil {
		return nil, err
	}
	return queries.UniqueTablesFrom(cols, cat), nil
}
