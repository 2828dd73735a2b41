package auth

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/google/go-cmp/cmp"

	"github.com/nhs-tre/tre/broker"
)

// testNow is the fixed clock of the token tests.
var testNow = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

type testKeys struct {
	ed      ed25519.PrivateKey
	ec      *ecdsa.PrivateKey
	rsa     *rsa.PrivateKey
	dir     string
	edFile  string
	ecFile  string
	rsaFile string
}

func mustKeys(tb testing.TB) *testKeys {
	tb.Helper()
	_, ed, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		tb.Fatal(err)
	}
	k := &testKeys{ed: ed, ec: ec, rsa: rk, dir: tb.TempDir()}
	write := func(name string, pub any) string {
		der, err := x509.MarshalPKIXPublicKey(pub)
		if err != nil {
			tb.Fatal(err)
		}
		path := filepath.Join(k.dir, name+".pem")
		if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o600); err != nil {
			tb.Fatal(err)
		}
		return path
	}
	k.edFile = write("ed", ed.Public())
	k.ecFile = write("ec", &ec.PublicKey)
	k.rsaFile = write("rsa", &rk.PublicKey)
	return k
}

func sign(tb testing.TB, method jwt.SigningMethod, key any, kid string, claims jwt.MapClaims) string {
	tb.Helper()
	tok := jwt.NewWithClaims(method, claims)
	if kid != "" {
		tok.Header["kid"] = kid
	}
	s, err := tok.SignedString(key)
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

func baseClaims() jwt.MapClaims {
	return jwt.MapClaims{
		"sub": "alice", "name": "Alice", "org": "UCL",
		"roles": []string{"researcher", "bogus"},
		"iss":   "https://idp.example", "aud": "tre",
		"exp": testNow.Add(time.Hour).Unix(), "iat": testNow.Unix(),
	}
}

func with(c jwt.MapClaims, k string, v any) jwt.MapClaims {
	out := jwt.MapClaims{}
	for kk, vv := range c {
		out[kk] = vv
	}
	if v == nil {
		delete(out, k)
	} else {
		out[k] = v
	}
	return out
}

func mustVerifier(tb testing.TB, cfg AuthConfig, opts ...VerifierOption) *Verifier {
	tb.Helper()
	v, err := NewVerifier(context.Background(), cfg, append([]VerifierOption{WithNow(func() time.Time { return testNow })}, opts...)...)
	if err != nil {
		tb.Fatal(err)
	}
	return v
}

func TestVerifierRejects(t *testing.T) {
	k := mustKeys(t)
	v := mustVerifier(t, AuthConfig{PublicKeyFiles: []string{k.edFile, k.ecFile, k.rsaFile}, Issuer: "https://idp.example", Audience: "tre"})
	rsaPubPEM, err := os.ReadFile(k.rsaFile)
	if err != nil {
		t.Fatal(err)
	}
	noneTok := sign(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, "", baseClaims())
	valid := sign(t, jwt.SigningMethodRS256, k.rsa, "rsa", baseClaims())
	parts := strings.Split(valid, ".")
	tamperedClaims := with(baseClaims(), "roles", []string{"admin"})
	payload, _ := json.Marshal(tamperedClaims)
	tampered := parts[0] + "." + base64.RawURLEncoding.EncodeToString(payload) + "." + parts[2]

	tests := []struct {
		name  string
		token string
	}{
		{"empty", ""},
		{"garbage", "not.a.token"},
		{"none algorithm", noneTok},
		{"HS256 signed with the RS256 public key (confusion)", sign(t, jwt.SigningMethodHS256, rsaPubPEM, "rsa", baseClaims())},
		{"HS256 without kid and no dev key", sign(t, jwt.SigningMethodHS256, []byte(strings.Repeat("k", 32)), "", baseClaims())},
		{"ES256 token naming the RSA key", sign(t, jwt.SigningMethodES256, k.ec, "rsa", baseClaims())},
		{"expired", sign(t, jwt.SigningMethodRS256, k.rsa, "rsa", with(baseClaims(), "exp", testNow.Add(-time.Minute).Unix()))},
		{"not yet valid", sign(t, jwt.SigningMethodRS256, k.rsa, "rsa", with(baseClaims(), "nbf", testNow.Add(time.Minute).Unix()))},
		{"wrong issuer", sign(t, jwt.SigningMethodRS256, k.rsa, "rsa", with(baseClaims(), "iss", "https://evil.example"))},
		{"wrong audience", sign(t, jwt.SigningMethodRS256, k.rsa, "rsa", with(baseClaims(), "aud", "other"))},
		{"missing audience", sign(t, jwt.SigningMethodRS256, k.rsa, "rsa", with(baseClaims(), "aud", nil))},
		{"tampered roles", tampered},
		{"unknown key id", sign(t, jwt.SigningMethodRS256, k.rsa, "nope", baseClaims())},
		{"missing exp", sign(t, jwt.SigningMethodRS256, k.rsa, "rsa", with(baseClaims(), "exp", nil))},
		{"missing sub", sign(t, jwt.SigningMethodRS256, k.rsa, "rsa", with(baseClaims(), "sub", nil))},
		{"signed by another RSA key", func() string {
			other, err := rsa.GenerateKey(rand.Reader, 2048)
			if err != nil {
				t.Fatal(err)
			}
			return sign(t, jwt.SigningMethodRS256, other, "rsa", baseClaims())
		}()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u, err := v.Verify(context.Background(), tt.token)
			if err == nil {
				t.Fatalf("Verify accepted the token as %+v", u)
			}
		})
	}
}

