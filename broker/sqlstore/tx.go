package sqlstore

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nhs-tre/tre/broker"
	"github.com/nhs-tre/tre/dp"
)

// tx implements broker.Tx over one database/sql transaction.
type tx struct {
	db   *DB
	tx   *sql.Tx
	read bool
	// detach runs statements without their context's cancellation (group
	// commit: an interrupted statement may abort the shared transaction).
	detach bool
	// unprepared lists statements run without a cached prepared statement;
	// they are prepared once the transaction has released its connection.
	unprepared []string
}

// sctx is the context statements run with.
func (t *tx) sctx(ctx context.Context) context.Context {
	if t.detach {
		return context.WithoutCancel(ctx)
	}
	return ctx
}

// prepared returns q as a statement bound to the transaction when the
// dialect caches statements.
func (t *tx) prepared(ctx context.Context, q string) (*sql.Stmt, error) {
	if !t.db.d.Prepare {
		return nil, nil
	}
	s := t.db.cachedStmt(t.read, q)
	if s == nil {
		t.unprepared = append(t.unprepared, q)
		return nil, nil
	}
	return t.tx.StmtContext(ctx, s), nil
}

func (t *tx) exec(ctx context.Context, q string, args ...any) (sql.Result, error) {
	ctx = t.sctx(ctx)
	s, err := t.prepared(ctx, q)
	if err != nil {
		return nil, err
	}
	if s != nil {
		return s.ExecContext(ctx, args...)
	}
	return t.tx.ExecContext(ctx, t.db.rebind(q), args...)
}

func (t *tx) query(ctx context.Context, q string, args ...any) (*sql.Rows, error) {
	ctx = t.sctx(ctx)
	s, err := t.prepared(ctx, q)
	if err != nil {
		return nil, err
	}
	if s != nil {
		return s.QueryContext(ctx, args...)
	}
	return t.tx.QueryContext(ctx, t.db.rebind(q), args...)
}

// queryRow runs q and scans its single row into dest; it reports
// sql.ErrNoRows when there is none.
func (t *tx) queryRow(ctx context.Context, q string, args []any, dest ...any) error {
	ctx = t.sctx(ctx)
	s, err := t.prepared(ctx, q)
	if err != nil {
		return err
	}
	if s != nil {
		return s.QueryRowContext(ctx, args...).Scan(dest...)
	}
	return t.tx.QueryRowContext(ctx, t.db.rebind(q), args...).Scan(dest...)
}

// dynamic runs ad-hoc SQL (filters) without caching a statement.
func (t *tx) dynamic(ctx context.Context, q string, args ...any) (*sql.Rows, error) {
	ctx = t.sctx(ctx)
	return t.tx.QueryContext(ctx, t.db.rebind(q), args...)
}

// Times are stored as Unix microseconds (UTC); 0 is the zero time.
func micros(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMicro()
}

func fromMicros(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.UnixMicro(n).UTC()
}

func toJSON(v any) (string, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return "", fmt.Errorf("encode column: %w", err)
	}
	return string(b), nil
}

func fromJSON(s string, v any) error {
	if s == "" {
		return nil
	}
	if err := json.Unmarshal([]byte(s), v); err != nil {
		return fmt.Errorf("decode column: %w", err)
	}
	return nil
}

func notFound(err error, format string, args ...any) error {
	if errors.Is(err, sql.ErrNoRows) {
		return broker.Errorf(broker.ENOTFOUND, format, args...)
	}
	return err
}

// where builds a dynamic WHERE clause.
type where struct {
	conds []string
	args  []any
}

func (w *where) add(cond string, args ...any) {
	w.conds = append(w.conds, cond)
	w.args = append(w.args, args...)
}

func (w *where) String() string {
	if len(w.conds) == 0 {
		return ""
	}
	return " WHERE " + strings.Join(w.conds, " AND ")
}

// ---- projects ----

func (t *tx) CreateProject(ctx context.Context, p *broker.Project) error {
	members, err := toJSON(p.Members)
	if err != nil {
		return err
	}
	datasets, err := toJSON(p.Datasets)
	if err != nil {
		return err
	}
	err = t.queryRow(ctx, `INSERT INTO projects (title, organisation, purpose, lawful_basis, data_sharing_agreement, members, datasets,
		epsilon_budget, delta_budget, starts_at, expires_at, status, created_by, created_at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id`,
		[]any{p.Title, p.Organisation, p.Purpose, p.LawfulBasis, p.DataSharingAgreement, members, datasets,
			p.EpsilonBudget, p.DeltaBudget, micros(p.StartsAt), micros(p.ExpiresAt), string(p.Status), p.CreatedBy, micros(p.CreatedAt)},
		&p.ID)
	if err != nil {
		return err
	}
	return t.putMembers(ctx, p.ID, p.Members)
}

