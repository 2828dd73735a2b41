package hostile

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/csv"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/google/go-cmp/cmp"

	"github.com/nhs-tre/tre/api"
	"github.com/nhs-tre/tre/api/auth"
	"github.com/nhs-tre/tre/broker"
	"github.com/nhs-tre/tre/broker/brokertest"
	"github.com/nhs-tre/tre/broker/sqlite"
	"github.com/nhs-tre/tre/dp"
	"github.com/nhs-tre/tre/e2e"
	"github.com/nhs-tre/tre/queries"
)

// Hostile-client tests: a real `tre serve` process and callers who send
// what a well-behaved client never would. The contract is 4xx with a JSON
// error for every caller's mistake, never 5xx, and a broker that keeps
// serving everyone else.

// TestHostileBodies sends malformed, oversized and mislabelled bodies to
// every JSON-decoding route: each gets a 4xx JSON error, and the broker
// stays up.
func TestHostileBodies(t *testing.T) {
	b := e2e.StartLonelyBroker(t)
	valid := fmt.Sprintf(`{"project_id":%d,"sql":%q,"purpose":"p"}`, b.Project, e2e.HostileSQL)
	deep := `{"project_id":1,"sql":` + strings.Repeat("[", 100000) + strings.Repeat("]", 100000) + `}`
	// huge is a body past a route's limit: 1 MiB, or for a job's
	// completion, which carries a federated part, dp.MaxPartialBytes.
	huge := func(limit int) string {
		return `{"project_id":1,"purpose":"p","sql":"` + strings.Repeat("a", limit+1<<20) + `"}`
	}
	routes := []struct {
		method, path, who string
		limit             int // the route's body limit
	}{
		{"POST", "/api/v1/queries", "alice", 1 << 20},
		{"POST", "/api/v1/projects", "dave", 1 << 20},
		{"PATCH", fmt.Sprintf("/api/v1/projects/%d", b.Project), "dave", 1 << 20},
		{"PUT", "/api/v1/agent/catalog", "site", 1 << 20},
		{"POST", "/api/v1/agent/lease", "site", 1 << 20},
		{"POST", "/api/v1/agent/jobs/1/complete", "site", dp.MaxPartialBytes},
		{"POST", "/api/v1/queries/1/approve", "bob", 1 << 20},
	}
	bodies := []struct {
		name, contentType, body string
		want                    int // 0: any 4xx
	}{
		{"oversized", "application/json", "", http.StatusRequestEntityTooLarge},
		{"malformed", "application/json", `{"project_id": 1,`, http.StatusBadRequest},
		{"invalid UTF-8", "application/json", "{\"sql\":\"\xff\xfe\",\"purpose\":\"p\"}", http.StatusBadRequest},
		{"deeply nested", "application/json", deep, http.StatusBadRequest},
		{"unknown field", "application/json", `{"project_id":1,"sql":"x","purpose":"p","is_admin":true}`, http.StatusBadRequest},
		{"two objects", "application/json", valid + valid, http.StatusBadRequest},
		{"not an object", "application/json", `[1,2,3]`, http.StatusBadRequest},
		{"wrong types", "application/json", `{"project_id":"1","sql":7}`, http.StatusBadRequest},
		{"huge number", "application/json", `{"project_id":1e999}`, http.StatusBadRequest},
		{"NUL bytes", "application/json", "{\"sql\":\"\\u0000\x00\"}", http.StatusBadRequest},
		{"empty", "application/json", ``, http.StatusBadRequest},
		{"text/plain", "text/plain", valid, http.StatusUnsupportedMediaType},
		{"form", "application/x-www-form-urlencoded", "project_id=1&sql=x", http.StatusUnsupportedMediaType},
		{"no content type", "", valid, http.StatusUnsupportedMediaType},
		{"bad media type", "application/json; charset", valid, http.StatusUnsupportedMediaType},
	}
	for _, rt := range routes {
		for _, tt := range bodies {
			body := tt.body
			if tt.name == "oversized" {
				body = huge(rt.limit)
			}
			t.Run(rt.method+" "+rt.path+"/"+tt.name, func(t *testing.T) {
				r := e2e.Send(t, rt.method, b.URL+rt.path, b.Tokens[rt.who], tt.contentType, strings.NewReader(body))
				if r.Status < 400 || r.Status > 499 {
					t.Fatalf("status %d, want 4xx; body %.200q", r.Status, r.Body)
				}
				if tt.want != 0 && r.Status != tt.want && !(r.Status == http.StatusNotFound || r.Status == http.StatusConflict) {
					t.Errorf("status %d, want %d; body %.200q", r.Status, tt.want, r.Body)
				}
				e2e.ErrorCode(t, r)
			})
		}
	}
	// The broker is still up and nothing was stored.
	list, err := b.As("dave").Queries(context.Background(), api.QueryListOptions{})
	if err != nil {
		t.Fatalf("broker after hostile bodies: %v", err)
	}
	if list.Total != 0 {
		t.Errorf("%d queries stored from hostile bodies, want 0", list.Total)
	}
}

