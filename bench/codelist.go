package bench

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/nhs-tre/tre/job"
	"github.com/nhs-tre/tre/queries"
	"github.com/nhs-tre/tre/sandbox"
)

// codelistCodes is how many codes the codelist benchmark joins.
const codelistCodes = 500

// codelistResult compares a query joining a codelist of codelistCodes codes
// (the public table codelists, attached in the sandbox child) with the same
// query writing the codes as IN (…), both through the sandbox (Runner.Run,
// a fresh child each run: what a site does).
type codelistResult struct {
	Join, In sample
	Rows     [2]int
}

// codelistBenchQueries returns the codelist, the query joining it and the
// same query with the codes written as IN (…): the synthetic data's
// SNOMED CT codes (from the catalog's examples) padded with codes it never
// holds, so that both read the same events.
func codelistBenchQueries(cat *queries.Catalog) (job.Codelist, string, string) {
	var codes []job.CodelistCode
	if t := cat.Table("clinical_events"); t != nil {
		if c := t.Column("snomed_code"); c != nil {
			for _, e := range c.Examples {
				codes = append(codes, job.CodelistCode{Code: e.Code, Term: e.Term})
			}
		}
	}
	for i := 0; len(codes) < codelistCodes; i++ {
		codes = append(codes, job.CodelistCode{Code: fmt.Sprintf("99%08d", i), Term: "not in the data"})
	}
	cl := job.Codelist{Name: "bench/codes/1", Hash: job.CodelistHash(codes), Codes: codes}
	quoted := make([]string, len(codes))
	for i, c := range codes {
		quoted[i] = quoteLiteral(c.Code)
	}
	base := "SELECT p.region, count(DISTINCT p.patient_id) AS n FROM clinical_events e JOIN patients p ON p.patient_id = e.patient_id "
	join := base + "JOIN codelists cl ON cl.code = e.snomed_code AND cl.codelist = 'bench/codes/1' GROUP BY p.region"
	in := base + "WHERE e.snomed_code IN (" + strings.Join(quoted, ", ") + ") GROUP BY p.region"
	return cl, join, in
}

// measureCodelist runs the codelist join and its IN (…) twin alternately
// through the sandbox.
func (m *harness) measureCodelist(ctx context.Context, p *benchProgress, runner *sandbox.Runner, cat *queries.Catalog) (*codelistResult, error) {
	cl, joinSQL, inSQL := codelistBenchQueries(cat)
	jobs := [2]job.Job{
		{SQL: joinSQL, SQLHash: queries.SQLHash(joinSQL), Codelists: []job.Codelist{cl}},
		{SQL: inSQL, SQLHash: queries.SQLHash(inSQL)},
	}
	r := &codelistResult{}
	p.stage("codelist join vs IN")
	for i := range m.Warmup + m.Reps {
		for k, j := range jobs {
			start := time.Now()
			res, err := runner.Run(ctx, j)
			d := time.Since(start)
			if err != nil {
				return nil, fmt.Errorf("codelist benchmark: %s: %s", job.Code(err), job.Message(err))
			}
			r.Rows[k] = len(res.Rows)
			if i >= m.Warmup {
				[2]*sample{&r.Join, &r.In}[k].add(d)
			}
		}
		p.step()
	}
	return r, nil
}

// markdown is the report's section on the codelist join.
func (r *codelistResult) markdown(w func(string, ...any)) {
	w("### 4b. Codelist join vs IN (…)\n\n")
	w("The same query (distinct patients by region over clinical events) selecting %d SNOMED CT codes: joined as a codelist "+
		"(the public table `codelists`, which the sandbox child loads from the job) or written as `IN (…)`; "+
		"each a fresh sandbox process per run (`Runner.Run`), run alternately.\n\n", codelistCodes)
	w("| query | cold | rows |\n|---|---|---|\n")
	w("| codelist join | %s | %d |\n| IN (…) | %s | %d |\n", r.Join.spread(), r.Rows[0], r.In.spread(), r.Rows[1])
	w("\njoin / IN: **%s** (median over median)\n\n", ratio(r.Join, r.In))
}