func (t *tx) putMembers(ctx context.Context, id int64, members []string) error {
	if _, err := t.exec(ctx, `DELETE FROM project_members WHERE project_id = ?`, id); err != nil {
		return err
	}
	for _, m := range members {
		if _, err := t.exec(ctx, `INSERT INTO project_members (project_id, subject) VALUES (?, ?)`, id, m); err != nil {
			return err
		}
	}
	return nil
}

func (t *tx) UpdateProject(ctx context.Context, p *broker.Project) error {
	members, err := toJSON(p.Members)
	if err != nil {
		return err
	}
	datasets, err := toJSON(p.Datasets)
	if err != nil {
		return err
	}
	res, err := t.exec(ctx, `UPDATE projects SET title = ?, organisation = ?, purpose = ?, lawful_basis = ?, data_sharing_agreement = ?,
		members = ?, datasets = ?, epsilon_budget = ?, delta_budget = ?, starts_at = ?, expires_at = ?, status = ? WHERE id = ?`,
		p.Title, p.Organisation, p.Purpose, p.LawfulBasis, p.DataSharingAgreement, members, datasets,
		p.EpsilonBudget, p.DeltaBudget, micros(p.StartsAt), micros(p.ExpiresAt), string(p.Status), p.ID)
	if err != nil {
		return err
	}
	if n, err := res.RowsAffected(); err != nil {
		return err
	} else if n == 0 {
		return broker.Errorf(broker.ENOTFOUND, "project %d not found", p.ID)
	}
	return t.putMembers(ctx, p.ID, p.Members)
}

func (t *tx) LockProject(ctx context.Context, id int64) error {
	var got int64
	err := t.queryRow(ctx, `SELECT id FROM projects WHERE id = ?`+t.db.d.ForUpdate, []any{id}, &got)
	return notFound(err, "project %d not found", id)
}

// projectColumns selects a project and its ledger totals from the
// alias-b subquery.
const projectColumns = `p.id, p.title, p.organisation, p.purpose, p.lawful_basis, p.data_sharing_agreement, p.members, p.datasets,
	p.epsilon_budget, p.delta_budget, p.starts_at, p.expires_at, p.status, p.created_by, p.created_at,
	COALESCE(b.eps_spent, 0), COALESCE(b.eps_reserved, 0), COALESCE(b.delta_spent, 0), COALESCE(b.delta_reserved, 0)`

// ledgerTotals sums the budget ledger per project from query states.
const ledgerTotals = `SELECT project_id,
	SUM(CASE WHEN ledger = 'charged' THEN cost_epsilon ELSE 0 END) AS eps_spent,
	SUM(CASE WHEN ledger = 'reserved' THEN cost_epsilon ELSE 0 END) AS eps_reserved,
	SUM(CASE WHEN ledger = 'charged' THEN cost_delta ELSE 0 END) AS delta_spent,
	SUM(CASE WHEN ledger = 'reserved' THEN cost_delta ELSE 0 END) AS delta_reserved
	FROM queries WHERE ledger IN ('reserved', 'charged')`

func scanProject(sc scanner) (*broker.Project, error) {
	var p broker.Project
	var members, datasets, status string
	var starts, expires, created int64
	err := sc.Scan(&p.ID, &p.Title, &p.Organisation, &p.Purpose, &p.LawfulBasis, &p.DataSharingAgreement, &members, &datasets,
		&p.EpsilonBudget, &p.DeltaBudget, &starts, &expires, &status, &p.CreatedBy, &created,
		&p.Budget.EpsilonSpent, &p.Budget.EpsilonReserved, &p.Budget.DeltaSpent, &p.Budget.DeltaReserved)
	if err != nil {
		return nil, err
	}
	if err := fromJSON(members, &p.Members); err != nil {
		return nil, err
	}
	if err := fromJSON(datasets, &p.Datasets); err != nil {
		return nil, err
	}
	p.StartsAt, p.ExpiresAt, p.CreatedAt = fromMicros(starts), fromMicros(expires), fromMicros(created)
	p.Status = broker.ProjectStatus(status)
	b := &p.Budget
	left := dp.Cost{Epsilon: p.EpsilonBudget, Delta: p.DeltaBudget}.
		Sub(dp.Cost{Epsilon: b.EpsilonSpent, Delta: b.DeltaSpent}).
		Sub(dp.Cost{Epsilon: b.EpsilonReserved, Delta: b.DeltaReserved})
	b.EpsilonRemaining, b.DeltaRemaining = left.Epsilon, left.Delta
	return &p, nil
}

func (t *tx) FindProject(ctx context.Context, id int64) (*broker.Project, error) {
	ctx = t.sctx(ctx)
	s, err := t.prepared(ctx, findProjectSQL)
	if err != nil {
		return nil, err
	}
	var row *sql.Row
	if s != nil {
		row = s.QueryRowContext(ctx, id, id)
	} else {
		row = t.tx.QueryRowContext(ctx, t.db.rebind(findProjectSQL), id, id)
	}
	p, err := scanProject(row)
	if err != nil {
		return nil, notFound(err, "project %d not found", id)
	}
	return p, nil
}

