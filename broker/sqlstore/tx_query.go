package sqlstore

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/nhs-tre/tre/broker"
	"github.com/nhs-tre/tre/dp"
)

// ---- queries ----

// queryColumns are the columns scanQuery reads: everything but the
// predicates, which only the submission that computes them uses (the risk
// lookups have their own columns and tables). The rewritten SQL and the
// normalised text are in query_texts (FindRewritten).
const queryColumns = `id, project_id, dataset, sql_text, sql_hash, purpose, status, submitted_by, submitted_at, updated_at,
	cost_epsilon, cost_delta, accuracy, risk_flags, approved_by, attempts, failure_code,
	normalized_hash, shape_hash, ledger, lease_token_hash, lease_site, lease_expires_at, failure_message, codelists,
	sites, disjoint, ledger_factor, deadline_at`

// queryViewColumns are queryColumns without the six only the service's
// transitions read (the hashes, the ledger state and the lease): what
// ReadQuery, the frequent read of one query, scans (scanQueryView). Each
// column costs every read its name and type (modernc builds both per
// statement) and a scan.
const queryViewColumns = `id, project_id, dataset, sql_text, sql_hash, purpose, status, submitted_by, submitted_at, updated_at,
	cost_epsilon, cost_delta, accuracy, risk_flags, approved_by, attempts, failure_code,
	failure_message, codelists, sites, disjoint, ledger_factor, deadline_at`

func (db *DB) scanQuery(sc scanner) (*broker.QueryRecord, error) {
	return db.scanQueryColumns(sc, true)
}

// scanQueryView scans queryViewColumns: the record's NormalizedHash,
// ShapeHash, Ledger and lease fields stay empty.
func (db *DB) scanQueryView(sc scanner) (*broker.QueryRecord, error) {
	return db.scanQueryColumns(sc, false)
}

// scanQueryColumns scans queryColumns, or queryViewColumns unless full.
func (db *DB) scanQueryColumns(sc scanner, full bool) (*broker.QueryRecord, error) {
	q := &broker.Query{}
	rec := &broker.QueryRecord{Query: q}
	var status, accuracy, flags, ledger, codelists string
	var submitted, updated, expires, deadline int64
	var disjoint int
	dest := make([]any, 0, 29)
	dest = append(dest, &q.ID, &q.ProjectID, &q.Dataset, &q.SQL, &q.SQLHash, &q.Purpose, &status, &q.SubmittedBy,
		&submitted, &updated, &q.Cost.Epsilon, &q.Cost.Delta, &accuracy, &flags, &q.ApprovedBy, &q.Attempts, &q.FailureCode)
	if full {
		dest = append(dest, &rec.NormalizedHash, &rec.ShapeHash, &ledger, &rec.LeaseTokenHash, &rec.LeaseSite, &expires)
	}
	dest = append(dest, &q.FailureDetail, &codelists, &rec.Sites, &disjoint, &rec.LedgerFactor, &deadline)
	err := sc.Scan(dest...)
	if err != nil {
		return nil, err
	}
	q.Status = broker.Status(status)
	q.SubmittedAt, q.UpdatedAt = fromMicros(submitted), fromMicros(updated)
	rec.Disjoint, rec.DeadlineAt = disjoint != 0, fromMicros(deadline)
	q.Federation = broker.FederationOf(rec)
	if full {
		rec.LeaseExpiresAt, rec.Ledger = fromMicros(expires), broker.LedgerState(ledger)
	}
	q.Accuracy = []dp.Accuracy{}
	q.RiskFlags = []broker.RiskFlag{}
	if err := db.accuracy.decode(accuracy, &q.Accuracy); err != nil {
		return nil, err
	}
	if err := db.flags.decode(flags, &q.RiskFlags); err != nil {
		return nil, err
	}
	if err := db.codelists.decode(codelists, &q.Codelists); err != nil {
		return nil, err
	}
	return rec, nil
}

