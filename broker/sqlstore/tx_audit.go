package sqlstore

import (
	"context"
	"database/sql"
	"errors"

	"github.com/nhs-tre/tre/broker"
)

// ---- audit ----

func (t *tx) LockAuditHead(ctx context.Context) (int64, string, error) {
	if t.db.d.LockAuditHead == "" {
		return t.AuditHead(ctx)
	}
	var seq int64
	var hash string
	err := t.queryRow(ctx, t.db.d.LockAuditHead, nil, &seq, &hash)
	return seq, hash, err
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
		(SELECT COALESCE(SUM(q.cost_epsilon * q.ledger_factor), 0) FROM queries q WHERE q.project_id = p.id AND q.ledger = 'charged')
		FROM projects p ORDER BY p.id`)
	if err != nil {
		return nil, err
	}
	entries, err := collect(rows, func(sc scanner) (*broker.RegisterEntry, error) {
		var r broker.RegisterEntry
		var starts, expires int64
		var status string
		err := sc.Scan(&r.ProjectID, &r.Title, &r.Organisation, &r.Purpose, &r.LawfulBasis, &starts, &expires, &status,
			&r.ReleasedQueries, &r.EpsilonSpent)
		r.StartsAt, r.ExpiresAt, r.Status = fromMicros(starts), fromMicros(expires), broker.ProjectStatus(status)
		return &r, err
	})
	if err != nil {
		return nil, err
	}
	return entries, t.registerSites(ctx, entries)
}

// registerSites sets each entry's sites: those whose data a released query
// of the project used (a single-site query's site, or each site whose part
// of a federated query was combined).
func (t *tx) registerSites(ctx context.Context, entries []*broker.RegisterEntry) error {
	rows, err := t.query(ctx, `SELECT q.project_id, o.site_id FROM queries q JOIN outputs o ON o.query_id = q.id
		WHERE q.status = 'released' AND q.sites = 0
		UNION SELECT q.project_id, j.site_id FROM queries q JOIN query_jobs j ON j.query_id = q.id
		WHERE q.status = 'released' AND j.status = 'done' ORDER BY 1, 2`)
	if err != nil {
		return err
	}
	type use struct {
		project int64
		site    string
	}
	uses, err := collect(rows, func(sc scanner) (use, error) {
		var u use
		err := sc.Scan(&u.project, &u.site)
		return u, err
	})
	if err != nil {
		return err
	}
	byID := make(map[int64]*broker.RegisterEntry, len(entries))
	for _, e := range entries {
		byID[e.ProjectID] = e
	}
	for _, u := range uses {
		if e := byID[u.project]; e != nil && u.site != "" {
			e.Sites = append(e.Sites, u.site)
		}
	}
	return nil
}
