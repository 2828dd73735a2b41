package web_test

import (
	"context"
	"encoding/csv"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/nhs-tre/tre/broker"
)

const wantCSP = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"

func checkHeaders(tb testing.TB, what string, resp *http.Response) {
	tb.Helper()
	for k, want := range map[string]string{
		"Content-Security-Policy": wantCSP,
		"X-Content-Type-Options":  "nosniff",
		"Referrer-Policy":         "no-referrer",
		"X-Frame-Options":         "DENY",
	} {
		if got := resp.Header.Get(k); got != want {
			tb.Errorf("%s: %s = %q, want %q", what, k, got, want)
		}
	}
}

func TestSecurityHeadersOnEveryResponse(t *testing.T) {
	e := newEnv(t)
	alice := e.signIn(t, "alice")
	anon := &client{tb: t, e: e, http: &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
	q := e.mustSubmit(t, "alice", "SELECT sex, count(*) AS n FROM patients GROUP BY sex", "headers")
	tests := []struct {
		name   string
		c      *client
		method string
		path   string
		status int
	}{
		{"register", anon, "GET", "/register", 200},
		{"signin", anon, "GET", "/ui/signin", 200},
		{"static css", anon, "GET", "/ui/static/style.css", 200},
		{"static js", anon, "GET", "/ui/static/app.js", 200},
		{"unknown page", anon, "GET", "/ui/nope", 404},
		{"signed out redirect", anon, "GET", "/ui/projects", 303},
		{"projects", alice, "GET", "/ui/projects", 200},
		{"editor", alice, "GET", "/ui/editor", 200},
		{"query", alice, "GET", fmt.Sprintf("/ui/queries/%d", q.ID), 200},
		{"missing query", alice, "GET", "/ui/queries/999", 404},
		{"forbidden page", alice, "GET", "/ui/admin", 403},
		{"post without csrf", alice, "POST", fmt.Sprintf("/ui/queries/%d/cancel", q.ID), 403},
		{"not released result", alice, "GET", fmt.Sprintf("/ui/queries/%d/result.csv", q.ID), 403},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var resp *http.Response
			if tt.method == "POST" {
				resp, _ = tt.c.post(tt.path, url.Values{})
			} else {
				resp, _ = tt.c.get(tt.path)
			}
			if resp.StatusCode != tt.status {
				t.Errorf("status %d, want %d", resp.StatusCode, tt.status)
			}
			checkHeaders(t, tt.name, resp)
		})
	}
}

// Payloads that must come back escaped wherever they are shown.
var payloads = []string{`<script>alert(1)</script>`, `"><img src=x onerror=alert(1)>`}

