// Package auth verifies the bearer tokens every caller of the broker
// presents: signatures checked against keys pinned each to one algorithm
// (PEM files, a JWK Set, or a dev-mode HS256 key), issuer, audience,
// expiry, and the claims turned into a broker.User. It also mints the dev
// tokens `tre serve --dev` and the demo use.
//
// auth decides nothing about what a caller may do (the broker does), never
// logs or returns a token, and gives reasons for refusals that are safe to
// show (TokenError). It serves both faces of the broker, the JSON API
// (api/server) and the web pages (api/web), and imports no HTTP router.
package auth

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/nhs-tre/tre/broker"
)

// Signing algorithms tre accepts. Each verification key is pinned to exactly
// one of them, so a token can never choose how it is checked.
const (
	AlgEdDSA = "EdDSA"
	AlgES256 = "ES256"
	AlgRS256 = "RS256"
	AlgHS256 = "HS256" // dev mode only
)

// authLeeway is the clock skew tolerated on exp and nbf.
const authLeeway = 30 * time.Second

// maxTokenBytes bounds the bearer token we are willing to parse.
const maxTokenBytes = 16 << 10

// AuthConfig says which tokens the broker accepts.
type AuthConfig struct {
	// PublicKeyFiles are PEM files (PKIX public keys or certificates):
	// Ed25519 keys verify EdDSA, P-256 keys ES256, RSA keys RS256. The key
	// id of a file's key is the file name without its extension.
	PublicKeyFiles []string
	// JWKS is a JWK Set document: a file path or an https:// URL, re-read
	// every JWKSRefresh (default 10m) and when a token names an unknown kid
	// (at most once a minute).
	JWKS        string
	JWKSRefresh time.Duration
	// Issuer and Audience, when set, must match the token's iss and aud.
	Issuer   string
	Audience string
	// RolesClaim is the dotted path of the roles array in the claims:
	// "roles" (default) or e.g. "realm_access.roles" for Keycloak.
	RolesClaim string
	// SiteClaim is the dotted path of the string naming the site an agent
	// token acts for: "site" (default). An agent token without it is
	// refused on every agent call.
	SiteClaim string
	// DevKey, when non-nil, enables HS256 tokens signed with it (tre serve
	// --dev). Never set in production.
	DevKey []byte
}

// Validate reports configuration mistakes.
func (c AuthConfig) Validate() error {
	if len(c.PublicKeyFiles) == 0 && c.JWKS == "" && c.DevKey == nil {
		return errors.New("auth: no verification keys configured (public key files, a JWKS, or dev mode)")
	}
	if c.DevKey != nil && len(c.DevKey) < 32 {
		return errors.New("auth: dev signing key must be at least 32 bytes")
	}
	if c.JWKS != "" && strings.Contains(c.JWKS, "://") && !strings.HasPrefix(c.JWKS, "https://") {
		return fmt.Errorf("auth: JWKS URL %q must use https", c.JWKS)
	}
	if c.JWKSRefresh < 0 {
		return errors.New("auth: JWKS refresh interval must not be negative")
	}
	return nil
}

// verificationKey is one key and the single algorithm it verifies.
type verificationKey struct {
	ID  string
	Alg string
	Key any
}

// Verifier checks bearer tokens and turns their claims into a broker.User.
type Verifier struct {
	cfg    AuthConfig
	static []verificationKey
	now    func() time.Time
	client *http.Client

	mu         sync.Mutex
	jwks       []verificationKey
	jwksLoaded time.Time
	jwksForced time.Time
	// keyGen counts JWKS loads: a token verified under an earlier key set is
	// verified again, so a key the identity provider withdrew stops working.
	keyGen uint64

	// verified caches tokens that passed Verify (see verifiedToken).
	cacheMu  sync.Mutex
	verified map[[sha256.Size]byte]verifiedToken
}

// verifiedToken is a token that passed every check, remembered so the next
// request with it skips the signature check and claim parsing. Only its
// hash is kept. Expiry and not-before are still judged on every request.
type verifiedToken struct {
	user      broker.User
	notBefore time.Time // zero: no nbf claim
	expires   time.Time
	keyGen    uint64
	added     time.Time
}

// Bounds of the verified-token cache: a broker serves a few hundred users,
// each with one token at a time; at most maxVerifiedAge passes between full
// verifications of one token.
const (
	maxVerifiedTokens = 4096
	maxVerifiedAge    = 5 * time.Minute
)

