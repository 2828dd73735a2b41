package sandbox

import (
	"crypto/tls"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/go-plugin"
)

// tlsHandshake runs a TLS handshake between client and server configs over
// a unix socket, as the plugin's, and returns the client's and the server's
// errors.
func tlsHandshake(t *testing.T, client, server *tls.Config) (clientErr, serverErr error) {
	t.Helper()
	ln, err := net.Listen("unix", filepath.Join(t.TempDir(), "s"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	a, err := net.Dial("unix", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	deadline := time.Now().Add(10 * time.Second)
	a.SetDeadline(deadline)
	b.SetDeadline(deadline)
	done := make(chan error, 1)
	go func() {
		s := tls.Server(b, server)
		err := s.Handshake()
		if err == nil {
			// TLS 1.3 reports a refused client certificate to the client
			// only on its first read.
			_, err = s.Write([]byte{1})
		}
		b.Close()
		done <- err
	}()
	c := tls.Client(a, client)
	clientErr = c.Handshake()
	if clientErr == nil {
		_, clientErr = c.Read(make([]byte, 1))
	}
	a.Close()
	return clientErr, <-done
}

func mustJobTLS(t *testing.T) (*tls.Config, *tls.Config) {
	t.Helper()
	host, child, err := newJobTLS(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	srv, err := child.serverConfig()
	if err != nil {
		t.Fatal(err)
	}
	return host, srv
}

// TestJobTLSMutual: the host and the child of one job authenticate each
// other; a client of another job, or without a certificate, is refused, and
// the host refuses a child of another job.
func TestJobTLSMutual(t *testing.T) {
	host, child := mustJobTLS(t)
	otherHost, otherChild := mustJobTLS(t)
	noCert := host.Clone()
	noCert.Certificates = nil

	tests := []struct {
		name           string
		client, server *tls.Config
		ok             bool
	}{
		{name: "same job", client: host, server: child, ok: true},
		{name: "host of another job", client: otherHost, server: child},
		{name: "child of another job", client: host, server: otherChild},
		{name: "client without a certificate", client: noCert, server: child},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cerr, serr := tlsHandshake(t, tt.client, tt.server)
			if tt.ok && (cerr != nil || serr != nil) {
				t.Fatalf("handshake failed: client %v, server %v", cerr, serr)
			}
			if !tt.ok && (cerr == nil || serr == nil) {
				t.Fatalf("handshake accepted: client %v, server %v", cerr, serr)
			}
		})
	}
}

func TestChildTLSMaterialRequired(t *testing.T) {
	_, child, err := newJobTLS(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]*childTLS{
		"none":           nil,
		"no key":         {Cert: child.Cert, ClientCert: child.ClientCert},
		"no client cert": {Cert: child.Cert, Key: child.Key},
		"bad key":        {Cert: child.Cert, Key: []byte("x"), ClientCert: child.ClientCert},
	} {
		if _, err := c.serverConfig(); err == nil {
			t.Errorf("%s: serverConfig accepted incomplete material", name)
		}
	}
}

// startTestChild starts a real child for a job over r's data with the
// configuration edit applies, returning its plugin client and the host's
// TLS configuration, or the error of its start (the handshake included).
func startTestChild(t *testing.T, r *Runner, edit func(*childConfig)) (*plugin.Client, *tls.Config, error) {
	t.Helper()
	jobDir := t.TempDir()
	if err := os.Mkdir(filepath.Join(jobDir, "tmp"), 0o700); err != nil {
		t.Fatal(err)
	}
	host, child, err := newJobTLS(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	cc := childConfig{
		DataPath: r.cfg.DataPath, JobDir: jobDir, MemoryLimit: r.cfg.MemoryLimit, Threads: r.cfg.Threads,
		MaxExpressionDepth: r.cfg.MaxExpressionDepth, TempDirMaxSize: r.cfg.TempDirMaxSize,
		CPUSeconds: 60, MaxRows: r.cfg.MaxRows, AllowWeak: true, TLS: child, ParentPID: os.Getpid(),
	}
	edit(&cc)
	ccJSON, err := json.Marshal(cc)
	if err != nil {
		t.Fatal(err)
	}
	pc, cmd, err := r.start(ccJSON, host, jobDir, false, true)
	if err != nil && cmd.Process == nil {
		pc, cmd, err = r.start(ccJSON, host, jobDir, false, false) // no user namespaces here
	}
	t.Cleanup(func() {
		if pc != nil {
			pc.Kill()
		}
		if cmd.Process != nil {
			cmd.Process.Kill()
		}
	})
	return pc, host, err
}

// TestChildRefusesAnotherParent: a child whose parent is not the host that
// configured it (the host died and the child was reparented) stops before
// it opens any data, whatever the parent's pid — also when the host is pid 1
// in a container, which a comparison with 1 would refuse.
func TestChildRefusesAnotherParent(t *testing.T) {
	r := MustRunner(t, testConfig(t, MustFixture(t, 20)))
	if _, _, err := startTestChild(t, r, func(cc *childConfig) { cc.ParentPID = os.Getpid() + 1 }); err == nil {
		t.Fatal("a child configured by another parent started serving")
	}
	if _, _, err := startTestChild(t, r, func(*childConfig) {}); err != nil {
		t.Fatalf("the same child configured by its parent: %v", err)
	}
}

// TestPluginSocketRequiresJobCert starts a real child and connects to its
// plugin socket: the host of another job is refused, this job's host is
// served.
func TestPluginSocketRequiresJobCert(t *testing.T) {
	r := MustRunner(t, testConfig(t, MustFixture(t, 20)))
	pc, host, err := startTestChild(t, r, func(*childConfig) {})
	if err != nil {
		t.Fatal(err)
	}
	addr, err := pc.Start()
	if err != nil {
		t.Fatal(err)
	}
	other, _, err := newJobTLS(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	// Clients that trust this child but present another job's host
	// certificate, or none: the child must refuse them.
	otherCert := host.Clone()
	otherCert.Certificates = other.Certificates
	noCert := host.Clone()
	noCert.Certificates = nil
	for _, tt := range []struct {
		name string
		cfg  *tls.Config
		ok   bool
	}{
		{name: "another job's client certificate", cfg: otherCert},
		{name: "no client certificate", cfg: noCert},
		{name: "host of another job", cfg: other},
		{name: "this job's host", cfg: host, ok: true},
	} {
		conn, err := net.Dial(addr.Network(), addr.String())
		if err != nil {
			t.Fatal(err)
		}
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		cfg := tt.cfg.Clone()
		cfg.NextProtos = []string{"h2"} // gRPC refuses TLS without ALPN h2
		c := tls.Client(conn, cfg)
		err = c.Handshake()
		if err == nil {
			// The server speaks first in HTTP/2 (its SETTINGS frame); a
			// refused client certificate surfaces on this read instead.
			_, err = c.Read(make([]byte, 1))
		}
		conn.Close()
		if tt.ok && err != nil {
			t.Errorf("%s: %v", tt.name, err)
		}
		if !tt.ok && err == nil {
			t.Errorf("%s: connection accepted", tt.name)
		}
	}
}
