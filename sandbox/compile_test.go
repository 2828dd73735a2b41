package sandbox

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/nhs-tre/tre/queries"
)

// TestAttacksRefusedByCompiler compiles every attack as the child does: on
// the job's locked-down data connection.
func TestAttacksRefusedByCompiler(t *testing.T) {
	cat := MustCatalog(t)
	ldb := mustLocked(t, MustFixture(t, 50), cat)
	p, err := queries.NewParserConn(context.Background(), ldb.conn)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	list := attacks(t.TempDir())
	if len(list) < 35 {
		t.Fatalf("only %d attacks", len(list))
	}
	for _, tt := range list {
		t.Run(tt.name, func(t *testing.T) {
			_, err := p.Compile(context.Background(), cat, tt.sql, queries.Options{Seed: 1})
			var ref *queries.Refusal
			if !errors.As(err, &ref) {
				t.Fatalf("compiler accepted or failed oddly: %v", err)
			}
			if strings.Contains(ref.Message, "SECRET") {
				t.Errorf("refusal quotes data: %s", ref.Message)
			}
		})
	}
}