func TestUserTextIsEscapedEverywhere(t *testing.T) {
	e := newEnv(t)
	alice, bob, carol, dave := e.signIn(t, "alice"), e.signIn(t, "bob"), e.signIn(t, "carol"), e.signIn(t, "dave")
	anon := &client{tb: t, e: e, http: &http.Client{}}
	p := e.mustProject(t, "Project "+payloads[0]+payloads[1], []string{"alice"})
	_ = p
	// The SQL carries a payload in a string literal and a comment; the
	// purpose and every reason carry both.
	sql := "SELECT practice, count(*) AS n FROM patients WHERE region <> '" + strings.ReplaceAll(payloads[1], "'", "''") + "' GROUP BY practice -- " + payloads[0]
	purpose := "Purpose " + payloads[0] + payloads[1]
	qRel := e.mustSubmit(t, "alice", sql, purpose)
	qRej := e.mustSubmit(t, "alice", "SELECT region, count(*) AS n FROM patients GROUP BY region", purpose)
	e.mustSubmit(t, "alice", "SELECT region, sex, count(*) AS n FROM patients GROUP BY region, sex", purpose) // stays in the review queue

	// Decisions through the pages, with payloads as comment and reasons.
	mustPost := func(c *client, path string, form url.Values, want int) {
		t.Helper()
		form.Set("csrf", c.csrf())
		resp, body := c.post(path, form)
		if resp.StatusCode != want {
			t.Fatalf("POST %s: status %d, want %d\n%s", path, resp.StatusCode, want, body)
		}
	}
	reason := "Reason " + payloads[0] + payloads[1]
	mustPost(bob, fmt.Sprintf("/ui/queries/%d/reject", qRej.ID), url.Values{"reason": {reason}}, http.StatusSeeOther)
	mustPost(bob, fmt.Sprintf("/ui/queries/%d/approve", qRel.ID), url.Values{"comment": {reason}}, http.StatusSeeOther)
	e.mustComplete(t, qRel.ID, payloads[0], "male", payloads[1])
	mustPost(carol, fmt.Sprintf("/ui/queries/%d/release", qRel.ID), url.Values{"comment": {reason}}, http.StatusSeeOther)

	// A refused action keeps what was typed: it must come back escaped too.
	qW := e.mustSubmit(t, "alice", "SELECT sex, count(*) AS n FROM patients WHERE region = 'North' GROUP BY sex", purpose)
	mustPost(bob, fmt.Sprintf("/ui/queries/%d/approve", qW.ID), url.Values{}, http.StatusSeeOther)
	e.mustComplete(t, qW.ID, "female", "male")
	_, bodyWithheldErr := func() (*http.Response, string) {
		form := url.Values{"reason": {""}, "comment": {reason}, "csrf": {carol.csrf()}}
		return carol.post(fmt.Sprintf("/ui/queries/%d/withhold", qW.ID), form)
	}()

	// The editor re-renders typed SQL and purpose.
	_, editorBody := alice.post("/ui/editor", url.Values{"csrf": {alice.csrf()}, "action": {"check"},
		"project_id": {fmt.Sprint(e.project.ID)}, "sql": {"SELECT * FROM patients -- " + payloads[0] + payloads[1]}, "purpose": {purpose}})
	_, fragment := alice.post("/ui/editor/check", url.Values{"csrf": {alice.csrf()},
		"project_id": {fmt.Sprint(e.project.ID)}, "sql": {"SELECT '" + strings.ReplaceAll(payloads[1], "'", "''") + "' AS x, * FROM patients"}, "purpose": {purpose}})

	pages := map[string]string{"withhold refused": bodyWithheldErr, "editor": editorBody, "check fragment": fragment}
	get := func(name string, c *client, path string) {
		resp, body := c.get(path)
		if resp.StatusCode != http.StatusOK {
			t.Errorf("%s: GET %s: status %d", name, path, resp.StatusCode)
		}
		pages[name] = body
	}
	get("researcher query", alice, fmt.Sprintf("/ui/queries/%d", qRel.ID))
	get("researcher rejected query", alice, fmt.Sprintf("/ui/queries/%d", qRej.ID))
	get("my queries", alice, "/ui/queries")
	get("my projects", alice, "/ui/projects")
	get("reviewer query", bob, fmt.Sprintf("/ui/queries/%d", qRej.ID))
	get("review queue", bob, "/ui/review")
	get("output queue", carol, "/ui/outputs")
	get("checker query", carol, fmt.Sprintf("/ui/queries/%d", qW.ID))
	get("admin projects", dave, "/ui/admin")
	get("audit", dave, "/ui/admin/audit")
	get("register", anon, "/register")

	shown := map[string]bool{}
	for name, body := range pages {
		for _, p := range payloads {
			if strings.Contains(body, p) {
				t.Errorf("%s: payload %q appears unescaped", name, p)
			}
			if strings.Contains(body, "<script>alert") || strings.Contains(body, "<img src=x") {
				t.Errorf("%s: an injected element appears", name)
			}
		}
		if strings.Contains(body, "&lt;script&gt;alert(1)&lt;/script&gt;") {
			shown[name] = true
		}
	}
	// Each page must actually show the text (escaped), or the test proves
	// nothing about it.
	for _, name := range []string{"researcher query", "researcher rejected query", "my queries", "my projects", "reviewer query",
		"review queue", "output queue", "checker query", "admin projects", "register", "editor", "withhold refused", "audit"} {
		if !shown[name] {
			t.Errorf("%s: the escaped payload is not shown at all", name)
		}
	}
	// The CSV download neutralises formulas but keeps the text.
	resp, body := alice.get(fmt.Sprintf("/ui/queries/%d/result.csv", qRel.ID))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("CSV: status %d: %s", resp.StatusCode, body)
	}
	if !strings.Contains(body, payloads[0]) {
		t.Errorf("CSV lost the key text: %s", body)
	}
}

