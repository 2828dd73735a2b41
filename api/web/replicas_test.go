package web_test

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/nhs-tre/tre/api/auth"
	"github.com/nhs-tre/tre/api/web"
	"github.com/nhs-tre/tre/broker"
	"github.com/nhs-tre/tre/broker/brokertest"
	"github.com/nhs-tre/tre/broker/postgres"
	"github.com/nhs-tre/tre/broker/sqlite"
)

// replica is a second broker process over e's database: its own store
// connection, service and web handler, the same signing key and clock. It
// shares nothing with e in memory.
func (e *env) replica(tb testing.TB, store broker.Store) *env {
	tb.Helper()
	ver, err := auth.NewVerifier(context.Background(), auth.AuthConfig{DevKey: testKey}, auth.WithNow(e.clock.Now))
	if err != nil {
		tb.Fatalf("verifier: %v", err)
	}
	svc := broker.NewService(store, e.parser, broker.Options{Now: e.clock.Now})
	r := *e
	r.svc = svc
	r.h = web.New(web.Config{Dev: true, Now: e.clock.Now}, svc, ver, slog.New(slog.NewTextHandler(io.Discard, nil)))
	mux := http.NewServeMux()
	mux.Handle(web.PathPrefix, r.h)
	r.srv = httptest.NewServer(mux)
	tb.Cleanup(r.srv.Close)
	return &r
}

// on is the same browser (cookie jar) talking to another replica, as behind
// a load balancer that is not sticky. Go's cookie jar does not isolate
// cookies by port, so both test servers on 127.0.0.1 get the cookie.
func (c *client) on(e *env) *client { return &client{tb: c.tb, e: e, http: c.http} }

// testSessionsAcrossReplicas signs in on one replica and uses the session on
// the other: pages, a POST with the CSRF token read from the first, sign-out
// on one refused on the other (issue 25).
func testSessionsAcrossReplicas(t *testing.T, one, two broker.Store) {
	a := newEnvOn(t, one)
	b := a.replica(t, two)

	alice := a.signIn(t, "alice")
	aliceB := alice.on(b)
	if resp, body := aliceB.get("/ui/queries"); resp.StatusCode != http.StatusOK || !strings.Contains(body, "Alice Researcher") {
		t.Fatalf("replica two does not know the session of replica one: status %d", resp.StatusCode)
	}
	// The CSRF token read from a page of replica one is accepted by two.
	csrf := alice.csrf()
	if csrf != aliceB.csrf() {
		t.Fatalf("the replicas show different CSRF tokens for one session")
	}
	q := a.mustSubmit(t, "alice", "SELECT sex, count(*) AS n FROM patients GROUP BY sex", "replicas")
	resp, _ := aliceB.post("/ui/queries/"+itoa(q.ID)+"/cancel", url.Values{"csrf": {csrf}})
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("cancel on replica two with replica one's CSRF token: status %d", resp.StatusCode)
	}
	if got, err := a.svc.FindQueryByID(a.as("alice"), q.ID); err != nil || got.Status != broker.StatusCancelled {
		t.Fatalf("after the cancel on replica two: %v, %v", got, err)
	}
	// Another session's token is refused on either replica.
	bob := b.signIn(t, "bob")
	if resp, _ := bob.on(a).post("/ui/signout", url.Values{"csrf": {csrf}}); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("sign-out with another session's CSRF token: status %d, want 403", resp.StatusCode)
	}

	// Sign out on replica one: replica two refuses the cookie, even from a
	// browser (or an attacker) that kept it.
	u, _ := url.Parse(a.srv.URL)
	kept := alice.http.Jar.Cookies(u)
	if len(kept) == 0 {
		t.Fatal("no session cookie in the jar")
	}
	if resp, _ := alice.post("/ui/signout", url.Values{"csrf": {csrf}}); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("sign out: status %d", resp.StatusCode)
	}
	for _, path := range []string{"/ui/queries", "/ui/projects"} {
		req, _ := http.NewRequest(http.MethodGet, b.srv.URL+path, nil)
		for _, ck := range kept {
			req.AddCookie(ck)
		}
		resp, _ := aliceB.do(req)
		if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/ui/signin" {
			t.Fatalf("%s on replica two after sign-out on one: status %d, want a redirect to sign-in", path, resp.StatusCode)
		}
	}
	req, _ := http.NewRequest(http.MethodPost, b.srv.URL+"/ui/signout", strings.NewReader(url.Values{"csrf": {csrf}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	for _, ck := range kept {
		req.AddCookie(ck)
	}
	if resp, _ := aliceB.do(req); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("POST on replica two with a signed-out session: status %d, want 403", resp.StatusCode)
	}
	// Bob, signed in on two, is unaffected.
	if resp, _ := bob.on(a).get("/ui/review"); resp.StatusCode != http.StatusOK {
		t.Fatalf("another user's session after alice signed out: status %d", resp.StatusCode)
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

func TestSessionsAcrossReplicasSQLite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "broker.db")
	open := func() broker.Store {
		s, err := sqlite.Open(context.Background(), path)
		if err != nil {
			t.Fatalf("open sqlite: %v", err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	one := open()
	testSessionsAcrossReplicas(t, one, open())
}

func TestSessionsAcrossReplicasPostgres(t *testing.T) {
	u := brokertest.PostgresURL(t)
	open := func() broker.Store {
		s, err := postgres.Open(context.Background(), u)
		if err != nil {
			t.Fatalf("open postgres: %v", err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	one := open()
	testSessionsAcrossReplicas(t, one, open())
}