// VerifierOption adjusts a Verifier (tests inject time and an HTTP client).
type VerifierOption func(*Verifier)

// WithNow sets the clock used for exp, nbf and JWKS refresh.
func WithNow(now func() time.Time) VerifierOption { return func(v *Verifier) { v.now = now } }

// WithHTTPClient sets the client used to fetch a JWKS URL.
func WithHTTPClient(c *http.Client) VerifierOption { return func(v *Verifier) { v.client = c } }

// NewVerifier loads the configured keys. A JWKS that cannot be loaded now is
// an error, so a misconfigured broker fails at start rather than at the
// first request.
func NewVerifier(ctx context.Context, cfg AuthConfig, opts ...VerifierOption) (*Verifier, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.RolesClaim == "" {
		cfg.RolesClaim = "roles"
	}
	if cfg.SiteClaim == "" {
		cfg.SiteClaim = "site"
	}
	if cfg.JWKSRefresh == 0 {
		cfg.JWKSRefresh = 10 * time.Minute
	}
	v := &Verifier{cfg: cfg, now: time.Now, client: &http.Client{Timeout: 10 * time.Second},
		verified: map[[sha256.Size]byte]verifiedToken{}}
	for _, o := range opts {
		o(v)
	}
	for _, path := range cfg.PublicKeyFiles {
		k, err := loadPublicKeyFile(path)
		if err != nil {
			return nil, err
		}
		v.static = append(v.static, k)
	}
	if cfg.DevKey != nil {
		v.static = append(v.static, verificationKey{ID: "dev", Alg: AlgHS256, Key: cfg.DevKey})
	}
	if cfg.JWKS != "" {
		keys, err := v.fetchJWKS(ctx)
		if err != nil {
			return nil, err
		}
		v.jwks, v.jwksLoaded = keys, v.now()
	}
	return v, nil
}

// cached returns the caller of a token that passed Verify under the current
// keys and is still within its validity window, or nil.
func (v *Verifier) cached(ctx context.Context, sum [sha256.Size]byte) *broker.User {
	if v.cfg.JWKS != "" {
		v.refreshIfStale(ctx)
	}
	v.mu.Lock()
	gen := v.keyGen
	v.mu.Unlock()
	now := v.now()
	v.cacheMu.Lock()
	defer v.cacheMu.Unlock()
	e, ok := v.verified[sum]
	if !ok {
		return nil
	}
	// The same tests as the jwt parser's, with the same leeway: valid while
	// now < exp+leeway and now >= nbf-leeway.
	if e.keyGen != gen || !now.Before(e.expires.Add(authLeeway)) || now.Before(e.notBefore.Add(-authLeeway)) ||
		now.Sub(e.added) >= maxVerifiedAge || now.Before(e.added) {
		delete(v.verified, sum)
		return nil
	}
	u := e.user
	u.Roles = slices.Clone(e.user.Roles)
	return &u
}

// remember caches a token that has just passed every check.
func (v *Verifier) remember(sum [sha256.Size]byte, u *broker.User, claims jwt.MapClaims, gen uint64) {
	exp, err := claims.GetExpirationTime()
	if err != nil || exp == nil {
		return // cannot happen after WithExpirationRequired; never cache without
	}
	e := verifiedToken{user: *u, expires: exp.Time, keyGen: gen, added: v.now()}
	e.user.Roles = slices.Clone(u.Roles)
	if nbf, err := claims.GetNotBefore(); err != nil {
		return
	} else if nbf != nil {
		e.notBefore = nbf.Time
	}
	v.cacheMu.Lock()
	defer v.cacheMu.Unlock()
	if len(v.verified) >= maxVerifiedTokens {
		for k := range v.verified { // map order: an arbitrary victim
			delete(v.verified, k)
			break
		}
	}
	v.verified[sum] = e
}

// TokenError is a token rejection; Reason is safe to log and to show.
type TokenError struct{ Reason string }

func (e *TokenError) Error() string { return e.Reason }

