package auth

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/nhs-tre/tre/broker"
)

// A token verified once is remembered, but its expiry is still enforced on
// every request, with the parser's leeway.
func TestVerifierCacheEnforcesExpiry(t *testing.T) {
	k := mustKeys(t)
	now := testNow
	v := mustVerifier(t, AuthConfig{PublicKeyFiles: []string{k.edFile}}, WithNow(func() time.Time { return now }))
	tok := sign(t, jwt.SigningMethodEdDSA, k.ed, "", with(baseClaims(), "exp", testNow.Add(time.Minute).Unix()))
	for range 2 {
		if _, err := v.Verify(context.Background(), tok); err != nil {
			t.Fatalf("fresh token: %v", err)
		}
	}
	if len(v.verified) != 1 {
		t.Fatalf("cache holds %d tokens, want 1", len(v.verified))
	}
	now = testNow.Add(time.Minute + authLeeway - time.Second)
	if _, err := v.Verify(context.Background(), tok); err != nil {
		t.Fatalf("within the leeway: %v", err)
	}
	now = testNow.Add(time.Minute + authLeeway)
	if _, err := v.Verify(context.Background(), tok); err == nil || err.Error() != "token expired" {
		t.Fatalf("expired cached token: err = %v, want token expired", err)
	}
}

// A token whose nbf lies ahead is refused, and stays refused until then even
// after it was once accepted (a clock moved back).
func TestVerifierCacheEnforcesNotBefore(t *testing.T) {
	k := mustKeys(t)
	now := testNow
	v := mustVerifier(t, AuthConfig{PublicKeyFiles: []string{k.edFile}}, WithNow(func() time.Time { return now }))
	tok := sign(t, jwt.SigningMethodEdDSA, k.ed, "", with(baseClaims(), "nbf", testNow.Unix()))
	if _, err := v.Verify(context.Background(), tok); err != nil {
		t.Fatal(err)
	}
	now = testNow.Add(-authLeeway - time.Second)
	if _, err := v.Verify(context.Background(), tok); err == nil {
		t.Fatal("cached token accepted before its nbf")
	}
}

// After the identity provider withdraws a key, tokens it signed are refused
// even if they were verified before.
func TestVerifierCacheDropsWithdrawnKeys(t *testing.T) {
	k1, k2 := mustKeys(t), mustKeys(t)
	path := filepath.Join(t.TempDir(), "jwks.json")
	if err := os.WriteFile(path, jwksDoc(t, k1), 0o600); err != nil {
		t.Fatal(err)
	}
	now := testNow
	v := mustVerifier(t, AuthConfig{JWKS: path, JWKSRefresh: time.Minute}, WithNow(func() time.Time { return now }))
	tok := sign(t, jwt.SigningMethodEdDSA, k1.ed, "k-ed", baseClaims())
	if _, err := v.Verify(context.Background(), tok); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, jwksDoc(t, k2), 0o600); err != nil {
		t.Fatal(err)
	}
	now = now.Add(2 * time.Minute)
	if _, err := v.Verify(context.Background(), tok); err == nil {
		t.Fatal("token of a withdrawn key accepted from the cache")
	}
}

// The cache is bounded, and callers cannot change what it returns later.
func TestVerifierCacheBounded(t *testing.T) {
	key := make([]byte, 32)
	v := mustVerifier(t, AuthConfig{DevKey: key})
	for i := range maxVerifiedTokens + 50 {
		tok := sign(t, jwt.SigningMethodHS256, key, "dev", with(baseClaims(), "sub", fmt.Sprintf("user-%d", i)))
		if _, err := v.Verify(context.Background(), tok); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(v.verified); n > maxVerifiedTokens {
		t.Fatalf("cache holds %d tokens, more than %d", n, maxVerifiedTokens)
	}
	tok := sign(t, jwt.SigningMethodHS256, key, "dev", baseClaims())
	u, err := v.Verify(context.Background(), tok)
	if err != nil {
		t.Fatal(err)
	}
	u.Roles[0] = broker.RoleAdmin
	u.Subject = "mallory"
	again, err := v.Verify(context.Background(), tok)
	if err != nil {
		t.Fatal(err)
	}
	if again.Subject != "alice" || len(again.Roles) != 1 || again.Roles[0] != broker.RoleResearcher {
		t.Fatalf("cached caller changed to %+v", again)
	}
}
