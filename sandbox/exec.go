package sandbox

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"

	"github.com/nhs-tre/tre/dp"
	"github.com/nhs-tre/tre/queries"
)

// viewStatements are the views every job's SQL is bound to; the catalog's
// opt-out table must exist for patient views to filter on.
func viewStatements(cat *queries.Catalog) ([]string, error) {
	if cat.Policy.OptOutTable == "" {
		return nil, Errorf(CodeInvalid, "the catalog names no opt-out table")
	}
	return queries.ViewStatements(cat), nil
}

// execute compiles the researcher's SQL with the site's catalog, runs the
// rewrite, and protects the result; the caller adds the opt-out snapshot
// (applyOptOut). Exact statistics live only in this function's locals.
func execute(ctx context.Context, ldb *lockedDB, req *request, cc *childConfig) (*dp.Result, error) {
	var seed [8]byte
	if _, err := rand.Read(seed[:]); err != nil {
		return nil, fmt.Errorf("seed: %w", err)
	}
	plan, err := compile(ctx, ldb, req.Catalog, req.SQL, queries.Options{
		Epsilon: req.Epsilon,
		Seed:    binary.LittleEndian.Uint64(seed[:]),
	})
	if err != nil {
		var ref *queries.Refusal
		if errors.As(err, &ref) {
			return nil, Errorf(CodeRefused, "%s", ref.Message)
		}
		return nil, err
	}
	if plan.SQLHash != req.SQLHash {
		return nil, Errorf(CodeInvalid, "the SQL does not match its hash")
	}
	groups, dropped, err := runPlan(ctx, ldb, plan, cc.MaxRows)
	if err != nil {
		return nil, err
	}
	res, err := dp.Protect(plan.Spec, groups, dp.Options{DroppedRows: dropped})
	if err != nil {
		return nil, fmt.Errorf("protect: %w", err)
	}
	return res, nil
}

// runPlan runs the rewritten SQL and scans its rows (layout documented on
// queries.Plan.Rewritten) into group statistics.
func runPlan(ctx context.Context, ldb *lockedDB, plan *queries.Plan, maxRows int) ([]dp.GroupStats, int64, error) {
	if err := prepareOne(ldb.conn, plan.Rewritten); err != nil {
		return nil, 0, err
	}
	rows, err := ldb.conn.QueryContext(ctx, plan.Rewritten)
	if err != nil {
		return nil, 0, err
	}
	defer rows.Close()
	return ScanGroups(rows, plan, maxRows)
}

// ScanGroups reads the rows of plan.Rewritten (layout documented on
// queries.Plan.Rewritten: group keys, __patients, five statistics per
// aggregate, __dropped) into group statistics, refusing more than maxRows
// groups. It is the one reader of that layout; the benchmark uses it too.
func ScanGroups(rows *sql.Rows, plan *queries.Plan, maxRows int) ([]dp.GroupStats, int64, error) {
	nk, na := len(plan.Spec.Groups), len(plan.Spec.Aggregates)
	cols, err := rows.Columns()
	if err != nil {
		return nil, 0, err
	}
	if want := nk + 1 + 5*na + 1; len(cols) != want {
		return nil, 0, fmt.Errorf("rewritten query returned %d columns, want %d", len(cols), want)
	}
	var groups []dp.GroupStats
	var dropped int64
	keys := make([]sql.NullString, nk)
	aggs := make([]float64, 5*na)
	dest := make([]any, 0, len(cols))
	for i := range keys {
		dest = append(dest, &keys[i])
	}
	var patients int64
	dest = append(dest, &patients)
	for i := range aggs {
		dest = append(dest, &aggs[i])
	}
	dest = append(dest, &dropped)
	for rows.Next() {
		if err := rows.Scan(dest...); err != nil {
			return nil, 0, err
		}
		if len(groups) >= maxRows {
			return nil, 0, Errorf(CodeTooLarge, "the query has more than %d groups", maxRows)
		}
		g := dp.GroupStats{Keys: make([]*string, nk), Patients: patients, Aggs: make([]dp.AggStats, na)}
		for i, k := range keys {
			if k.Valid {
				v := k.String
				g.Keys[i] = &v
			}
		}
		for i := range na {
			a := aggs[5*i : 5*i+5]
			g.Aggs[i] = dp.AggStats{Count: a[0], Sum: a[1], SumSq: a[2], Top1: a[3], Top2: a[4]}
		}
		groups = append(groups, g)
	}
	if err := rows.Err(); err != nil {
		return nil, 0, err
	}
	return groups, dropped, nil
}

// optOutReport hashes the opted-out ids the views excluded at run time, so
// the output checker can see which snapshot applied without seeing an id.
//
// Canonical form (docs/security.md, "opt-out snapshot hash"): the distinct
// non-NULL values of the privacy-unit column of the opt-out table, sorted
// ascending in the column's own type (numeric for the integer ids tre uses,
// so 9 < 10 < 100; byte order for text ids), each written as CAST(id AS
// VARCHAR) followed by one newline (0x0A), concatenated; SHA-256 of that
// text in lower-case hex, and of the empty text when there are no ids.
// DuckDB computes it on the job's locked-down connection so the ids never
// cross into Go and the sort is on native values, not strings. One
// list_sort measured faster than an ordered string_agg or list(id ORDER BY
// id); array_to_string casts each element as CAST(id AS VARCHAR) does.
func optOutReport(ctx context.Context, ldb *lockedDB, cat *queries.Catalog) (dp.OptOutReport, error) {
	var sum string
	if err := ldb.conn.QueryRowContext(ctx, OptOutSnapshotSQL(cat)).Scan(&sum); err != nil {
		return dp.OptOutReport{}, err
	}
	if len(sum) != 2*sha256.Size {
		return dp.OptOutReport{}, fmt.Errorf("opt-out snapshot hash has %d characters, want %d", len(sum), 2*sha256.Size)
	}
	return dp.OptOutReport{Applied: true, Table: cat.Policy.OptOutTable, SnapshotHash: sum}, nil
}

// OptOutSnapshotSQL is the one-row, one-column statement that computes the
// opt-out snapshot hash (canonical form on optOutReport) over cat's opt-out
// table. Exported so sandbox/bench measures exactly what the child runs.
func OptOutSnapshotSQL(cat *queries.Catalog) string {
	pu := `"` + strings.ReplaceAll(cat.PrivacyUnit, `"`, `""`) + `"`
	tbl := `"` + strings.ReplaceAll(cat.Policy.OptOutTable, `"`, `""`) + `"`
	return fmt.Sprintf("SELECT sha256(coalesce(array_to_string(list_sort(list(id)), chr(10)) || chr(10), '')) "+
		"FROM (SELECT DISTINCT %s AS id FROM %s WHERE %s IS NOT NULL)", pu, tbl, pu)
}
