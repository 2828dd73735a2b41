package server

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/nhs-tre/tre/api"
	"github.com/nhs-tre/tre/broker"
	"github.com/nhs-tre/tre/dp"
	"github.com/nhs-tre/tre/job"
)

// gateDryRunner blocks every dry run until release is closed, and records
// how many ran at once.
type gateDryRunner struct {
	release chan struct{}
	started chan struct{}

	mu           sync.Mutex
	running, max int
}

func (g *gateDryRunner) DryRun(ctx context.Context, dataset, sql string, epsilon float64, lists []job.Codelist) (*dp.Result, []job.AbsentCodes, error) {
	g.mu.Lock()
	g.running++
	g.max = max(g.max, g.running)
	g.mu.Unlock()
	g.started <- struct{}{}
	<-g.release
	g.mu.Lock()
	g.running--
	g.mu.Unlock()
	return fakeDryRunner{}.DryRun(ctx, dataset, sql, epsilon, lists)
}

// TestDryRunCaps holds dry runs open and checks the caps over HTTP: a
// user's second concurrent dry run and the third at once on the broker are
// refused with 429, a Retry-After and a JSON error, without reaching the
// sandbox; once the running ones finish, dry runs are accepted again.
func TestDryRunCaps(t *testing.T) {
	gate := &gateDryRunner{release: make(chan struct{}), started: make(chan struct{}, 10)}
	srv := newTestServer(t, newFakeService(), func(c *Config) {
		c.DryRunner = LimitDryRuns(gate, DryRunLimits{Global: 2, PerUser: 1})
	})
	body := `{"project_id":1,"sql":"SELECT count(*) FROM patients"}`
	dryRun := func(sub string) *httptest.ResponseRecorder {
		return call(t, srv.Handler(), "POST", "/api/v1/queries/dry-run", mustToken(t, sub, broker.RoleResearcher), body)
	}
	var wg sync.WaitGroup
	held := make([]*httptest.ResponseRecorder, 2)
	for i, sub := range []string{"alice", "bob"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			held[i] = dryRun(sub)
		}()
		<-gate.started
	}
	refused := []struct{ name, sub, msg string }{
		{"the same user's second", "alice", "you already have 1 dry run"},
		{"a third at once", "carol", "as many as it allows at once"},
	}
	for _, tt := range refused {
		rec := dryRun(tt.sub)
		var e api.ErrorResponse
		if rec.Code != http.StatusTooManyRequests || json.Unmarshal(rec.Body.Bytes(), &e) != nil || e.Error.Code != broker.ELIMIT {
			t.Fatalf("%s: %d %s, want 429 rate_limited", tt.name, rec.Code, rec.Body)
		}
		if rec.Header().Get("Retry-After") != "1" {
			t.Errorf("%s: Retry-After %q, want 1", tt.name, rec.Header().Get("Retry-After"))
		}
		if !json.Valid(rec.Body.Bytes()) || !strings.Contains(e.Error.Message, tt.msg) {
			t.Errorf("%s: message %q, want it to say %q", tt.name, e.Error.Message, tt.msg)
		}
	}
	close(gate.release)
	wg.Wait()
	for i, rec := range held {
		if rec.Code != http.StatusOK {
			t.Errorf("held dry run %d: %d %s", i, rec.Code, rec.Body)
		}
	}
	if rec := dryRun("alice"); rec.Code != http.StatusOK {
		t.Errorf("after the others finished: %d %s", rec.Code, rec.Body)
	}
	if gate.max != 2 {
		t.Errorf("%d dry runs reached the sandbox at once, want 2", gate.max)
	}
}
