// Package queries owns the query language of tre: it parses a researcher's
// SQL with DuckDB's own parser (json_serialize_sql on an in-memory
// connection), validates it against a dataset catalog, refusing anything it
// does not understand, and compiles it into a contribution-bounded DuckDB
// query plus the dp.Spec that says how to protect its result, the privacy
// cost and the expected accuracy. It also owns the dataset catalog types.
//
// queries must never read patient data: its DuckDB connection is in-memory,
// has external access disabled and is used only to parse SQL text. It must
// never accept a construct it cannot fully account for (fail closed), and
// never echo DuckDB error text to a researcher.
package queries

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/nhs-tre/tre/dp"
)

// Options are the per-submission knobs of Compile.
type Options struct {
	// Epsilon is the budget the researcher asks to spend; 0 means the
	// catalog's default.
	Epsilon float64
	// Seed keys the hash that chooses which groups and rows of a patient are
	// kept when a patient exceeds the k/C bounds. It does not need to be
	// secret: selection depends only on the seed and that patient's own rows.
	Seed uint64
	// UniqueTables names catalog tables known to hold each patient at most
	// once in the data the query runs on: the sandbox fills it from
	// UniqueColumnsSQL (UniqueTablesFrom), i.e. from constraints DuckDB
	// enforces, never from the
	// catalog's one_row_per_patient declaration alone. A query whose every
	// FROM relation is such a table or a per-patient CTE or subquery, joined
	// on the privacy unit, then needs no contribution bounding and compiles
	// to a direct aggregate. Empty (the broker, tre check) keeps the run-time
	// check. Names are matched case-insensitively.
	UniqueTables []string
	// Federated compiles a federated query (issue 21): one site's part of
	// a query over several sites, whose noisy statistics the broker sums
	// (dp.ProtectPartial, dp.Combine). Its Spec uses Gaussian noise, whose
	// sum over sites the DP library describes; the broker and every site
	// compile with it, so they agree on the Spec (dp.Spec.Hash). Check the
	// Spec with dp.Spec.ValidateFederated.
	Federated bool
}

// Plan is a compiled query: everything the broker shows before approval and
// everything the sandbox needs to run it.
type Plan struct {
	Dataset string `json:"dataset"`
	// SQL is the query exactly as submitted; SQLHash its hex SHA-256.
	SQL     string `json:"sql"`
	SQLHash string `json:"sql_hash"`
	// Rewritten is DuckDB SQL over the views of ViewStatements returning one
	// row per group in the layout documented on Compile.
	Rewritten string        `json:"rewritten"`
	Spec      dp.Spec       `json:"spec"`
	Cost      dp.Cost       `json:"cost"`
	Accuracy  []dp.Accuracy `json:"accuracy"`
	// Shape is the canonical text (canonical.go) of what the query
	// releases and from what, without its WHERE conditions: queries of one
	// shape whose Predicates differ by one can be subtracted (risk flags).
	Shape string `json:"shape"`
	// Normalized is the canonical text of the whole query, Shape and
	// Predicates: equal for queries that ask the same question however they
	// are written and named (repeat detection).
	Normalized string `json:"normalized"`
	// Predicates are the canonical WHERE conjuncts of the outer query and
	// of its per-patient CTEs and subqueries, sorted.
	Predicates []string `json:"predicates"`
	// Codelists are the codelists (CodelistsTable) the query names by a
	// literal compared with their codelist column (= or IN), sorted.
	Codelists []string `json:"codelists,omitempty"`
}

// Refusal is why a query is not accepted. Its Message is safe to show to the
// researcher: it names the construct and where it is, never data values or
// DuckDB's own error text.
type Refusal struct {
	// Construct is the offending SQL construct, e.g. "function read_csv".
	Construct string `json:"construct"`
	// Pos is the byte offset in the submitted SQL, -1 when unknown.
	Pos     int    `json:"pos"`
	Message string `json:"message"`
}

func (r *Refusal) Error() string { return r.Message }

// refuse builds a Refusal whose message reads
// "refused: <construct> at position <pos> is not allowed: <why>".
func refuse(construct string, pos int, why string) *Refusal {
	var b strings.Builder
	b.WriteString("refused: ")
	b.WriteString(construct)
	if pos >= 0 {
		fmt.Fprintf(&b, " at position %d", pos)
	}
	b.WriteString(" is not allowed")
	if why != "" {
		b.WriteString(": ")
		b.WriteString(why)
	}
	return &Refusal{Construct: construct, Pos: pos, Message: b.String()}
}

// ViewName is the name of the view through which compiled queries read a
// catalog table. Compiled SQL never names a base table.
func ViewName(table string) string {
	return "tre_view_" + strings.ToLower(table)
}

