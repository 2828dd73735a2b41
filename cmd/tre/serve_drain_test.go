package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

// TestShutdownDelay: a broker told to stop with shutdown_delay set answers
// /readyz with 503 while it still serves every other request, so a load
// balancer's health check takes it out of rotation before the listener
// closes; then it stops.
func TestShutdownDelay(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	var logs bytes.Buffer
	m := newServeMain(io.Discard, &logs).(*ServeMain)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := m.ParseFlags(ctx, []string{"--data-dir", t.TempDir(), "--dev", "--addr", addr, "--shutdown-delay", "5m"}); err != nil {
		t.Fatal(err)
	}
	m.cutDrain = make(chan struct{})
	stopped := make(chan error, 1)
	go func() { stopped <- m.Run(ctx) }()

	get := func(path string) int {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	waitFor := func(path string, want int) {
		t.Helper()
		for i := 0; get(path) != want; i++ {
			if i == 600 {
				t.Fatalf("%s never answered %d; logs:\n%s", path, want, logs.String())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitFor("/readyz", http.StatusOK)
	cancel() // SIGTERM
	waitFor("/readyz", http.StatusServiceUnavailable)
	if code := get("/healthz"); code != http.StatusOK {
		t.Fatalf("/healthz while draining: %d, want 200 (still serving)", code)
	}
	if code := get("/api/v1/queries"); code != http.StatusUnauthorized {
		t.Fatalf("an API request while draining: %d, want 401 (served)", code)
	}
	select {
	case err := <-stopped:
		t.Fatalf("the broker stopped within its shutdown delay: %v", err)
	default:
	}
	close(m.cutDrain)
	if err := <-stopped; err != nil {
		t.Fatalf("serve: %v", err)
	}
	if code := get("/healthz"); code != 0 {
		t.Fatalf("/healthz after shutdown: %d, want no answer", code)
	}
}