// insertQuerySQL inserts a query row; its 28 values are insertQueryArgs.
const insertQuerySQL = `INSERT INTO queries (project_id, dataset, sql_text, sql_hash, purpose, status, submitted_by,
		submitted_at, updated_at, cost_epsilon, cost_delta, accuracy, risk_flags, approved_by, attempts, failure_code,
		normalized_hash, shape_hash, predicates, ledger, lease_token_hash, lease_site, lease_expires_at, failure_message, codelists,
		sites, disjoint, ledger_factor)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`

// insertTextsSQL stores a query's rewritten SQL and normalised text.
const insertTextsSQL = `INSERT INTO query_texts (query_id, rewritten, normalized) VALUES (?, ?, ?)`

// createQueryCTESQL is CreateQuery in one statement where WITH may write
// (PostgreSQL): the query row, its texts, its first event and its
// predicate set, whose latest query becomes the new one (ids only grow,
// but concurrent transactions may commit out of order, hence GREATEST).
// created is whether the set is new: a row ON CONFLICT DO UPDATE inserted
// has no xmax yet, one it updated has this transaction's.
const createQueryCTESQL = `WITH q AS (` + insertQuerySQL + ` RETURNING id),
	t AS (INSERT INTO query_texts (query_id, rewritten, normalized) SELECT id, ?, ? FROM q),
	e AS (INSERT INTO query_events (query_id, from_status, to_status, actor, comment, at) SELECT id, ?, ?, ?, ?, ? FROM q),
	s AS (INSERT INTO predicate_sets (project_id, set_key, latest_query_id) SELECT ?, ?, id FROM q
		ON CONFLICT (project_id, set_key) DO UPDATE SET latest_query_id = GREATEST(predicate_sets.latest_query_id, excluded.latest_query_id)
		RETURNING xmax = 0 AS created)
	SELECT q.id, s.created FROM q, s`

func insertQueryArgs(rec *broker.QueryRecord) ([]any, error) {
	q := rec.Query
	accuracy, err := toJSON(q.Accuracy)
	if err != nil {
		return nil, err
	}
	flags, err := toJSON(q.RiskFlags)
	if err != nil {
		return nil, err
	}
	preds, err := toJSON(rec.Predicates)
	if err != nil {
		return nil, err
	}
	codelists := "[]"
	if len(q.Codelists) > 0 {
		if codelists, err = toJSON(q.Codelists); err != nil {
			return nil, err
		}
	}
	return []any{q.ProjectID, q.Dataset, q.SQL, q.SQLHash, q.Purpose, string(q.Status), q.SubmittedBy,
		micros(q.SubmittedAt), micros(q.UpdatedAt), q.Cost.Epsilon, q.Cost.Delta, accuracy, flags, q.ApprovedBy, q.Attempts,
		q.FailureCode, rec.NormalizedHash, rec.ShapeHash, preds, string(rec.Ledger), rec.LeaseTokenHash,
		rec.LeaseSite, micros(rec.LeaseExpiresAt), q.FailureDetail, codelists,
		rec.Sites, boolInt(rec.Disjoint), max(rec.LedgerFactor, 1)}, nil
}

func (t *tx) CreateQuery(ctx context.Context, rec *broker.QueryRecord, submitted broker.Event) error {
	q := rec.Query
	if rec.PredicateSet == "" {
		return errors.New("query record has no predicate set")
	}
	args, err := insertQueryArgs(rec)
	if err != nil {
		return err
	}
	if t.db.d.WritableCTE {
		e := submitted
		args = append(args, q.Rewritten, rec.Normalized,
			string(e.From), string(e.To), e.Actor, e.Comment, micros(e.At), q.ProjectID, rec.PredicateSet)
		var created bool
		if err := t.queryRow(ctx, createQueryCTESQL, args, &q.ID, &created); err != nil {
			return err
		}
		if err := t.putQueryCodelists(ctx, q); err != nil {
			return err
		}
		if !created {
			return nil
		}
		return t.putPredicateKeys(ctx, q.ProjectID, rec.PredicateSet, rec.PredicateKeys)
	}
	if err := t.queryRow(ctx, insertQuerySQL+` RETURNING id`, args, &q.ID); err != nil {
		return err
	}
	if _, err := t.exec(ctx, insertTextsSQL, q.ID, q.Rewritten, rec.Normalized); err != nil {
		return err
	}
	if err := t.AddEvent(ctx, q.ID, submitted); err != nil {
		return err
	}
	if err := t.putQueryCodelists(ctx, q); err != nil {
		return err
	}
	return t.putPredicateSet(ctx, q.ProjectID, q.ID, rec.PredicateSet, rec.PredicateKeys)
}

