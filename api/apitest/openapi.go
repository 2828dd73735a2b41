// Package apitest checks HTTP responses against tre's OpenAPI document
// (api.OpenAPI): the JSON Schema subset the document uses, and which
// documented operations a test run exercised. The server's route tests run
// every response they get through it; a client in another language can run
// its recorded responses through the same checker.
package apitest

import (
	"encoding/json"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/nhs-tre/tre/api"
)

// ginParam matches a route template's parameter (gin's :id).
var ginParam = regexp.MustCompile(`:([a-z_]+)`)

// DocPath turns a route template (/api/v1/queries/:id) into the
// document's path (/api/v1/queries/{id}).
func DocPath(route string) string { return ginParam.ReplaceAllString(route, "{$1}") }

// Document is the subset of OpenAPI 3 the conformance checker reads.
type Document struct {
	OpenAPI    string                          `json:"openapi"`
	Paths      map[string]map[string]Operation `json:"paths"`
	Components struct {
		Schemas map[string]*Schema `json:"schemas"`
	} `json:"components"`
}

type Operation struct {
	Responses map[string]struct {
		Content map[string]struct {
			Schema *Schema `json:"schema"`
		} `json:"content"`
	} `json:"responses"`
}

// Schema is the subset of JSON Schema the checker enforces: $ref, allOf,
// oneOf, type, nullable, required, properties, additionalProperties: false,
// items and enum.
type Schema struct {
	Ref        string             `json:"$ref"`
	AllOf      []*Schema          `json:"allOf"`
	OneOf      []*Schema          `json:"oneOf"`
	Type       string             `json:"type"`
	Nullable   bool               `json:"nullable"`
	Required   []string           `json:"required"`
	Properties map[string]*Schema `json:"properties"`
	// AdditionalProperties false forbids properties not listed: researchers'
	// shapes use it so that no checker-only field can slip into them.
	AdditionalProperties *bool   `json:"additionalProperties"`
	Items                *Schema `json:"items"`
	Enum                 []any   `json:"enum"`
}

// MustDocument parses api.OpenAPI, failing tb if it is not OpenAPI 3.
func MustDocument(tb testing.TB) *Document {
	tb.Helper()
	var doc Document
	if err := json.Unmarshal(api.OpenAPI(), &doc); err != nil {
		tb.Fatalf("openapi.json: %v", err)
	}
	if !strings.HasPrefix(doc.OpenAPI, "3.") {
		tb.Fatalf("openapi version %q", doc.OpenAPI)
	}
	return &doc
}

// Check validates v (decoded JSON) against s, returning every violation.
func (d *Document) Check(s *Schema, v any, path string) []string {
	if s == nil {
		return nil
	}
	if s.Ref != "" {
		name := strings.TrimPrefix(s.Ref, "#/components/schemas/")
		ref, ok := d.Components.Schemas[name]
		if !ok {
			return []string{path + ": unresolved $ref " + s.Ref}
		}
		return d.Check(ref, v, path)
	}
	var errs []string
	for _, sub := range s.AllOf {
		errs = append(errs, d.Check(sub, v, path)...)
	}
	if len(s.OneOf) > 0 {
		matched := 0
		var all []string
		for i, sub := range s.OneOf {
			e := d.Check(sub, v, path)
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
				errs = append(errs, d.Check(ps, pv, path+"."+k)...)
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
			errs = append(errs, d.Check(s.Items, item, path+"["+strconv.Itoa(i)+"]")...)
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

// Conformance records which documented operations were exercised and
// checks each real response against the document.
type Conformance struct {
	Doc     *Document
	covered map[string]bool
}

func NewConformance(tb testing.TB) *Conformance {
	return &Conformance{Doc: MustDocument(tb), covered: map[string]bool{}}
}

// CheckResponse validates one response to method route (gin syntax, e.g.
// /api/v1/queries/:id) against the document.
func (cf *Conformance) CheckResponse(tb testing.TB, method, route string, status int, contentType string, body []byte) {
	tb.Helper()
	docPath := DocPath(route)
	ops, ok := cf.Doc.Paths[docPath]
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
	for _, e := range cf.Doc.Check(media.Schema, v, "body") {
		tb.Errorf("%s %s %d: %s", method, docPath, status, e)
	}
}

// Uncovered lists documented operations no test called.
func (cf *Conformance) Uncovered() []string {
	var out []string
	for p, ops := range cf.Doc.Paths {
		for m := range ops {
			if !cf.covered[m+" "+p] {
				out = append(out, m+" "+p)
			}
		}
	}
	sort.Strings(out)
	return out
}
