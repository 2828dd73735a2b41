package server

import (
	"encoding/json"
	"net/http"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/nhs-tre/tre/api"
	"github.com/nhs-tre/tre/api/apitest"
)

// pathParam matches a gin route parameter (:id).
var pathParam = regexp.MustCompile(`:([a-z_]+)`)

// TestOpenAPIDocument checks the document itself: every $ref resolves and
// every route the server serves is documented, and nothing else.
func TestOpenAPIDocument(t *testing.T) {
	doc := apitest.MustDocument(t)
	var refs []string
	var walk func(v any)
	walk = func(v any) {
		switch x := v.(type) {
		case map[string]any:
			for k, vv := range x {
				if k == "$ref" {
					refs = append(refs, vv.(string))
				}
				walk(vv)
			}
		case []any:
			for _, vv := range x {
				walk(vv)
			}
		}
	}
	var raw any
	if err := json.Unmarshal(api.OpenAPI(), &raw); err != nil {
		t.Fatal(err)
	}
	walk(raw)
	for _, r := range refs {
		if _, ok := doc.Components.Schemas[strings.TrimPrefix(r, "#/components/schemas/")]; !ok {
			t.Errorf("unresolved %s", r)
		}
	}
	srv := newTestServer(t, newFakeService())
	served := map[string]bool{}
	for _, r := range srv.engine.Routes() {
		served[strings.ToLower(r.Method)+" "+apitest.DocPath(r.Path)] = true
	}
	documented := map[string]bool{}
	for p, ops := range doc.Paths {
		for m := range ops {
			documented[m+" "+p] = true
		}
	}
	if diff := setDiff(served, documented); diff != "" {
		t.Errorf("served vs documented routes:\n%s", diff)
	}
}

func setDiff(a, b map[string]bool) string {
	var out []string
	for k := range a {
		if !b[k] {
			out = append(out, "served, not documented: "+k)
		}
	}
	for k := range b {
		if !a[k] {
			out = append(out, "documented, not served: "+k)
		}
	}
	sort.Strings(out)
	return strings.Join(out, "\n")
}

// routeOf finds the gin route template a request path matches, preferring
// a static route (queries/dry-run) over a parameterised one.
func routeOf(s *Server, method, path string) string {
	path = strings.SplitN(path, "?", 2)[0]
	best := ""
	for _, r := range s.engine.Routes() {
		if r.Method != method {
			continue
		}
		if r.Path == path {
			return r.Path
		}
		re := "^" + pathParam.ReplaceAllString(regexp.QuoteMeta(r.Path), `[^/]+`) + "$"
		if best == "" && regexp.MustCompile(re).MatchString(path) {
			best = r.Path
		}
	}
	return best
}

// checkedCall sends a request and checks the response against the document.
func checkedCall(tb testing.TB, cf *apitest.Conformance, s *Server, method, path, token string, body any) (int, []byte) {
	tb.Helper()
	rec := call(tb, s.Handler(), method, path, token, body)
	route := routeOf(s, method, path)
	if route == "" {
		tb.Fatalf("%s %s matches no route", method, path)
	}
	cf.CheckResponse(tb, method, route, rec.Code, rec.Header().Get("Content-Type"), rec.Body.Bytes())
	return rec.Code, rec.Body.Bytes()
}

func TestOpenAPIConformanceErrors(t *testing.T) {
	// Responses every route shares: the error shapes. The happy paths are
	// checked against the real broker in the route tests.
	cf := apitest.NewConformance(t)
	srv := newTestServer(t, newFakeService())
	for _, r := range srv.engine.Routes() {
		path := pathParam.ReplaceAllString(r.Path, "7")
		status, _ := checkedCall(t, cf, srv, r.Method, path, "", nil)
		if strings.HasPrefix(r.Path, "/api/v1/") && r.Path != "/api/v1/openapi.json" && status != http.StatusUnauthorized {
			t.Errorf("%s %s without a token: %d", r.Method, r.Path, status)
		}
	}
	var doc map[string]any
	if status, body := checkedCall(t, cf, srv, "GET", "/api/v1/openapi.json", "", nil); status != 200 || json.Unmarshal(body, &doc) != nil {
		t.Errorf("openapi.json: %d", status)
	}
}
