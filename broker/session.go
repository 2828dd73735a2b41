package broker

import (
	"context"
	"time"
)

// Session is a signed-in browser of the web interface, stored so that every
// broker replica sharing the database knows it (issue 25). Neither the
// session's cookie value nor the bearer token it was started with is
// stored: only their hashes.
type Session struct {
	// IDHash is the hex SHA-256 of the cookie value.
	IDHash string
	User   User
	// TokenHash is the hex SHA-256 of the bearer token the session was
	// started with (a forwarded token different from it starts a new one).
	TokenHash string
	CreatedAt time.Time
	ExpiresAt time.Time
}

// MaxSessionsPerUser is how many web sessions one user may have at once:
// signing in once more ends the oldest. It bounds the table however a
// client behaves, e.g. one that sends a forwarded token on every request
// and never keeps the cookie, which starts a session each time.
const MaxSessionsPerUser = 20

// sessionSweepBatch is how many expired sessions a sign-in deletes at most.
// Each sign-in adds one row and removes up to this many expired ones, so
// expired rows cannot pile up, and no transaction deletes an unbounded
// number of them (issue 25).
const sessionSweepBatch = 100

// CreateSession stores a new session, deletes up to sessionSweepBatch
// sessions that had expired when it was created, and the user's oldest
// sessions beyond MaxSessionsPerUser. It is called before anyone is signed
// in: the caller must have verified sess.User's token.
func (s *Service) CreateSession(ctx context.Context, sess *Session) error {
	if sess.IDHash == "" || sess.User.Subject == "" || sess.ExpiresAt.IsZero() {
		return Errorf(EINVALID, "a session needs an id, a user and an expiry")
	}
	return s.store.Update(ctx, func(tx Tx) error {
		if _, err := tx.DeleteExpiredSessions(ctx, sess.CreatedAt, sessionSweepBatch); err != nil {
			return err
		}
		if err := tx.PutSession(ctx, sess); err != nil {
			return err
		}
		_, err := tx.TrimSessions(ctx, sess.User.Subject, MaxSessionsPerUser)
		return err
	})
}

// FindSession returns the session whose id hashes to idHash, or an ENOTFOUND
// error. Whether it has expired is the caller's to judge (its clock).
func (s *Service) FindSession(ctx context.Context, idHash string) (*Session, error) {
	var sess *Session
	err := s.store.View(ctx, func(tx Tx) error {
		var err error
		sess, err = tx.FindSession(ctx, idHash)
		return err
	})
	if err != nil {
		return nil, err
	}
	return sess, nil
}

// DeleteSession ends the session whose id hashes to idHash on every
// replica; deleting one that does not exist is not an error.
func (s *Service) DeleteSession(ctx context.Context, idHash string) error {
	return s.store.Update(ctx, func(tx Tx) error {
		return tx.DeleteSession(ctx, idHash)
	})
}
