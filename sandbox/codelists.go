package sandbox

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/duckdb/duckdb-go/v2"

	"github.com/nhs-tre/tre/job"
	"github.com/nhs-tre/tre/queries"
)

// attachCodelists makes the codelists a compiled query names readable as
// its view of the public table codelists(codelist, code, term): a
// temporary table on the job's connection, filled from the job (the agent
// fetched the codes; the child never reaches the network), each codelist
// checked against its content hash first. A codelist the query names that
// the job does not carry refuses the job: the reviewer approved the query
// with the codelists the broker recorded, and the site runs exactly those.
// A query that names none gets no table.
func attachCodelists(ctx context.Context, ldb *lockedDB, names []string, lists []job.Codelist) error {
	if len(names) == 0 {
		return nil
	}
	var use []job.Codelist
	for _, name := range names {
		i := slices.IndexFunc(lists, func(c job.Codelist) bool { return c.Name == name })
		if i < 0 {
			return job.Errorf(job.CodeInvalid, "codelist %s was not delivered with the job", name)
		}
		if err := lists[i].Verify(); err != nil {
			return err
		}
		use = append(use, lists[i])
	}
	table := queries.ViewName(queries.CodelistsTable)
	if _, err := ldb.conn.ExecContext(ctx,
		"CREATE TEMP TABLE "+table+" (codelist VARCHAR NOT NULL, code VARCHAR NOT NULL, term VARCHAR)"); err != nil {
		return fmt.Errorf("codelists table: %w", err)
	}
	ldb.codelists = true
	return ldb.conn.Raw(func(dc any) error {
		c, ok := dc.(driver.Conn)
		if !ok {
			return errors.New("unexpected driver connection")
		}
		a, err := duckdb.NewAppender(c, "temp", "main", table)
		if err != nil {
			return fmt.Errorf("codelists appender: %w", err)
		}
		for _, cl := range use {
			for _, code := range cl.Codes {
				if err := a.AppendRow(cl.Name, code.Code, code.Term); err != nil {
					a.Close()
					return fmt.Errorf("codelists append: %w", err)
				}
			}
		}
		if err := a.Close(); err != nil {
			return fmt.Errorf("codelists append: %w", err)
		}
		return nil
	})
}

// absentCodes lists, per attached codelist, the codes that occur in no code
// column of the catalog's tables (a dry run's, over synthetic data: the
// runner asks only through DryRun). Nothing when no codelist is attached
// or the catalog has no code column.
func absentCodes(ctx context.Context, ldb *lockedDB, cat *queries.Catalog) ([]job.AbsentCodes, error) {
	if !ldb.codelists {
		return nil, nil
	}
	table := queries.ViewName(queries.CodelistsTable)
	var conds []string
	for _, t := range cat.Tables {
		if t.Public || strings.EqualFold(t.Name, cat.Policy.OptOutTable) {
			continue
		}
		for _, c := range t.Columns {
			if c.Role == queries.RoleCode {
				conds = append(conds, fmt.Sprintf(`NOT EXISTS (SELECT 1 FROM "%s" x WHERE CAST(x."%s" AS VARCHAR) = cl.code)`, queries.ViewName(t.Name), c.Name))
			}
		}
	}
	if len(conds) == 0 {
		return nil, nil
	}
	rows, err := ldb.conn.QueryContext(ctx, "SELECT cl.codelist, cl.code FROM "+table+" cl WHERE "+
		strings.Join(conds, " AND ")+" ORDER BY cl.codelist, cl.code")
	if err != nil {
		return nil, fmt.Errorf("absent codes: %w", err)
	}
	defer rows.Close()
	var out []job.AbsentCodes
	for rows.Next() {
		var name, code string
		if err := rows.Scan(&name, &code); err != nil {
			return nil, fmt.Errorf("absent codes: %w", err)
		}
		if len(out) == 0 || out[len(out)-1].Codelist != name {
			out = append(out, job.AbsentCodes{Codelist: name, Codes: []string{}})
		}
		a := &out[len(out)-1]
		a.Count++
		if len(a.Codes) < job.MaxAbsentCodes {
			a.Codes = append(a.Codes, code)
		}
	}
	return out, rows.Err()
}
