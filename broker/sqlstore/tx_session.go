package sqlstore

import (
	"context"
	"fmt"
	"time"

	"github.com/nhs-tre/tre/broker"
)

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

func (t *tx) DeleteExpiredSessions(ctx context.Context, before time.Time, limit int) (int64, error) {
	// A bounded batch through the expires_at index: one statement never
	// deletes (and locks) more than limit rows.
	res, err := t.exec(ctx, `DELETE FROM web_sessions WHERE id_hash IN
		(SELECT id_hash FROM web_sessions WHERE expires_at <= ? ORDER BY expires_at LIMIT ?)`, micros(before), limit)
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

func (t *tx) TrimSessions(ctx context.Context, subject string, keep int) (int64, error) {
	res, err := t.exec(ctx, `DELETE FROM web_sessions WHERE subject = ? AND id_hash NOT IN
		(SELECT id_hash FROM web_sessions WHERE subject = ? ORDER BY created_at DESC, id_hash LIMIT ?)`, subject, subject, keep)
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

// ---- token buckets ----

func (t *tx) LockBucket(ctx context.Context, name string, full float64, now time.Time) (float64, time.Time, error) {
	// One statement creates the bucket if need be and locks and reads it:
	// DO UPDATE locks the row (a second transaction creating the same
	// bucket waits for the first, then updates the row it committed) and
	// RETURNING reads it as locked. The update writes what is there.
	var tokens float64
	var at int64
	if err := t.queryRow(ctx, `INSERT INTO rate_buckets (name, tokens, updated_at) VALUES (?, ?, ?)
		ON CONFLICT (name) DO UPDATE SET tokens = rate_buckets.tokens RETURNING tokens, updated_at`,
		[]any{name, full, micros(now)}, &tokens, &at); err != nil {
		return 0, time.Time{}, err
	}
	return tokens, fromMicros(at), nil
}

func (t *tx) SetBucket(ctx context.Context, name string, tokens float64, at time.Time) error {
	_, err := t.exec(ctx, `UPDATE rate_buckets SET tokens = ?, updated_at = ? WHERE name = ?`, tokens, micros(at), name)
	return err
}

// swapBucketSQL stores a bucket's new state only if it still holds the
// old one (SwapBucket).
const swapBucketSQL = `UPDATE rate_buckets SET tokens = ?, updated_at = ? WHERE name = ? AND tokens = ? AND updated_at = ?`

// SwapBucket stores bucket name's next state if it still holds old, in one
// statement outside any transaction: a compare-and-swap on the whole state
// (tokens and time), which no other taker can have left unchanged.
func (db *DB) SwapBucket(ctx context.Context, name string, old, next broker.Bucket) (bool, error) {
	s, done := db.outside(false, swapBucketSQL)
	defer done()
	res, err := s.ExecContext(ctx, next.Tokens, micros(next.Last), name, old.Tokens, micros(old.Last))
	if err != nil {
		return false, db.translate(fmt.Errorf("swap bucket: %w", err))
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, db.translate(err)
	}
	return n == 1, nil
}

func (t *tx) DeleteIdleBuckets(ctx context.Context, before time.Time) error {
	_, err := t.exec(ctx, `DELETE FROM rate_buckets WHERE updated_at < ?`, micros(before))
	return err
}