func TestVerifierAccepts(t *testing.T) {
	k := mustKeys(t)
	v := mustVerifier(t, AuthConfig{PublicKeyFiles: []string{k.edFile, k.ecFile, k.rsaFile}, Issuer: "https://idp.example", Audience: "tre"})
	want := &broker.User{Subject: "alice", Name: "Alice", Org: "UCL", Roles: []broker.Role{broker.RoleResearcher}}
	tests := []struct {
		name  string
		token string
	}{
		{"EdDSA with kid", sign(t, jwt.SigningMethodEdDSA, k.ed, "ed", baseClaims())},
		{"EdDSA without kid", sign(t, jwt.SigningMethodEdDSA, k.ed, "", baseClaims())},
		{"ES256", sign(t, jwt.SigningMethodES256, k.ec, "ec", baseClaims())},
		{"RS256", sign(t, jwt.SigningMethodRS256, k.rsa, "rsa", baseClaims())},
		{"expired within leeway", sign(t, jwt.SigningMethodRS256, k.rsa, "rsa", with(baseClaims(), "exp", testNow.Add(-10*time.Second).Unix()))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u, err := v.Verify(context.Background(), tt.token)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(want, u); diff != "" {
				t.Errorf("user (-want +got):\n%s", diff)
			}
		})
	}
}

func jwksDoc(tb testing.TB, k *testKeys) []byte {
	tb.Helper()
	b64 := base64.RawURLEncoding.EncodeToString
	pad := func(b []byte) []byte { return append(make([]byte, 32-len(b)), b...) }
	doc := map[string]any{"keys": []map[string]any{
		{"kty": "OKP", "crv": "Ed25519", "kid": "k-ed", "use": "sig", "x": b64(k.ed.Public().(ed25519.PublicKey))},
		{"kty": "EC", "crv": "P-256", "kid": "k-ec", "alg": "ES256", "x": b64(pad(k.ec.X.Bytes())), "y": b64(pad(k.ec.Y.Bytes()))},
		{"kty": "RSA", "kid": "k-rsa", "alg": "RS256", "n": b64(k.rsa.N.Bytes()), "e": b64(big.NewInt(int64(k.rsa.E)).Bytes())},
		{"kty": "oct", "kid": "k-oct", "k": b64([]byte("a symmetric key nobody should use"))},
		{"kty": "RSA", "kid": "k-enc", "use": "enc", "n": b64(k.rsa.N.Bytes()), "e": "AQAB"},
	}}
	data, err := json.Marshal(doc)
	if err != nil {
		tb.Fatal(err)
	}
	return data
}

func TestVerifierJWKS(t *testing.T) {
	k := mustKeys(t)
	path := filepath.Join(t.TempDir(), "jwks.json")
	if err := os.WriteFile(path, jwksDoc(t, k), 0o600); err != nil {
		t.Fatal(err)
	}
	v := mustVerifier(t, AuthConfig{JWKS: path, Audience: "tre"})
	tests := []struct {
		name  string
		token string
		ok    bool
	}{
		{"EdDSA by kid", sign(t, jwt.SigningMethodEdDSA, k.ed, "k-ed", baseClaims()), true},
		{"ES256 by kid", sign(t, jwt.SigningMethodES256, k.ec, "k-ec", baseClaims()), true},
		{"RS256 by kid", sign(t, jwt.SigningMethodRS256, k.rsa, "k-rsa", baseClaims()), true},
		{"unknown kid", sign(t, jwt.SigningMethodRS256, k.rsa, "k-gone", baseClaims()), false},
		{"oct key is never used", sign(t, jwt.SigningMethodHS256, []byte("a symmetric key nobody should use"), "k-oct", baseClaims()), false},
		{"encryption key is never used", sign(t, jwt.SigningMethodRS256, k.rsa, "k-enc", baseClaims()), false},
		{"algorithm does not match the key", sign(t, jwt.SigningMethodES256, k.ec, "k-rsa", baseClaims()), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := v.Verify(context.Background(), tt.token)
			if (err == nil) != tt.ok {
				t.Fatalf("Verify err = %v, want ok=%v", err, tt.ok)
			}
		})
	}
}

