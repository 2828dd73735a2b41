package web

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"strings"
	"sync"
	"time"

	"github.com/nhs-tre/tre/broker"
)

// Session limits.
const (
	// maxSessionLifetime caps a session even when its token lives longer.
	maxSessionLifetime = 12 * time.Hour
	// maxSessions bounds memory: when full, expired sessions are purged and
	// then the oldest one is evicted.
	maxSessions = 10000
)

// session is one signed-in browser. The token is kept only so that the
// session can be tied to what the proxy forwards; it is never logged.
type session struct {
	user      *broker.User
	token     string
	csrf      string
	expiresAt time.Time
	createdAt time.Time
}

// sessionStore maps hashed session ids to sessions. Ids are hashed so that a
// memory dump or a timing side channel on the map does not yield a usable
// cookie value.
type sessionStore struct {
	now func() time.Time
	mu  sync.Mutex
	m   map[string]*session
}

func newSessionStore(now func() time.Time) *sessionStore {
	return &sessionStore{now: now, m: map[string]*session{}}
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

// create starts a session for a verified user and returns its id.
func (s *sessionStore) create(u *broker.User, token string, expiresAt time.Time) (string, *session) {
	now := s.now()
	if limit := now.Add(maxSessionLifetime); expiresAt.IsZero() || expiresAt.After(limit) {
		expiresAt = limit
	}
	id := randomToken()
	sess := &session{user: u, token: token, csrf: randomToken(), expiresAt: expiresAt, createdAt: now}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.m) >= maxSessions {
		s.purgeLocked(now)
	}
	if len(s.m) >= maxSessions {
		var oldestKey string
		var oldest time.Time
		for k, v := range s.m {
			if oldestKey == "" || v.createdAt.Before(oldest) {
				oldestKey, oldest = k, v.createdAt
			}
		}
		delete(s.m, oldestKey)
	}
	s.m[hashID(id)] = sess
	return id, sess
}

// get returns the live session with id, or nil.
func (s *sessionStore) get(id string) *session {
	if id == "" {
		return nil
	}
	key := hashID(id)
	s.mu.Lock()
	defer s.mu.Unlock()
	sess := s.m[key]
	if sess == nil {
		return nil
	}
	if !s.now().Before(sess.expiresAt) {
		delete(s.m, key)
		return nil
	}
	return sess
}

func (s *sessionStore) delete(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.m, hashID(id))
}

func (s *sessionStore) purgeLocked(now time.Time) {
	for k, v := range s.m {
		if !now.Before(v.expiresAt) {
			delete(s.m, k)
		}
	}
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