// putPredicateSet records that query id has the predicate set setKey: the
// set's latest query becomes id (ids only grow, but concurrent PostgreSQL
// transactions may commit out of order, hence the comparison), and a set
// seen for the first time gets its match keys.
func (t *tx) putPredicateSet(ctx context.Context, projectID, id int64, setKey string, keys []string) error {
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
	return t.putPredicateKeys(ctx, projectID, setKey, keys)
}

// putPredicateKeys stores a new predicate set's match keys, in one
// statement.
func (t *tx) putPredicateKeys(ctx context.Context, projectID int64, setKey string, keys []string) error {
	if len(keys) == 0 {
		return nil
	}
	args := make([]any, 0, 3*len(keys))
	for _, k := range keys {
		args = append(args, projectID, k, setKey)
	}
	_, err := t.exec(ctx, `INSERT INTO predicate_set_keys (project_id, match_key, set_key) VALUES (?, ?, ?)`+
		strings.Repeat(`, (?, ?, ?)`, len(keys)-1)+` ON CONFLICT (project_id, match_key, set_key) DO NOTHING`, args...)
	return err
}

// UpdateQuery writes the fields that change after submission; the SQL and
// its plan are immutable.
func (t *tx) UpdateQuery(ctx context.Context, rec *broker.QueryRecord) error {
	q := rec.Query
	res, err := t.exec(ctx, `UPDATE queries SET status = ?, updated_at = ?, approved_by = ?, attempts = ?, failure_code = ?,
		ledger = ?, lease_token_hash = ?, lease_site = ?, lease_expires_at = ?, failure_message = ?,
		ledger_factor = ?, deadline_at = ? WHERE id = ?`,
		string(q.Status), micros(q.UpdatedAt), q.ApprovedBy, q.Attempts, q.FailureCode, string(rec.Ledger),
		rec.LeaseTokenHash, rec.LeaseSite, micros(rec.LeaseExpiresAt), q.FailureDetail,
		max(rec.LedgerFactor, 1), micros(rec.DeadlineAt), q.ID)
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
	rec, err := t.db.scanQuery(row)
	if err != nil {
		return nil, notFound(err, "query %d not found", id)
	}
	return rec, nil
}

const findQuerySQL = `SELECT ` + queryColumns + ` FROM queries WHERE id = ?`

