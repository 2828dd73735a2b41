package web

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"strings"
	"time"

	"github.com/nhs-tre/tre/broker"
)

// maxSessionLifetime caps a session even when its token lives longer.
const maxSessionLifetime = 12 * time.Hour

// SessionService stores sessions where every broker replica sharing the
// database sees them (issue 25): a browser signed in through one replica is
// signed in on all of them, and signing out on one ends the session on all.
// *broker.Service satisfies it.
type SessionService interface {
	CreateSession(ctx context.Context, s *broker.Session) error
	FindSession(ctx context.Context, idHash string) (*broker.Session, error)
	DeleteSession(ctx context.Context, idHash string) error
}

// session is one signed-in browser as a request sees it.
type session struct {
	user *broker.User
	// tokenHash is the hash of the bearer token the session was started
	// with, so that a different forwarded token starts a new session.
	tokenHash string
	csrf      string
	expiresAt time.Time
}

// sessionStore keeps sessions in the broker's database by the hash of their
// id: the cookie value itself is stored nowhere, so a copy of the database
// yields no usable cookie. The CSRF token is derived from the id (csrfFor),
// so it needs no storage either and is the same on every replica.
type sessionStore struct {
	now func() time.Time
	svc SessionService
}

func newSessionStore(now func() time.Time, svc SessionService) *sessionStore {
	return &sessionStore{now: now, svc: svc}
}

// randomToken returns 32 random bytes, base64url encoded.
func randomToken() string {
	b := make([]byte, 32)
	rand.Read(b) // crypto/rand.Read never returns an error (Go ≥ 1.24)
	return base64.RawURLEncoding.EncodeToString(b)
}

func hashID(id string) string {
	sum := sha256.Sum256([]byte(id))
	return hex.EncodeToString(sum[:])
}

// csrfFor is the CSRF token of the session with id: a hash of the id under
// its own label, so it cannot be computed from what the database stores
// (hashID of the id) nor turned back into the id, which the HttpOnly cookie
// keeps from page scripts.
func csrfFor(id string) string {
	sum := sha256.Sum256([]byte("tre web csrf\x00" + id))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// create starts a session for a verified user and returns its id.
func (s *sessionStore) create(ctx context.Context, u *broker.User, token string, expiresAt time.Time) (string, *session, error) {
	now := s.now()
	if limit := now.Add(maxSessionLifetime); expiresAt.IsZero() || expiresAt.After(limit) {
		expiresAt = limit
	}
	id := randomToken()
	rec := &broker.Session{IDHash: hashID(id), User: *u, TokenHash: hashID(token), CreatedAt: now, ExpiresAt: expiresAt}
	if err := s.svc.CreateSession(ctx, rec); err != nil {
		return "", nil, err
	}
	return id, &session{user: u, tokenHash: rec.TokenHash, csrf: csrfFor(id), expiresAt: expiresAt}, nil
}

// get returns the live session with id, or nil when there is none (never
// was, signed out on any replica, or expired).
func (s *sessionStore) get(ctx context.Context, id string) (*session, error) {
	if id == "" {
		return nil, nil
	}
	rec, err := s.svc.FindSession(ctx, hashID(id))
	if broker.ErrorCode(err) == broker.ENOTFOUND {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if !s.now().Before(rec.ExpiresAt) {
		return nil, s.svc.DeleteSession(ctx, rec.IDHash)
	}
	u := rec.User
	return &session{user: &u, tokenHash: rec.TokenHash, csrf: csrfFor(id), expiresAt: rec.ExpiresAt}, nil
}

// delete ends the session with id on every replica.
func (s *sessionStore) delete(ctx context.Context, id string) error {
	if id == "" {
		return nil
	}
	return s.svc.DeleteSession(ctx, hashID(id))
}

// validCSRF compares a submitted CSRF token with the session's in constant
// time.
func (sess *session) validCSRF(got string) bool {
	return got != "" && subtle.ConstantTimeCompare([]byte(got), []byte(sess.csrf)) == 1
}

// tokenExpiry reads the exp claim of a JWT that the Authenticator has
// already verified, so the session ends when the token does. It returns the
// zero time when there is none.
func tokenExpiry(token string) time.Time {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return time.Time{}
	}
	payload, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return time.Time{}
	}
	var claims struct {
		Exp json.Number `json:"exp"`
	}
	if err := json.Unmarshal(payload, &claims); err != nil {
		return time.Time{}
	}
	f, err := claims.Exp.Float64()
	if err != nil || f <= 0 {
		return time.Time{}
	}
	return time.Unix(int64(f), 0)
}
