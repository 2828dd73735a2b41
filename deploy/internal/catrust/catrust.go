// Package catrust builds the HTTP transport the deployment's small static
// helpers (healthcheck, register) use to reach the broker: no proxy, and
// when a CA file is given, only that CA's certificates trusted.
package catrust

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"os"
)

// Transport returns a transport that ignores proxy settings and, when
// caFile is not empty, trusts only the PEM certificates in it.
func Transport(caFile string) (*http.Transport, error) {
	tr := &http.Transport{Proxy: nil}
	if caFile == "" {
		return tr, nil
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s holds no PEM certificate", caFile)
	}
	tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	return tr, nil
}