// FindRewritten returns the rewritten SQL of the queries with the given
// ids, by id; ids without a query are left out.
func (t *tx) FindRewritten(ctx context.Context, ids []int64) (map[int64]string, error) {
	out := make(map[int64]string, len(ids))
	if len(ids) == 0 {
		return out, nil
	}
	args := make([]any, len(ids))
	for i, id := range ids {
		args[i] = id
	}
	q := `SELECT query_id, rewritten FROM query_texts WHERE query_id IN (?` + strings.Repeat(`, ?`, len(ids)-1) + `)`
	run := t.dynamic
	if len(ids) == 1 {
		run = t.query // the single query's read: one statement text, prepared
	}
	rows, err := run(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	for rows.Next() {
		var id int64
		var text string
		if err := rows.Scan(&id, &text); err != nil {
			return nil, err
		}
		out[id] = text
	}
	return out, rows.Err()
}

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
		rec, err := t.db.scanQuery(sc)
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

// findRepeatWhere selects the project's earliest released query with a
// normalised hash, else its earliest one (arguments: project, hash,
// project, hash), in two index probes: queries_released (migration 10)
// holds only released queries, so the first needs no row of an earlier
// unreleased repeat, and queries_normalized's first entry is the earliest.
// The single ORDER BY it replaces read every repeat's row.
const findRepeatWhere = ` FROM queries q WHERE q.id = COALESCE(
		(SELECT r.id FROM queries r WHERE r.project_id = ? AND r.normalized_hash = ? AND r.status = 'released' ORDER BY r.id LIMIT 1),
		(SELECT a.id FROM queries a WHERE a.project_id = ? AND a.normalized_hash = ? ORDER BY a.id LIMIT 1))`

// matchKeysPerStatement is the IN list's length in findDifferencingSQL: one
// statement text, so one prepared statement, serves any number of keys
// (short lists repeat their last key).
const matchKeysPerStatement = 8

// findDifferencingSQL is the most recent query of a project whose predicate
// set shares a match key with the (up to matchKeysPerStatement) keys given
// and is not the set given.
var findDifferencingSQL = `SELECT s.latest_query_id FROM predicate_set_keys k
	JOIN predicate_sets s ON s.project_id = k.project_id AND s.set_key = k.set_key
	WHERE k.project_id = ? AND k.set_key <> ? AND k.match_key IN (?` + strings.Repeat(`, ?`, matchKeysPerStatement-1) + `)
	ORDER BY s.latest_query_id DESC LIMIT 1`

// findSimilarSQL is the repeat (kind 'r') and the differencing candidate
// of the first keys (kind 'd', with its predicates) in one statement.
var findSimilarSQL = `SELECT 'r', q.id, q.sql_text, q.status, q.predicates` + findRepeatWhere + `
	UNION ALL
	SELECT 'd', q.id, q.sql_text, q.status, q.predicates FROM queries q WHERE q.id = (` + findDifferencingSQL + `)`

// FindSimilar returns the project's repeat of normalizedHash and its
// differencing candidate for the predicate set's keys (nil when none), in
// one statement for up to matchKeysPerStatement keys (one more per further
// matchKeysPerStatement, and one to read a candidate found by those).
func (t *tx) FindSimilar(ctx context.Context, projectID int64, normalizedHash, setKey string, keys []string) (repeat, differencing *broker.SimilarQuery, err error) {
	if len(keys) == 0 {
		var s broker.SimilarQuery
		var status string
		err := t.queryRow(ctx, `SELECT q.id, q.sql_text, q.status`+findRepeatWhere, []any{projectID, normalizedHash, projectID, normalizedHash}, &s.ID, &s.SQL, &status)
		if errors.Is(err, sql.ErrNoRows) {
			return nil, nil, nil
		} else if err != nil {
			return nil, nil, err
		}
		s.Status = broker.Status(status)
		return &s, nil, nil
	}
	args := make([]any, 6+matchKeysPerStatement)
	args[0], args[1], args[2], args[3] = projectID, normalizedHash, projectID, normalizedHash
	args[4], args[5] = projectID, setKey
	n := min(len(keys), matchKeysPerStatement)
	for i := range matchKeysPerStatement {
		args[6+i] = keys[min(i, n-1)]
	}
	rows, err := t.query(ctx, findSimilarSQL, args...)
	if err != nil {
		return nil, nil, err
	}
	_, err = collect(rows, func(sc scanner) (struct{}, error) {
		var kind, status, preds string
		s := &broker.SimilarQuery{}
		if err := sc.Scan(&kind, &s.ID, &s.SQL, &status, &preds); err != nil {
			return struct{}{}, err
		}
		s.Status = broker.Status(status)
		if kind == "d" {
			differencing = s
			return struct{}{}, fromJSON(preds, &s.Predicates)
		}
		repeat = s
		return struct{}{}, nil
	})
	if err != nil {
		return nil, nil, err
	}
	// Keys beyond the first statement's, matchKeysPerStatement at a time.
	best := int64(0)
	if differencing != nil {
		best = differencing.ID
	}
	first := best
	for keys = keys[n:]; len(keys) > 0; {
		n := min(len(keys), matchKeysPerStatement)
		dargs := args[4:]
		for i := range matchKeysPerStatement {
			dargs[2+i] = keys[min(i, n-1)]
		}
		keys = keys[n:]
		var id int64
		err := t.queryRow(ctx, findDifferencingSQL, dargs, &id)
		if errors.Is(err, sql.ErrNoRows) {
			continue
		} else if err != nil {
			return nil, nil, err
		}
		best = max(best, id)
	}
	if best == first {
		return repeat, differencing, nil
	}
	s := broker.SimilarQuery{ID: best}
	var preds, status string
	err = t.queryRow(ctx, `SELECT sql_text, predicates, status FROM queries WHERE id = ?`, []any{best}, &s.SQL, &preds, &status)
	if err != nil {
		return nil, nil, notFound(err, "query %d not found", best)
	}
	s.Status = broker.Status(status)
	return repeat, &s, fromJSON(preds, &s.Predicates)
}

func (t *tx) NextLeasable(ctx context.Context, siteID string, now time.Time) (int64, error) {
	var id int64
	err := t.queryRow(ctx, `SELECT id FROM queries
		WHERE dataset IN (SELECT c.dataset FROM catalogs c WHERE c.site_id = ? AND NOT EXISTS (SELECT 1 FROM catalogs e
			WHERE e.dataset = c.dataset AND (e.since < c.since OR e.since = c.since AND e.site_id < c.site_id)))
		AND sites = 0
		AND (status = 'approved' OR (status = 'running' AND lease_expires_at < ?))
		ORDER BY id LIMIT 1`+t.db.d.SkipLocked, []any{siteID, micros(now)}, &id)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil
	}
	return id, err
}

