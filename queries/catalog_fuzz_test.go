package queries

import (
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"
)

// FuzzParseCatalog: the catalog loader never panics; a rejected catalog is a
// *CatalogError naming the file; an accepted one passes Validate again after
// the JSON round trip agents use to publish it, and its views can be built.
func FuzzParseCatalog(f *testing.F) {
	good, err := os.ReadFile("testdata/catalog.yaml")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	for _, s := range []string{
		"",
		"dataset: x\n",
		"dataset: x\nprivacy_unit: pid\ntables: []\n",
		"dataset: x\nprivacy_unit: pid\ntables:\n  - name: t\n    columns:\n      - {name: pid, type: BIGINT, role: privacy_unit}\n      - {name: v, type: DOUBLE, role: numeric, bounds: [0, 1]}\n",
		"dataset: x\nprivacy_unit: pid\npolicy: {max_epsilon: .nan, delta: -1}\n",
		"dataset: x\nunknown_key: 1\n",
		"a: &a [*a]\n",
		"---\ndataset: a\n---\ndataset: b\n",
		"dataset: [1, 2]\n",
		"tables:\n  - columns:\n      - {name: \"x\\\"; DROP TABLE t; --\", type: VARCHAR, role: categorical}\n",
		"dataset: x\ntables:\n  - name: t\n    columns:\n      - {name: c, type: VARCHAR, role: categorical, domain: [\"\\xff\"]}\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		const file = "fuzz.catalog.yaml"
		cat, err := ParseCatalog(file, data)
		if err != nil {
			var ce *CatalogError
			if !errors.As(err, &ce) {
				t.Fatalf("error is not a *CatalogError: %T %v", err, err)
			}
			if !strings.Contains(err.Error(), file) {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		if err := cat.Validate(); err != nil {
			t.Fatalf("accepted catalog fails Validate: %v", err)
		}
		js, err := json.Marshal(cat)
		if err != nil {
			t.Fatalf("accepted catalog does not encode as JSON: %v", err)
		}
		var back Catalog
		if err := json.Unmarshal(js, &back); err != nil {
			t.Fatalf("accepted catalog does not decode from its JSON: %v\n%s", err, js)
		}
		if err := back.Validate(); err != nil {
			t.Fatalf("catalog fails Validate after the JSON round trip agents publish: %v\n%s", err, js)
		}
		for _, s := range ViewStatements(cat) {
			if strings.Contains(s, ";") {
				t.Fatalf("view statement holds a statement separator: %q", s)
			}
		}
		// No view exposes the opt-out table: compiled queries read it only
		// in their opt-out filter (TestOptOutNeverCounted).
		ot := QuoteIdent(cat.Policy.OptOutTable)
		for _, s := range ViewStatements(cat) {
			if strings.Contains(strings.ToLower(s), strings.ToLower(ot)) {
				t.Fatalf("a view reads the opt-out table: %q", s)
			}
		}
	})
}
