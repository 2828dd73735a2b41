package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nhs-tre/tre/api"
	"github.com/nhs-tre/tre/api/auth"
	"github.com/nhs-tre/tre/broker"
	"github.com/nhs-tre/tre/queries"
)

// TestCatalogPath is the queries package's hand-written test catalog: the
// hostile tests publish it as a site agent would, without synthesising data.
var TestCatalogPath = filepath.Join(RepoRoot(), "queries", "testdata", "catalog.yaml")

// HostileSQL is a query the test catalog accepts.
const HostileSQL = "SELECT sex, count(*) AS n FROM patients GROUP BY sex"

// LonelyBroker is a `tre serve --dev` process with a published catalog and a
// project, but no site agent: the tests play the agent themselves.
type LonelyBroker struct {
	Dir, URL string
	Proc     *Process
	Tokens   map[string]string
	Project  int64
	Args     []string
}

// StartLonelyBroker starts the broker with extra serve flags, publishes the
// test catalog as site-1 and creates a project whose members are alice and
// frank.
func StartLonelyBroker(tb testing.TB, extra ...string) *LonelyBroker {
	tb.Helper()
	return StartLonelyBrokerOn(tb, "127.0.0.1", extra...)
}

// StartLonelyBrokerOn is StartLonelyBroker listening on host's address
// (a Net's Addr).
func StartLonelyBrokerOn(tb testing.TB, host string, extra ...string) *LonelyBroker {
	tb.Helper()
	if testing.Short() {
		tb.Skip("starts a real broker process; skipped with -short")
	}
	b := &LonelyBroker{Dir: tb.TempDir(), Tokens: map[string]string{}}
	addr := FreeAddrOn(tb, host)
	b.URL = "http://" + addr
	b.Args = append([]string{"serve", "--data-dir", b.Dir, "--addr", addr, "--dev", "--lease-ttl", "2s",
		"--researcher-time-granularity", Granularity.String()}, extra...)
	b.Proc = StartTre(tb, b.Args...)
	WaitReady(tb, b.URL)
	users := map[string]broker.Role{"frank": broker.RoleResearcher}
	for sub, role := range Users {
		users[sub] = role
	}
	b.Tokens = DevTokens(tb, b.Dir, users)
	cat, err := queries.LoadCatalog(TestCatalogPath)
	if err != nil {
		tb.Fatal(err)
	}
	ctx := context.Background()
	RegisterSite(tb, b.As("dave"))
	if err := b.As("site").PublishCatalog(ctx, SiteID, cat); err != nil {
		tb.Fatalf("publish catalog: %v", err)
	}
	p, err := b.As("dave").CreateProject(ctx, api.ProjectRequest{
		Title: "Hostile study", Organisation: "Test University", Purpose: "Testing hostile clients",
		LawfulBasis: "Art. 6(1)(e)", Members: []string{"alice", "frank"}, Datasets: []string{cat.Dataset},
		EpsilonBudget: 100, DeltaBudget: 1e-3, ExpiresAt: time.Now().AddDate(0, 1, 0),
	})
	if err != nil {
		tb.Fatalf("create project: %v", err)
	}
	b.Project = p.ID
	return b
}

func (b *LonelyBroker) As(sub string) *api.Client {
	return &api.Client{BaseURL: b.URL, Token: b.Tokens[sub], HTTPClient: &http.Client{Timeout: 30 * time.Second}}
}

// WaitReady polls /readyz until the broker answers.
func WaitReady(tb testing.TB, baseURL string) {
	tb.Helper()
	Eventually(tb, 60*time.Second, "broker ready", func() error {
		return (&api.Client{BaseURL: baseURL, HTTPClient: &http.Client{Timeout: 5 * time.Second}}).Readyz(context.Background())
	})
}

// RawResponse is an HTTP answer read whole.
type RawResponse struct {
	Status int
	Header http.Header
	Body   []byte
}

// Send makes one raw HTTP request with a bearer token.
func Send(tb testing.TB, method, u, token, contentType string, body io.Reader) RawResponse {
	tb.Helper()
	var headers map[string]string
	if contentType != "" {
		headers = map[string]string{"Content-Type": contentType}
	}
	return SendWith(tb, method, u, token, headers, body)
}

// ErrorCode checks r is a JSON error body and returns its code.
func ErrorCode(tb testing.TB, r RawResponse) string {
	tb.Helper()
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		tb.Errorf("error response Content-Type = %q, want application/json; body %q", ct, r.Body)
	}
	var body struct {
		Error struct{ Code, Message string } `json:"error"`
	}
	if err := json.Unmarshal(r.Body, &body); err != nil || body.Error.Code == "" || body.Error.Message == "" {
		tb.Errorf("error response is not {\"error\":{\"code\",\"message\"}}: %q", r.Body)
	}
	return body.Error.Code
}

// Mint signs a dev token with the broker's key.
func (b *LonelyBroker) Mint(tb testing.TB, c auth.DevClaims) string {
	tb.Helper()
	key, err := auth.LoadOrCreateDevKey(b.Dir)
	if err != nil {
		tb.Fatal(err)
	}
	c.TTL = time.Hour
	tok, err := auth.MintDevToken(key, c)
	if err != nil {
		tb.Fatal(err)
	}
	return tok
}

// SendWith makes one raw HTTP request with a bearer token and headers.
func SendWith(tb testing.TB, method, u, token string, headers map[string]string, body io.Reader) RawResponse {
	tb.Helper()
	req, err := http.NewRequest(method, u, body)
	if err != nil {
		tb.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		tb.Fatalf("%s %s: %v", method, u, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		tb.Fatalf("%s %s: read body: %v", method, u, err)
	}
	return RawResponse{Status: resp.StatusCode, Header: resp.Header, Body: data}
}

// Descendants counts the processes below pid (Linux /proc).
func Descendants(pid int) int { return len(DescendantPIDs(pid)) }

// DescendantPIDs lists the processes below pid (Linux /proc).
func DescendantPIDs(pid int) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	parent := map[int]int{}
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// The command name may hold spaces and parentheses: fields start
		// after the last ')'.
		i := bytes.LastIndexByte(st, ')')
		f := strings.Fields(string(st[i+1:]))
		if len(f) > 1 {
			parent[p], _ = strconv.Atoi(f[1])
		}
	}
	var below []int
	for p := range parent {
		for q := parent[p]; q > 1; q = parent[q] {
			if q == pid {
				below = append(below, p)
				break
			}
		}
	}
	return below
}
