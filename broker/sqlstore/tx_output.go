package sqlstore

import (
	"context"
	"errors"
	"time"

	"github.com/nhs-tre/tre/broker"
)

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