const findProjectSQL = `SELECT ` + projectColumns + ` FROM projects p
	LEFT JOIN (` + ledgerTotals + ` AND project_id = ? GROUP BY project_id) b ON b.project_id = p.id
	WHERE p.id = ?`

func (t *tx) FindProjects(ctx context.Context, f broker.ProjectFilter) ([]*broker.Project, int, error) {
	var w where
	if f.Member != nil {
		w.add(`p.id IN (SELECT project_id FROM project_members WHERE subject = ?)`, *f.Member)
	}
	if f.Status != nil {
		w.add(`p.status = ?`, string(*f.Status))
	}
	n, rows, err := t.page(ctx, `projects p`, `SELECT `+projectColumns+` FROM projects p
		LEFT JOIN (`+ledgerTotals+` GROUP BY project_id) b ON b.project_id = p.id`, w, `p.id`, f.Limit, f.Offset)
	if err != nil {
		return nil, 0, err
	}
	ps, err := collect(rows, scanProject)
	return ps, n, err
}

// scanner is a *sql.Row or *sql.Rows.
type scanner interface{ Scan(...any) error }

// scannerFunc adapts a function to scanner, e.g. to scan extra columns
// after a shared prefix.
type scannerFunc func(...any) error

func (f scannerFunc) Scan(dest ...any) error { return f(dest...) }

