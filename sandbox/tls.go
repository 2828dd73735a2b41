package sandbox

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"time"
)

// Mutual TLS on the plugin socket. go-plugin's AutoMTLS would do this too,
// but it makes a P-521 ECDSA key on each side (6.6 ms per key operation
// here, ~25 ms on the start's critical path). Instead the host makes, per
// job, an Ed25519 key pair and a self-signed certificate for each side
// (tens of microseconds), keeps its own key, and hands the child its key
// and the host's certificate in the child's config, as AutoMTLS hands over
// PLUGIN_CLIENT_CERT. Each side trusts exactly the other's one certificate:
// only this host can call this child, and the host talks only to the
// process it started. The keys live for one job.

// tlsServerName is the name both certificates carry and the host verifies.
const tlsServerName = "localhost"

// childTLS is the child's side of one job's mutual TLS, in DER.
type childTLS struct {
	Cert       []byte `json:"cert"`        // the child's certificate
	Key        []byte `json:"key"`         // the child's private key, PKCS #8
	ClientCert []byte `json:"client_cert"` // the host's certificate, the only client accepted
}

// newJobTLS makes both key pairs and returns the host's client config and
// the child's material.
func newJobTLS(now time.Time) (*tls.Config, *childTLS, error) {
	hostCert, hostKey, err := selfSigned(now)
	if err != nil {
		return nil, nil, err
	}
	childCert, childKey, err := selfSigned(now)
	if err != nil {
		return nil, nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(childKey)
	if err != nil {
		return nil, nil, err
	}
	roots, err := certPool(childCert)
	if err != nil {
		return nil, nil, err
	}
	host := &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{hostCert}, PrivateKey: hostKey}},
		RootCAs:      roots,
		ServerName:   tlsServerName,
		MinVersion:   tls.VersionTLS13,
	}
	return host, &childTLS{Cert: childCert, Key: keyDER, ClientCert: hostCert}, nil
}

// serverConfig is the child's TLS config: its own certificate, and a client
// certificate required and verified against the host's one.
func (c *childTLS) serverConfig() (*tls.Config, error) {
	if c == nil || len(c.Cert) == 0 || len(c.Key) == 0 || len(c.ClientCert) == 0 {
		return nil, errors.New("no TLS material in the sandbox config")
	}
	key, err := x509.ParsePKCS8PrivateKey(c.Key)
	if err != nil {
		return nil, fmt.Errorf("sandbox TLS key: %w", err)
	}
	clients, err := certPool(c.ClientCert)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{c.Cert}, PrivateKey: key}},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    clients,
		MinVersion:   tls.VersionTLS13,
	}, nil
}

// selfSigned makes an Ed25519 key and a certificate for tlsServerName,
// valid for client and server authentication, signed by itself (it is its
// own root, as go-plugin's AutoMTLS certificates are).
func selfSigned(now time.Time) ([]byte, crypto.Signer, error) {
	pub, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	sn, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          sn,
		Subject:               pkix.Name{CommonName: tlsServerName},
		DNSNames:              []string{tlsServerName},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(48 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, key)
	if err != nil {
		return nil, nil, err
	}
	return der, key, nil
}

func certPool(der []byte) (*x509.CertPool, error) {
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("sandbox TLS certificate: %w", err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return pool, nil
}
