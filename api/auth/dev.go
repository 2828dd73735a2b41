package auth

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/nhs-tre/tre/broker"
)

// DevKeyFile is the name of the dev-mode HS256 key in the data directory.
const DevKeyFile = "dev-signing.key"

// LoadOrCreateDevKey returns the dev-mode HS256 key in dir, creating it from
// crypto/rand with mode 0600 if it does not exist. Processes starting
// together on an empty directory (broker replicas) all get the one key: each
// writes a whole key to a file of its own and links it into place, which
// fails if another was first, and then reads the winner's. The key file
// never exists half written.
func LoadOrCreateDevKey(dir string) ([]byte, error) {
	path := filepath.Join(dir, DevKeyFile)
	key, err := readDevKey(path)
	if !errors.Is(err, os.ErrNotExist) {
		return key, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create data directory: %w", err)
	}
	key = make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("generate dev key: %w", err)
	}
	tmp, err := os.CreateTemp(dir, DevKeyFile+".new-*") // mode 0600
	if err != nil {
		return nil, fmt.Errorf("create dev key: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.WriteString(base64.StdEncoding.EncodeToString(key) + "\n"); err != nil {
		tmp.Close()
		return nil, fmt.Errorf("write dev key: %w", err)
	}
	if err := errors.Join(tmp.Sync(), tmp.Close()); err != nil {
		return nil, fmt.Errorf("write dev key: %w", err)
	}
	if err := os.Link(tmp.Name(), path); errors.Is(err, os.ErrExist) {
		return readDevKey(path) // another process won the race
	} else if err != nil {
		return nil, fmt.Errorf("create dev key: %w", err)
	}
	return key, nil
}

// readDevKey reads the key file at path; a missing file is an
// os.ErrNotExist error.
func readDevKey(path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, err
	} else if err != nil {
		return nil, fmt.Errorf("read dev key: %w", err)
	}
	key, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(data)))
	if err != nil || len(key) < 32 {
		return nil, fmt.Errorf("dev key %s is corrupt: remove it to create a new one", path)
	}
	return key, nil
}

// DevClaims are the claims of a dev-mode token.
type DevClaims struct {
	Subject string
	Name    string
	Org     string
	Roles   []broker.Role
	// Site binds an agent token to the site it acts for (the site claim).
	Site     string
	Issuer   string
	Audience string
	IssuedAt time.Time
	TTL      time.Duration
}

// MintDevToken signs an HS256 token with the dev key. Only a broker started in
// dev mode accepts it.
func MintDevToken(key []byte, c DevClaims) (string, error) {
	if len(key) < 32 {
		return "", errors.New("dev key must be at least 32 bytes")
	}
	if c.Subject == "" {
		return "", errors.New("token needs a subject")
	}
	if c.TTL <= 0 {
		return "", errors.New("token TTL must be positive")
	}
	if c.IssuedAt.IsZero() {
		c.IssuedAt = time.Now()
	}
	roles := make([]string, len(c.Roles))
	for i, r := range c.Roles {
		roles[i] = string(r)
	}
	claims := jwt.MapClaims{
		"sub":   c.Subject,
		"roles": roles,
		"iat":   c.IssuedAt.Unix(),
		"exp":   c.IssuedAt.Add(c.TTL).Unix(),
	}
	if c.Name != "" {
		claims["name"] = c.Name
	}
	if c.Org != "" {
		claims["org"] = c.Org
	}
	if c.Site != "" {
		claims["site"] = c.Site
	}
	if c.Issuer != "" {
		claims["iss"] = c.Issuer
	}
	if c.Audience != "" {
		claims["aud"] = c.Audience
	}
	tok := jwt.NewWithClaims(jwt.SigningMethodHS256, claims)
	tok.Header["kid"] = "dev"
	return tok.SignedString(key)
}
