// Command gensecrets makes the files deploy/compose.yaml mounts as secrets,
// for a test or evaluation deployment on one Docker host:
//
//	go run ./deploy/gensecrets [-dir deploy/secrets] [-sites site-a,site-b,site-c] [-ttl 720h]
//
// It stands in for the organisation's CA and identity provider: a CA and the
// broker's TLS certificate (names broker, localhost, 127.0.0.1), an Ed25519
// token-signing key whose public half the broker trusts (deploy/broker.yaml's
// jwt_public_keys), one agent token per site and a token for each human
// role (admin, researcher, reviewer, output_checker). Files that exist are
// kept, so running it again only fills gaps; -renew-tokens re-mints the
// tokens (they expire after -ttl) with the signing key already there.
//
// Keys and tokens are written 0600, certificates and the public key 0644,
// in a directory made 0700. Compose (without Swarm) bind-mounts each secret
// file into the containers as it is on the host, and tre runs there as uid
// 10001: the broker's TLS key, the agent tokens and the admin token (for
// compose's site registration step), which tre reads inside the containers
// (the agent refuses a token others can read), are therefore owned by uid
// 10001 (-owner), which needs root. For deploy/compose.replicas.yaml it
// also writes the PostgreSQL password (db.password, and db.pgpass for the
// brokers). None of these files is
// ever committed (deploy/secrets/.gitignore).
package main

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Issuer and Audience are the claims deploy/broker.yaml requires.
const (
	Issuer   = "https://login.example.nhs.uk/realms/tre"
	Audience = "tre-broker"
)

// Users are the human roles' token files and subjects.
var Users = []struct{ File, Subject, Name, Role string }{
	{"admin.token", "dave", "Dave (TRE admin)", "admin"},
	{"researcher.token", "alice", "Alice (researcher)", "researcher"},
	{"reviewer.token", "bob", "Bob (reviewer)", "reviewer"},
	{"output_checker.token", "carol", "Carol (output checker)", "output_checker"},
}

func main() {
	dir := flag.String("dir", "deploy/secrets", "directory to write the files to")
	sites := flag.String("sites", "site-a,site-b,site-c", "site ids to mint agent tokens for, comma-separated")
	ttl := flag.Duration("ttl", 30*24*time.Hour, "how long the tokens are valid")
	renew := flag.Bool("renew-tokens", false, "mint the tokens again even where they exist")
	owner := flag.Int("owner", 10001, "uid and gid that own the files tre reads inside the containers (-1: leave them to the caller)")
	flag.Parse()
	err := Generate(*dir, strings.Split(*sites, ","), *ttl, *renew, *owner, time.Now())
	if err == nil {
		err = GenerateDBPassword(*dir, *owner)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "gensecrets:", err)
		os.Exit(1)
	}
}

