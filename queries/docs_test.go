package queries

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestCatalogDocExample keeps docs/catalog.md honest: its worked example
// loads, and its example queries are accepted or refused as it says.
func TestCatalogDocExample(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "docs", "catalog.md"))
	if err != nil {
		t.Fatal(err)
	}
	text := string(doc)
	yamlBlocks := regexp.MustCompile("(?s)```yaml\n(dataset: trust_x.*?)```").FindStringSubmatch(text)
	if yamlBlocks == nil {
		t.Fatal("worked example not found in docs/catalog.md")
	}
	cat, err := ParseCatalog("catalog.md", []byte(yamlBlocks[1]))
	if err != nil {
		t.Fatalf("worked example does not load: %v", err)
	}
	sqlBlock := regexp.MustCompile("(?s)```sql\n(.*?)```").FindStringSubmatch(text)
	if sqlBlock == nil {
		t.Fatal("example queries not found")
	}
	p := MustParser(t)
	for _, q := range strings.Split(sqlBlock[1], ";") {
		if strings.TrimSpace(stripComments(q)) == "" {
			continue
		}
		if _, err := p.Compile(context.Background(), cat, q, Options{}); err != nil {
			t.Errorf("documented query refused: %v\n%s", err, q)
		}
	}
	for _, m := range regexp.MustCompile(`(?m)^(SELECT .*)\n→ (refused: .*)$`).FindAllStringSubmatch(text, -1) {
		_, err := p.Compile(context.Background(), cat, m[1], Options{})
		var r *Refusal
		if !errors.As(err, &r) || r.Message != m[2] {
			t.Errorf("%s\n  got  %v\n  want %s", m[1], err, m[2])
		}
	}
}

func stripComments(s string) string {
	var out []string
	for _, line := range strings.Split(s, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(line), "--") {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}
