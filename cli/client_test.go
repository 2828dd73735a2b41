package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/nhs-tre/tre/api"
	"github.com/nhs-tre/tre/api/auth"
	"github.com/nhs-tre/tre/broker"
)

// cannedBroker answers a few routes the way the broker does; the CLI's
// behaviour against the real broker is covered by the end-to-end test.
func cannedBroker(tb testing.TB) *httptest.Server {
	tb.Helper()
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if r.Header.Get("Authorization") != "Bearer good" {
			w.WriteHeader(401)
			io.WriteString(w, `{"error":{"code":"unauthorized","message":"invalid token"}}`)
			return
		}
		switch r.Method + " " + r.URL.Path {
		case "POST /api/v1/queries":
			body, _ := io.ReadAll(r.Body)
			if bytes.Contains(body, []byte("OVER")) {
				w.WriteHeader(422)
				io.WriteString(w, `{"error":{"code":"refused","message":"window functions are not allowed (OVER at byte 17)"}}`)
				return
			}
			w.WriteHeader(201)
			io.WriteString(w, `{"id":42,"project_id":1,"dataset":"gp","sql":"SELECT count(*) FROM patients","sql_hash":"x","status":"submitted","submitted_by":"alice","submitted_at":"2026-03-01T12:00:00Z","cost":{"epsilon":1,"delta":0},"accuracy":[{"column":"n","ci95_half_width":3.7}],"risk_flags":[]}`)
		case "GET /api/v1/queries/42":
			rewritten := ""
			if r.URL.Query().Get("include") == "rewritten_sql" {
				rewritten = `"rewritten_sql":"SELECT 2 FROM __patients",`
			}
			io.WriteString(w, `{"id":42,"project_id":1,"dataset":"gp","sql":"SELECT 1","sql_hash":"x",`+rewritten+`"status":"approved","submitted_by":"alice","submitted_at":"2026-03-01T12:00:00Z","cost":{"epsilon":1,"delta":0}}`)
		case "POST /api/v1/queries/42/approve":
			w.WriteHeader(409)
			io.WriteString(w, `{"error":{"code":"budget","message":"approving would overspend the project's ε budget"}}`)
		case "GET /api/v1/queries/42/result":
			if r.URL.Query().Get("format") == "csv" {
				w.Header().Set("Content-Type", "text/csv")
				io.WriteString(w, "region,n\nLondon,40\n")
				return
			}
			io.WriteString(w, `{"query_id":42,"columns":[],"rows":[],"report":{}}`)
		case "GET /api/v1/queries/44/result":
			io.WriteString(w, `{"query_id":44,"columns":[{"name":"years_band","kind":"group"},{"name":"deaths","kind":"count"},{"name":"censored","kind":"count"}],`+
				`"rows":[[{"key":"0-1"},{"value":10,"ci_low":4,"ci_high":16},{"value":20,"ci_low":14,"ci_high":26}],[{"key":"1-2"},{"value":30,"ci_low":24,"ci_high":36},{"value":40,"ci_low":34,"ci_high":46}]],"report":{}}`)
		case "GET /api/v1/queries/45/result":
			io.WriteString(w, `{"query_id":45,"columns":[{"name":"sex","kind":"group"},{"name":"years_band","kind":"group"},{"name":"deaths","kind":"count"},{"name":"censored","kind":"count"}],`+
				`"rows":[[{"key":"female"},{"key":"0-1"},{"value":10,"ci_low":4,"ci_high":16},{"value":20,"ci_low":14,"ci_high":26}],[{"key":"male"},{"key":"0-1"},{"value":10,"ci_low":4,"ci_high":16},{"value":20,"ci_low":14,"ci_high":26}],`+
				`[{"key":"female"},{"key":"1-2"},{"value":30,"ci_low":24,"ci_high":36},{"value":40,"ci_low":34,"ci_high":46}],[{"key":"male"},{"key":"1-2"},{"value":5,"ci_low":0,"ci_high":11},{"value":5,"ci_low":0,"ci_high":11}]],"report":{}}`)
		case "GET /api/v1/audit":
			w.WriteHeader(403)
			io.WriteString(w, `{"error":{"code":"forbidden","message":"needs admin"}}`)
		default:
			w.WriteHeader(404)
			io.WriteString(w, `{"error":{"code":"not_found","message":"query not found"}}`)
		}
	}))
	tb.Cleanup(ts.Close)
	return ts
}

