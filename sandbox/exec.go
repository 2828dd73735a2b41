package sandbox

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/google/differential-privacy/go/v3/noise"

	"github.com/nhs-tre/tre/dp"
	"github.com/nhs-tre/tre/job"
	"github.com/nhs-tre/tre/queries"
)

// viewStatements are the views every job's SQL is bound to, over the
// release snapshot.
func viewStatements(cat *queries.Catalog) ([]string, error) {
	if cat.Policy.OptOutTable == "" {
		return nil, job.Errorf(job.CodeInvalid, "the catalog names no opt-out table")
	}
	return queries.ViewStatements(cat), nil
}

// execute compiles the researcher's SQL with the site's catalog, runs the
// rewrite on the release snapshot, and protects the result: a dp.Result,
// or for a federated part (job.Job.Partial) a dp.Partial, compiled as
// federated and only noised (dp.ProtectPartial); the caller adds the
// snapshot's opt-out hash. Exact statistics live only in this function's
// locals.
//
// nz, when not nil, replaces the library's noise (a test hook only a test
// child passes).
func execute(ctx context.Context, ldb *lockedDB, req *request, cc *childConfig, nz noise.Noise) (*dp.Result, *dp.Partial, error) {
	var seed [8]byte
	if _, err := rand.Read(seed[:]); err != nil {
		return nil, nil, fmt.Errorf("seed: %w", err)
	}
	plan, err := compile(ctx, ldb, req.Catalog, req.SQL, queries.Options{
		Epsilon:   req.Epsilon,
		Seed:      binary.LittleEndian.Uint64(seed[:]),
		Federated: req.Partial,
	})
	if err != nil {
		var ref *queries.Refusal
		if errors.As(err, &ref) {
			return nil, nil, job.Errorf(job.CodeRefused, "%s", ref.Message)
		}
		return nil, nil, err
	}
	if plan.SQLHash != req.SQLHash {
		return nil, nil, job.Errorf(job.CodeInvalid, "the SQL does not match its hash")
	}
	if req.Partial {
		// Refused before any of the query runs: a grouping without public
		// domain, a quantile or Laplace noise cannot be combined.
		if err := plan.Spec.ValidateFederated(); err != nil {
			return nil, nil, job.Errorf(job.CodeRefused, "%s", err.Error())
		}
	}
	if err := attachCodelists(ctx, ldb, plan.Codelists, req.Codelists); err != nil {
		return nil, nil, err
	}
	groups, dropped, sel, err := runPlan(ctx, ldb, plan, cc.MaxRows)
	if err != nil {
		return nil, nil, err
	}
	opts := dp.Options{DroppedRows: dropped, Selected: sel, Noise: nz}
	if req.Partial {
		part, err := dp.ProtectPartial(plan.Spec, groups, opts)
		if err != nil {
			return nil, nil, fmt.Errorf("protect partial: %w", err)
		}
		return nil, part, nil
	}
	res, err := dp.Protect(plan.Spec, groups, opts)
	if err != nil {
		return nil, nil, fmt.Errorf("protect: %w", err)
	}
	return res, nil, nil
}

// runPlan runs the rewritten SQL and scans its rows (layout documented on
// queries.Plan.Rewritten) into group statistics.
func runPlan(ctx context.Context, ldb *lockedDB, plan *queries.Plan, maxRows int) ([]dp.GroupStats, int64, *dp.Selector, error) {
	if err := prepareOne(ldb.conn, plan.Rewritten); err != nil {
		return nil, 0, nil, err
	}
	rows, err := ldb.conn.QueryContext(ctx, plan.Rewritten)
	if err != nil {
		return nil, 0, nil, err
	}
	defer rows.Close()
	return ScanGroups(rows, plan, maxRows)
}

// ScanGroups reads the rows of plan.Rewritten (layout documented on
// queries.Plan.Rewritten: group keys, __patients, five statistics per
// aggregate, __dropped, a histogram per quantile tree) into group statistics, keeping only the groups
// whose keys may be released (dp.Selector: in the public domains, or past
// DP partition selection, decided row by row), and returns the Selector to
// pass to dp.Protect. It refuses more than maxRows kept groups: how many
// there are is the outcome of partition selection (or, for public domains,
// a bound of the query's own), never an exact count of the data. It is the
// one reader of that layout; the benchmark uses it too.
func ScanGroups(rows *sql.Rows, plan *queries.Plan, maxRows int) ([]dp.GroupStats, int64, *dp.Selector, error) {
	nk, na := len(plan.Spec.Groups), len(plan.Spec.Aggregates)
	cols, err := rows.Columns()
	if err != nil {
		return nil, 0, nil, err
	}
	owners := plan.Spec.TreeOwners()
	if want := nk + 1 + 5*na + 1 + len(owners); len(cols) != want {
		return nil, 0, nil, fmt.Errorf("rewritten query returned %d columns, want %d", len(cols), want)
	}
	sel, err := plan.Spec.NewSelector()
	if err != nil {
		return nil, 0, nil, err
	}
	if sel.PublicDomain() {
		// The public domains' cross product is released whatever the data:
		// too many groups is a fact of the query.
		if total := plan.Spec.DomainCells(); total > maxRows {
			return nil, 0, nil, job.Errorf(job.CodeTooLarge, "the query releases more than %d groups", maxRows)
		}
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
	hists := make([]any, len(owners))
	for i := range hists {
		dest = append(dest, &hists[i])
	}
	for rows.Next() {
		if err := rows.Scan(dest...); err != nil {
			return nil, 0, nil, err
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
		for t, j := range owners {
			if g.Aggs[j].Hist, err = queries.DecodeHistogram(hists[t]); err != nil {
				return nil, 0, nil, err
			}
		}
		keep, err := sel.Keep(g)
		if err != nil {
			return nil, 0, nil, err
		}
		if !keep {
			continue
		}
		if len(groups) >= maxRows {
			return nil, 0, nil, job.Errorf(job.CodeTooLarge, "the query has more than %d groups", maxRows)
		}
		groups = append(groups, g)
	}
	if err := rows.Err(); err != nil {
		return nil, 0, nil, err
	}
	return groups, dropped, sel, nil
}
