package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"time"

	"github.com/nhs-tre/tre/broker"
)

// ---- federated queries' jobs and per-site ledgers (issue 21) ----

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

func (t *tx) PutJob(ctx context.Context, j *broker.QueryJob) error {
	_, err := t.exec(ctx, `INSERT INTO query_jobs (query_id, site_id, project_id, status, attempts, lease_token_hash,
		lease_expires_at, ledger, partial, failure_code, failure_message, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		j.QueryID, j.SiteID, j.ProjectID, string(j.Status), j.Attempts, j.LeaseTokenHash, micros(j.LeaseExpiresAt),
		string(j.Ledger), string(j.Partial), j.FailureCode, j.FailureDetail, micros(j.UpdatedAt))
	return err
}

func (t *tx) UpdateJob(ctx context.Context, j *broker.QueryJob) error {
	res, err := t.exec(ctx, `UPDATE query_jobs SET status = ?, attempts = ?, lease_token_hash = ?, lease_expires_at = ?,
		ledger = ?, partial = ?, failure_code = ?, failure_message = ?, updated_at = ? WHERE query_id = ? AND site_id = ?`,
		string(j.Status), j.Attempts, j.LeaseTokenHash, micros(j.LeaseExpiresAt), string(j.Ledger), string(j.Partial),
		j.FailureCode, j.FailureDetail, micros(j.UpdatedAt), j.QueryID, j.SiteID)
	if err != nil {
		return err
	}
	if n, err := res.RowsAffected(); err != nil {
		return err
	} else if n == 0 {
		return broker.Errorf(broker.ENOTFOUND, "query %d has no job at site %q", j.QueryID, j.SiteID)
	}
	return nil
}

func (t *tx) FindJobs(ctx context.Context, queryID int64) ([]*broker.QueryJob, error) {
	rows, err := t.query(ctx, `SELECT query_id, site_id, project_id, status, attempts, lease_token_hash, lease_expires_at,
		ledger, partial, failure_code, failure_message, updated_at FROM query_jobs WHERE query_id = ? ORDER BY site_id`, queryID)
	if err != nil {
		return nil, err
	}
	return collect(rows, func(sc scanner) (*broker.QueryJob, error) {
		var j broker.QueryJob
		var status, ledger, partial string
		var expires, updated int64
		err := sc.Scan(&j.QueryID, &j.SiteID, &j.ProjectID, &status, &j.Attempts, &j.LeaseTokenHash, &expires,
			&ledger, &partial, &j.FailureCode, &j.FailureDetail, &updated)
		j.Status, j.Ledger = broker.JobStatus(status), broker.LedgerState(ledger)
		j.LeaseExpiresAt, j.UpdatedAt = fromMicros(expires), fromMicros(updated)
		if partial != "" {
			j.Partial = []byte(partial)
		}
		return &j, err
	})
}

func (t *tx) NextLeasableJob(ctx context.Context, siteID string, now time.Time) (int64, error) {
	var id int64
	err := t.queryRow(ctx, `SELECT id FROM queries WHERE status IN ('approved', 'running') AND sites > 0
		AND id IN (SELECT query_id FROM query_jobs WHERE site_id = ?
			AND (status = 'pending' OR (status = 'running' AND lease_expires_at < ?)))
		ORDER BY id LIMIT 1`+t.db.d.SkipLocked, []any{siteID, micros(now)}, &id)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil
	}
	return id, err
}

func (t *tx) FindOverdue(ctx context.Context, now time.Time, limit int) ([]int64, error) {
	rows, err := t.query(ctx, `SELECT id FROM queries WHERE deadline_at > 0 AND deadline_at < ?
		AND status IN ('approved', 'running') ORDER BY id LIMIT ?`, micros(now), limit)
	if err != nil {
		return nil, err
	}
	return collect(rows, func(sc scanner) (int64, error) {
		var id int64
		err := sc.Scan(&id)
		return id, err
	})
}

func (t *tx) FindSiteLedgers(ctx context.Context, projectID int64) ([]broker.SiteLedger, error) {
	rows, err := t.query(ctx, `SELECT j.site_id,
		SUM(CASE WHEN j.ledger = 'charged' THEN q.cost_epsilon ELSE 0 END),
		SUM(CASE WHEN j.ledger = 'reserved' THEN q.cost_epsilon ELSE 0 END),
		SUM(CASE WHEN j.ledger = 'charged' THEN q.cost_delta ELSE 0 END),
		SUM(CASE WHEN j.ledger = 'reserved' THEN q.cost_delta ELSE 0 END)
		FROM query_jobs j JOIN queries q ON q.id = j.query_id
		WHERE j.project_id = ? GROUP BY j.site_id ORDER BY j.site_id`, projectID)
	if err != nil {
		return nil, err
	}
	return collect(rows, func(sc scanner) (broker.SiteLedger, error) {
		var l broker.SiteLedger
		err := sc.Scan(&l.SiteID, &l.EpsilonSpent, &l.EpsilonReserved, &l.DeltaSpent, &l.DeltaReserved)
		return l, err
	})
}