// runClient runs a client Command the way run() does and returns its exit
// code and output.
func runClient(tb testing.TB, newCmd func(io.Writer, io.Writer) Command, env map[string]string, args ...string) (int, string, string) {
	tb.Helper()
	var stdout, stderr bytes.Buffer
	cmd := newCmd(&stdout, &stderr)
	getenv := func(k string) string { return env[k] }
	switch c := cmd.(type) {
	case *QueryMain:
		c.Getenv = getenv
	case *ReviewMain:
		c.Getenv = getenv
	case *ProjectMain:
		c.Getenv = getenv
	case *SiteMain:
		c.Getenv = getenv
	case *DatasetsMain:
		c.Getenv = getenv
	}
	defer cmd.Close()
	ctx := context.Background()
	if err := cmd.ParseFlags(ctx, args); err != nil {
		return 2, stdout.String(), err.Error()
	}
	err := cmd.Run(ctx)
	var ee ExitError
	var ue UsageError
	switch {
	case err == nil:
		return 0, stdout.String(), stderr.String()
	case errors.As(err, &ee):
		return ee.Code, stdout.String(), ee.Err.Error()
	case errors.As(err, &ue):
		return 2, stdout.String(), err.Error()
	}
	return 1, stdout.String(), err.Error()
}

func TestClientExitCodes(t *testing.T) {
	ts := cannedBroker(t)
	env := map[string]string{"TRE_BROKER": ts.URL, "TRE_TOKEN": "good"}
	badEnv := map[string]string{"TRE_BROKER": ts.URL, "TRE_TOKEN": "bad"}
	query := func(o, e io.Writer) Command { return &QueryMain{Stdout: o, Stderr: e} }
	review := func(o, e io.Writer) Command { return &ReviewMain{Stdout: o, Stderr: e} }
	tokenFile := filepath.Join(t.TempDir(), "tok")
	if err := os.WriteFile(tokenFile, []byte("good\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		cmd     func(io.Writer, io.Writer) Command
		env     map[string]string
		args    []string
		code    int
		stdout  string // substring
		message string // substring of the error
	}{
		{"submit ok", query, env, []string{"submit", "--project", "1", "--purpose", "p", "SELECT count(*) FROM patients"}, 0, "submitted", ""},
		{"submit json", query, env, []string{"submit", "--project", "1", "--purpose", "p", "--json", "SELECT count(*) FROM patients"}, 0, `"status": "submitted"`, ""},
		{"submit quiet", query, env, []string{"submit", "--project", "1", "--purpose", "p", "--quiet", "SELECT count(*) FROM patients"}, 0, "42\n", ""},
		{"submit refused", query, env, []string{"submit", "--project", "1", "--purpose", "p", "SELECT count(*) OVER () FROM patients"}, 4, "", "window functions"},
		{"submit no purpose", query, env, []string{"submit", "--project", "1", "SELECT count(*) FROM patients"}, 2, "", "--purpose is required"},
		{"role token", query, map[string]string{"TRE_BROKER": ts.URL, "TRE_TOKEN_RESEARCHER": "good", "TRE_TOKEN": "bad"}, []string{"show", "42"}, 0, "approved", ""},
		{"role token of another role", query, map[string]string{"TRE_BROKER": ts.URL, "TRE_TOKEN_REVIEWER": "good"}, []string{"show", "42"}, 2, "", "set TRE_TOKEN_RESEARCHER or TRE_TOKEN"},
		{"reviewer token", review, map[string]string{"TRE_BROKER": ts.URL, "TRE_TOKEN_REVIEWER": "good", "TRE_TOKEN_RESEARCHER": "bad"}, []string{"approve", "42"}, 1, "", "overspend"},
		{"submit no project", query, env, []string{"submit", "SELECT 1"}, 2, "", "--project is required"},
		{"submit no sql", query, env, []string{"submit", "--project", "1"}, 2, "", "usage"},
		{"no token", query, map[string]string{"TRE_BROKER": ts.URL}, []string{"show", "42"}, 2, "", "no token"},
		{"bad token", query, badEnv, []string{"show", "42"}, 3, "", "invalid token"},
		{"token file", query, badEnv, []string{"show", "42", "--token-file", tokenFile}, 0, "approved", ""},
		{"show flags after id", query, env, []string{"show", "42", "--json"}, 0, `"id": 42`, ""},
		{"show rewritten", query, env, []string{"show", "42", "--rewritten"}, 0, "rewritten SQL (over the opt-out-filtered views):\nSELECT 2 FROM __patients", ""},
		{"show missing", query, env, []string{"show", "43"}, 4, "", "not found"},
		{"show bad id", query, env, []string{"show", "x"}, 2, "", "positive integer"},
		{"unknown verb", query, env, []string{"explode"}, 2, "", "unknown verb"},
		{"result csv", query, env, []string{"result", "42"}, 0, "London,40", ""},
		{"km", query, env, []string{"km", "44"}, 0, "0-1   100      10      20        0.888     [0.799, 0.978]", ""},
		{"km json", query, env, []string{"km", "44", "--json"}, 0, `"at_risk": 70`, ""},
		{"km by sex", query, env, []string{"km", "45"}, 0, "sex=female  0-1   100      10      20        0.888     [0.799, 0.978]", ""},
		{"km by sex, second stratum", query, env, []string{"km", "45"}, 0, "sex=male    1-2   10", ""},
		{"km not a survival table", query, env, []string{"km", "42"}, 1, "", "not a survival table: a survival table has a group column of time bands"},
		{"km other column names", query, env, []string{"km", "44", "--deaths", "died"}, 1, "", `count columns "died" and "censored"`},
		{"result bad format", query, env, []string{"result", "42", "--format", "xlsx"}, 2, "", "csv or json"},
		{"approve over budget", review, env, []string{"approve", "42"}, 1, "", "overspend"},
		{"reject needs reason", review, env, []string{"reject", "42"}, 2, "", "--reason is required"},
		{"broker down", query, map[string]string{"TRE_BROKER": "http://127.0.0.1:1", "TRE_TOKEN": "good"}, []string{"show", "42"}, 1, "", "connect"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, msg := runClient(t, tt.cmd, tt.env, tt.args...)
			if code != tt.code {
				t.Fatalf("exit %d, want %d (stdout %q, err %q)", code, tt.code, out, msg)
			}
			if !strings.Contains(out, tt.stdout) {
				t.Errorf("stdout %q does not contain %q", out, tt.stdout)
			}
			if !strings.Contains(msg, tt.message) {
				t.Errorf("error %q does not contain %q", msg, tt.message)
			}
		})
	}
}

