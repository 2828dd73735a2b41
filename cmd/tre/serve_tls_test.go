package main

import (
	"strings"
	"testing"
)

// TestPlainHTTPRefusal checks ServeConfig.Validate's rule: plain HTTP only
// on loopback, unless TLS is configured or a TLS-terminating proxy is
// declared.
func TestPlainHTTPRefusal(t *testing.T) {
	tests := []struct {
		name        string
		addr        string
		tls         bool
		behindProxy bool
		refused     bool
	}{
		{name: "IPv4 loopback", addr: "127.0.0.1:8080"},
		{name: "IPv6 loopback", addr: "[::1]:8080"},
		{name: "localhost", addr: "localhost:8080"},
		{name: "other loopback address", addr: "127.0.0.2:8080"},
		{name: "all interfaces", addr: "0.0.0.0:8080", refused: true},
		{name: "empty host", addr: ":8080", refused: true},
		{name: "IPv6 all interfaces", addr: "[::]:8080", refused: true},
		{name: "private address", addr: "10.1.2.3:443", refused: true},
		{name: "host name", addr: "broker.nhs.internal:443", refused: true},
		{name: "all interfaces with TLS", addr: "0.0.0.0:8443", tls: true},
		{name: "all interfaces behind a proxy", addr: "0.0.0.0:8080", behindProxy: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := DefaultServeConfig()
			cfg.DataDir = t.TempDir()
			cfg.JWKSFile = "/etc/tre/jwks.json"
			cfg.Addr = tt.addr
			cfg.BehindProxy = tt.behindProxy
			if tt.tls {
				cfg.TLSCert, cfg.TLSKey = "/etc/tre/tls.crt", "/etc/tre/tls.key"
			}
			err := cfg.Validate()
			if refused := err != nil; refused != tt.refused {
				t.Fatalf("Validate() = %v, want refused %v", err, tt.refused)
			}
			if tt.refused && !strings.Contains(err.Error(), "refusing plain HTTP on "+tt.addr) {
				t.Errorf("error %q does not name the address", err)
			}
		})
	}
}