// Generate writes every missing file into dir. The broker's key and the
// agent tokens are chowned to owner unless it is negative. One function
// (126 lines): each file is written in the order the next one depends on
// (CA, broker certificate, signing key, tokens).
func Generate(dir string, sites []string, ttl time.Duration, renew bool, owner int, now time.Time) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return err
	}
	p := func(name string) string { return filepath.Join(dir, name) }

	// The CA and the broker's certificate.
	if !exists(p("ca.pem")) || !exists(p("ca.key")) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return err
		}
		tmpl := &x509.Certificate{
			SerialNumber:          serial(),
			Subject:               pkix.Name{CommonName: "tre example CA", Organization: []string{"tre"}},
			NotBefore:             now.Add(-time.Hour),
			NotAfter:              now.AddDate(5, 0, 0),
			KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
			BasicConstraintsValid: true,
			IsCA:                  true,
			MaxPathLenZero:        true,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
		if err != nil {
			return err
		}
		if err := writePEM(p("ca.key"), "PRIVATE KEY", mustPKCS8(key), 0o600); err != nil {
			return err
		}
		if err := writePEM(p("ca.pem"), "CERTIFICATE", der, 0o644); err != nil {
			return err
		}
		os.Remove(p("broker.crt")) // issued by the old CA, if any
	}
	if !exists(p("broker.crt")) || !exists(p("broker.key")) {
		caCert, caKey, err := loadCA(p("ca.pem"), p("ca.key"))
		if err != nil {
			return err
		}
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return err
		}
		tmpl := &x509.Certificate{
			SerialNumber: serial(),
			Subject:      pkix.Name{CommonName: "broker"},
			DNSNames:     []string{"broker", "localhost"},
			IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
			NotBefore:    now.Add(-time.Hour),
			NotAfter:     now.AddDate(1, 0, 0),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		if err != nil {
			return err
		}
		if err := writePEM(p("broker.key"), "PRIVATE KEY", mustPKCS8(key), 0o600); err != nil {
			return err
		}
		if err := writePEM(p("broker.crt"), "CERTIFICATE", der, 0o644); err != nil {
			return err
		}
	}

	// The identity provider's signing key and the broker's copy of its
	// public half.
	if !exists(p("jwt-signing.key")) {
		pub, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return err
		}
		pubDER, err := x509.MarshalPKIXPublicKey(pub)
		if err != nil {
			return err
		}
		if err := writePEM(p("jwt-signing.key"), "PRIVATE KEY", mustPKCS8(priv), 0o600); err != nil {
			return err
		}
		if err := writePEM(p("jwt-public.pem"), "PUBLIC KEY", pubDER, 0o644); err != nil {
			return err
		}
		renew = true // tokens signed by an older key are worthless
	}
	signer, err := loadSigner(p("jwt-signing.key"))
	if err != nil {
		return err
	}
	mint := func(file string, claims jwt.MapClaims) error {
		if exists(p(file)) && !renew {
			return nil
		}
		claims["iss"], claims["aud"] = Issuer, Audience
		claims["iat"], claims["exp"] = now.Unix(), now.Add(ttl).Unix()
		tok, err := jwt.NewWithClaims(jwt.SigningMethodEdDSA, claims).SignedString(signer)
		if err != nil {
			return err
		}
		return writeFile(p(file), []byte(tok+"\n"), 0o600)
	}
	for _, u := range Users {
		if err := mint(u.File, jwt.MapClaims{"sub": u.Subject, "name": u.Name, "org": "Example NHS Trust", "roles": []string{u.Role}}); err != nil {
			return err
		}
	}
	for _, site := range sites {
		site = strings.TrimSpace(site)
		if site == "" {
			continue
		}
		if err := mint(site+".token", jwt.MapClaims{"sub": "agent-" + site, "name": "agent " + site, "roles": []string{"agent"}, "site": site}); err != nil {
			return err
		}
		if err := chown(p(site+".token"), owner); err != nil {
			return err
		}
	}
	// The compose file's registration step reads the admin token.
	if err := chown(p("admin.token"), owner); err != nil {
		return err
	}
	return chown(p("broker.key"), owner)
}

// GenerateDBPassword writes, if missing, the PostgreSQL password of
// deploy/compose.replicas.yaml: db.password for the database's first start
// and db.pgpass, the same password as a libpq/pgx password file the brokers'
// database URL names (passfile=), so that it is in no URL or environment.
// Both are 0600 and owned by owner (the database and the brokers run as
// uid 10001).
func GenerateDBPassword(dir string, owner int) error {
	pw, pgpass := filepath.Join(dir, "db.password"), filepath.Join(dir, "db.pgpass")
	if !exists(pw) || !exists(pgpass) {
		b := make([]byte, 24)
		rand.Read(b) // crypto/rand.Read never returns an error (Go ≥ 1.24)
		secret := hex.EncodeToString(b)
		if err := writeFile(pw, []byte(secret+"\n"), 0o600); err != nil {
			return err
		}
		// host:port:database:user:password
		if err := writeFile(pgpass, []byte("*:*:tre:tre:"+secret+"\n"), 0o600); err != nil {
			return err
		}
	}
	if err := chown(pw, owner); err != nil {
		return err
	}
	return chown(pgpass, owner)
}

// chown gives path to the containers' user.
func chown(path string, owner int) error {
	if owner < 0 {
		return nil
	}
	if err := os.Chown(path, owner, owner); err != nil {
		return fmt.Errorf("%w: tre reads this file as uid %d inside the containers; run as root, or pass -owner -1 and chown it yourself", err, owner)
	}
	return nil
}

func exists(path string) bool { _, err := os.Stat(path); return err == nil }

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err)
	}
	return n
}

func mustPKCS8(key any) []byte {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		panic(err)
	}
	return der
}

func writePEM(path, typ string, der []byte, mode os.FileMode) error {
	return writeFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), mode)
}

// writeFile replaces path atomically with data and mode.
func writeFile(path string, data []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	if err := os.Chmod(tmp, mode); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func readPEM(path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("%s: no PEM block", path)
	}
	return block.Bytes, nil
}

func loadCA(certPath, keyPath string) (*x509.Certificate, any, error) {
	der, err := readPEM(certPath)
	if err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, err
	}
	kder, err := readPEM(keyPath)
	if err != nil {
		return nil, nil, err
	}
	key, err := x509.ParsePKCS8PrivateKey(kder)
	return cert, key, err
}

func loadSigner(path string) (ed25519.PrivateKey, error) {
	der, err := readPEM(path)
	if err != nil {
		return nil, err
	}
	key, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, err
	}
	k, ok := key.(ed25519.PrivateKey)
	if !ok {
		return nil, errors.New(path + ": not an Ed25519 key")
	}
	return k, nil
}