// mintWithCommand runs `tre token` with args in dir and returns the caller
// the broker's verifier reads from the token it printed.
func mintWithCommand(t *testing.T, dir string, args ...string) *broker.User {
	t.Helper()
	var out bytes.Buffer
	m := NewTokenMain(&out, io.Discard).(*TokenMain)
	m.Now = func() time.Time { return time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC) }
	if err := m.ParseFlags(context.Background(), append([]string{"--data-dir", dir}, args...)); err != nil {
		t.Fatal(err)
	}
	if err := m.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	key, err := auth.LoadOrCreateDevKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	v, err := auth.NewVerifier(context.Background(), auth.AuthConfig{DevKey: key}, auth.WithNow(m.Now))
	if err != nil {
		t.Fatal(err)
	}
	u, err := v.Verify(context.Background(), strings.TrimSpace(out.String()))
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func TestTokenCommand(t *testing.T) {
	dir := t.TempDir()
	u := mintWithCommand(t, dir, "--sub", "alice", "--role", "researcher", "--role", "reviewer", "--org", "UCL", "--ttl", "1h")
	if diff := cmp.Diff([]string{"alice", "UCL", "researcher", "reviewer"}, []string{u.Subject, u.Org, string(u.Roles[0]), string(u.Roles[1])}); diff != "" {
		t.Errorf("claims (-want +got):\n%s", diff)
	}
	bad := []struct {
		name string
		args []string
	}{
		{"no role", []string{"--data-dir", dir, "--sub", "a"}},
		{"bad role", []string{"--data-dir", dir, "--sub", "a", "--role", "god"}},
		{"no sub", []string{"--data-dir", dir, "--role", "admin"}},
		{"no dir", []string{"--sub", "a", "--role", "admin"}},
		{"ttl", []string{"--data-dir", dir, "--sub", "a", "--role", "admin", "--ttl", "-1h"}},
		{"agent without a site", []string{"--data-dir", dir, "--sub", "a", "--role", "agent"}},
		{"site on a person's token", []string{"--data-dir", dir, "--sub", "a", "--role", "admin", "--site", "s"}},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			if err := NewTokenMain(io.Discard, io.Discard).ParseFlags(context.Background(), tt.args); err == nil {
				t.Error("accepted")
			}
		})
	}
}