func TestVerifierJWKSURLRefresh(t *testing.T) {
	k1, k2 := mustKeys(t), mustKeys(t)
	doc := jwksDoc(t, k1)
	ts := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write(doc)
	}))
	defer ts.Close()
	now := testNow
	v, err := NewVerifier(context.Background(), AuthConfig{JWKS: ts.URL, JWKSRefresh: time.Hour},
		WithNow(func() time.Time { return now }), WithHTTPClient(ts.Client()))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(context.Background(), sign(t, jwt.SigningMethodEdDSA, k1.ed, "k-ed", baseClaims())); err != nil {
		t.Fatalf("first key: %v", err)
	}
	// The identity provider rotates keys. Tokens with the new kid trigger a
	// refresh; the old key is gone after it.
	doc = jwksDoc(t, k2)
	newTok := sign(t, jwt.SigningMethodEdDSA, k2.ed, "k-ed", with(baseClaims(), "exp", testNow.Add(5*time.Hour).Unix()))
	if _, err := v.Verify(context.Background(), newTok); err == nil {
		t.Fatal("new key accepted before refresh: same kid, so no forced refresh should happen")
	}
	now = now.Add(2 * time.Hour)
	if _, err := v.Verify(context.Background(), newTok); err != nil {
		t.Fatalf("after the refresh interval: %v", err)
	}
}

func TestVerifierRolesClaimPath(t *testing.T) {
	k := mustKeys(t)
	v := mustVerifier(t, AuthConfig{PublicKeyFiles: []string{k.rsaFile}, RolesClaim: "realm_access.roles"})
	tests := []struct {
		name   string
		claims jwt.MapClaims
		want   []broker.Role
	}{
		{"keycloak realm roles", with(baseClaims(), "realm_access", map[string]any{"roles": []string{"reviewer", "offline_access"}}), []broker.Role{broker.RoleReviewer}},
		{"top-level roles ignored", with(baseClaims(), "roles", []string{"admin"}), nil},
		{"wrong shape", with(baseClaims(), "realm_access", "admin"), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u, err := v.Verify(context.Background(), sign(t, jwt.SigningMethodRS256, k.rsa, "", tt.claims))
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, u.Roles); diff != "" {
				t.Errorf("roles (-want +got):\n%s", diff)
			}
		})
	}
}

func TestDevTokens(t *testing.T) {
	dir := t.TempDir()
	key, err := LoadOrCreateDevKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, DevKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("dev key mode %v, want 0600", fi.Mode().Perm())
	}
	again, err := LoadOrCreateDevKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(key, again); diff != "" {
		t.Fatal("second load returned a different key")
	}
	tok, err := MintDevToken(key, DevClaims{Subject: "bob", Roles: []broker.Role{broker.RoleReviewer}, IssuedAt: testNow, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	dev := mustVerifier(t, AuthConfig{DevKey: key})
	u, err := dev.Verify(context.Background(), tok)
	if err != nil {
		t.Fatal(err)
	}
	if u.Subject != "bob" || !u.HasRole(broker.RoleReviewer) {
		t.Errorf("user = %+v", u)
	}
	// Without dev mode the same token is refused.
	k := mustKeys(t)
	prod := mustVerifier(t, AuthConfig{PublicKeyFiles: []string{k.rsaFile}})
	if _, err := prod.Verify(context.Background(), tok); err == nil {
		t.Error("HS256 dev token accepted without dev mode")
	}
}

// TestDevKeyCreatedOnce: brokers started together on an empty data
// directory (replicas, issue 25) must all end up with one key, and none may
// read the file half written. Many rounds of eight creators at once.
func TestDevKeyCreatedOnce(t *testing.T) {
	for round := range 50 {
		dir := filepath.Join(t.TempDir(), "data")
		const n = 8
		keys := make([][]byte, n)
		errs := make([]error, n)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				keys[i], errs[i] = LoadOrCreateDevKey(dir)
			}()
		}
		close(start)
		wg.Wait()
		for i := range n {
			if errs[i] != nil {
				t.Fatalf("round %d, creator %d: %v", round, i, errs[i])
			}
			if !bytes.Equal(keys[i], keys[0]) {
				t.Fatalf("round %d: creators %d and 0 got different keys", round, i)
			}
		}
		entries, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		if len(entries) != 1 || entries[0].Name() != DevKeyFile {
			t.Fatalf("round %d: data directory holds %v, want only %s", round, entries, DevKeyFile)
		}
	}
}