// collect scans every row with scan and closes rows. The slice is never
// nil, so an empty list encodes as [] rather than null.
func collect[T any](rows *sql.Rows, scan func(scanner) (T, error)) ([]T, error) {
	defer rows.Close()
	out := []T{}
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

// page counts the rows w selects from countFrom, then runs selectSQL (which
// may join other tables) with the same conditions for one page in order.
func (t *tx) page(ctx context.Context, countFrom, selectSQL string, w where, order string, limit, offset int) (int, *sql.Rows, error) {
	var n int
	rows, err := t.dynamic(ctx, `SELECT COUNT(*) FROM `+countFrom+w.String(), w.args...)
	if err != nil {
		return 0, nil, err
	}
	if err := scanCount(rows, &n); err != nil {
		return 0, nil, err
	}
	args := append(append([]any{}, w.args...), limit, offset)
	rows, err = t.dynamic(ctx, selectSQL+w.String()+` ORDER BY `+order+` LIMIT ? OFFSET ?`, args...)
	if err != nil {
		return 0, nil, err
	}
	return n, rows, nil
}

func scanCount(rows *sql.Rows, n *int) error {
	defer rows.Close()
	if !rows.Next() {
		if err := rows.Err(); err != nil {
			return err
		}
		return sql.ErrNoRows
	}
	if err := rows.Scan(n); err != nil {
		return err
	}
	return rows.Close()
}

func (t *tx) IsMember(ctx context.Context, projectID int64, subject string) (bool, error) {
	var n int
	err := t.queryRow(ctx, `SELECT COUNT(*) FROM project_members WHERE project_id = ? AND subject = ?`, []any{projectID, subject}, &n)
	return n > 0, err
}

// ---- sites and catalogs ----

func (t *tx) CreateSite(ctx context.Context, s *broker.Site) error {
	_, err := t.exec(ctx, `INSERT INTO sites (id, last_seen, version, name, organisation, registered_by, registered_at)
		VALUES (?, 0, '', ?, ?, ?, ?)
		ON CONFLICT (id) DO UPDATE SET name = excluded.name, organisation = excluded.organisation,
		registered_by = excluded.registered_by, registered_at = excluded.registered_at`,
		s.ID, s.Name, s.Organisation, s.RegisteredBy, micros(s.RegisteredAt))
	return err
}

// siteColumns are the columns scanSite reads.
const siteColumns = `s.id, s.name, s.organisation, s.registered_by, s.registered_at, s.last_seen, s.version`

func scanSite(sc scanner) (*broker.Site, error) {
	var s broker.Site
	var registered, seen int64
	if err := sc.Scan(&s.ID, &s.Name, &s.Organisation, &s.RegisteredBy, &registered, &seen, &s.Version); err != nil {
		return nil, err
	}
	s.RegisteredAt, s.LastSeen = fromMicros(registered), fromMicros(seen)
	s.Registered = registered != 0
	s.Datasets = []string{}
	return &s, nil
}

func (t *tx) FindSite(ctx context.Context, id string) (*broker.Site, error) {
	rows, err := t.query(ctx, `SELECT `+siteColumns+` FROM sites s WHERE s.id = ?`, id)
	if err != nil {
		return nil, err
	}
	sites, err := collect(rows, scanSite)
	if err != nil {
		return nil, err
	}
	if len(sites) == 0 {
		return nil, broker.Errorf(broker.ENOTFOUND, "site %q not found", id)
	}
	return sites[0], nil
}

func (t *tx) TouchSite(ctx context.Context, id string, at time.Time, version string) error {
	_, err := t.exec(ctx, `UPDATE sites SET last_seen = ?, version = CASE WHEN ? = '' THEN version ELSE ? END WHERE id = ?`,
		micros(at), version, version, id)
	return err
}

func (t *tx) PutCatalog(ctx context.Context, siteID, dataset, hash string, body []byte, at time.Time) error {
	_, err := t.exec(ctx, `INSERT INTO catalogs (dataset, site_id, hash, body, published_at) VALUES (?, ?, ?, ?, ?)
		ON CONFLICT (dataset) DO UPDATE SET site_id = excluded.site_id, hash = excluded.hash, body = excluded.body,
		published_at = excluded.published_at`,
		dataset, siteID, hash, string(body), micros(at))
	return err
}

func (t *tx) FindCatalog(ctx context.Context, dataset string, wantBody bool) (string, string, []byte, error) {
	var site, hash, body string
	var err error
	if wantBody {
		err = t.queryRow(ctx, `SELECT site_id, hash, body FROM catalogs WHERE dataset = ?`, []any{dataset}, &site, &hash, &body)
	} else {
		err = t.queryRow(ctx, `SELECT site_id, hash FROM catalogs WHERE dataset = ?`, []any{dataset}, &site, &hash)
	}
	if err != nil {
		return "", "", nil, notFound(err, "dataset %q not found", dataset)
	}
	if !wantBody {
		return site, hash, nil, nil
	}
	return site, hash, []byte(body), nil
}

func (t *tx) FindCatalogs(ctx context.Context) ([][]byte, error) {
	rows, err := t.query(ctx, `SELECT body FROM catalogs ORDER BY dataset`)
	if err != nil {
		return nil, err
	}
	return collect(rows, func(sc scanner) ([]byte, error) {
		var b string
		err := sc.Scan(&b)
		return []byte(b), err
	})
}

func (t *tx) FindSites(ctx context.Context) ([]*broker.Site, error) {
	rows, err := t.query(ctx, `SELECT `+siteColumns+`, COALESCE(c.dataset, '')
		FROM sites s LEFT JOIN catalogs c ON c.site_id = s.id ORDER BY s.id, c.dataset`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []*broker.Site{}
	for rows.Next() {
		var dataset string
		s, err := scanSite(scannerFunc(func(dest ...any) error { return rows.Scan(append(dest, &dataset)...) }))
		if err != nil {
			return nil, err
		}
		if len(out) == 0 || out[len(out)-1].ID != s.ID {
			out = append(out, s)
		}
		if dataset != "" {
			last := out[len(out)-1]
			last.Datasets = append(last.Datasets, dataset)
		}
	}
	return out, rows.Err()
}

// ---- queries ----

// queryColumns are the columns scanQuery reads: everything but the
// normalised text and the predicates, which only the submission that
// computes them uses (the risk lookups have their own columns and tables).
const queryColumns = `id, project_id, dataset, sql_text, sql_hash, purpose, rewritten, status, submitted_by, submitted_at, updated_at,
	cost_epsilon, cost_delta, accuracy, risk_flags, approved_by, attempts, failure_code,
	normalized_hash, shape_hash, ledger, lease_token_hash, lease_site, lease_expires_at, failure_message`

func scanQuery(sc scanner) (*broker.QueryRecord, error) {
	q := &broker.Query{}
	rec := &broker.QueryRecord{Query: q}
	var status, accuracy, flags, ledger string
	var submitted, updated, expires int64
	err := sc.Scan(&q.ID, &q.ProjectID, &q.Dataset, &q.SQL, &q.SQLHash, &q.Purpose, &q.Rewritten, &status, &q.SubmittedBy,
		&submitted, &updated, &q.Cost.Epsilon, &q.Cost.Delta, &accuracy, &flags, &q.ApprovedBy, &q.Attempts, &q.FailureCode,
		&rec.NormalizedHash, &rec.ShapeHash, &ledger, &rec.LeaseTokenHash, &rec.LeaseSite, &expires,
		&q.FailureDetail)
	if err != nil {
		return nil, err
	}
	q.Status = broker.Status(status)
	q.SubmittedAt, q.UpdatedAt, rec.LeaseExpiresAt = fromMicros(submitted), fromMicros(updated), fromMicros(expires)
	rec.Ledger = broker.LedgerState(ledger)
	q.Accuracy = []dp.Accuracy{}
	q.RiskFlags = []broker.RiskFlag{}
	if err := fromJSON(accuracy, &q.Accuracy); err != nil {
		return nil, err
	}
	if err := fromJSON(flags, &q.RiskFlags); err != nil {
		return nil, err
	}
	return rec, nil
}

func (t *tx) CreateQuery(ctx context.Context, rec *broker.QueryRecord) error {
	q := rec.Query
	accuracy, err := toJSON(q.Accuracy)
	if err != nil {
		return err
	}
	flags, err := toJSON(q.RiskFlags)
	if err != nil {
		return err
	}
	preds, err := toJSON(rec.Predicates)
	if err != nil {
		return err
	}
	err = t.queryRow(ctx, `INSERT INTO queries (project_id, dataset, sql_text, sql_hash, purpose, rewritten, status, submitted_by,
		submitted_at, updated_at, cost_epsilon, cost_delta, accuracy, risk_flags, approved_by, attempts, failure_code,
		normalized, normalized_hash, shape_hash, predicates, ledger, lease_token_hash, lease_site, lease_expires_at, failure_message)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id`,
		[]any{q.ProjectID, q.Dataset, q.SQL, q.SQLHash, q.Purpose, q.Rewritten, string(q.Status), q.SubmittedBy,
			micros(q.SubmittedAt), micros(q.UpdatedAt), q.Cost.Epsilon, q.Cost.Delta, accuracy, flags, q.ApprovedBy, q.Attempts,
			q.FailureCode, rec.Normalized, rec.NormalizedHash, rec.ShapeHash, preds, string(rec.Ledger), rec.LeaseTokenHash,
			rec.LeaseSite, micros(rec.LeaseExpiresAt), q.FailureDetail},
		&q.ID)
	if err != nil {
		return err
	}
	return t.putPredicateSet(ctx, q.ProjectID, q.ID, rec.PredicateSet, rec.PredicateKeys)
}

// putPredicateSet records that query id has the predicate set setKey: the
// set's latest query becomes id (ids only grow, but concurrent PostgreSQL
// transactions may commit out of order, hence the comparison), and a set
// seen for the first time gets its match keys.
func (t *tx) putPredicateSet(ctx context.Context, projectID, id int64, setKey string, keys []string) error {
	if setKey == "" {
		return errors.New("query record has no predicate set")
	}
	res, err := t.exec(ctx, `INSERT INTO predicate_sets (project_id, set_key, latest_query_id) VALUES (?, ?, ?)
		ON CONFLICT (project_id, set_key) DO NOTHING`, projectID, setKey, id)
	if err != nil {
		return err
	}
	if n, err := res.RowsAffected(); err != nil {
		return err
	} else if n == 0 {
		_, err := t.exec(ctx, `UPDATE predicate_sets SET latest_query_id = ?
			WHERE project_id = ? AND set_key = ? AND latest_query_id < ?`, id, projectID, setKey, id)
		return err
	}
	for _, k := range keys {
		if _, err := t.exec(ctx, `INSERT INTO predicate_set_keys (project_id, match_key, set_key) VALUES (?, ?, ?)
			ON CONFLICT (project_id, match_key, set_key) DO NOTHING`, projectID, k, setKey); err != nil {
			return err
		}
	}
	return nil
}

// UpdateQuery writes the fields that change after submission; the SQL and
// its plan are immutable.
func (t *tx) UpdateQuery(ctx context.Context, rec *broker.QueryRecord) error {
	q := rec.Query
	res, err := t.exec(ctx, `UPDATE queries SET status = ?, updated_at = ?, approved_by = ?, attempts = ?, failure_code = ?,
		ledger = ?, lease_token_hash = ?, lease_site = ?, lease_expires_at = ?, failure_message = ? WHERE id = ?`,
		string(q.Status), micros(q.UpdatedAt), q.ApprovedBy, q.Attempts, q.FailureCode, string(rec.Ledger),
		rec.LeaseTokenHash, rec.LeaseSite, micros(rec.LeaseExpiresAt), q.FailureDetail, q.ID)
	if err != nil {
		return err
	}
	if n, err := res.RowsAffected(); err != nil {
		return err
	} else if n == 0 {
		return broker.Errorf(broker.ENOTFOUND, "query %d not found", q.ID)
	}
	return nil
}

func (t *tx) LockQuery(ctx context.Context, id int64) error {
	var got int64
	err := t.queryRow(ctx, `SELECT id FROM queries WHERE id = ?`+t.db.d.ForUpdate, []any{id}, &got)
	return notFound(err, "query %d not found", id)
}

func (t *tx) FindQuery(ctx context.Context, id int64) (*broker.QueryRecord, error) {
	ctx = t.sctx(ctx)
	s, err := t.prepared(ctx, findQuerySQL)
	if err != nil {
		return nil, err
	}
	var row *sql.Row
	if s != nil {
		row = s.QueryRowContext(ctx, id)
	} else {
		row = t.tx.QueryRowContext(ctx, t.db.rebind(findQuerySQL), id)
	}
	rec, err := scanQuery(row)
	if err != nil {
		return nil, notFound(err, "query %d not found", id)
	}
	return rec, nil
}

const findQuerySQL = `SELECT ` + queryColumns + ` FROM queries WHERE id = ?`

func (t *tx) FindQueries(ctx context.Context, f broker.QueryFilter, member string) ([]*broker.Query, int, error) {
	var w where
	if member != "" {
		w.add(`project_id IN (SELECT project_id FROM project_members WHERE subject = ?)`, member)
	}
	if f.ProjectID != nil {
		w.add(`project_id = ?`, *f.ProjectID)
	}
	if f.SubmittedBy != nil {
		w.add(`submitted_by = ?`, *f.SubmittedBy)
	}
	if f.UpdatedAfter != nil {
		w.add(`updated_at > ?`, micros(*f.UpdatedAfter))
	}
	var sel where // what Status and UpdatedBefore select, widened by OrIDs
	if f.Status != nil {
		sel.add(`status = ?`, string(*f.Status))
	}
	if f.UpdatedBefore != nil {
		sel.add(`updated_at <= ?`, micros(*f.UpdatedBefore))
	}
	switch {
	case len(f.OrIDs) > 0 && len(sel.conds) > 0:
		ids := strings.TrimSuffix(strings.Repeat("?, ", len(f.OrIDs)), ", ")
		args := sel.args
		for _, id := range f.OrIDs {
			args = append(args, id)
		}
		w.add(`((`+strings.Join(sel.conds, " AND ")+`) OR id IN (`+ids+`))`, args...)
	case len(sel.conds) > 0:
		w.conds, w.args = append(w.conds, sel.conds...), append(w.args, sel.args...)
	}
	n, rows, err := t.page(ctx, `queries`, `SELECT `+queryColumns+` FROM queries`, w, `id`, f.Limit, f.Offset)
	if err != nil {
		return nil, 0, err
	}
	qs, err := collect(rows, func(sc scanner) (*broker.Query, error) {
		rec, err := scanQuery(sc)
		if err != nil {
			return nil, err
		}
		return rec.Query, nil
	})
	return qs, n, err
}

func (t *tx) AddEvent(ctx context.Context, queryID int64, e broker.Event) error {
	_, err := t.exec(ctx, `INSERT INTO query_events (query_id, from_status, to_status, actor, comment, at) VALUES (?, ?, ?, ?, ?, ?)`,
		queryID, string(e.From), string(e.To), e.Actor, e.Comment, micros(e.At))
	return err
}

func (t *tx) FindEvents(ctx context.Context, queryID int64) ([]broker.Event, error) {
	rows, err := t.query(ctx, `SELECT from_status, to_status, actor, comment, at FROM query_events WHERE query_id = ? ORDER BY id`, queryID)
	if err != nil {
		return nil, err
	}
	return collect(rows, func(sc scanner) (broker.Event, error) {
		var e broker.Event
		var from, to string
		var at int64
		err := sc.Scan(&from, &to, &e.Actor, &e.Comment, &at)
		e.From, e.To, e.At = broker.Status(from), broker.Status(to), fromMicros(at)
		return e, err
	})
}

func (t *tx) FindRepeat(ctx context.Context, projectID int64, normalizedHash string) (*broker.SimilarQuery, error) {
	var s broker.SimilarQuery
	var status string
	err := t.queryRow(ctx, `SELECT id, sql_text, status FROM queries WHERE project_id = ? AND normalized_hash = ?
		ORDER BY CASE WHEN status = 'released' THEN 0 ELSE 1 END, id LIMIT 1`,
		[]any{projectID, normalizedHash}, &s.ID, &s.SQL, &status)
	s.Status = broker.Status(status)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	} else if err != nil {
		return nil, err
	}
	return &s, nil
}

// matchKeysPerStatement is the IN list's length in findDifferencingSQL: one
// statement text, so one prepared statement, serves any number of keys
// (short lists repeat their last key).
const matchKeysPerStatement = 8

var findDifferencingSQL = `SELECT s.latest_query_id FROM predicate_set_keys k
	JOIN predicate_sets s ON s.project_id = k.project_id AND s.set_key = k.set_key
	WHERE k.project_id = ? AND k.set_key <> ? AND k.match_key IN (?` + strings.Repeat(`, ?`, matchKeysPerStatement-1) + `)
	ORDER BY s.latest_query_id DESC LIMIT 1`

func (t *tx) FindDifferencing(ctx context.Context, projectID int64, setKey string, keys []string) (*broker.SimilarQuery, error) {
	var best int64
	args := make([]any, 2+matchKeysPerStatement)
	args[0], args[1] = projectID, setKey
	for len(keys) > 0 {
		n := min(len(keys), matchKeysPerStatement)
		for i := range matchKeysPerStatement {
			args[2+i] = keys[min(i, n-1)]
		}
		keys = keys[n:]
		var id int64
		err := t.queryRow(ctx, findDifferencingSQL, args, &id)
		if errors.Is(err, sql.ErrNoRows) {
			continue
		} else if err != nil {
			return nil, err
		}
		best = max(best, id)
	}
	if best == 0 {
		return nil, nil
	}
	s := broker.SimilarQuery{ID: best}
	var preds, status string
	err := t.queryRow(ctx, `SELECT sql_text, predicates, status FROM queries WHERE id = ?`, []any{best}, &s.SQL, &preds, &status)
	if err != nil {
		return nil, notFound(err, "query %d not found", best)
	}
	s.Status = broker.Status(status)
	return &s, fromJSON(preds, &s.Predicates)
}

func (t *tx) NextLeasable(ctx context.Context, siteID string, now time.Time) (int64, error) {
	var id int64
	err := t.queryRow(ctx, `SELECT id FROM queries
		WHERE dataset IN (SELECT dataset FROM catalogs WHERE site_id = ?)
		AND (status = 'approved' OR (status = 'running' AND lease_expires_at < ?))
		ORDER BY id LIMIT 1`+t.db.d.SkipLocked, []any{siteID, micros(now)}, &id)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil
	}
	return id, err
}

