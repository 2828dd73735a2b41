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

// CreateSession stores a new session and deletes every session that expired
// before it was created. It is called before anyone is signed in: the
// caller must have verified sess.User's token.
func (s *Service) CreateSession(ctx context.Context, sess *Session) error {
	if sess.IDHash == "" || sess.User.Subject == "" || sess.ExpiresAt.IsZero() {
		return Errorf(EINVALID, "a session needs an id, a user and an expiry")
	}
	return s.store.Update(ctx, func(tx Tx) error {
		if _, err := tx.DeleteExpiredSessions(ctx, sess.CreatedAt); err != nil {
			return err
		}
		return tx.PutSession(ctx, sess)
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
