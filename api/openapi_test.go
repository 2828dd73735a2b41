package api

import (
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// openAPIDocument is the subset of OpenAPI 3 the conformance checker reads.
type openAPIDocument struct {
	OpenAPI    string                                 `json:"openapi"`
	Paths      map[string]map[string]openAPIOperation `json:"paths"`
	Components struct {
		Schemas map[string]*schema `json:"schemas"`
	} `json:"components"`
}

type openAPIOperation struct {
	Responses map[string]struct {
		Content map[string]struct {
			Schema *schema `json:"schema"`
		} `json:"content"`
	} `json:"responses"`
}

// schema is the subset of JSON Schema the checker enforces: $ref, allOf,
// oneOf, type, nullable, required, properties, additionalProperties: false,
// items and enum.
type schema struct {
	Ref        string             `json:"$ref"`
	AllOf      []*schema          `json:"allOf"`
	OneOf      []*schema          `json:"oneOf"`
	Type       string             `json:"type"`
	Nullable   bool               `json:"nullable"`
	Required   []string           `json:"required"`
	Properties map[string]*schema `json:"properties"`
	// AdditionalProperties false forbids properties not listed: researchers'
	// shapes use it so that no checker-only field can slip into them.
	AdditionalProperties *bool   `json:"additionalProperties"`
	Items                *schema `json:"items"`
	Enum                 []any   `json:"enum"`
}

func mustOpenAPI(tb testing.TB) *openAPIDocument {
	tb.Helper()
	var doc openAPIDocument
	if err := json.Unmarshal(openAPIDoc, &doc); err != nil {
		tb.Fatalf("openapi.json: %v", err)
	}
	if !strings.HasPrefix(doc.OpenAPI, "3.") {
		tb.Fatalf("openapi version %q", doc.OpenAPI)
	}
	return &doc
}

// check validates v (decoded JSON) against s, returning every violation.
func (d *openAPIDocument) check(s *schema, v any, path string) []string {
	if s == nil {
		return nil
	}
	if s.Ref != "" {
		name := strings.TrimPrefix(s.Ref, "#/components/schemas/")
		ref, ok := d.Components.Schemas[name]
		if !ok {
			return []string{path + ": unresolved $ref " + s.Ref}
		}
		return d.check(ref, v, path)
	}
	var errs []string
	for _, sub := range s.AllOf {
		errs = append(errs, d.check(sub, v, path)...)
	}
	if len(s.OneOf) > 0 {
		matched := 0
		var all []string
		for i, sub := range s.OneOf {
			e := d.check(sub, v, path)
			if len(e) == 0 {
				matched++
			}
			all = append(all, fmt.Sprintf("alternative %d: %s", i, strings.Join(e, "; ")))
		}
		if matched != 1 {
			errs = append(errs, fmt.Sprintf("%s: matches %d of oneOf's alternatives, want 1 (%s)", path, matched, strings.Join(all, " | ")))
		}
	}
	if v == nil {
		if s.Type != "" && !s.Nullable {
			errs = append(errs, path+": null where "+s.Type+" is required")
		}
		return errs
	}
	if len(s.Enum) > 0 {
		found := false
		for _, e := range s.Enum {
			found = found || fmt.Sprint(e) == fmt.Sprint(v)
		}
		if !found {
			errs = append(errs, fmt.Sprintf("%s: %v not in enum %v", path, v, s.Enum))
		}
	}
	switch s.Type {
	case "object":
		m, ok := v.(map[string]any)
		if !ok {
			return append(errs, fmt.Sprintf("%s: %T, want object", path, v))
		}
		for _, r := range s.Required {
			if _, ok := m[r]; !ok {
				errs = append(errs, path+": missing required field "+r)
			}
		}
		for k, ps := range s.Properties {
			if pv, ok := m[k]; ok {
				errs = append(errs, d.check(ps, pv, path+"."+k)...)
			}
		}
		if s.AdditionalProperties != nil && !*s.AdditionalProperties {
			for k := range m {
				if _, ok := s.Properties[k]; !ok {
					errs = append(errs, path+": property "+k+" is not allowed here")
				}
			}
		}
	case "array":
		a, ok := v.([]any)
		if !ok {
			return append(errs, fmt.Sprintf("%s: %T, want array", path, v))
		}
		for i, item := range a {
			errs = append(errs, d.check(s.Items, item, path+"["+strconv.Itoa(i)+"]")...)
		}
	case "string":
		if _, ok := v.(string); !ok {
			errs = append(errs, fmt.Sprintf("%s: %T, want string", path, v))
		}
	case "integer":
		f, ok := v.(float64)
		if !ok || f != float64(int64(f)) {
			errs = append(errs, fmt.Sprintf("%s: %v, want integer", path, v))
		}
	case "number":
		if _, ok := v.(float64); !ok {
			errs = append(errs, fmt.Sprintf("%s: %T, want number", path, v))
		}
	case "boolean":
		if _, ok := v.(bool); !ok {
			errs = append(errs, fmt.Sprintf("%s: %T, want boolean", path, v))
		}
	}
	return errs
}

var ginParam = regexp.MustCompile(`:([a-z_]+)`)

// conformance records which documented operations were exercised and
// checks each real response against the document.
type conformance struct {
	doc     *openAPIDocument
	covered map[string]bool
}

func newConformance(tb testing.TB) *conformance {
	return &conformance{doc: mustOpenAPI(tb), covered: map[string]bool{}}
}

// checkResponse validates one response to method route (gin syntax, e.g.
// /api/v1/queries/:id) against the document.
func (cf *conformance) checkResponse(tb testing.TB, method, route string, status int, contentType string, body []byte) {
	tb.Helper()
	docPath := ginParam.ReplaceAllString(route, "{$1}")
	ops, ok := cf.doc.Paths[docPath]
	if !ok {
		tb.Errorf("%s %s: path not in the OpenAPI document", method, docPath)
		return
	}
	op, ok := ops[strings.ToLower(method)]
	if !ok {
		tb.Errorf("%s %s: method not in the OpenAPI document", method, docPath)
		return
	}
	cf.covered[strings.ToLower(method)+" "+docPath] = true
	resp, ok := op.Responses[strconv.Itoa(status)]
	if !ok {
		tb.Errorf("%s %s: status %d not documented", method, docPath, status)
		return
	}
	if len(resp.Content) == 0 {
		if len(body) != 0 {
			tb.Errorf("%s %s %d: documented without a body, got %q", method, docPath, status, body)
		}
		return
	}
	mt := strings.TrimSpace(strings.Split(contentType, ";")[0])
	media, ok := resp.Content[mt]
	if !ok {
		tb.Errorf("%s %s %d: content type %q not documented", method, docPath, status, mt)
		return
	}
	if mt != "application/json" {
		return
	}
	var v any
	if err := json.Unmarshal(body, &v); err != nil {
		tb.Errorf("%s %s %d: body is not JSON: %v", method, docPath, status, err)
		return
	}
	for _, e := range cf.doc.check(media.Schema, v, "body") {
		tb.Errorf("%s %s %d: %s", method, docPath, status, e)
	}
}

// uncovered lists documented operations no test called.
func (cf *conformance) uncovered() []string {
	var out []string
	for p, ops := range cf.doc.Paths {
		for m := range ops {
			if !cf.covered[m+" "+p] {
				out = append(out, m+" "+p)
			}
		}
	}
	sort.Strings(out)
	return out
}

// TestOpenAPIDocument checks the document itself: every $ref resolves and
// every route the server serves is documented, and nothing else.
func TestOpenAPIDocument(t *testing.T) {
	doc := mustOpenAPI(t)
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
	if err := json.Unmarshal(openAPIDoc, &raw); err != nil {
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
		served[strings.ToLower(r.Method)+" "+ginParam.ReplaceAllString(r.Path, "{$1}")] = true
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
		re := "^" + ginParam.ReplaceAllString(regexp.QuoteMeta(r.Path), `[^/]+`) + "$"
		if best == "" && regexp.MustCompile(re).MatchString(path) {
			best = r.Path
		}
	}
	return best
}

// checkedCall sends a request and checks the response against the document.
func (cf *conformance) checkedCall(tb testing.TB, s *Server, method, path, token string, body any) (int, []byte) {
	tb.Helper()
	rec := call(tb, s.Handler(), method, path, token, body)
	route := routeOf(s, method, path)
	if route == "" {
		tb.Fatalf("%s %s matches no route", method, path)
	}
	cf.checkResponse(tb, method, route, rec.Code, rec.Header().Get("Content-Type"), rec.Body.Bytes())
	return rec.Code, rec.Body.Bytes()
}

func TestOpenAPIConformanceErrors(t *testing.T) {
	// Responses every route shares: the error shapes. The happy paths are
	// checked against the real broker in the route tests.
	cf := newConformance(t)
	srv := newTestServer(t, newFakeService())
	for _, r := range srv.engine.Routes() {
		path := ginParam.ReplaceAllString(r.Path, "7")
		status, _ := cf.checkedCall(t, srv, r.Method, path, "", nil)
		if strings.HasPrefix(r.Path, "/api/v1/") && r.Path != "/api/v1/openapi.json" && status != http.StatusUnauthorized {
			t.Errorf("%s %s without a token: %d", r.Method, r.Path, status)
		}
	}
	var doc map[string]any
	if status, body := cf.checkedCall(t, srv, "GET", "/api/v1/openapi.json", "", nil); status != 200 || json.Unmarshal(body, &doc) != nil {
		t.Errorf("openapi.json: %d", status)
	}
}
