// Package tlsreload serves TLS from certificate and key files that an
// operator may replace while the broker runs: a changed file is picked up
// on the next handshake after a short interval, or at once when Reload is
// called (SIGHUP), and a broken replacement keeps the last good pair.
package tlsreload

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// tlsPollInterval is how often a handshake may trigger a look at the
// certificate files' modification times. Certificates renewed by certbot,
// cert-manager or an NHS PKI job are picked up without a restart or SIGHUP.
const tlsPollInterval = 10 * time.Second

// New returns the broker's server TLS configuration: TLS 1.2 or
// later, the certificate and key read from files and reloaded when they
// change (checked at most every tlsPollInterval during handshakes) or when
// reload is called (tre serve routes SIGHUP to it). With clientCAFile set,
// every client must present a certificate signed by that CA (mutual TLS),
// as tls_client_ca documents; use NewClientAuth for the optional
// form. The client CA file is reloaded along with the certificate.
func New(certFile, keyFile, clientCAFile string, logger *slog.Logger) (*tls.Config, func() error, error) {
	auth := tls.NoClientCert
	if clientCAFile != "" {
		auth = tls.RequireAndVerifyClientCert
	}
	return NewClientAuth(certFile, keyFile, clientCAFile, auth, logger)
}

// NewClientAuth is New with the client-certificate policy
// spelled out. tls.VerifyClientCertIfGiven suits one listener shared by
// browsers (no certificate) and site agents (certificate): a certificate that
// is offered must verify, and the HTTP layer then requires
// len(r.TLS.VerifiedChains) > 0 on agent routes.
func NewClientAuth(certFile, keyFile, clientCAFile string, auth tls.ClientAuthType, logger *slog.Logger) (*tls.Config, func() error, error) {
	r, err := newCertReloader(certFile, keyFile, clientCAFile, auth, logger, time.Now, tlsPollInterval)
	if err != nil {
		return nil, nil, err
	}
	return r.serverConfig(), r.reload, nil
}

// fileStamp identifies a version of a file without reading it.
type fileStamp struct {
	mod  time.Time
	size int64
}

// certReloader holds the current TLS configuration and replaces it when the
// files change. Handshakes read it through an atomic pointer, so a reload
// never blocks or tears a handshake in progress.
type certReloader struct {
	certFile, keyFile, caFile string
	auth                      tls.ClientAuthType
	logger                    *slog.Logger
	now                       func() time.Time
	interval                  time.Duration

	current atomic.Pointer[tls.Config]

	mu        sync.Mutex // guards the fields below and serialises reloads
	lastCheck time.Time
	stamps    []fileStamp
}

func newCertReloader(certFile, keyFile, caFile string, auth tls.ClientAuthType, logger *slog.Logger, now func() time.Time, interval time.Duration) (*certReloader, error) {
	switch {
	case certFile == "" || keyFile == "":
		return nil, errors.New("tls: certificate and key files are both required")
	case caFile == "" && auth != tls.NoClientCert:
		return nil, errors.New("tls: client certificate verification needs a client CA file")
	case caFile != "" && auth == tls.NoClientCert:
		return nil, errors.New("tls: a client CA file was given but client certificates are not requested")
	}
	r := &certReloader{
		certFile: certFile, keyFile: keyFile, caFile: caFile, auth: auth,
		logger: logger, now: now, interval: interval,
	}
	if err := r.reload(); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *certReloader) files() []string {
	if r.caFile == "" {
		return []string{r.certFile, r.keyFile}
	}
	return []string{r.certFile, r.keyFile, r.caFile}
}

func (r *certReloader) stat() ([]fileStamp, error) {
	var stamps []fileStamp
	for _, f := range r.files() {
		fi, err := os.Stat(f)
		if err != nil {
			return nil, fmt.Errorf("tls: %w", err)
		}
		stamps = append(stamps, fileStamp{mod: fi.ModTime(), size: fi.Size()})
	}
	return stamps, nil
}

// reload reads the files now. On failure the previous configuration stays in
// service: a half-written renewal must not take the broker off the air.
func (r *certReloader) reload() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.reloadLocked()
}

func (r *certReloader) reloadLocked() error {
	// Stat before reading, so a write that lands between the two is seen as
	// a change at the next check rather than missed.
	stamps, err := r.stat()
	if err != nil {
		return err
	}
	cert, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		return fmt.Errorf("tls: load certificate %s and key %s: %w", r.certFile, r.keyFile, err)
	}
	var pool *x509.CertPool
	if r.caFile != "" {
		pem, err := os.ReadFile(r.caFile)
		if err != nil {
			return fmt.Errorf("tls: client CA: %w", err)
		}
		pool = x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return fmt.Errorf("tls: client CA %s holds no PEM certificate", r.caFile)
		}
	}
	if cert.Leaf == nil {
		cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0])
		if err != nil {
			return fmt.Errorf("tls: parse certificate %s: %w", r.certFile, err)
		}
	}
	r.current.Store(&tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{cert},
		ClientAuth:   r.auth,
		ClientCAs:    pool,
		// Returned from GetConfigForClient, this config replaces the
		// server's, so it must offer HTTP/2 itself.
		NextProtos: []string{"h2", "http/1.1"},
	})
	r.stamps = stamps
	r.lastCheck = r.now()
	r.logger.Info("tls certificate loaded",
		"cert", r.certFile, "subject", cert.Leaf.Subject.String(),
		"not_after", cert.Leaf.NotAfter, "client_auth", r.auth.String())
	return nil
}

// maybeReload reloads if the poll interval has passed and a file changed.
func (r *certReloader) maybeReload() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.now().Sub(r.lastCheck) < r.interval {
		return
	}
	r.lastCheck = r.now()
	stamps, err := r.stat()
	if err != nil {
		r.logger.Warn("tls certificate check failed; keeping the loaded certificate", "err", err)
		return
	}
	changed := len(stamps) != len(r.stamps)
	for i := range stamps {
		if !changed && (!stamps[i].mod.Equal(r.stamps[i].mod) || stamps[i].size != r.stamps[i].size) {
			changed = true
		}
	}
	if !changed {
		return
	}
	if err := r.reloadLocked(); err != nil {
		r.logger.Warn("tls certificate reload failed; keeping the loaded certificate", "err", err)
	}
}

// serverConfig is what the http.Server uses: every handshake goes through
// GetConfigForClient, which hands out the current configuration.
func (r *certReloader) serverConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		ClientAuth: r.auth,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			r.maybeReload()
			return r.current.Load(), nil
		},
		// Set as well so code that only looks for GetCertificate (e.g.
		// http.Server.ServeTLS's check) sees a certificate source.
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			r.maybeReload()
			return &r.current.Load().Certificates[0], nil
		},
	}
}