func TestCSRF(t *testing.T) {
	e := newEnv(t)
	bob, bob2 := e.signIn(t, "bob"), e.signIn(t, "bob")
	q := e.mustSubmit(t, "alice", "SELECT sex, count(*) AS n FROM patients GROUP BY sex", "csrf")
	path := fmt.Sprintf("/ui/queries/%d/approve", q.ID)
	tests := []struct {
		name string
		form url.Values
	}{
		{"no token", url.Values{"comment": {"ok"}}},
		{"empty token", url.Values{"csrf": {""}}},
		{"another session's token", url.Values{"csrf": {bob2.csrf()}}},
		{"made-up token", url.Values{"csrf": {"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := bob.post(path, tt.form)
			if resp.StatusCode != http.StatusForbidden {
				t.Fatalf("status %d, want 403", resp.StatusCode)
			}
			if !strings.Contains(body, "security token") {
				t.Errorf("403 page does not explain the refusal:\n%s", body)
			}
			checkHeaders(t, tt.name, resp)
		})
	}
	got, err := e.svc.FindQueryByID(e.as("bob"), q.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Status != broker.StatusSubmitted {
		t.Fatalf("status after refused forms = %s, want submitted", got.Status)
	}
	// The right token works.
	resp, _ := bob.post(path, url.Values{"csrf": {bob.csrf()}})
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("approve with the session's token: status %d", resp.StatusCode)
	}

	t.Run("sign-in form without its token", func(t *testing.T) {
		c := &client{tb: t, e: e, http: &http.Client{}}
		resp, _ := c.post("/ui/signin", url.Values{"token": {e.tokens["bob"]}})
		if resp.StatusCode != http.StatusForbidden {
			t.Fatalf("status %d, want 403", resp.StatusCode)
		}
		if len(resp.Cookies()) != 0 {
			t.Errorf("a refused sign-in set cookies: %v", resp.Cookies())
		}
	})
}

func TestSeparationOfDuties(t *testing.T) {
	e := newEnv(t)
	erin, carol := e.signIn(t, "erin"), e.signIn(t, "carol")
	q := e.mustSubmit(t, "erin", "SELECT sex, count(*) AS n FROM patients GROUP BY sex", "sod")
	_, body := erin.get(fmt.Sprintf("/ui/queries/%d", q.ID))
	if strings.Contains(body, `id="approve"`) || strings.Contains(body, `/approve"`) {
		t.Errorf("the submitter sees an approve button")
	}
	if !strings.Contains(body, "separation of duties") {
		t.Errorf("the page does not say why there is no approve button")
	}
	// The server refuses anyway, and the page shows the broker's message.
	resp, body := erin.post(fmt.Sprintf("/ui/queries/%d/approve", q.ID), url.Values{"csrf": {erin.csrf()}})
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("self-approval: status %d, want 403", resp.StatusCode)
	}
	if !strings.Contains(body, `role="alert"`) {
		t.Errorf("self-approval refusal not shown as an alert:\n%s", body)
	}

	// The approver may not check the output.
	bob := e.signIn(t, "bob")
	_ = bob
	if _, err := e.svc.ApproveQuery(e.as("bob"), q.ID, ""); err != nil {
		t.Fatal(err)
	}
	e.mustComplete(t, q.ID, "female", "male", "unknown")
	_, body = carol.get(fmt.Sprintf("/ui/queries/%d", q.ID))
	if !strings.Contains(body, `id="release"`) {
		t.Errorf("an independent output checker sees no release button")
	}
	for _, want := range []string{"suppressed", "rounded", "Disclosure report"} {
		if !strings.Contains(body, want) {
			t.Errorf("output check page lacks %q", want)
		}
	}
}

func TestSessions(t *testing.T) {
	e := newEnv(t)
	alice := e.signIn(t, "alice")
	if resp, _ := alice.get("/ui/projects"); resp.StatusCode != http.StatusOK {
		t.Fatalf("signed in: status %d", resp.StatusCode)
	}
	t.Run("cookie attributes", func(t *testing.T) {
		c := &client{tb: t, e: e, http: &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
		_, body := c.get("/ui/signin")
		_ = body
		req, _ := http.NewRequest(http.MethodGet, e.srv.URL+"/ui/projects", nil)
		req.Header.Set("Authorization", "Bearer "+e.tokens["alice"])
		resp, _ := c.do(req)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("forwarded token: status %d", resp.StatusCode)
		}
		cs := resp.Cookies()
		if len(cs) != 1 {
			t.Fatalf("cookies %v, want one session cookie", cs)
		}
		got := struct {
			HttpOnly bool
			SameSite http.SameSite
			Path     string
		}{cs[0].HttpOnly, cs[0].SameSite, cs[0].Path}
		want := struct {
			HttpOnly bool
			SameSite http.SameSite
			Path     string
		}{true, http.SameSiteStrictMode, "/"}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("cookie (-want +got):\n%s", diff)
		}
		if strings.Contains(cs[0].Value, e.tokens["alice"][:20]) {
			t.Errorf("the cookie carries the token")
		}
	})
	t.Run("bad forwarded token", func(t *testing.T) {
		c := &client{tb: t, e: e, http: &http.Client{}}
		req, _ := http.NewRequest(http.MethodGet, e.srv.URL+"/ui/projects", nil)
		req.Header.Set("X-Forwarded-Access-Token", e.tokens["alice"]+"x")
		resp, _ := c.do(req)
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("status %d, want 401", resp.StatusCode)
		}
	})
	t.Run("expires with the token", func(t *testing.T) {
		e.clock.Add(time.Hour + time.Second)
		resp, _ := alice.get("/ui/projects")
		if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/ui/signin" {
			t.Fatalf("after expiry: status %d to %q, want a redirect to sign-in", resp.StatusCode, resp.Header.Get("Location"))
		}
	})
	t.Run("sign out", func(t *testing.T) {
		e.clock.Add(-time.Hour - time.Second)
		bob := e.signIn(t, "bob")
		resp, _ := bob.post("/ui/signout", url.Values{"csrf": {bob.csrf()}})
		if resp.StatusCode != http.StatusSeeOther {
			t.Fatalf("sign out: status %d", resp.StatusCode)
		}
		if resp, _ := bob.get("/ui/review"); resp.StatusCode != http.StatusSeeOther {
			t.Fatalf("after sign out: status %d, want a redirect", resp.StatusCode)
		}
	})
}

