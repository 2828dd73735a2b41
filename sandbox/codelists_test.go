package sandbox

import (
	"context"
	"reflect"
	"testing"

	"github.com/nhs-tre/tre/job"
)

// TestCodelistJoin runs a query joining a codelist in the real child: the
// table holds the job's codes and gives the rows the same codes written as
// IN (…) give (with fixed test noise, identical releases); a codelist the
// query names but the job lacks, or whose codes do not match its hash,
// refuses the job. A dry run reports the codes the data never holds.
func TestCodelistJoin(t *testing.T) {
	r := MustRunner(t, testConfig(t, MustFixture(t, 600)))
	ctx := context.Background()
	codes := []job.CodelistCode{{Code: "195967001", Term: "Asthma"}, {Code: "44054006", Term: "Type 2 diabetes mellitus"}, {Code: "0000", Term: "Never recorded"}}
	cl := job.Codelist{Name: "test/conditions/1", Hash: job.CodelistHash(codes), Codes: codes}
	joined := "SELECT p.sex, count(*) AS n FROM patients p JOIN clinical_events e ON e.patient_id = p.patient_id " +
		"JOIN codelists cl ON cl.code = e.snomed_code AND cl.codelist = 'test/conditions/1' GROUP BY p.sex"
	in := "SELECT p.sex, count(*) AS n FROM patients p JOIN clinical_events e ON e.patient_id = p.patient_id " +
		"WHERE e.snomed_code IN ('195967001', '44054006', '0000') GROUP BY p.sex"
	j := newJob(joined)
	j.Codelists = []job.Codelist{cl}
	got, err := r.run(ctx, noiseJob(j, 0.25))
	if err != nil {
		t.Fatalf("codelist join: %v", err)
	}
	want, err := r.run(ctx, noiseJob(newJob(in), 0.25))
	if err != nil {
		t.Fatalf("IN query: %v", err)
	}
	if len(got.Rows) == 0 || !reflect.DeepEqual(got.Rows, want.Rows) {
		t.Fatalf("codelist join released %v, the IN query %v", got.Rows, want.Rows)
	}

	// A dry run also names the codes the data never holds; a run does not.
	_, absent, err := r.DryRun(ctx, j)
	if err != nil || !reflect.DeepEqual(absent, []job.AbsentCodes{{Codelist: cl.Name, Count: 1, Codes: []string{"0000"}}}) {
		t.Fatalf("dry run: absent %+v, %v; want code 0000", absent, err)
	}

	missing := newJob(joined)
	if _, err := r.Run(ctx, missing); job.Code(err) != job.CodeInvalid {
		t.Errorf("codelist not delivered: %v, want %s", err, job.CodeInvalid)
	}
	tampered := cl
	tampered.Codes = codes[:2]
	j.Codelists = []job.Codelist{tampered}
	if _, err := r.Run(ctx, j); job.Code(err) != job.CodeInvalid {
		t.Errorf("codes not matching the hash: %v, want %s", err, job.CodeInvalid)
	}
}
