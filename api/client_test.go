package api

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/nhs-tre/tre/broker"
)

// The client against a real server is tested in api/server (TestClientFlow).

func TestClientErrors(t *testing.T) {
	hang := make(chan struct{})
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/hang":
			<-hang
		case "/api/v1/queries/1":
			w.Header().Set("Content-Type", "text/html")
			w.WriteHeader(502)
			w.Write([]byte("<html>bad gateway</html>"))
		}
	}))
	defer ts.Close()
	defer close(hang) // before Close, which waits for the hanging handler
	c := &Client{BaseURL: ts.URL, Token: "t", HTTPClient: &http.Client{Timeout: 200 * time.Millisecond}}
	_, err := c.Query(context.Background(), 1)
	var ae *Error
	if !errors.As(err, &ae) || ae.Status != 502 || ae.Code != broker.EUNAVAILABLE {
		t.Errorf("proxy error page: %v", err)
	}
	if _, _, _, err := c.raw(context.Background(), "GET", "/hang", nil, nil); err == nil {
		t.Error("hanging server: no error")
	}
	if err := (&Client{}).Healthz(context.Background()); err == nil {
		t.Error("no base URL: no error")
	}
}
