package sandbox

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nhs-tre/tre/job"
	"github.com/nhs-tre/tre/queries"
	"github.com/nhs-tre/tre/queries/querytest"
)

// mustAdversarialRunner writes the adversarial dataset (querytest) to a
// DuckDB file and returns a Runner over it with its catalog.
func mustAdversarialRunner(t *testing.T) (*Runner, *queries.Catalog) {
	t.Helper()
	cat, err := queries.ParseCatalog("adversarial.yaml", []byte(querytest.CatalogYAML))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "adversarial.duckdb")
	var stmts []string
	for _, tb := range cat.Tables {
		var cols []string
		for _, c := range tb.Columns {
			cols = append(cols, c.Name+" "+c.Type)
		}
		stmts = append(stmts, fmt.Sprintf("CREATE TABLE %s (%s)", tb.Name, strings.Join(cols, ", ")))
	}
	mustExecFile(t, path, append(stmts, querytest.SourceSQL()...)...)
	cfg := testConfig(t, path)
	cfg.Catalog = cat
	// The property is "no error", not speed: 60 jobs over 100,000-character
	// strings and every pair of extremes outran the fixtures' 20 s timeout on
	// a saturated 2-core machine, which would read as a failing expression.
	cfg.Timeout = 3 * time.Minute
	// Nor is it memory: the 60-expression queries over those strings need
	// more than the 192 MiB DuckDB gets of the fixtures' 256 MiB
	// (DuckDBMemoryLimit); 512 MiB gives it 384 MiB.
	cfg.MemoryLimit = 512 << 20
	return MustRunner(t, cfg), cat
}

// TestTotalFunctions proves the query language total in the real sandbox
// child: every allowlisted function, cast, comparison, operator and
// aggregate (querytest's templates cover the whole allowlist; queries'
// TestTemplatesCoverAllowlist fails on a new entry without one), over every
// adversarial value of the data (NULL, 0, −1, the extremes of each type,
// NaN, ±Inf, dates out of range, empty and 100,000-character strings), in
// every pair of such values, and with each argument an extreme literal in
// turn, runs without any error: inside per-patient aggregates, as
// expressions over them, as released aggregates and as group keys. No
// accepted expression can therefore fail on one patient's data and not on
// another's.
func TestTotalFunctions(t *testing.T) {
	if testing.Short() {
		t.Skip("runs ~60 sandbox jobs")
	}
	r, cat := mustAdversarialRunner(t)
	p, err := queries.NewParser()
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	exprs, refused := querytest.Accepted(func(q string) bool {
		_, err := p.Compile(context.Background(), cat, q, queries.Options{})
		return err == nil
	})
	for _, x := range refused {
		t.Errorf("template over columns refused: %s", x)
	}
	ctx := context.Background()
	run := func(q string) error {
		_, err := r.Run(ctx, job.Job{QueryID: 1, SQL: q, SQLHash: queries.SQLHash(q), Epsilon: 1})
		return err
	}
	for _, q := range append(querytest.Queries(exprs, true, 60), querytest.AggregateQueries()...) {
		if err := run(q); err != nil {
			var bad []string
			for _, e := range exprs {
				if strings.Contains(q, e) && run(querytest.Queries([]string{e}, true, 1)[0]) != nil {
					bad = append(bad, e)
				}
			}
			t.Errorf("%v; failing on their own: %q", err, bad)
		}
	}
}
