package auth

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// FuzzVerify: the token verifier never panics; every rejection is an
// *TokenError whose reason never contains the token; and it accepts a token
// only if an independent check agrees: the header names an algorithm the
// key set allows (never none, never HS256 without a dev key), the signature
// verifies with that algorithm's key, and exp is in the future.
func FuzzVerify(f *testing.F) {
	k := mustKeys(f)
	// A fixed Ed25519 key, so corpus entries stay valid across runs.
	fixed := ed25519.NewKeyFromSeed([]byte("tre-fuzz-verify-fixed-seed-32byt"))
	devKey := []byte("tre-fuzz-verify-dev-key-0123456789abcdef")
	pub := func(method string) any {
		switch method {
		case AlgRS256:
			return &k.rsa.PublicKey
		case AlgES256:
			return &k.ec.PublicKey
		}
		return nil
	}
	static := mustVerifier(f, AuthConfig{PublicKeyFiles: []string{k.rsaFile, k.ecFile}, Issuer: "https://idp.example", Audience: "tre"})
	dev := mustVerifier(f, AuthConfig{DevKey: devKey})

	claims := baseClaims()
	f.Add(sign(f, jwt.SigningMethodRS256, k.rsa, "", claims))
	f.Add(sign(f, jwt.SigningMethodES256, k.ec, "ec", claims))
	f.Add(sign(f, jwt.SigningMethodHS256, devKey, "", claims))
	f.Add(sign(f, jwt.SigningMethodEdDSA, fixed, "", claims))
	f.Add(sign(f, jwt.SigningMethodHS256, devKey, "", with(claims, "exp", nil)))
	f.Add(sign(f, jwt.SigningMethodRS256, k.rsa, "", with(claims, "aud", []string{"other", "tre"})))
	f.Add(sign(f, jwt.SigningMethodRS256, k.rsa, "", with(claims, "roles", "admin")))
	f.Add(sign(f, jwt.SigningMethodHS256, devKey, "", with(claims, "sub", 42)))
	none, err := jwt.NewWithClaims(jwt.SigningMethodNone, claims).SignedString(jwt.UnsafeAllowNoneSignatureType)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(none)
	for _, s := range []string{"", ".", "..", "a.b.c", "e30.e30.", "eyJhbGciOiJub25lIn0.e30.", strings.Repeat("A", 100)} {
		f.Add(s)
	}

	f.Fuzz(func(t *testing.T, raw string) {
		for _, tc := range []struct {
			name string
			v    *Verifier
			key  func(alg string) any
		}{
			{"public keys", static, pub},
			{"dev key", dev, func(alg string) any {
				if alg == AlgHS256 {
					return devKey
				}
				return nil
			}},
		} {
			u, err := tc.v.Verify(context.Background(), raw)
			if err != nil {
				var ae *TokenError
				if !errors.As(err, &ae) {
					t.Fatalf("%s: rejection is not a TokenError: %T %v", tc.name, err, err)
				}
				if len(raw) >= 8 && strings.Contains(ae.Reason, raw) {
					t.Fatalf("%s: rejection reason echoes the token", tc.name)
				}
				continue
			}
			if u == nil || strings.TrimSpace(u.Subject) == "" {
				t.Fatalf("%s: accepted a token without a subject", tc.name)
			}
			checkIndependently(t, tc.name, raw, tc.key)
		}
	})
}

// checkIndependently re-verifies an accepted token without the verifier.
func checkIndependently(t *testing.T, name, raw string, key func(alg string) any) {
	t.Helper()
	parts := strings.Split(raw, ".")
	if len(parts) != 3 {
		t.Fatalf("%s: accepted a token with %d parts", name, len(parts))
	}
	hdr, err := base64.RawURLEncoding.DecodeString(parts[0])
	if err != nil {
		t.Fatalf("%s: accepted a token whose header is not base64url: %v", name, err)
	}
	var h struct {
		Alg string `json:"alg"`
	}
	if err := json.Unmarshal(hdr, &h); err != nil {
		t.Fatalf("%s: accepted a token whose header is not JSON: %v", name, err)
	}
	k := key(h.Alg)
	if k == nil {
		t.Fatalf("%s: accepted alg %q, which this key set does not allow", name, h.Alg)
	}
	method := jwt.GetSigningMethod(h.Alg)
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil {
		t.Fatalf("%s: accepted a token whose signature is not base64url: %v", name, err)
	}
	if err := method.Verify(parts[0]+"."+parts[1], sig, k); err != nil {
		t.Fatalf("%s: accepted a token whose signature does not verify: %v", name, err)
	}
	body, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatalf("%s: accepted a token whose claims are not base64url: %v", name, err)
	}
	var c struct {
		Exp *float64 `json:"exp"`
	}
	if err := json.Unmarshal(body, &c); err != nil {
		t.Fatalf("%s: accepted a token whose claims are not JSON: %v", name, err)
	}
	if c.Exp == nil || time.Unix(int64(*c.Exp), 0).Add(authLeeway).Before(testNow) {
		t.Fatalf("%s: accepted a token without a future exp", name)
	}
}
