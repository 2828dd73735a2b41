package catrust

import (
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
)

func TestTransport(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer srv.Close()
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.pem")
	block := &pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}
	if err := os.WriteFile(ca, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	junk := filepath.Join(dir, "junk.pem")
	if err := os.WriteFile(junk, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	get := func(caFile string) error {
		tr, err := Transport(caFile)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := (&http.Client{Transport: tr}).Get(srv.URL)
		if err == nil {
			resp.Body.Close()
		}
		return err
	}
	if err := get(ca); err != nil {
		t.Errorf("the server's own CA: %v", err)
	}
	if err := get(""); err == nil {
		t.Error("without the CA file the system roots trusted a test certificate")
	}
	if _, err := Transport(junk); err == nil {
		t.Error("a file without a PEM certificate was accepted")
	}
	if _, err := Transport(filepath.Join(dir, "missing.pem")); err == nil {
		t.Error("a missing CA file was accepted")
	}
}