func TestResultDownloads(t *testing.T) {
	e := newEnv(t)
	alice := e.signIn(t, "alice")
	q := e.mustSubmit(t, "alice", "SELECT practice, count(*) AS n FROM patients GROUP BY practice", "download")
	if _, err := e.svc.ApproveQuery(e.as("bob"), q.ID, ""); err != nil {
		t.Fatal(err)
	}
	e.mustComplete(t, q.ID, "=HYPERLINK(\"http://x\")", "male", "+female")
	if _, err := e.svc.ReleaseQuery(e.as("carol"), q.ID, ""); err != nil {
		t.Fatal(err)
	}
	resp, body := alice.get(fmt.Sprintf("/ui/queries/%d/result.csv", q.ID))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	if cd := resp.Header.Get("Content-Disposition"); cd != fmt.Sprintf(`attachment; filename="tre-query-%d.csv"`, q.ID) {
		t.Errorf("Content-Disposition %q", cd)
	}
	recs, err := csv.NewReader(strings.NewReader(body)).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	want := [][]string{
		{"practice", "n", "n_ci_low", "n_ci_high", "n_flag"},
		{`'=HYPERLINK("http://x")`, "100", "94", "106", ""},
		{"male", "", "", "", "suppressed"},
		{"'+female", "170", "164", "176", ""},
	}
	if diff := cmp.Diff(want, recs); diff != "" {
		t.Errorf("CSV (-want +got):\n%s", diff)
	}
	resp, body = alice.get(fmt.Sprintf("/ui/queries/%d/result.json", q.ID))
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Disposition"), "attachment;") {
		t.Fatalf("JSON: status %d, disposition %q", resp.StatusCode, resp.Header.Get("Content-Disposition"))
	}
	if !strings.Contains(body, `"suppressed": true`) {
		t.Errorf("JSON lacks the suppression mark: %s", body)
	}
	// Someone outside the project cannot download.
	bob := e.signIn(t, "bob")
	if resp, _ := bob.get(fmt.Sprintf("/ui/queries/%d/result.csv", q.ID)); resp.StatusCode != http.StatusForbidden {
		t.Errorf("reviewer download: status %d, want 403", resp.StatusCode)
	}
}

// TestRegisterShowsAuditHead checks the public register shows the audit
// chain's entry count and head hash, the values `tre audit verify
// --expect-head --expect-count` takes, and that they follow the chain.
func TestRegisterShowsAuditHead(t *testing.T) {
	e := newEnv(t)
	anon := &client{tb: t, e: e, http: &http.Client{}}
	for round := range 2 {
		head, err := e.svc.AuditHead(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		resp, body := anon.get("/register")
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("register: status %d", resp.StatusCode)
		}
		for _, want := range []string{
			`<strong id="audit-entries">` + strconv.FormatInt(head.Entries, 10) + `</strong>`,
			`<code id="audit-head" class="hash">` + head.Hash + `</code>`,
		} {
			if !strings.Contains(body, want) {
				t.Errorf("round %d: the register lacks %s", round, want)
			}
		}
		e.mustSubmit(t, "alice", "SELECT sex, count(*) AS n FROM patients GROUP BY sex", "grow the chain")
	}
}
