package tlsreload

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// testCA is a certificate authority made up for one test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

var testSerial atomic.Int64

func mustKey(tb testing.TB) *ecdsa.PrivateKey {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	return key
}

func mustCA(tb testing.TB, name string) *testCA {
	tb.Helper()
	key := mustKey(tb)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(testSerial.Add(1)),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC),
		NotAfter:              time.Date(2099, 1, 1, 0, 0, 0, 0, time.UTC),
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		tb.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatal(err)
	}
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue returns PEM certificate and key for cn, valid for 127.0.0.1.
func (ca *testCA) issue(tb testing.TB, cn string, usage x509.ExtKeyUsage) (certPEM, keyPEM []byte) {
	tb.Helper()
	key := mustKey(tb)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(testSerial.Add(1)),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC),
		NotAfter:     time.Date(2099, 1, 1, 0, 0, 0, 0, time.UTC),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		tb.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		tb.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}

// writeServerCert writes a server certificate for cn to dir/server.{crt,key}
// and stamps both files with mod, so a rotation is visible to the poller
// whatever the file system's timestamp resolution.
func writeServerCert(tb testing.TB, ca *testCA, dir, cn string, mod time.Time) (certFile, keyFile string) {
	tb.Helper()
	certPEM, keyPEM := ca.issue(tb, cn, x509.ExtKeyUsageServerAuth)
	certFile, keyFile = filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key")
	for f, b := range map[string][]byte{certFile: certPEM, keyFile: keyPEM} {
		if err := os.WriteFile(f, b, 0o600); err != nil {
			tb.Fatal(err)
		}
		if err := os.Chtimes(f, mod, mod); err != nil {
			tb.Fatal(err)
		}
	}
	return certFile, keyFile
}

// serveTLS serves 200 "ok" over HTTPS with cfg on 127.0.0.1:0.
func serveTLS(tb testing.TB, cfg *tls.Config) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, "ok")
		}),
		TLSConfig:         cfg,
		ReadHeaderTimeout: 5 * time.Second,
		ErrorLog:          slog.NewLogLogger(slog.DiscardHandler, slog.LevelError),
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.ServeTLS(ln, "", "")
	}()
	tb.Cleanup(func() {
		srv.Close()
		<-done
	})
	return "https://" + ln.Addr().String() + "/"
}

// tlsClient trusts ca and, if given, presents a client certificate. Each
// request opens a new connection so a new server certificate is seen.
func tlsClient(ca *testCA, clientCert *tls.Certificate) *http.Client {
	pool := x509.NewCertPool()
	pool.AddCert(ca.cert)
	cfg := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if clientCert != nil {
		// Always offer it: with Certificates, Go's client would silently
		// send nothing when the server's acceptable CAs do not match,
		// which would not test the server's verification.
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return clientCert, nil
		}
	}
	return &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{TLSClientConfig: cfg, DisableKeepAlives: true},
	}
}