// readQuerySQL is ReadQuery's statement: the query's row, whether the
// subject is a member of its project, its events as JSON (Dialect.EventsJSON)
// and, in readQueryTextSQL, its rewritten SQL.
const readQuerySQL = `SELECT ` + queryViewColumns + `,
	EXISTS (SELECT 1 FROM project_members m WHERE m.project_id = q.project_id AND m.subject = ?), %s
	FROM queries q WHERE q.id = ?`

const readQueryTextSQL = `SELECT ` + queryViewColumns + `,
	EXISTS (SELECT 1 FROM project_members m WHERE m.project_id = q.project_id AND m.subject = ?), %s,
	COALESCE((SELECT t.rewritten FROM query_texts t WHERE t.query_id = q.id), '')
	FROM queries q WHERE q.id = ?`

// ReadQuery reads query id, its events and whether subject is a member of
// its project in one statement outside any transaction, on the read pool:
// one statement sees one consistent state, so it needs no BEGIN and
// COMMIT. With rewritten the query carries its rewritten SQL.
func (db *DB) ReadQuery(ctx context.Context, id int64, subject string, rewritten bool) (*broker.QueryRecord, []broker.Event, bool, error) {
	q := db.readQuery
	if rewritten {
		q = db.readQueryText
	}
	s, done := db.outside(true, q)
	defer done()
	row := s.QueryRowContext(ctx, subject, id)
	var member bool
	var events, text string
	rec, err := db.scanQueryView(scannerFunc(func(dest ...any) error {
		dest = append(dest, &member, &events)
		if rewritten {
			dest = append(dest, &text)
		}
		return row.Scan(dest...)
	}))
	if err != nil {
		return nil, nil, false, db.translate(notFound(err, "query %d not found", id))
	}
	rec.Query.Rewritten = text
	evs, err := eventsFromJSON(events)
	if err != nil {
		return nil, nil, false, err
	}
	return rec, evs, member, nil
}

// eventsFromJSON decodes Dialect.EventsJSON's array of [from_status,
// to_status, actor, comment, at] arrays.
func eventsFromJSON(s string) ([]broker.Event, error) {
	var raw [][5]any
	if err := json.Unmarshal([]byte(s), &raw); err != nil {
		return nil, fmt.Errorf("decode events: %w", err)
	}
	evs := make([]broker.Event, len(raw))
	for i, r := range raw {
		from, ok1 := r[0].(string)
		to, ok2 := r[1].(string)
		actor, ok3 := r[2].(string)
		comment, ok4 := r[3].(string)
		at, ok5 := r[4].(float64) // Unix microseconds: exact below 2^53
		if !ok1 || !ok2 || !ok3 || !ok4 || !ok5 || at != math.Trunc(at) || at < 0 || at >= 1<<53 {
			return nil, fmt.Errorf("decode events: event %d is not [from, to, actor, comment, at]", i)
		}
		evs[i] = broker.Event{From: broker.Status(from), To: broker.Status(to), Actor: actor, Comment: comment, At: fromMicros(int64(at))}
	}
	return evs, nil
}