// TestAgentTokenNamesItsSite checks `tre token --role agent --site S` mints
// a token whose site claim the broker's verifier reads.
func TestAgentTokenNamesItsSite(t *testing.T) {
	u := mintWithCommand(t, t.TempDir(), "--sub", "leeds-agent", "--role", "agent", "--site", "leeds-th")
	if u.Site != "leeds-th" || len(u.Roles) != 1 || u.Roles[0] != "agent" {
		t.Errorf("agent token = %+v, want site leeds-th and the agent role only", u)
	}
}

func TestSiteCommand(t *testing.T) {
	var got api.SiteRequest
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		switch r.Method + " " + r.URL.Path {
		case "POST /api/v1/sites":
			if err := json.NewDecoder(r.Body).Decode(&got); err != nil {
				w.WriteHeader(400)
				return
			}
			if got.ID == "taken" {
				w.WriteHeader(409)
				io.WriteString(w, `{"error":{"code":"conflict","message":"site \"taken\" is already registered"}}`)
				return
			}
			w.WriteHeader(201)
			io.WriteString(w, `{"id":"leeds-th","name":"Leeds","organisation":"Leeds Teaching Hospitals","registered":true,"datasets":[]}`)
		case "GET /api/v1/sites":
			io.WriteString(w, `{"items":[{"id":"leeds-th","name":"Leeds","organisation":"LTH","registered":true,"registered_at":"2026-03-01T12:00:00Z","datasets":["gp"],"last_seen":"2026-03-01T12:05:00Z","version":"tre v1.0.0"}],"total":1,"limit":50,"offset":0}`)
		default:
			w.WriteHeader(404)
			io.WriteString(w, `{"error":{"code":"not_found","message":"no such route"}}`)
		}
	}))
	defer ts.Close()
	env := map[string]string{"TRE_BROKER": ts.URL, "TRE_TOKEN": "admin"}
	site := func(o, e io.Writer) Command { return &SiteMain{Stdout: o, Stderr: e} }
	tests := []struct {
		name    string
		args    []string
		code    int
		stdout  string
		message string
	}{
		{"add", []string{"add", "--id", "leeds-th", "--name", "Leeds", "--organisation", "Leeds Teaching Hospitals"}, 0, "site leeds-th registered", ""},
		{"add twice", []string{"add", "--id", "taken", "--name", "T", "--organisation", "T"}, 1, "", "already registered"},
		{"add without name", []string{"add", "--id", "x", "--organisation", "T"}, 2, "", "--name is required"},
		{"list", []string{"list"}, 0, "tre v1.0.0", ""},
		{"unknown verb", []string{"remove"}, 2, "", "unknown verb"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, msg := runClient(t, site, env, tt.args...)
			if code != tt.code || !strings.Contains(out, tt.stdout) || !strings.Contains(msg, tt.message) {
				t.Fatalf("exit %d, stdout %q, error %q; want %d, %q, %q", code, out, msg, tt.code, tt.stdout, tt.message)
			}
		})
	}
	if got.Organisation != "T" || got.Name != "T" {
		t.Errorf("last request = %+v", got)
	}
}

// statusBroker answers a query's GET with the next of its scripted
// statuses (the last repeats) and its approve and release as the broker
// does, so the CLI's waiting can be followed step by step.
type statusBroker struct {
	mu       sync.Mutex
	statuses map[string][]string
	posted   []string
}

func (b *statusBroker) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b.mu.Lock()
	defer b.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	parts := strings.Split(strings.TrimPrefix(r.URL.Path, "/api/v1/queries"), "/")
	id := "9"
	if len(parts) > 1 && parts[1] != "" {
		id = parts[1]
	}
	query := func(status string) {
		fmt.Fprintf(w, `{"id":%s,"project_id":1,"dataset":"gp","sql":"SELECT 1","sql_hash":"x","status":%q,"submitted_by":"alice","submitted_at":"2026-03-01T12:00:00Z","cost":{"epsilon":1,"delta":0}}`, id, status)
	}
	next := func() string {
		st := b.statuses[id]
		if len(st) == 0 {
			return "submitted"
		}
		if len(st) > 1 {
			b.statuses[id] = st[1:]
		}
		return st[0]
	}
	switch {
	case r.Method == "GET" && len(parts) > 2 && parts[2] == "result":
		b.posted = append(b.posted, "download "+id)
		io.WriteString(w, "sex,n\nfemale,100\n")
	case r.Method == "GET":
		query(next())
	case r.Method == "POST" && len(parts) == 1:
		b.posted = append(b.posted, "submit")
		w.WriteHeader(201)
		query("submitted")
	case r.Method == "POST" && parts[2] == "approve":
		b.posted = append(b.posted, "approve "+id)
		query("approved")
	case r.Method == "POST" && parts[2] == "release":
		if st := b.statuses[id]; len(st) > 0 && st[0] != "awaiting_output_check" {
			w.WriteHeader(409)
			fmt.Fprintf(w, `{"error":{"code":"conflict","message":"query %s has no output (it is %s)"}}`, id, st[0])
			return
		}
		b.posted = append(b.posted, "release "+id)
		query("released")
	}
}

