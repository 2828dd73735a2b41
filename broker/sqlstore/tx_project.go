package sqlstore

import (
	"context"
	"database/sql"

	"github.com/nhs-tre/tre/broker"
	"github.com/nhs-tre/tre/dp"
)

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

// LockProjectRow locks and reads the project's row in one statement; its
// Budget stays zero (the ledger is not read: a sum taken before the lock
// was granted could be stale).
func (t *tx) LockProjectRow(ctx context.Context, id int64) (*broker.Project, error) {
	ctx = t.sctx(ctx)
	var row *sql.Row
	if s, err := t.prepared(ctx, lockProjectRowSQL(t.db.d)); err != nil {
		return nil, err
	} else if s != nil {
		row = s.QueryRowContext(ctx, id)
	} else {
		row = t.tx.QueryRowContext(ctx, t.db.rebind(lockProjectRowSQL(t.db.d)), id)
	}
	p, err := scanProject(row)
	if err != nil {
		return nil, notFound(err, "project %d not found", id)
	}
	p.Budget = broker.Budget{}
	return p, nil
}

// lockProjectRowSQL selects projectColumns without the ledger's sums.
func lockProjectRowSQL(d Dialect) string {
	return `SELECT p.id, p.title, p.organisation, p.purpose, p.lawful_basis, p.data_sharing_agreement, p.members, p.datasets,
	p.epsilon_budget, p.delta_budget, p.starts_at, p.expires_at, p.status, p.created_by, p.created_at, 0, 0, 0, 0
	FROM projects p WHERE p.id = ?` + d.ForUpdate
}

// projectColumns selects a project and its ledger totals from the
// alias-b subquery.
const projectColumns = `p.id, p.title, p.organisation, p.purpose, p.lawful_basis, p.data_sharing_agreement, p.members, p.datasets,
	p.epsilon_budget, p.delta_budget, p.starts_at, p.expires_at, p.status, p.created_by, p.created_at,
	COALESCE(b.eps_spent, 0), COALESCE(b.eps_reserved, 0), COALESCE(b.delta_spent, 0), COALESCE(b.delta_reserved, 0)`

// ledgerTotals sums the budget ledger per project from query states.
const ledgerTotals = `SELECT project_id,
	SUM(CASE WHEN ledger = 'charged' THEN cost_epsilon * ledger_factor ELSE 0 END) AS eps_spent,
	SUM(CASE WHEN ledger = 'reserved' THEN cost_epsilon * ledger_factor ELSE 0 END) AS eps_reserved,
	SUM(CASE WHEN ledger = 'charged' THEN cost_delta * ledger_factor ELSE 0 END) AS delta_spent,
	SUM(CASE WHEN ledger = 'reserved' THEN cost_delta * ledger_factor ELSE 0 END) AS delta_reserved
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

func (t *tx) IsMember(ctx context.Context, projectID int64, subject string) (bool, error) {
	var n int
	err := t.queryRow(ctx, `SELECT COUNT(*) FROM project_members WHERE project_id = ? AND subject = ?`, []any{projectID, subject}, &n)
	return n > 0, err
}