// Verify checks a raw bearer token and returns the caller it names.
func (v *Verifier) Verify(ctx context.Context, raw string) (*broker.User, error) {
	if raw == "" {
		return nil, &TokenError{"missing bearer token"}
	}
	if len(raw) > maxTokenBytes {
		return nil, &TokenError{"token too large"}
	}
	sum := sha256.Sum256([]byte(raw))
	if u := v.cached(ctx, sum); u != nil {
		return u, nil
	}
	v.mu.Lock()
	gen := v.keyGen
	v.mu.Unlock()
	keys := v.keys(ctx)
	algs := map[string]bool{}
	var methods []string
	for _, k := range keys {
		if !algs[k.Alg] {
			algs[k.Alg] = true
			methods = append(methods, k.Alg)
		}
	}
	popts := []jwt.ParserOption{
		jwt.WithValidMethods(methods),
		jwt.WithExpirationRequired(),
		jwt.WithLeeway(authLeeway),
		jwt.WithTimeFunc(v.now),
	}
	if v.cfg.Issuer != "" {
		popts = append(popts, jwt.WithIssuer(v.cfg.Issuer))
	}
	if v.cfg.Audience != "" {
		popts = append(popts, jwt.WithAudience(v.cfg.Audience))
	}
	claims := jwt.MapClaims{}
	_, err := jwt.NewParser(popts...).ParseWithClaims(raw, claims, func(t *jwt.Token) (any, error) {
		return v.selectKey(ctx, t)
	})
	if err != nil {
		return nil, &TokenError{tokenReason(err)}
	}
	u, err := v.userFromClaims(claims)
	if err != nil {
		return nil, err
	}
	v.remember(sum, u, claims, gen)
	return u, nil
}

// tokenReason turns a jwt error into a short reason that never includes the
// token itself.
func tokenReason(err error) string {
	var ae *TokenError
	switch {
	case errors.As(err, &ae):
		return ae.Reason
	case errors.Is(err, jwt.ErrTokenMalformed):
		return "malformed token"
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return "invalid token signature or algorithm"
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		return "token lacks a required claim"
	case errors.Is(err, jwt.ErrTokenExpired):
		return "token expired"
	case errors.Is(err, jwt.ErrTokenNotValidYet), errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		return "token not valid yet"
	case errors.Is(err, jwt.ErrTokenInvalidIssuer):
		return "token has the wrong issuer"
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		return "token has the wrong audience"
	case errors.Is(err, jwt.ErrTokenUnverifiable):
		return "token cannot be verified"
	}
	return "invalid token"
}

// selectKey picks the one key that may verify t: by kid when the token
// names one, else the only key for its algorithm. The key's pinned algorithm
// must equal the token's.
func (v *Verifier) selectKey(ctx context.Context, t *jwt.Token) (any, error) {
	alg, _ := t.Header["alg"].(string)
	kid, hasKid := t.Header["kid"].(string)
	if _, present := t.Header["kid"]; present && !hasKid {
		return nil, &TokenError{"token kid is not a string"}
	}
	find := func(keys []verificationKey) (*verificationKey, int) {
		var match *verificationKey
		n := 0
		for i := range keys {
			k := &keys[i]
			if hasKid && k.ID != kid {
				continue
			}
			if !hasKid && k.Alg != alg {
				continue
			}
			match = k
			n++
		}
		return match, n
	}
	keys := v.keys(ctx)
	k, n := find(keys)
	if n == 0 && hasKid && v.cfg.JWKS != "" && v.forceRefresh(ctx) {
		k, n = find(v.keys(ctx))
	}
	switch {
	case n == 0 && hasKid:
		return nil, &TokenError{"unknown key id"}
	case n == 0:
		return nil, &TokenError{"no key for the token's algorithm"}
	case n > 1:
		return nil, &TokenError{"token must name its key (kid)"}
	}
	if k.Alg != alg || t.Method.Alg() != k.Alg {
		return nil, &TokenError{"token algorithm does not match its key"}
	}
	return k.Key, nil
}

// keys returns the static keys plus the current JWKS, refreshing the JWKS
// when it is older than the refresh interval. A failed refresh keeps the
// keys we have: an identity provider blip must not lock everyone out.
func (v *Verifier) keys(ctx context.Context) []verificationKey {
	if v.cfg.JWKS == "" {
		return v.static
	}
	v.refreshIfStale(ctx)
	v.mu.Lock()
	defer v.mu.Unlock()
	out := make([]verificationKey, 0, len(v.static)+len(v.jwks))
	out = append(out, v.static...)
	return append(out, v.jwks...)
}