// TestClientWait: --wait on submit, approve and release follows the query
// to the next person's step, reports each change on standard error, and
// gives up after --wait-timeout.
func TestClientWait(t *testing.T) {
	fast := waitFlags{poll: time.Millisecond}
	query := func(o, e io.Writer) Command { return &QueryMain{Stdout: o, Stderr: e, wait: fast} }
	review := func(o, e io.Writer) Command { return &ReviewMain{Stdout: o, Stderr: e, wait: fast} }
	output := func(o, e io.Writer) Command { return &ReviewMain{Stdout: o, Stderr: e, output: true, wait: fast} }
	tests := []struct {
		name     string
		cmd      func(io.Writer, io.Writer) Command
		statuses map[string][]string
		args     []string
		code     int
		stdout   string // substring
		message  string // substring of standard error, or of the error
		posted   []string
	}{
		{name: "approve waits for the run", cmd: review, statuses: map[string][]string{"7": {"approved", "running", "running", "awaiting_output_check"}},
			args: []string{"approve", "7", "--wait"}, stdout: "query 7 is now awaiting_output_check", message: "query 7: running at the site", posted: []string{"approve 7"}},
		{name: "release before the run ends", cmd: output, statuses: map[string][]string{"7": {"running"}},
			args: []string{"release", "7"}, code: 1, message: "add --wait to release it once it has"},
		{name: "release waits for the review and the run", cmd: output, statuses: map[string][]string{"7": {"submitted", "approved", "running", "awaiting_output_check"}},
			args: []string{"release", "7", "--wait"}, stdout: "query 7 is now released", posted: []string{"release 7"}},
		{name: "wait times out", cmd: review, statuses: map[string][]string{"7": {"running"}},
			args: []string{"approve", "7", "--wait", "--wait-timeout", "30ms"}, code: 1, message: "query 7 is still running after 30ms", posted: []string{"approve 7"}},
		{name: "submit waits for the release", cmd: query, statuses: map[string][]string{"9": {"submitted", "approved", "running", "awaiting_output_check", "released"}},
			args: []string{"submit", "--project", "1", "--purpose", "p", "--quiet", "--wait", "SELECT 1"}, stdout: "9\n", message: "query 9 is released: tre query result 9", posted: []string{"submit"}},
		{name: "result waits for the release", cmd: query, statuses: map[string][]string{"9": {"awaiting_output_check", "released"}},
			args: []string{"result", "9", "--wait"}, stdout: "female,100", posted: []string{"download 9"}},
		{name: "result of a withheld query", cmd: query, statuses: map[string][]string{"9": {"withheld"}},
			args: []string{"result", "9", "--wait"}, code: 1, message: "query 9 ended withheld: there is no result to download"},
		{name: "submit ends rejected", cmd: query, statuses: map[string][]string{"9": {"submitted", "rejected"}},
			args: []string{"submit", "--project", "1", "--purpose", "p", "--wait", "SELECT 1"}, code: 1, stdout: "rejected", message: "query 9 ended rejected", posted: []string{"submit"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := &statusBroker{statuses: tt.statuses}
			ts := httptest.NewServer(b)
			defer ts.Close()
			code, out, msg := runClient(t, tt.cmd, map[string]string{"TRE_BROKER": ts.URL, "TRE_TOKEN": "good"}, tt.args...)
			if code != tt.code {
				t.Fatalf("exit %d, want %d (stdout %q, err %q)", code, tt.code, out, msg)
			}
			if !strings.Contains(out, tt.stdout) {
				t.Errorf("stdout %q does not contain %q", out, tt.stdout)
			}
			if !strings.Contains(msg, tt.message) {
				t.Errorf("stderr or error %q does not contain %q", msg, tt.message)
			}
			if diff := cmp.Diff(tt.posted, b.posted); diff != "" {
				t.Errorf("calls (-want +got):\n%s", diff)
			}
		})
	}
}