// ---- outputs ----

// PutOutput stores an output. A failure notice (Result nil) is stored with
// the result "null": its code and detail are the query's failure_code and
// failure_message, which FindOutput reads back into Failure.
func (t *tx) PutOutput(ctx context.Context, o *broker.Output) error {
	if (o.Result == nil) == (o.Failure == nil) {
		return errors.New("an output is either a result or a failure notice")
	}
	body, err := toJSON(o.Result)
	if err != nil {
		return err
	}
	_, err = t.exec(ctx, `INSERT INTO outputs (query_id, site_id, result, created_at, released_at) VALUES (?, ?, ?, ?, 0)`,
		o.QueryID, o.SiteID, body, micros(o.CreatedAt))
	return err
}

func (t *tx) FindOutput(ctx context.Context, queryID int64) (*broker.Output, error) {
	o := &broker.Output{QueryID: queryID}
	var body, code, detail string
	var created, released int64
	err := t.queryRow(ctx, `SELECT o.site_id, o.result, o.created_at, o.released_at, q.failure_code, q.failure_message
		FROM outputs o JOIN queries q ON q.id = o.query_id WHERE o.query_id = ?`, []any{queryID},
		&o.SiteID, &body, &created, &released, &code, &detail)
	if err != nil {
		return nil, notFound(err, "query %d has no output", queryID)
	}
	if body == "null" {
		o.Failure = &broker.Failure{Code: code, Detail: detail}
	} else if err := fromJSON(body, &o.Result); err != nil {
		return nil, err
	}
	o.CreatedAt = fromMicros(created)
	if released != 0 {
		r := fromMicros(released)
		o.ReleasedAt = &r
	}
	return o, nil
}