// refreshIfStale re-reads the JWKS when it is older than the refresh
// interval.
func (v *Verifier) refreshIfStale(ctx context.Context) {
	v.mu.Lock()
	stale := v.now().Sub(v.jwksLoaded) >= v.cfg.JWKSRefresh
	v.mu.Unlock()
	if stale {
		if keys, err := v.fetchJWKS(ctx); err == nil {
			v.setJWKS(keys)
		}
	}
}

// setJWKS installs a freshly loaded key set.
func (v *Verifier) setJWKS(keys []verificationKey) {
	v.mu.Lock()
	v.jwks, v.jwksLoaded = keys, v.now()
	v.keyGen++
	v.mu.Unlock()
}

// forceRefresh re-reads the JWKS for an unknown kid, at most once a minute so
// junk tokens cannot make us hammer the identity provider.
func (v *Verifier) forceRefresh(ctx context.Context) bool {
	v.mu.Lock()
	if v.now().Sub(v.jwksForced) < time.Minute {
		v.mu.Unlock()
		return false
	}
	v.jwksForced = v.now()
	v.mu.Unlock()
	keys, err := v.fetchJWKS(ctx)
	if err != nil {
		return false
	}
	v.setJWKS(keys)
	return true
}

func (v *Verifier) fetchJWKS(ctx context.Context) ([]verificationKey, error) {
	var data []byte
	if strings.HasPrefix(v.cfg.JWKS, "https://") {
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, v.cfg.JWKS, nil)
		if err != nil {
			return nil, fmt.Errorf("auth: JWKS URL: %w", err)
		}
		resp, err := v.client.Do(req)
		if err != nil {
			return nil, fmt.Errorf("auth: fetch JWKS: %w", err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return nil, fmt.Errorf("auth: fetch JWKS: status %d", resp.StatusCode)
		}
		data, err = io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		if err != nil {
			return nil, fmt.Errorf("auth: fetch JWKS: %w", err)
		}
	} else {
		var err error
		if data, err = os.ReadFile(v.cfg.JWKS); err != nil {
			return nil, fmt.Errorf("auth: read JWKS: %w", err)
		}
	}
	keys, err := parseJWKS(data)
	if err != nil {
		return nil, fmt.Errorf("auth: JWKS %s: %w", v.cfg.JWKS, err)
	}
	return keys, nil
}

// jwk is the subset of RFC 7517 fields tre reads.
type jwk struct {
	Kty string `json:"kty"`
	Kid string `json:"kid"`
	Use string `json:"use"`
	Alg string `json:"alg"`
	Crv string `json:"crv"`
	X   string `json:"x"`
	Y   string `json:"y"`
	N   string `json:"n"`
	E   string `json:"e"`
}

// parseJWKS reads a JWK Set. Keys for encryption, symmetric keys and
// algorithms tre does not accept are skipped; a key whose declared alg
// disagrees with its type is an error.
func parseJWKS(data []byte) ([]verificationKey, error) {
	var set struct {
		Keys []jwk `json:"keys"`
	}
	if err := json.Unmarshal(data, &set); err != nil {
		return nil, fmt.Errorf("not a JWK Set: %w", err)
	}
	var out []verificationKey
	for i, k := range set.Keys {
		if k.Use != "" && k.Use != "sig" {
			continue
		}
		b64 := func(s string) ([]byte, error) { return base64.RawURLEncoding.DecodeString(strings.TrimRight(s, "=")) }
		var vk verificationKey
		switch {
		case k.Kty == "OKP" && k.Crv == "Ed25519":
			x, err := b64(k.X)
			if err != nil || len(x) != ed25519.PublicKeySize {
				return nil, fmt.Errorf("key %d (%s): bad Ed25519 x", i, k.Kid)
			}
			vk = verificationKey{Alg: AlgEdDSA, Key: ed25519.PublicKey(x)}
		case k.Kty == "EC" && k.Crv == "P-256":
			x, errX := b64(k.X)
			y, errY := b64(k.Y)
			if errX != nil || errY != nil || len(x) != 32 || len(y) != 32 {
				return nil, fmt.Errorf("key %d (%s): bad P-256 coordinates", i, k.Kid)
			}
			pub := &ecdsa.PublicKey{Curve: elliptic.P256(), X: new(big.Int).SetBytes(x), Y: new(big.Int).SetBytes(y)}
			if !pub.Curve.IsOnCurve(pub.X, pub.Y) { //nolint:staticcheck // validating untrusted input
				return nil, fmt.Errorf("key %d (%s): point not on P-256", i, k.Kid)
			}
			vk = verificationKey{Alg: AlgES256, Key: pub}
		case k.Kty == "RSA":
			n, errN := b64(k.N)
			e, errE := b64(k.E)
			if errN != nil || errE != nil || len(e) == 0 || len(e) > 4 {
				return nil, fmt.Errorf("key %d (%s): bad RSA modulus or exponent", i, k.Kid)
			}
			pub := &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(new(big.Int).SetBytes(e).Int64())}
			if pub.N.BitLen() < 2048 {
				return nil, fmt.Errorf("key %d (%s): RSA key shorter than 2048 bits", i, k.Kid)
			}
			vk = verificationKey{Alg: AlgRS256, Key: pub}
		default:
			continue // oct keys and curves tre does not accept
		}
		if k.Alg != "" && k.Alg != vk.Alg {
			if k.Kty == "RSA" {
				continue // e.g. PS256 or RS512 keys alongside: not ours
			}
			return nil, fmt.Errorf("key %d (%s): alg %q does not match key type", i, k.Kid, k.Alg)
		}
		vk.ID = k.Kid
		out = append(out, vk)
	}
	if len(out) == 0 {
		return nil, errors.New("no usable signing keys (EdDSA, ES256, RS256)")
	}
	return out, nil
}