// peerCN fetches url and returns the server certificate's common name.
func peerCN(tb testing.TB, c *http.Client, url string) string {
	tb.Helper()
	resp, err := c.Get(url)
	if err != nil {
		tb.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || string(body) != "ok" {
		tb.Fatalf("GET %s = %d %q", url, resp.StatusCode, body)
	}
	if resp.TLS == nil {
		tb.Fatalf("GET %s: not over TLS", url)
	}
	return resp.TLS.PeerCertificates[0].Subject.CommonName
}

func TestTLSReloadOnCall(t *testing.T) {
	dir := t.TempDir()
	ca := mustCA(t, "test CA")
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	certFile, keyFile := writeServerCert(t, ca, dir, "broker-1", t0)
	cfg, reload, err := New(certFile, keyFile, "", slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	url := serveTLS(t, cfg)
	client := tlsClient(ca, nil)
	if got := peerCN(t, client, url); got != "broker-1" {
		t.Fatalf("first certificate CN = %q, want broker-1", got)
	}

	writeServerCert(t, ca, dir, "broker-2", t0.Add(time.Hour))
	if err := reload(); err != nil {
		t.Fatal(err)
	}
	if got := peerCN(t, client, url); got != "broker-2" {
		t.Fatalf("after reload CN = %q, want broker-2", got)
	}

	// A broken renewal is reported and the running certificate stays.
	if err := os.WriteFile(certFile, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := reload(); err == nil {
		t.Fatal("reload of a broken certificate succeeded")
	}
	if got := peerCN(t, client, url); got != "broker-2" {
		t.Fatalf("after failed reload CN = %q, want broker-2", got)
	}

	// TLS 1.1 is refused.
	old := tlsClient(ca, nil)
	old.Transport.(*http.Transport).TLSClientConfig.MaxVersion = tls.VersionTLS11
	old.Transport.(*http.Transport).TLSClientConfig.MinVersion = tls.VersionTLS10
	if resp, err := old.Get(url); err == nil {
		resp.Body.Close()
		t.Fatal("a TLS 1.1 client was served")
	}
}

func TestTLSReloadOnChange(t *testing.T) {
	dir := t.TempDir()
	ca := mustCA(t, "test CA")
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	certFile, keyFile := writeServerCert(t, ca, dir, "broker-1", t0)
	var clock atomic.Int64 // seconds since t0, advanced by hand
	now := func() time.Time { return t0.Add(time.Duration(clock.Load()) * time.Second) }
	r, err := newCertReloader(certFile, keyFile, "", tls.NoClientCert, slog.New(slog.DiscardHandler), now, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	url := serveTLS(t, r.serverConfig())
	client := tlsClient(ca, nil)

	writeServerCert(t, ca, dir, "broker-2", t0.Add(time.Hour))
	clock.Store(5) // within the poll interval: not looked at yet
	if got := peerCN(t, client, url); got != "broker-1" {
		t.Fatalf("before the poll interval CN = %q, want broker-1", got)
	}
	clock.Store(11)
	if got := peerCN(t, client, url); got != "broker-2" {
		t.Fatalf("after the poll interval CN = %q, want broker-2", got)
	}
}

func TestMutualTLS(t *testing.T) {
	dir := t.TempDir()
	serverCA := mustCA(t, "server CA")
	clientCA := mustCA(t, "agent CA")
	otherCA := mustCA(t, "someone else's CA")
	certFile, keyFile := writeServerCert(t, serverCA, dir, "broker", time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	caFile := filepath.Join(dir, "agents-ca.pem")
	if err := os.WriteFile(caFile, clientCA.pem, 0o600); err != nil {
		t.Fatal(err)
	}
	clientCert := func(ca *testCA) *tls.Certificate {
		certPEM, keyPEM := ca.issue(t, "site-a", x509.ExtKeyUsageClientAuth)
		c, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			t.Fatal(err)
		}
		return &c
	}
	agent, stranger := clientCert(clientCA), clientCert(otherCA)

	required, _, err := New(certFile, keyFile, caFile, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	optional, _, err := NewClientAuth(certFile, keyFile, caFile, tls.VerifyClientCertIfGiven, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	requiredURL, optionalURL := serveTLS(t, required), serveTLS(t, optional)

	tests := []struct {
		name   string
		url    string
		client *tls.Certificate
		ok     bool
	}{
		{name: "required, agent certificate", url: requiredURL, client: agent, ok: true},
		{name: "required, no certificate", url: requiredURL, client: nil, ok: false},
		{name: "required, certificate from another CA", url: requiredURL, client: stranger, ok: false},
		{name: "optional, agent certificate", url: optionalURL, client: agent, ok: true},
		{name: "optional, no certificate", url: optionalURL, client: nil, ok: true},
		{name: "optional, certificate from another CA", url: optionalURL, client: stranger, ok: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := tlsClient(serverCA, tt.client).Get(tt.url)
			if err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
			if ok := err == nil && resp.StatusCode == http.StatusOK; ok != tt.ok {
				t.Fatalf("served = %v (err %v), want %v", ok, err, tt.ok)
			}
		})
	}
}

func TestTLSConfigErrors(t *testing.T) {
	dir := t.TempDir()
	ca := mustCA(t, "test CA")
	certFile, keyFile := writeServerCert(t, ca, dir, "broker", time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	notPEM := filepath.Join(dir, "junk.pem")
	if err := os.WriteFile(notPEM, []byte("junk"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name                string
		cert, key, clientCA string
		want                string
	}{
		{name: "missing certificate", cert: filepath.Join(dir, "nope.crt"), key: keyFile, want: "nope.crt"},
		{name: "key without certificate", key: keyFile, want: "both required"},
		{name: "certificate is junk", cert: notPEM, key: keyFile, want: "load certificate"},
		{name: "client CA is junk", cert: certFile, key: keyFile, clientCA: notPEM, want: "holds no PEM certificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := New(tt.cert, tt.key, tt.clientCA, slog.New(slog.DiscardHandler))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error = %v, want it to contain %q", err, tt.want)
			}
		})
	}
}