// ViewStatements returns the CREATE TEMP VIEW statements the sandbox runs
// before a compiled query: one view per catalog table except the opt-out
// table, exposing only non-forbidden columns. They read the release
// snapshot (ReleaseStatements), which holds no opted-out patient: a
// compiled query never sees one, whatever its filters.
func ViewStatements(cat *Catalog) []string {
	out := make([]string, 0, len(cat.Tables))
	for _, t := range cat.Tables {
		if strings.EqualFold(t.Name, cat.Policy.OptOutTable) {
			continue
		}
		cols := make([]string, 0, len(t.Columns))
		for _, col := range t.Columns {
			if col.Role == RoleForbidden {
				continue
			}
			cols = append(cols, QuoteIdent(col.Name))
		}
		if len(cols) == 0 {
			continue
		}
		out = append(out, fmt.Sprintf("CREATE OR REPLACE TEMP VIEW %s AS SELECT %s FROM %s",
			QuoteIdent(ViewName(t.Name)), strings.Join(cols, ", "), QuoteIdent(t.Name)))
	}
	return out
}

// UniqueColumnsSQL is a statement returning, one per row, a table of the
// current schema and a column of it (lower case) that alone is a PRIMARY
// KEY, or UNIQUE and NOT NULL. DuckDB enforces these constraints on every
// write, so a table whose privacy-unit column is among them holds each
// patient at most once (UniqueTablesFrom). It reads only the catalog of
// constraints, never a table's rows, so it costs the same at any data size,
// and it needs nothing of a query or catalog: the sandbox child runs it
// while it opens the data, before a job arrives.
const UniqueColumnsSQL = "SELECT table_name, lower(constraint_column_names[1]) FROM duckdb_constraints() " +
	"WHERE database_name = current_database() AND schema_name = current_schema() " +
	"AND len(constraint_column_names) = 1 " +
	"GROUP BY ALL " +
	"HAVING bool_or(constraint_type IN ('PRIMARY KEY', 'UNIQUE')) AND bool_or(constraint_type IN ('PRIMARY KEY', 'NOT NULL'))"

// UniqueColumn is one row of UniqueColumnsSQL.
type UniqueColumn struct {
	Table  string
	Column string // lower case
}

// Querier runs a query: *sql.DB and *sql.Conn.
type Querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

// hasSnapshotKeysSQL lists SnapshotKeysTable if the current database has
// it: a release snapshot does, a site's own data file does not.
const hasSnapshotKeysSQL = "SELECT 1 FROM duckdb_tables() " +
	"WHERE database_name = current_database() AND schema_name = 'tre_snapshot' AND table_name = 'keys'"

// ReadUniqueColumns runs UniqueColumnsSQL on q and, on a release
// snapshot, adds the keys its builder checked (SnapshotKeysTable).
func ReadUniqueColumns(ctx context.Context, q Querier) ([]UniqueColumn, error) {
	out, err := readUniqueColumns(ctx, q, UniqueColumnsSQL, nil)
	if err != nil {
		return nil, err
	}
	rows, err := q.QueryContext(ctx, hasSnapshotKeysSQL)
	if err != nil {
		return nil, fmt.Errorf("read table constraints: %w", err)
	}
	has := rows.Next()
	if err := errors.Join(rows.Err(), rows.Close()); err != nil {
		return nil, fmt.Errorf("read table constraints: %w", err)
	}
	if !has {
		return out, nil
	}
	return readUniqueColumns(ctx, q, "SELECT table_name, lower(column_name) FROM "+SnapshotKeysTable, out)
}

func readUniqueColumns(ctx context.Context, q Querier, query string, out []UniqueColumn) ([]UniqueColumn, error) {
	rows, err := q.QueryContext(ctx, query)
	if err != nil {
		return nil, fmt.Errorf("read table constraints: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var c UniqueColumn
		if err := rows.Scan(&c.Table, &c.Column); err != nil {
			return nil, fmt.Errorf("read table constraints: %w", err)
		}
		if !slices.Contains(out, c) {
			out = append(out, c)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read table constraints: %w", err)
	}
	return out, nil
}

// UniqueTablesFrom returns, sorted, the tables whose privacy-unit column
// cols (the rows of UniqueColumnsSQL) holds: what Options.UniqueTables
// expects.
func UniqueTablesFrom(cols []UniqueColumn, cat *Catalog) []string {
	pu := strings.ToLower(cat.PrivacyUnit)
	var out []string
	for _, c := range cols {
		if c.Column == pu {
			out = append(out, c.Table)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// QuoteIdent double-quotes an SQL identifier for DuckDB and PostgreSQL.
// Catalog names are restricted to [A-Za-z0-9_] by Validate, so this never
// needs escaping in practice, but it escapes anyway.
func QuoteIdent(s string) string {
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}

// quoteString single-quotes a string literal.
func quoteString(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}

// SQLHash is the hex SHA-256 of a query's text exactly as submitted: what a
// reviewer approved is what runs, and the broker, the agent and the sandbox
// child each check it with this one function.
func SQLHash(sqlText string) string {
	sum := sha256.Sum256([]byte(sqlText))
	return hex.EncodeToString(sum[:])
}