func (t *tx) SetOutputReleased(ctx context.Context, queryID int64, at time.Time) error {
	res, err := t.exec(ctx, `UPDATE outputs SET released_at = ? WHERE query_id = ?`, micros(at), queryID)
	if err != nil {
		return err
	}
	if n, err := res.RowsAffected(); err != nil {
		return err
	} else if n == 0 {
		return broker.Errorf(broker.ENOTFOUND, "query %d has no output", queryID)
	}
	return nil
}

// ---- audit ----

func (t *tx) LockAuditHead(ctx context.Context) (int64, string, error) {
	if t.db.d.AuditLock != "" {
		if _, err := t.exec(ctx, t.db.d.AuditLock); err != nil {
			return 0, "", err
		}
	}
	return t.AuditHead(ctx)
}

func (t *tx) AuditHead(ctx context.Context) (int64, string, error) {
	var seq int64
	var hash string
	err := t.queryRow(ctx, `SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1`, nil, &seq, &hash)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, "", nil
	}
	return seq, hash, err
}

func (t *tx) InsertAudit(ctx context.Context, e *broker.AuditEntry) error {
	_, err := t.exec(ctx, `INSERT INTO audit_log (seq, at, actor, action, object, detail, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
		e.Seq, micros(e.At), e.Actor, e.Action, e.Object, e.Detail, e.PrevHash, e.Hash)
	return err
}

func scanAudit(rows *sql.Rows) ([]*broker.AuditEntry, error) {
	return collect(rows, func(sc scanner) (*broker.AuditEntry, error) {
		var e broker.AuditEntry
		var at int64
		err := sc.Scan(&e.Seq, &at, &e.Actor, &e.Action, &e.Object, &e.Detail, &e.PrevHash, &e.Hash)
		e.At = fromMicros(at)
		return &e, err
	})
}

const auditColumns = `seq, at, actor, action, object, detail, prev_hash, hash`

func (t *tx) FindAuditEntries(ctx context.Context, f broker.AuditFilter) ([]*broker.AuditEntry, int, error) {
	var w where
	if f.Actor != nil {
		w.add(`actor = ?`, *f.Actor)
	}
	if f.Action != nil {
		w.add(`action = ?`, *f.Action)
	}
	if f.Object != nil {
		w.add(`object = ?`, *f.Object)
	}
	if f.AfterSeq != nil {
		w.add(`seq > ?`, *f.AfterSeq)
	}
	n, rows, err := t.page(ctx, `audit_log`, `SELECT `+auditColumns+` FROM audit_log`, w, `seq`, f.Limit, f.Offset)
	if err != nil {
		return nil, 0, err
	}
	es, err := scanAudit(rows)
	return es, n, err
}

func (t *tx) ScanAudit(ctx context.Context, after int64, limit int) ([]*broker.AuditEntry, error) {
	rows, err := t.query(ctx, `SELECT `+auditColumns+` FROM audit_log WHERE seq > ? ORDER BY seq LIMIT ?`, after, limit)
	if err != nil {
		return nil, err
	}
	return scanAudit(rows)
}

// ---- register ----

func (t *tx) Register(ctx context.Context) ([]*broker.RegisterEntry, error) {
	rows, err := t.query(ctx, `SELECT p.id, p.title, p.organisation, p.purpose, p.lawful_basis, p.starts_at, p.expires_at, p.status,
		(SELECT COUNT(*) FROM queries q WHERE q.project_id = p.id AND q.status = 'released'),
		(SELECT COALESCE(SUM(q.cost_epsilon), 0) FROM queries q WHERE q.project_id = p.id AND q.ledger = 'charged')
		FROM projects p ORDER BY p.id`)
	if err != nil {
		return nil, err
	}
	return collect(rows, func(sc scanner) (*broker.RegisterEntry, error) {
		var r broker.RegisterEntry
		var starts, expires int64
		var status string
		err := sc.Scan(&r.ProjectID, &r.Title, &r.Organisation, &r.Purpose, &r.LawfulBasis, &starts, &expires, &status,
			&r.ReleasedQueries, &r.EpsilonSpent)
		r.StartsAt, r.ExpiresAt, r.Status = fromMicros(starts), fromMicros(expires), broker.ProjectStatus(status)
		return &r, err
	})
}

// ---- web sessions ----

func (t *tx) PutSession(ctx context.Context, s *broker.Session) error {
	u, err := toJSON(s.User)
	if err != nil {
		return err
	}
	_, err = t.exec(ctx, `INSERT INTO web_sessions (id_hash, subject, user_json, token_hash, created_at, expires_at)
		VALUES (?, ?, ?, ?, ?, ?)`,
		s.IDHash, s.User.Subject, u, s.TokenHash, micros(s.CreatedAt), micros(s.ExpiresAt))
	return err
}

func (t *tx) FindSession(ctx context.Context, idHash string) (*broker.Session, error) {
	s := broker.Session{IDHash: idHash}
	var u string
	var created, expires int64
	err := t.queryRow(ctx, `SELECT user_json, token_hash, created_at, expires_at FROM web_sessions WHERE id_hash = ?`,
		[]any{idHash}, &u, &s.TokenHash, &created, &expires)
	if err != nil {
		return nil, notFound(err, "session not found")
	}
	if err := fromJSON(u, &s.User); err != nil {
		return nil, err
	}
	s.CreatedAt, s.ExpiresAt = fromMicros(created), fromMicros(expires)
	return &s, nil
}

func (t *tx) DeleteSession(ctx context.Context, idHash string) error {
	_, err := t.exec(ctx, `DELETE FROM web_sessions WHERE id_hash = ?`, idHash)
	return err
}

func (t *tx) DeleteExpiredSessions(ctx context.Context, before time.Time) (int64, error) {
	res, err := t.exec(ctx, `DELETE FROM web_sessions WHERE expires_at <= ?`, micros(before))
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

// ---- token buckets ----

func (t *tx) LockBucket(ctx context.Context, name string, full float64, now time.Time) (float64, time.Time, error) {
	// Two transactions creating one bucket: the second waits for the first
	// and inserts nothing, then locks the row the first committed.
	if _, err := t.exec(ctx, `INSERT INTO rate_buckets (name, tokens, updated_at) VALUES (?, ?, ?) ON CONFLICT (name) DO NOTHING`,
		name, full, micros(now)); err != nil {
		return 0, time.Time{}, err
	}
	var tokens float64
	var at int64
	if err := t.queryRow(ctx, `SELECT tokens, updated_at FROM rate_buckets WHERE name = ?`+t.db.d.ForUpdate, []any{name}, &tokens, &at); err != nil {
		return 0, time.Time{}, err
	}
	return tokens, fromMicros(at), nil
}

func (t *tx) SetBucket(ctx context.Context, name string, tokens float64, at time.Time) error {
	_, err := t.exec(ctx, `UPDATE rate_buckets SET tokens = ?, updated_at = ? WHERE name = ?`, tokens, micros(at), name)
	return err
}

func (t *tx) DeleteIdleBuckets(ctx context.Context, before time.Time) error {
	_, err := t.exec(ctx, `DELETE FROM rate_buckets WHERE updated_at < ?`, micros(before))
	return err
}