// TestSlowClient opens a connection that sends its request headers a byte
// at a time, slower than the server's ReadHeaderTimeout: the server cuts it
// off, and answers other clients meanwhile.
func TestSlowClient(t *testing.T) {
	b := e2e.StartLonelyBroker(t, "--read-header-timeout", "1s")
	conn, err := net.Dial("tcp", strings.TrimPrefix(b.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	closed := make(chan string, 1)
	go func() {
		// Read whatever the server says; it should close the connection
		// (possibly after a 408) without ever answering the request.
		data, _ := io.ReadAll(conn)
		closed <- string(data)
	}()
	request := "GET /api/v1/datasets HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + b.Tokens["alice"] + "\r\nX-Slow: " + strings.Repeat("a", 400) + "\r\n\r\n"
	othersServed := 0
	var answer string
	cutOff := false
	for i := 0; i < len(request) && !cutOff; i++ {
		if _, err := conn.Write([]byte{request[i]}); err != nil {
			break
		}
		select {
		case answer = <-closed:
			cutOff = true
			continue
		case <-time.After(100 * time.Millisecond):
		}
		if i%10 == 0 {
			// Another client is served while the slow one dribbles.
			if _, err := b.As("bob").Datasets(context.Background(), api.ListOptions{}); err != nil {
				t.Fatalf("other client while a slow client is connected: %v", err)
			}
			othersServed++
		}
	}
	if !cutOff {
		select {
		case answer = <-closed:
		case <-time.After(45 * time.Second):
			t.Fatal("the slow client was never cut off")
		}
	}
	if strings.Contains(answer, " 200 ") {
		t.Fatalf("the slow client got an answer: %q", answer)
	}
	if othersServed == 0 {
		t.Fatal("no other request was made while the slow client was connected")
	}
	if _, err := b.As("bob").Datasets(context.Background(), api.ListOptions{}); err != nil {
		t.Fatalf("broker after the slow client: %v", err)
	}
}

// TestSlowBody sends complete headers, then a request body far slower than
// the server's read timeout: the server gives up on it without answering it,
// stores nothing, and serves others meanwhile.
func TestSlowBody(t *testing.T) {
	b := e2e.StartLonelyBroker(t, "--read-timeout", "2s")
	conn, err := net.Dial("tcp", strings.TrimPrefix(b.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	body := fmt.Sprintf(`{"project_id":%d,"sql":%q,"purpose":"slow"}`, b.Project, e2e.HostileSQL)
	head := "POST /api/v1/queries HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" +
		"Authorization: Bearer " + b.Tokens["alice"] + "\r\n" +
		fmt.Sprintf("Content-Length: %d\r\n\r\n", len(body))
	if _, err := conn.Write([]byte(head)); err != nil {
		t.Fatal(err)
	}
	closed := make(chan string, 1)
	go func() {
		data, _ := io.ReadAll(conn)
		closed <- string(data)
	}()
	var answer string
	cutOff := false
	othersServed := 0
	// Half the body, a byte every 100 ms: ample time past the 2 s limit.
	for i := 0; i < len(body)/2 && !cutOff; i++ {
		if _, err := conn.Write([]byte{body[i]}); err != nil {
			break
		}
		select {
		case answer = <-closed:
			cutOff = true
		case <-time.After(100 * time.Millisecond):
		}
		if i%10 == 0 {
			if _, err := b.As("bob").Datasets(context.Background(), api.ListOptions{}); err != nil {
				t.Fatalf("other client while a slow body is sent: %v", err)
			}
			othersServed++
		}
	}
	if !cutOff {
		select {
		case answer = <-closed:
		case <-time.After(30 * time.Second):
			t.Fatal("the slow body was never cut off")
		}
	}
	if strings.Contains(answer, " 201 ") {
		t.Fatalf("the slow request was answered as a submission: %q", answer)
	}
	if strings.Contains(answer, " 500 ") {
		t.Fatalf("the slow request got a 500: %q", answer)
	}
	if othersServed == 0 {
		t.Fatal("no other request was made while the slow body was sent")
	}
	list, err := b.As("dave").Queries(context.Background(), api.QueryListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if list.Total != 0 {
		t.Errorf("%d queries stored from a request cut off mid-body, want 0", list.Total)
	}
}

// TestSubmissionFlood: a researcher over the per-subject submission limit
// gets 429 with Retry-After; another researcher and other routes are not
// affected.
func TestSubmissionFlood(t *testing.T) {
	const limit = 3
	b := e2e.StartLonelyBroker(t, "--submit-per-minute", strconv.Itoa(limit))
	body := fmt.Sprintf(`{"project_id":%d,"sql":%q,"purpose":"flood"}`, b.Project, e2e.HostileSQL)
	var statuses []int
	var limited e2e.RawResponse
	for i := 0; i < limit+5; i++ {
		r := e2e.Send(t, "POST", b.URL+"/api/v1/queries", b.Tokens["alice"], "application/json", strings.NewReader(body))
		statuses = append(statuses, r.Status)
		if r.Status == http.StatusTooManyRequests {
			limited = r
		} else if r.Status != http.StatusCreated {
			t.Fatalf("submission %d: status %d %q", i, r.Status, r.Body)
		}
	}
	if limited.Status == 0 {
		t.Fatalf("no 429 after %d submissions (limit %d per minute): %v", len(statuses), limit, statuses)
	}
	if code := e2e.ErrorCode(t, limited); code != "rate_limited" {
		t.Errorf("429 code = %q, want rate_limited", code)
	}
	if ra, err := strconv.Atoi(limited.Header.Get("Retry-After")); err != nil || ra < 1 {
		t.Errorf("429 Retry-After = %q, want a positive number of seconds", limited.Header.Get("Retry-After"))
	}
	// frank shares the project but not alice's allowance.
	if r := e2e.Send(t, "POST", b.URL+"/api/v1/queries", b.Tokens["frank"], "application/json", strings.NewReader(body)); r.Status != http.StatusCreated {
		t.Errorf("another researcher during alice's flood: status %d %q", r.Status, r.Body)
	}
	// Reads are not rate limited with submissions.
	if _, err := b.As("alice").Queries(context.Background(), api.QueryListOptions{}); err != nil {
		t.Errorf("alice lists her queries while limited: %v", err)
	}
	if _, err := b.As("bob").ReviewQueue(context.Background(), api.ListOptions{}); err != nil {
		t.Errorf("reviewer during the flood: %v", err)
	}
}

// TestInjectionInFilters puts SQL injection payloads into every list filter
// and pagination parameter: each answer is 400 or a (possibly empty) list,
// never 5xx, and nothing changes in the store.
func TestInjectionInFilters(t *testing.T) {
	adminAddr := e2e.FreeAddr(t)
	b := e2e.StartLonelyBroker(t, "--admin-addr", adminAddr)
	ctx := context.Background()
	q, err := b.As("alice").SubmitQuery(ctx, api.QueryRequest{ProjectID: b.Project, SQL: e2e.HostileSQL, Purpose: "baseline"})
	if err != nil {
		t.Fatal(err)
	}
	snapshot := func() string {
		t.Helper()
		qs, err := b.As("dave").Queries(ctx, api.QueryListOptions{ListOptions: api.ListOptions{Limit: 500}})
		if err != nil {
			t.Fatal(err)
		}
		ps, err := b.As("dave").Projects(ctx, api.ListOptions{Limit: 500})
		if err != nil {
			t.Fatal(err)
		}
		var s strings.Builder
		for _, q := range qs.Items {
			fmt.Fprintf(&s, "q%d:%s:%s;", q.ID, q.Status, q.SQLHash)
		}
		for _, p := range ps.Items {
			fmt.Fprintf(&s, "p%d:%s:%v;", p.ID, p.Title, p.Members)
		}
		return s.String()
	}
	before := snapshot()
	auditBefore, err := b.As("dave").Audit(ctx, api.AuditOptions{ListOptions: api.ListOptions{Limit: 1}})
	if err != nil {
		t.Fatal(err)
	}

	payloads := []string{
		"' OR '1'='1", "1 OR 1=1", "1; DROP TABLE queries; --", "submitted' --", `"; DELETE FROM audit; --`,
		"1) UNION SELECT * FROM projects --", "%", "_", "\\", "0x7fffffff", "-1", "99999999999999999999",
		"1e3", "NULL", "' || (SELECT sql FROM sqlite_master) || '", "$1", "?", "\u0000", "é' OR 'a'='a",
	}
	routes := []struct {
		path, who string
		params    []string
	}{
		{"/api/v1/queries", "dave", []string{"status", "project_id", "submitted_by", "limit", "offset"}},
		{"/api/v1/queries", "alice", []string{"status", "project_id", "submitted_by", "limit", "offset"}},
		{"/api/v1/projects", "dave", []string{"limit", "offset"}},
		{"/api/v1/audit", "dave", []string{"actor", "action", "object", "limit", "offset"}},
		{"/api/v1/review/queue", "bob", []string{"limit", "offset"}},
		{"/api/v1/outputs/queue", "carol", []string{"limit", "offset"}},
		{"/api/v1/datasets", "alice", []string{"limit", "offset"}},
		{"/public/register", "", []string{"limit", "offset"}},
	}
	for _, rt := range routes {
		for _, param := range rt.params {
			for _, p := range payloads {
				name := fmt.Sprintf("%s as %s/%s=%q", rt.path, rt.who, param, p)
				r := e2e.Send(t, "GET", b.URL+rt.path+"?"+url.Values{param: {p}}.Encode(), b.Tokens[rt.who], "", nil)
				switch {
				case r.Status == http.StatusBadRequest:
					e2e.ErrorCode(t, r)
				case r.Status == http.StatusOK:
					var list struct {
						Items []json.RawMessage `json:"items"`
						Total int               `json:"total"`
					}
					if err := json.Unmarshal(r.Body, &list); err != nil {
						t.Errorf("%s: 200 with a body that is not a list: %.200q", name, r.Body)
					}
					// A filter on a value no row holds must not match
					// rows: an injected OR would.
					if param != "limit" && param != "offset" && len(list.Items) > 0 && rt.path != "/api/v1/audit" {
						t.Errorf("%s: filter matched %d rows", name, len(list.Items))
					}
					if rt.path == "/api/v1/audit" && param != "limit" && param != "offset" && list.Total > 0 {
						t.Errorf("%s: audit filter matched %d entries", name, list.Total)
					}
				default:
					t.Errorf("%s: status %d, want 400 or 200; body %.200q", name, r.Status, r.Body)
				}
			}
		}
	}
	// Path parameters too.
	for _, p := range []string{"1 OR 1=1", "1;DROP TABLE queries", "-1", "0x1", "1e3", "99999999999999999999", "1\r\nSet-Cookie: x=y"} {
		for _, suffix := range []string{"", "/output", "/result?format=csv"} {
			path := "/api/v1/queries/" + url.PathEscape(p) + suffix
			r := e2e.Send(t, "GET", b.URL+path, b.Tokens["dave"], "", nil)
			if r.Status >= 500 || r.Status < 400 {
				t.Errorf("GET %s: status %d, want 4xx; body %.200q", path, r.Status, r.Body)
			}
			if r.Header.Get("Set-Cookie") != "" {
				t.Errorf("GET %s: a Set-Cookie header was injected", path)
			}
		}
	}

	// Nothing a caller sent becomes a metrics label.
	var metrics e2e.RawResponse
	e2e.Eventually(t, 30*time.Second, "metrics listener", func() error {
		resp, err := http.Get("http://" + adminAddr + "/metrics")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		data, err := io.ReadAll(resp.Body)
		metrics = e2e.RawResponse{Status: resp.StatusCode, Header: resp.Header, Body: data}
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		return err
	})
	if !bytes.Contains(metrics.Body, []byte("# TYPE")) {
		t.Fatalf("metrics are not in Prometheus text format: %.300q", metrics.Body)
	}
	leaks := []string{e2e.HostileSQL, "DROP TABLE", "UNION SELECT", "sqlite_master", "Set-Cookie", "OR 1=1", "OR '1'='1"}
	for _, tok := range b.Tokens {
		leaks = append(leaks, tok[strings.LastIndexByte(tok, '.')+1:])
	}
	for _, l := range leaks {
		if bytes.Contains(metrics.Body, []byte(l)) {
			t.Errorf("metrics contain %q", l)
		}
	}

	if after := snapshot(); after != before {
		t.Errorf("store changed under injection attempts:\nbefore %s\nafter  %s", before, after)
	}
	got, err := b.As("alice").Query(ctx, q.ID)
	if err != nil || got.SQLHash != q.SQLHash {
		t.Errorf("baseline query after injection attempts: %+v, %v", got, err)
	}
	auditAfter, err := b.As("dave").Audit(ctx, api.AuditOptions{ListOptions: api.ListOptions{Limit: 1}})
	if err != nil || auditAfter.Total < auditBefore.Total {
		t.Errorf("audit entries went from %d to %d (%v)", auditBefore.Total, auditAfter.Total, err)
	}
	if v, err := b.As("dave").VerifyAudit(ctx); err != nil || !v.OK {
		t.Errorf("audit chain after injection attempts: %+v, %v", v, err)
	}
}

// TestReleasedFileInjection: a result whose group keys and column names are
// spreadsheet formulas is released, and the CSV a researcher downloads
// neutralises every one; the download's headers carry a fixed, safe
// filename. The column names come from the researcher's aliases and the
// keys from a column released by partition selection (codes found in the
// data), which is where such text can legitimately arrive; a fabricated
// key in a public-domain column is refused (TestStolenAgentToken).
func TestReleasedFileInjection(t *testing.T) {
	b := e2e.StartLonelyBroker(t)
	ctx := context.Background()
	sql := `SELECT snomed_code AS "=HYPERLINK(""http://evil.example"")", count(*) AS "@n" FROM clinical_events GROUP BY snomed_code`
	q, err := b.As("alice").SubmitQuery(ctx, api.QueryRequest{ProjectID: b.Project, SQL: sql, Purpose: "formula injection"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.As("bob").ApproveQuery(ctx, q.ID, "ok"); err != nil {
		t.Fatal(err)
	}
	lease, err := b.As("site").Lease(ctx, e2e.SiteID)
	if err != nil || lease == nil || lease.QueryID != q.ID {
		t.Fatalf("lease = %+v, %v; want query %d", lease, err, q.ID)
	}
	formulas := []string{
		`=cmd|' /C calc'!A0`, `+1`, `-2+3`, `@SUM(1)`, "\t=1+1", "\r=1+1", `=HYPERLINK("http://evil.example","x")`,
		"=1\n=2", `"=1"`, "plain",
	}
	v := func(x float64) *float64 { return &x }
	res := brokertest.ShapedResult(mustSpec(t, lease), formulas, func(i int) dp.Cell {
		return dp.Cell{Value: v(float64(10 * (i + 1))), CILow: v(-1.5), CIHigh: v(2)}
	})
	if err := b.As("site").Complete(ctx, q.ID, lease.Token, res); err != nil {
		t.Fatalf("complete: %v", err)
	}
	if _, err := b.As("carol").ReleaseQuery(ctx, q.ID, "checked"); err != nil {
		t.Fatalf("release: %v", err)
	}
	e2e.WaitStatus(t, b.As("alice"), q.ID, broker.StatusReleased)

	r := e2e.Send(t, "GET", fmt.Sprintf("%s/api/v1/queries/%d/result?format=csv", b.URL, q.ID), b.Tokens["alice"], "", nil)
	if r.Status != http.StatusOK {
		t.Fatalf("CSV download: %d %q", r.Status, r.Body)
	}
	if cd, want := r.Header.Get("Content-Disposition"), fmt.Sprintf(`attachment; filename="tre-query-%d.csv"`, q.ID); cd != want {
		t.Errorf("Content-Disposition = %q, want %q", cd, want)
	}
	for k, vs := range r.Header {
		for _, v := range vs {
			if strings.ContainsAny(v, "\r\n") {
				t.Errorf("header %s holds a line break: %q", k, v)
			}
		}
	}
	recs, err := csv.NewReader(bytes.NewReader(r.Body)).ReadAll()
	if err != nil {
		t.Fatalf("released CSV does not parse: %v\n%s", err, r.Body)
	}
	if len(recs) != len(formulas)+1 {
		t.Fatalf("CSV has %d records, want %d:\n%s", len(recs), len(formulas)+1, r.Body)
	}
	for i, rec := range recs {
		for j, cell := range rec {
			isText := i == 0 || j == 0
			if isText && cell != "" && strings.ContainsRune("=+-@\t\r", rune(cell[0])) {
				t.Errorf("CSV record %d cell %d %q starts a formula", i, j, cell)
			}
		}
	}
	for i, f := range formulas {
		got := recs[i+1][0]
		if strings.TrimPrefix(got, "'") != f {
			t.Errorf("group key %q came out as %q", f, got)
		}
	}
	// Numbers stay numbers: a negative interval bound is not neutralised.
	if recs[1][2] != "-2" {
		t.Errorf("ci_low = %q, want -2 (numbers are not text cells)", recs[1][2])
	}
}

// mustSpec compiles a leased job against the test catalog as the site
// would, for the shape of its result.
func mustSpec(tb testing.TB, lease *broker.Lease) dp.Spec {
	tb.Helper()
	cat, err := queries.LoadCatalog(e2e.TestCatalogPath)
	if err != nil {
		tb.Fatal(err)
	}
	p, err := queries.NewParser()
	if err != nil {
		tb.Fatal(err)
	}
	defer p.Close()
	plan, err := p.Compile(context.Background(), cat, lease.SQL, queries.Options{Epsilon: lease.Epsilon})
	if err != nil {
		tb.Fatalf("compile the leased job: %v", err)
	}
	return plan.Spec
}

// TestTokenForgeryEndToEnd runs the token forgery suite across the process
// boundary against a broker configured with an RS256 public key, issuer and
// audience: every forged token gets a 401 JSON error.
func TestTokenForgeryEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a real broker process; skipped with -short")
	}
	dir := t.TempDir()
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	other, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(&rk.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
	keyFile := filepath.Join(dir, "idp.pem") // key id "idp"
	if err := os.WriteFile(keyFile, pubPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	const iss, aud = "https://idp.test.example", "tre-test"
	addr := e2e.FreeAddr(t)
	u := "http://" + addr
	e2e.StartTre(t, "serve", "--data-dir", filepath.Join(dir, "broker"), "--addr", addr,
		"--jwt-public-key", keyFile, "--jwt-issuer", iss, "--jwt-audience", aud)
	e2e.WaitReady(t, u)

	now := time.Now()
	claims := func(mod func(jwt.MapClaims)) jwt.MapClaims {
		c := jwt.MapClaims{"sub": "mallory", "name": "Mallory", "org": "Nowhere", "roles": []string{"researcher"},
			"iss": iss, "aud": aud, "exp": now.Add(time.Hour).Unix(), "iat": now.Unix()}
		if mod != nil {
			mod(c)
		}
		return c
	}
	signed := func(m jwt.SigningMethod, key any, kid string, c jwt.MapClaims) string {
		t.Helper()
		tok := jwt.NewWithClaims(m, c)
		if kid != "" {
			tok.Header["kid"] = kid
		}
		s, err := tok.SignedString(key)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	valid := signed(jwt.SigningMethodRS256, rk, "", claims(nil))
	// The control: the genuine token works, so every 401 below is the forgery's.
	if r := e2e.Send(t, "GET", u+"/api/v1/datasets", valid, "", nil); r.Status != http.StatusOK {
		t.Fatalf("genuine RS256 token: status %d %q", r.Status, r.Body)
	}
	if r := e2e.Send(t, "GET", u+"/api/v1/datasets", signed(jwt.SigningMethodRS256, rk, "idp", claims(nil)), "", nil); r.Status != http.StatusOK {
		t.Fatalf("genuine RS256 token with its kid: status %d %q", r.Status, r.Body)
	}

	b64 := base64.RawURLEncoding.EncodeToString
	tamper := func(tok string, mod func(map[string]any)) string {
		parts := strings.Split(tok, ".")
		raw, err := base64.RawURLEncoding.DecodeString(parts[1])
		if err != nil {
			t.Fatal(err)
		}
		var c map[string]any
		if err := json.Unmarshal(raw, &c); err != nil {
			t.Fatal(err)
		}
		mod(c)
		out, err := json.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		return parts[0] + "." + b64(out) + "." + parts[2]
	}
	none, err := jwt.NewWithClaims(jwt.SigningMethodNone, claims(nil)).SignedString(jwt.UnsafeAllowNoneSignatureType)
	if err != nil {
		t.Fatal(err)
	}
	payload := strings.Split(valid, ".")[1]
	tests := []struct{ name, token string }{
		{"alg none", none},
		{"alg none with the genuine signature", b64([]byte(`{"alg":"none","typ":"JWT"}`)) + "." + payload + "." + strings.Split(valid, ".")[2]},
		{"alg NONE", b64([]byte(`{"alg":"NONE","typ":"JWT"}`)) + "." + payload + "."},
		{"HS256 keyed with the public key PEM", signed(jwt.SigningMethodHS256, pubPEM, "", claims(nil))},
		{"HS256 keyed with the public key DER", signed(jwt.SigningMethodHS256, der, "", claims(nil))},
		{"HS256 keyed with the PEM, naming the RSA kid", signed(jwt.SigningMethodHS256, pubPEM, "idp", claims(nil))},
		{"expired", signed(jwt.SigningMethodRS256, rk, "", claims(func(c jwt.MapClaims) { c["exp"] = now.Add(-time.Hour).Unix() }))},
		{"no exp", signed(jwt.SigningMethodRS256, rk, "", claims(func(c jwt.MapClaims) { delete(c, "exp") }))},
		{"not yet valid", signed(jwt.SigningMethodRS256, rk, "", claims(func(c jwt.MapClaims) { c["nbf"] = now.Add(time.Hour).Unix() }))},
		{"wrong issuer", signed(jwt.SigningMethodRS256, rk, "", claims(func(c jwt.MapClaims) { c["iss"] = "https://evil.example" }))},
		{"no issuer", signed(jwt.SigningMethodRS256, rk, "", claims(func(c jwt.MapClaims) { delete(c, "iss") }))},
		{"wrong audience", signed(jwt.SigningMethodRS256, rk, "", claims(func(c jwt.MapClaims) { c["aud"] = "other-service" }))},
		{"tampered roles", tamper(valid, func(c map[string]any) { c["roles"] = []string{"admin"} })},
		{"tampered subject", tamper(valid, func(c map[string]any) { c["sub"] = "dave" })},
		{"tampered expiry", tamper(signed(jwt.SigningMethodRS256, rk, "", claims(func(c jwt.MapClaims) { c["exp"] = now.Add(-time.Hour).Unix() })),
			func(c map[string]any) { c["exp"] = now.Add(time.Hour).Unix() })},
		{"unknown kid", signed(jwt.SigningMethodRS256, rk, "nope", claims(nil))},
		{"signed by another RSA key", signed(jwt.SigningMethodRS256, other, "", claims(nil))},
		{"another key naming the real kid", signed(jwt.SigningMethodRS256, other, "idp", claims(nil))},
		{"ES256 from an unconfigured key", signed(jwt.SigningMethodES256, ec, "", claims(nil))},
		{"PS256 with the real key", signed(jwt.SigningMethodPS256, rk, "", claims(nil))},
		{"RS512 with the real key", signed(jwt.SigningMethodRS512, rk, "", claims(nil))},
		{"signature stripped", strings.Join(strings.Split(valid, ".")[:2], ".") + "."},
		{"two parts", strings.Join(strings.Split(valid, ".")[:2], ".")},
		{"garbage", "not-a-token"},
		{"oversized", strings.Repeat("A", 20<<10) + "." + payload + ".x"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, path := range []string{"/api/v1/datasets", "/api/v1/audit", "/api/v1/projects"} {
				r := e2e.Send(t, "GET", u+path, tt.token, "", nil)
				if r.Status != http.StatusUnauthorized {
					t.Fatalf("GET %s: status %d, want 401; body %.200q", path, r.Status, r.Body)
				}
				if code := e2e.ErrorCode(t, r); code != "unauthorized" {
					t.Errorf("GET %s: code %q, want unauthorized", path, code)
				}
				if !strings.HasPrefix(r.Header.Get("WWW-Authenticate"), "Bearer") {
					t.Errorf("GET %s: WWW-Authenticate = %q", path, r.Header.Get("WWW-Authenticate"))
				}
				if len(tt.token) > 20 && bytes.Contains(r.Body, []byte(tt.token[len(tt.token)-20:])) {
					t.Errorf("GET %s: the error echoes the token", path)
				}
			}
		})
	}
}

// TestNoLeaksInLogsAndErrors runs a whole flow with the real broker, agent
// and sandbox, plus SQL that DuckDB rejects at parse, bind and execution
// time. Researchers' error messages carry no DuckDB error text or data
// values, and neither process logs a bearer token, the dev key, SQL text, a
// released value or a group key.
func TestNoLeaksInLogsAndErrors(t *testing.T) {
	s := e2e.StartSite(t, 3000)
	ctx := context.Background()
	projectID := s.CreateProject(t, 20)
	// The agent again, with its metrics listener, so its labels are checked
	// too.
	s.Agent.Stop()
	agentAdmin := e2e.FreeAddr(t)
	s.Agent = e2e.StartTre(t, append(append([]string{}, s.AgentArgs...), "--admin-addr", agentAdmin)...)

	// A whole flow: submit, approve, run, release, download.
	const flowSQL = "SELECT region, count(*) AS n FROM patients GROUP BY region"
	q, err := s.As("alice").SubmitQuery(ctx, api.QueryRequest{ProjectID: projectID, SQL: flowSQL, Purpose: "regions"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.As("bob").ApproveQuery(ctx, q.ID, "ok"); err != nil {
		t.Fatal(err)
	}
	e2e.WaitStatus(t, s.As("bob"), q.ID, broker.StatusAwaitingOutputCheck)
	if _, err := s.As("carol").ReleaseQuery(ctx, q.ID, "ok"); err != nil {
		t.Fatal(err)
	}
	e2e.WaitStatus(t, s.As("alice"), q.ID, broker.StatusReleased)
	res, err := s.As("alice").Result(ctx, q.ID)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.As("alice").ResultRaw(ctx, q.ID, "csv"); err != nil {
		t.Fatal(err)
	}
	// A bad token is logged as a failure, never as the token.
	badToken := s.Tokens["alice"][:len(s.Tokens["alice"])-4] + "AAAA"
	if r := e2e.Send(t, "GET", s.URL+"/api/v1/datasets", badToken, "", nil); r.Status != http.StatusUnauthorized {
		t.Fatalf("tampered token: status %d", r.Status)
	}

	// SQL that fails inside DuckDB: the researcher sees tre's words only.
	duckdbText := []string{"Parser Error", "Binder Error", "Conversion Error", "Catalog Error", "Invalid Input Error",
		"Out of Range Error", "Constraint Error", "INTERNAL Error", "LINE 1", "syntax error at or near",
		"Could not convert", "Referenced column", "Candidate bindings", "female", "North East"}
	checkMessage := func(t *testing.T, what, sql, msg string) {
		t.Helper()
		for _, bad := range duckdbText {
			// A refusal may quote the researcher's own SQL back.
			if strings.Contains(msg, bad) && !strings.Contains(sql, bad) {
				t.Errorf("%s: message shows %q: %s", what, bad, msg)
			}
		}
	}
	failing := []struct{ name, sql string }{
		{"parse", "SELECT count(* FROM patients"},
		{"parse, unterminated string", "SELECT count(*) FROM patients WHERE sex = 'female"},
		{"bind, unknown column", "SELECT count(*) FROM patients WHERE no_such_column = 1"},
		{"bind, type mismatch", "SELECT count(*) FROM patients WHERE sex + 1 = 2"},
		{"conversion of a data value", "SELECT count(*) FROM patients WHERE sex = 5"},
		{"conversion of a literal", "SELECT count(*) FROM patients WHERE date_of_birth > DATE 'not-a-date'"},
		{"conversion in a cast", "SELECT count(*) FROM patients WHERE CAST(region AS INTEGER) > 1"},
	}
	for _, tt := range failing {
		t.Run(tt.name, func(t *testing.T) {
			req := api.QueryRequest{ProjectID: projectID, SQL: tt.sql, Purpose: "error text"}
			_, err := s.As("alice").DryRun(ctx, req)
			if err != nil {
				if st := e2e.APIStatus(err); st >= 500 && st != http.StatusServiceUnavailable {
					t.Errorf("dry run: status %d: %v", st, err)
				}
				checkMessage(t, "dry run", tt.sql, err.Error())
			}
			q, err := s.As("alice").SubmitQuery(ctx, req)
			if err != nil {
				if st := e2e.APIStatus(err); st >= 500 {
					t.Errorf("submit: status %d: %v", st, err)
				}
				checkMessage(t, "submit", tt.sql, err.Error())
				return
			}
			// Accepted at submission: it must fail (or run) in the sandbox
			// without DuckDB's words reaching the researcher.
			if _, err := s.As("bob").ApproveQuery(ctx, q.ID, "see what happens"); err != nil {
				t.Fatal(err)
			}
			var final *broker.Query
			e2e.Eventually(t, 90*time.Second, "query leaves running", func() error {
				final, err = s.As("alice").Query(ctx, q.ID)
				if err != nil {
					return err
				}
				switch final.Status {
				case broker.StatusFailed, broker.StatusAwaitingOutputCheck:
					return nil
				}
				return fmt.Errorf("status %s", final.Status)
			})
			js, _ := json.Marshal(final)
			checkMessage(t, "query as the researcher sees it", tt.sql, string(js))
		})
	}

	var agentMetrics []byte
	e2e.Eventually(t, 30*time.Second, "agent metrics", func() error {
		resp, err := http.Get("http://" + agentAdmin + "/metrics")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		agentMetrics, err = io.ReadAll(resp.Body)
		if err == nil && resp.StatusCode != http.StatusOK {
			err = fmt.Errorf("status %d", resp.StatusCode)
		}
		return err
	})
	if !bytes.Contains(agentMetrics, []byte("# TYPE")) {
		t.Errorf("agent metrics are not in Prometheus text format: %.300q", agentMetrics)
	}

	s.Agent.Stop()
	s.Broker.Stop()
	logs := map[string]string{"broker": s.Broker.Out.String(), "agent": s.Agent.Out.String(), "agent metrics": string(agentMetrics)}
	devKey, err := os.ReadFile(filepath.Join(s.Dir, "broker", auth.DevKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	secrets := map[string]string{"dev key": strings.TrimSpace(string(devKey)), "tampered token": badToken,
		"SQL text": flowSQL, "SQL keyword": "SELECT ", "rewritten SQL marker": "__patients"}
	for sub, tok := range s.Tokens {
		secrets["token of "+sub] = tok
		secrets["signature of "+sub+"'s token"] = tok[strings.LastIndexByte(tok, '.')+1:]
	}
	for _, tt := range failing {
		secrets["SQL text "+tt.name] = tt.sql
	}
	for _, row := range res.Rows {
		for i, c := range row {
			if res.Columns[i].Kind == "group" && len(c.Key) >= 4 {
				secrets["group key "+c.Key] = c.Key
			}
			for _, v := range []*float64{c.Value, c.CILow, c.CIHigh} {
				if v == nil {
					continue
				}
				if f := strconv.FormatFloat(*v, 'f', -1, 64); len(f) >= 6 {
					secrets["released value "+f] = f
				}
			}
		}
	}
	if len(res.Rows) == 0 {
		t.Fatal("released table is empty: nothing to look for in the logs")
	}
	for proc, log := range logs {
		if proc != "agent metrics" && !strings.Contains(log, `"msg"`) {
			t.Fatalf("%s log is empty or not JSON: %.300q", proc, log)
		}
		for what, secret := range secrets {
			if secret != "" && strings.Contains(log, secret) {
				t.Errorf("%s log contains the %s", proc, what)
				sc := bufio.NewScanner(strings.NewReader(log))
				sc.Buffer(nil, 1<<20)
				for sc.Scan() {
					if strings.Contains(sc.Text(), secret) {
						t.Logf("  line: %.300s", sc.Text())
						break
					}
				}
			}
		}
	}
	if t.Failed() {
		t.Logf("log sizes: broker %d, agent %d bytes", len(logs["broker"]), len(logs["agent"]))
	}
}

// TestStolenAgentToken plays what an attacker holding an agent token (or a
// compromised second site) tries against a real broker process: publish
// over another site's catalog, lease its jobs, and heartbeat, complete or
// fail them with a leaked lease token. Every attempt is a 403 JSON error;
// the catalog and the job are untouched and the legitimate site completes
// its job afterwards.
func TestStolenAgentToken(t *testing.T) {
	b := e2e.StartLonelyBroker(t)
	ctx := context.Background()
	if _, err := b.As("dave").CreateSite(ctx, api.SiteRequest{ID: "site-2", Name: "Second site", Organisation: "Other NHS Trust"}); err != nil {
		t.Fatal(err)
	}
	agent := []broker.Role{broker.RoleAgent}
	site2 := b.Mint(t, auth.DevClaims{Subject: "agent-2", Roles: agent, Site: "site-2"})
	siteless := b.Mint(t, auth.DevClaims{Subject: "agent-0", Roles: agent})
	unregistered := b.Mint(t, auth.DevClaims{Subject: "agent-9", Roles: agent, Site: "site-9"})
	cat, err := queries.LoadCatalog(e2e.TestCatalogPath)
	if err != nil {
		t.Fatal(err)
	}
	before, err := b.As("dave").Datasets(ctx, api.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	q, err := b.As("alice").SubmitQuery(ctx, api.QueryRequest{ProjectID: b.Project, SQL: e2e.HostileSQL, Purpose: "stolen agent token"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.As("bob").ApproveQuery(ctx, q.ID, "ok"); err != nil {
		t.Fatal(err)
	}
	// site-2 holds none of the project's datasets: its polls find nothing.
	if r := e2e.Send(t, "POST", b.URL+"/api/v1/agent/lease", site2, "application/json", strings.NewReader(`{"site_id":"site-2"}`)); r.Status != http.StatusNoContent {
		t.Fatalf("site-2 polls for its own jobs: %d %s", r.Status, r.Body)
	}
	lease, err := b.As("site").Lease(ctx, e2e.SiteID)
	if err != nil || lease == nil || lease.QueryID != q.ID {
		t.Fatalf("site-1 lease = %+v, %v", lease, err)
	}

	// A forbidden column made categorical: what a rogue catalog would do.
	rogue, err := queries.LoadCatalog(e2e.TestCatalogPath)
	if err != nil {
		t.Fatal(err)
	}
	unforbidden := false
	for i := range rogue.Tables {
		for j := range rogue.Tables[i].Columns {
			if c := &rogue.Tables[i].Columns[j]; c.Role == queries.RoleForbidden {
				c.Role, unforbidden = queries.RoleCategorical, true
			}
		}
	}
	if !unforbidden {
		t.Fatal("the test catalog has no forbidden column")
	}
	catJSON := func(site string, c *queries.Catalog) string {
		body, err := json.Marshal(api.CatalogRequest{SiteID: site, Catalog: c})
		if err != nil {
			t.Fatal(err)
		}
		return string(body)
	}
	v := func(x float64) *float64 { return &x }
	fabricated, err := json.Marshal(api.CompleteRequest{Token: lease.Token, Result: &dp.Result{
		Columns: []dp.Column{{Name: "sex", Kind: "group"}, {Name: "n", Kind: "count"}},
		Rows:    [][]dp.Cell{{{Key: `=HYPERLINK("http://evil.example","x")`}, {Value: v(5)}}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	job := fmt.Sprintf("%s/api/v1/agent/jobs/%d", b.URL, q.ID)
	tests := []struct {
		name, token, method, url, body string
		want                           int
	}{
		{"site-2 publishes as site-1", site2, "PUT", b.URL + "/api/v1/agent/catalog", catJSON(e2e.SiteID, rogue), 403},
		{"site-2 publishes site-1's dataset as its own", site2, "PUT", b.URL + "/api/v1/agent/catalog", catJSON("site-2", rogue), 409},
		{"site-2 leases as site-1", site2, "POST", b.URL + "/api/v1/agent/lease", `{"site_id":"site-1"}`, 403},
		{"site-2 heartbeats site-1's job with its lease token", site2, "POST", job + "/heartbeat", `{"token":"` + lease.Token + `"}`, 403},
		{"site-2 completes site-1's job with a fabricated table", site2, "POST", job + "/complete", string(fabricated), 403},
		{"site-2 fails site-1's job", site2, "POST", job + "/fail", `{"token":"` + lease.Token + `","code":"sandbox_error","message":"x"}`, 403},
		{"siteless token publishes", siteless, "PUT", b.URL + "/api/v1/agent/catalog", catJSON(e2e.SiteID, cat), 403},
		{"siteless token leases", siteless, "POST", b.URL + "/api/v1/agent/lease", `{"site_id":"site-1"}`, 403},
		{"siteless token fails site-1's job", siteless, "POST", job + "/fail", `{"token":"` + lease.Token + `","code":"sandbox_error","message":"x"}`, 403},
		{"unregistered site leases", unregistered, "POST", b.URL + "/api/v1/agent/lease", `{"site_id":"site-9"}`, 403},
		{"unregistered site publishes", unregistered, "PUT", b.URL + "/api/v1/agent/catalog", catJSON("site-9", cat), 403},
		{"researcher leases", b.Tokens["alice"], "POST", b.URL + "/api/v1/agent/lease", `{"site_id":"site-1"}`, 403},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := e2e.Send(t, tt.method, tt.url, tt.token, "application/json", strings.NewReader(tt.body))
			if r.Status != tt.want {
				t.Fatalf("status %d, want %d: %s", r.Status, tt.want, r.Body)
			}
			if code := e2e.ErrorCode(t, r); code == "" {
				t.Errorf("no JSON error code in %s", r.Body)
			}
		})
	}
	after, err := b.As("dave").Datasets(ctx, api.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(before, after); diff != "" {
		t.Errorf("the catalog changed (-before +after):\n%s", diff)
	}
	if got, err := b.As("dave").Query(ctx, q.ID); err != nil || got.Status != broker.StatusRunning {
		t.Fatalf("query after the attempts = %+v, %v; want still running", got, err)
	}
	denied, err := b.As("dave").Audit(ctx, api.AuditOptions{Action: "authz.denied"})
	if err != nil {
		t.Fatal(err)
	}
	if denied.Total < 10 {
		t.Errorf("%d authz.denied entries, want one per refused agent call", denied.Total)
	}
	sites, err := b.As("dave").Sites(ctx, api.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range sites.Items {
		if s.ID == "site-9" {
			t.Errorf("the unregistered site's agent created a site: %+v", s)
		}
	}

	// Even the leasing site cannot complete with a table the approved query
	// does not produce: a fabricated key in a public-domain column, a
	// budget it did not spend, a column it does not release.
	genuine := brokertest.ShapedResult(mustSpec(t, lease), nil, func(int) dp.Cell { return dp.Cell{Value: v(20), Rounded: true} })
	forged := func(mod func(r *dp.Result)) string {
		r := genuine
		r.Columns = slices.Clone(genuine.Columns)
		r.Rows = nil
		for _, row := range genuine.Rows {
			r.Rows = append(r.Rows, slices.Clone(row))
		}
		mod(&r)
		body, err := json.Marshal(api.CompleteRequest{Token: lease.Token, Result: &r})
		if err != nil {
			t.Fatal(err)
		}
		return string(body)
	}
	site1 := b.Tokens["site"]
	for name, body := range map[string]string{
		"a =HYPERLINK key in a public-domain column": forged(func(r *dp.Result) { r.Rows[0][0].Key = `=HYPERLINK("http://evil.example","x")` }),
		"ε 0":                      forged(func(r *dp.Result) { r.Report.Epsilon = 0 }),
		"a column not released":    forged(func(r *dp.Result) { r.Columns[1].Name = "patient_id" }),
		"a row beyond the domain":  forged(func(r *dp.Result) { r.Rows = append(r.Rows, r.Rows[0]) }),
		"weaker suppression claim": forged(func(r *dp.Result) { r.Report.Threshold = 1 }),
	} {
		if r := e2e.Send(t, "POST", job+"/complete", site1, "application/json", strings.NewReader(body)); r.Status != http.StatusBadRequest || e2e.ErrorCode(t, r) != "invalid" {
			t.Errorf("site-1 completes with %s: %d %s, want 400 invalid", name, r.Status, r.Body)
		}
	}
	if err := b.As("site").Complete(ctx, q.ID, lease.Token, genuine); err != nil {
		t.Fatalf("site-1 completes its job with a table of the approved shape: %v", err)
	}
}

// TestAgentRefusedExits starts real agent processes the broker refuses: one
// whose token names another site, one whose dataset another site already
// publishes. Each exits with the broker's reason instead of retrying the
// 403 or 409 forever.
func TestAgentRefusedExits(t *testing.T) {
	b := e2e.StartLonelyBroker(t)
	ctx := context.Background()
	if _, err := b.As("dave").CreateSite(ctx, api.SiteRequest{ID: "site-2", Name: "Second site", Organisation: "Other NHS Trust"}); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	token := e2e.WriteAgentToken(t, dir, b.Mint(t, auth.DevClaims{Subject: "agent-2", Roles: []broker.Role{broker.RoleAgent}, Site: "site-2"}))
	data := filepath.Join(dir, "data.duckdb")
	var out bytes.Buffer
	if code := e2e.RunTre(ctx, []string{"synth", "--out", data, "--patients", "1000", "--seed", "3"}, &out, &out); code != 0 {
		t.Fatalf("tre synth exited %d:\n%s", code, out.String())
	}
	// Another site may hold site-1's dataset only with an agreeing catalog
	// (federation): this one rounds to 10, not 5.
	text, err := os.ReadFile(e2e.TestCatalogPath)
	if err != nil {
		t.Fatal(err)
	}
	conflicting := filepath.Join(dir, "conflicting.catalog.yaml")
	if err := os.WriteFile(conflicting, []byte(strings.Replace(string(text), "rounding_base: 5", "rounding_base: 10", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct{ name, site, catalog, want string }{
		{"token for another site", e2e.SiteID, e2e.TestCatalogPath, `acts for site "site-2", not "site-1"`},
		{"dataset held by another site with another catalog", "site-2", conflicting, `whose catalog differs at policy.rounding_base`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := e2e.StartTre(t, "agent", "--broker", b.URL, "--site-id", tt.site, "--token-file", token,
				"--data", data, "--catalog", tt.catalog, "--scratch-dir", filepath.Join(dir, "scratch"))
			select {
			case err := <-p.Done():
				var ee *exec.ExitError
				if !errors.As(err, &ee) || ee.ExitCode() != 1 {
					t.Fatalf("agent exited with %v, want exit status 1\n%s", err, p.Out.String())
				}
			case <-time.After(30 * time.Second):
				t.Fatalf("the agent kept running after the broker refused it:\n%s", p.Out.String())
			}
			if out := p.Out.String(); !strings.Contains(out, tt.want) || !strings.Contains(out, "refused by the broker") {
				t.Errorf("agent output does not give the broker's reason %q:\n%s", tt.want, out)
			}
		})
	}
}

// TestAuditTruncationDetected deletes the newest audit entries of a
// running broker's SQLite store, as an attacker with the database would to
// hide what they did. The chain that is left is valid, so `tre audit
// verify` alone passes; against the head the public register showed
// before, it fails.
func TestAuditTruncationDetected(t *testing.T) {
	b := e2e.StartLonelyBroker(t)
	ctx := context.Background()
	reg, err := (&api.Client{BaseURL: b.URL}).Register(ctx, api.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	head := reg.AuditChain
	if head == nil || head.Entries < 3 || len(head.Hash) != 64 {
		t.Fatalf("the register shows the audit chain as %+v", head)
	}
	verify := func(args ...string) (int, string) {
		var out bytes.Buffer
		code := e2e.RunTre(ctx, append([]string{"audit", "verify", "--data-dir", b.Dir}, args...), &out, &out)
		return code, out.String()
	}
	published := []string{"--expect-head", head.Hash, "--expect-count", strconv.FormatInt(head.Entries, 10)}
	// The chain grows; the published head is still in it.
	if _, err := b.As("alice").SubmitQuery(ctx, api.QueryRequest{ProjectID: b.Project, SQL: e2e.HostileSQL, Purpose: "after the head"}); err != nil {
		t.Fatal(err)
	}
	if code, out := verify(published...); code != 0 {
		t.Fatalf("verify against the published head of a grown chain: exit %d\n%s", code, out)
	}
	store, err := sqlite.Open(ctx, filepath.Join(b.Dir, sqlite.DefaultFilename))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	if err := store.Exec(ctx, `DELETE FROM audit_log WHERE seq >= ?`, head.Entries-1); err != nil {
		t.Fatal(err)
	}
	if code, out := verify(); code != 0 {
		t.Fatalf("a truncated chain alone: exit %d, want 0 (nothing in it shows the cut)\n%s", code, out)
	}
	code, out := verify(published...)
	if code != 1 || !strings.Contains(out, "removed from its end") {
		t.Fatalf("verify against the published head after the cut: exit %d, want 1 naming the cut\n%s", code, out)
	}
	if code, out := verify("--expect-head", "not-a-hash"); code != 2 {
		t.Errorf("a malformed head: exit %d, want 2\n%s", code, out)
	}
}

// TestJunkTokenFlood sends 1,000 requests with junk bearer tokens to a real
// broker: each is a 401 JSON error, and the audit chain gains a handful of
// auth.failure entries, one per source per window with the count, not one
// per request.
func TestJunkTokenFlood(t *testing.T) {
	b := e2e.StartLonelyBroker(t, "--auth-failure-window", "2s")
	ctx := context.Background()
	before, err := b.As("dave").Audit(ctx, api.AuditOptions{Action: "auth.failure"})
	if err != nil {
		t.Fatal(err)
	}
	const junk = 1000
	for i := range junk {
		tok := fmt.Sprintf("junk.%d.token", i)
		if i%2 == 1 {
			tok = b.Tokens["alice"][:len(b.Tokens["alice"])-4] + "AAAA" // a forged signature
		}
		// A forged X-Forwarded-For on every request must not split the
		// flood into one entry per claimed address.
		r := e2e.SendWith(t, "GET", b.URL+"/api/v1/projects", tok, map[string]string{"X-Forwarded-For": fmt.Sprintf("198.51.100.%d", i%250)}, nil)
		if r.Status != http.StatusUnauthorized || e2e.ErrorCode(t, r) != "unauthorized" {
			t.Fatalf("junk request %d: %d %s", i, r.Status, r.Body)
		}
	}
	var got *api.List[broker.AuditEntry]
	e2e.Eventually(t, 30*time.Second, "the flood's aggregate written", func() error {
		got, err = b.As("dave").Audit(ctx, api.AuditOptions{Action: "auth.failure"})
		if err != nil {
			return err
		}
		total := 0
		for _, e := range got.Items {
			if m := regexp.MustCompile(`count="(\d+)"`).FindStringSubmatch(e.Detail); m != nil {
				n, _ := strconv.Atoi(m[1])
				total += n
			}
		}
		if total < junk {
			return fmt.Errorf("%d failures recorded in %d entries so far", total, got.Total)
		}
		return nil
	})
	if added := got.Total - before.Total; added > 5 {
		t.Errorf("%d junk requests added %d audit entries, want a handful", junk, added)
	}
	t.Logf("%d junk requests → %d auth.failure entries", junk, got.Total-before.Total)
	if v, err := b.As("dave").VerifyAudit(ctx); err != nil || !v.OK {
		t.Errorf("audit chain after the flood: %+v, %v", v, err)
	}
}

// TestDutiesEndToEnd plays people holding several roles against a real
// broker process, as an insider would try: the submitter who is also an
// output checker reads and releases their own output, a reviewer who is a
// member approves a colleague's query, the approver releases, an admin who
// is a researcher raises their project's budget. Each is a 403 JSON error
// and changes nothing; an output checker opening a query page in the web
// interface records no refusal.
func TestDutiesEndToEnd(t *testing.T) {
	b := e2e.StartLonelyBroker(t)
	ctx := context.Background()
	people := map[string][]broker.Role{
		"rita":  {broker.RoleResearcher, broker.RoleOutputChecker},
		"ravi":  {broker.RoleResearcher, broker.RoleReviewer},
		"vera":  {broker.RoleReviewer, broker.RoleOutputChecker},
		"adele": {broker.RoleAdmin, broker.RoleResearcher},
	}
	for sub, roles := range people {
		b.Tokens[sub] = b.Mint(t, auth.DevClaims{Subject: sub, Roles: roles})
	}
	members := []string{"alice", "frank", "rita", "ravi", "adele"}
	if _, err := b.As("dave").UpdateProject(ctx, b.Project, broker.ProjectUpdate{Members: &members}); err != nil {
		t.Fatal(err)
	}
	// complete runs a leased job as the site with a table of its shape.
	complete := func(id int64) {
		t.Helper()
		lease, err := b.As("site").Lease(ctx, e2e.SiteID)
		if err != nil || lease == nil || lease.QueryID != id {
			t.Fatalf("lease = %+v, %v; want query %d", lease, err, id)
		}
		v := 40.0
		res := brokertest.ShapedResult(mustSpec(t, lease), nil, func(int) dp.Cell { return dp.Cell{Value: &v, Rounded: true} })
		if err := b.As("site").Complete(ctx, id, lease.Token, res); err != nil {
			t.Fatal(err)
		}
	}
	submit := func(who string) int64 {
		t.Helper()
		q, err := b.As(who).SubmitQuery(ctx, api.QueryRequest{ProjectID: b.Project, SQL: e2e.HostileSQL, Purpose: "duties"})
		if err != nil {
			t.Fatal(err)
		}
		return q.ID
	}
	own := submit("rita")
	if _, err := b.As("bob").ApproveQuery(ctx, own, ""); err != nil {
		t.Fatal(err)
	}
	complete(own)
	colleague := submit("alice")
	approvedByVera := submit("frank")
	if _, err := b.As("vera").ApproveQuery(ctx, approvedByVera, ""); err != nil {
		t.Fatal(err)
	}
	complete(approvedByVera)
	tests := []struct {
		name, who, method, path, body string
	}{
		{"researcher+checker reads own output awaiting check", "rita", "GET", fmt.Sprintf("/api/v1/queries/%d/output", own), ""},
		{"researcher+checker releases own query", "rita", "POST", fmt.Sprintf("/api/v1/queries/%d/release", own), "{}"},
		{"reviewer+researcher approves a colleague's query", "ravi", "POST", fmt.Sprintf("/api/v1/queries/%d/approve", colleague), "{}"},
		{"approver releases", "vera", "POST", fmt.Sprintf("/api/v1/queries/%d/release", approvedByVera), "{}"},
		{"admin+researcher raises their project's budget", "adele", "PATCH", fmt.Sprintf("/api/v1/projects/%d", b.Project), `{"epsilon_budget":1000}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var body io.Reader
			ct := ""
			if tt.body != "" {
				body, ct = strings.NewReader(tt.body), "application/json"
			}
			r := e2e.Send(t, tt.method, b.URL+tt.path, b.Tokens[tt.who], ct, body)
			if r.Status != http.StatusForbidden || e2e.ErrorCode(t, r) != "forbidden" {
				t.Fatalf("status %d %s, want 403 forbidden", r.Status, r.Body)
			}
		})
	}
	for id, want := range map[int64]broker.Status{own: broker.StatusAwaitingOutputCheck, colleague: broker.StatusSubmitted, approvedByVera: broker.StatusAwaitingOutputCheck} {
		if q, err := b.As("dave").Query(ctx, id); err != nil || q.Status != want {
			t.Errorf("query %d after the refusals: %+v, %v; want %s", id, q, err, want)
		}
	}
	// The independent checker releases; opening the query page first, as
	// an output checker, records no refusal in the audit chain.
	denied := func() int {
		l, err := b.As("dave").Audit(ctx, api.AuditOptions{Action: "authz.denied"})
		if err != nil {
			t.Fatal(err)
		}
		return l.Total
	}
	before := denied()
	if r := e2e.SendWith(t, "GET", fmt.Sprintf("%s/ui/queries/%d", b.URL, own), b.Tokens["carol"], nil, nil); r.Status != http.StatusOK {
		t.Fatalf("the output checker's query page: %d", r.Status)
	}
	if n := denied(); n != before {
		t.Errorf("opening a query page as an output checker recorded %d refusals", n-before)
	}
	if _, err := b.As("carol").ReleaseQuery(ctx, own, "checked"); err != nil {
		t.Fatalf("the independent checker releases: %v", err)
	}
}

// TestDryRunBurst fires a burst of dry runs from several researchers at a
// real broker whose dry runs start real sandbox processes, capped at two at
// once and one per user. Every answer is a 200 or a 429 with Retry-After
// and a JSON error, and the broker never has more than two sandboxes.
func TestDryRunBurst(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("counts sandbox processes in /proc")
	}
	dir := t.TempDir()
	data := filepath.Join(dir, "dry.duckdb")
	var out bytes.Buffer
	if code := e2e.RunTre(context.Background(), []string{"synth", "--out", data, "--patients", "2000", "--seed", "9"}, &out, &out); code != 0 {
		t.Fatalf("tre synth exited %d:\n%s", code, out.String())
	}
	b := e2e.StartLonelyBroker(t, "--dry-run-data", data, "--dry-run-max", "2", "--dry-run-per-user", "1", "--submit-per-minute", "600")
	users := []string{"alice", "frank"}
	extra := []string{"gail", "hal"} // two more members of the project
	for _, u := range extra {
		b.Tokens[u] = b.Mint(t, auth.DevClaims{Subject: u, Roles: []broker.Role{broker.RoleResearcher}})
	}
	members := append(append([]string{}, users...), extra...)
	if _, err := b.As("dave").UpdateProject(context.Background(), b.Project, broker.ProjectUpdate{Members: &members}); err != nil {
		t.Fatal(err)
	}
	sql := `SELECT date_trunc('month', e.date) AS month, p.region, count(*) AS n FROM clinical_events e JOIN patients p ON p.patient_id = e.patient_id GROUP BY 1, 2`
	body, err := json.Marshal(api.QueryRequest{ProjectID: b.Project, SQL: sql, Purpose: "burst"})
	if err != nil {
		t.Fatal(err)
	}
	var peak atomic.Int64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if n := int64(e2e.Descendants(b.Proc.Cmd.Process.Pid)); n > peak.Load() {
				peak.Store(n)
			}
			time.Sleep(2 * time.Millisecond)
		}
	}()
	const burst = 24
	statuses := make([]e2e.RawResponse, burst)
	var wg sync.WaitGroup
	for i := range burst {
		wg.Add(1)
		go func() {
			defer wg.Done()
			statuses[i] = e2e.Send(t, "POST", b.URL+"/api/v1/queries/dry-run", b.Tokens[members[i%len(members)]], "application/json", bytes.NewReader(body))
		}()
	}
	wg.Wait()
	close(stop)
	<-sampled
	ok := 0
	for i, r := range statuses {
		switch r.Status {
		case http.StatusOK:
			ok++
		case http.StatusTooManyRequests:
			if r.Header.Get("Retry-After") == "" || e2e.ErrorCode(t, r) != "rate_limited" {
				t.Errorf("refused dry run %d: Retry-After %q, body %s", i, r.Header.Get("Retry-After"), r.Body)
			}
		default:
			t.Errorf("dry run %d: status %d %s", i, r.Status, r.Body)
		}
	}
	if ok == 0 {
		t.Error("no dry run of the burst ran")
	}
	if p := peak.Load(); p > 2 {
		t.Errorf("%d processes ran under the broker at once, want at most 2 sandboxes", p)
	}
	t.Logf("burst of %d: %d ran, %d refused with 429; at most %d sandboxes at once", burst, ok, burst-ok, peak.Load())
}