// loadPublicKeyFile reads one PEM public key or certificate and pins it to
// the algorithm its type implies.
func loadPublicKeyFile(path string) (verificationKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return verificationKey{}, fmt.Errorf("auth: read public key: %w", err)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return verificationKey{}, fmt.Errorf("auth: %s: no PEM block", path)
	}
	var pub any
	switch block.Type {
	case "PUBLIC KEY":
		pub, err = x509.ParsePKIXPublicKey(block.Bytes)
	case "RSA PUBLIC KEY":
		pub, err = x509.ParsePKCS1PublicKey(block.Bytes)
	case "CERTIFICATE":
		var cert *x509.Certificate
		if cert, err = x509.ParseCertificate(block.Bytes); err == nil {
			pub = cert.PublicKey
		}
	default:
		return verificationKey{}, fmt.Errorf("auth: %s: PEM block %q is not a public key", path, block.Type)
	}
	if err != nil {
		return verificationKey{}, fmt.Errorf("auth: %s: %w", path, err)
	}
	id := strings.TrimSuffix(filepath.Base(path), filepath.Ext(path))
	switch k := pub.(type) {
	case ed25519.PublicKey:
		return verificationKey{ID: id, Alg: AlgEdDSA, Key: k}, nil
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() {
			return verificationKey{}, fmt.Errorf("auth: %s: only P-256 EC keys (ES256) are accepted", path)
		}
		return verificationKey{ID: id, Alg: AlgES256, Key: k}, nil
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return verificationKey{}, fmt.Errorf("auth: %s: RSA key shorter than 2048 bits", path)
		}
		return verificationKey{ID: id, Alg: AlgRS256, Key: k}, nil
	}
	return verificationKey{}, fmt.Errorf("auth: %s: unsupported public key type %T", path, pub)
}

// claimAt returns the claim at a dotted path such as realm_access.roles,
// or nil.
func claimAt(c jwt.MapClaims, path string) any {
	var node any = map[string]any(c)
	for _, part := range strings.Split(path, ".") {
		m, ok := node.(map[string]any)
		if !ok {
			return nil
		}
		node = m[part]
	}
	return node
}

// userFromClaims reads sub, name, org, the roles and the site at the
// configured paths.
func (v *Verifier) userFromClaims(c jwt.MapClaims) (*broker.User, error) {
	sub, _ := c["sub"].(string)
	if strings.TrimSpace(sub) == "" {
		return nil, &TokenError{"token has no subject"}
	}
	u := &broker.User{Subject: sub}
	u.Name, _ = c["name"].(string)
	u.Org, _ = c["org"].(string)
	u.Site, _ = claimAt(c, v.cfg.SiteClaim).(string)
	list, _ := claimAt(c, v.cfg.RolesClaim).([]any)
	for _, r := range list {
		s, ok := r.(string)
		if !ok {
			continue
		}
		role := broker.Role(s)
		switch role {
		case broker.RoleResearcher, broker.RoleReviewer, broker.RoleOutputChecker, broker.RoleAdmin, broker.RoleAgent:
			if !u.HasRole(role) {
				u.Roles = append(u.Roles, role)
			}
		}
	}
	return u, nil
}
