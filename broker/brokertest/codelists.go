package brokertest

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/nhs-tre/tre/broker"
	"github.com/nhs-tre/tre/job"
)

// CodelistSQL joins the codelist named name to clinical events.
func CodelistSQL(name string) string {
	return "SELECT p.sex, count(*) FROM patients p JOIN clinical_events e ON e.patient_id = p.patient_id " +
		"JOIN codelists cl ON cl.code = e.snomed_code AND cl.codelist = '" + name + "' GROUP BY p.sex"
}

// codelistCSV is an OpenCodelists-style download with n codes and an
// extra column, which is ignored.
func codelistCSV(n int) string {
	var b strings.Builder
	b.WriteString("code,term,notes\n")
	for i := range n {
		fmt.Fprintf(&b, "%d,\"Term %d, with a comma\",x\n", 100000+i, i)
	}
	return b.String()
}

// testCodelists checks codelists end to end through the service: upload
// (who may, every refusal, immutability), the stored codes and hash, the
// audit entry, a query joining one recording it by name and hash, a query
// naming a missing one refused with its name, the lease carrying it, who
// sees which queries used it, the register after release, and a swap of
// codelist versions flagged as a near-duplicate.
func testCodelists(t *testing.T, f *Fixture) {
	svc := f.Service
	const name = "opensafely/asthma-diagnosis/2020-04-15"
	// 1,234 codes: two full insert batches and a remainder.
	cl, err := svc.CreateCodelist(f.Researcher, broker.CodelistUpload{Name: name, Description: "Asthma", CSV: codelistCSV(1234)})
	if err != nil {
		t.Fatalf("upload: %v", err)
	}
	got, err := svc.FindCodelist(f.Checker, name)
	if err != nil {
		t.Fatalf("find: %v", err)
	}
	if got.CodeCount != 1234 || len(got.Codes) != 1234 || got.Codes[1233].Code != "101233" || got.Codes[0].Term != "Term 0, with a comma" ||
		got.Hash != job.CodelistHash(got.Codes) || got.Hash != cl.Hash || got.UploadedBy != "res1" || got.Description != "Asthma" ||
		!slices.Equal(got.FirstTerms, []string{"Term 0, with a comma", "Term 1, with a comma", "Term 2, with a comma"}) {
		t.Fatalf("found %+v (%d codes), want the upload", got.Name, len(got.Codes))
	}
	action := "codelist.upload"
	entries, _, err := svc.FindAuditEntries(f.Admin, broker.AuditFilter{Action: &action})
	if err != nil || len(entries) != 1 || !strings.Contains(entries[0].Detail, cl.Hash) || entries[0].Object != "codelist/"+name {
		t.Fatalf("audit = %+v, %v; want one upload entry with the hash", entries, err)
	}

	refusals := []struct {
		up       broker.CodelistUpload
		code     string
		contains string
	}{
		{broker.CodelistUpload{Name: name, CSV: codelistCSV(2)}, broker.ECONFLICT, "already exists"},
		{broker.CodelistUpload{Name: "asthma", CSV: codelistCSV(2)}, broker.EINVALID, "ORG/SLUG/VERSION"},
		{broker.CodelistUpload{Name: "a/b/c/d", CSV: codelistCSV(2)}, broker.EINVALID, "ORG/SLUG/VERSION"},
		{broker.CodelistUpload{Name: "a/-b/1", CSV: codelistCSV(2)}, broker.EINVALID, "slug"},
		{broker.CodelistUpload{Name: "a/b/1", CSV: "snomed,description\n1,x\n"}, broker.EINVALID, "line 1"},
		{broker.CodelistUpload{Name: "a/b/1", CSV: "code,term\n1,x\n,y\n"}, broker.EINVALID, "line 3: the code is empty"},
		{broker.CodelistUpload{Name: "a/b/1", CSV: "code,term\n1,x\n2,y\n1,z\n"}, broker.EINVALID, "line 4: code \"1\" is listed twice (first on line 2)"},
		{broker.CodelistUpload{Name: "a/b/1", CSV: ""}, broker.EINVALID, "empty"},
	}
	for _, r := range refusals {
		_, err := svc.CreateCodelist(f.Admin, r.up)
		MustCode(t, err, r.code)
		if !strings.Contains(err.Error(), r.contains) {
			t.Errorf("upload %s: %v, want it to say %q", r.up.Name, err, r.contains)
		}
	}
	_, err = svc.CreateCodelist(f.Checker, broker.CodelistUpload{Name: "a/b/2", CSV: codelistCSV(2)})
	MustCode(t, err, broker.EFORBIDDEN)
	if all, err := svc.FindCodelists(f.Agent); err != nil || len(all) != 1 || all[0].Name != name || all[0].Codes != nil {
		t.Fatalf("list = %v, %v; want the one codelist without codes", all, err)
	}

	// A query naming it records it; one naming a missing codelist is
	// refused with the name, one reading codelists without a name too.
	_, err = svc.SubmitQuery(f.Researcher, broker.QuerySubmission{ProjectID: f.Project.ID, SQL: CodelistSQL("nhsd/missing/1"), Purpose: "p", Epsilon: 0.5})
	MustCode(t, err, broker.EREFUSED)
	if !strings.Contains(err.Error(), `"nhsd/missing/1" does not exist`) {
		t.Errorf("missing codelist: %v", err)
	}
	_, err = svc.CheckQuery(f.Researcher, broker.QuerySubmission{ProjectID: f.Project.ID, SQL: CodelistSQL("nhsd/missing/1")})
	MustCode(t, err, broker.EREFUSED)
	q := f.MustSubmit(f.Researcher, CodelistSQL(name), 0.5)
	want := []broker.CodelistRef{{Name: name, Hash: cl.Hash}}
	if !slices.Equal(q.Codelists, want) || !slices.Equal(f.MustQuery(q.ID).Codelists, want) {
		t.Fatalf("query codelists = %v, stored %v; want %v", q.Codelists, f.MustQuery(q.ID).Codelists, want)
	}
	submitted := "query.submit"
	entries, _, err = svc.FindAuditEntries(f.Admin, broker.AuditFilter{Action: &submitted})
	if err != nil || len(entries) != 1 || !strings.Contains(entries[0].Detail, `codelists="`+name+"@sha256:"+cl.Hash+`"`) {
		t.Fatalf("submission audit = %+v, %v; want the codelist by name and hash", entries, err)
	}
	f.MustApprove(q.ID)
	l := f.MustLease(q.ID)
	if len(l.Codelists) != 1 || l.Codelists[0].Name != name || l.Codelists[0].Hash != cl.Hash || l.Codelists[0].Codes != nil {
		t.Fatalf("lease codelists = %+v, want the name and hash only", l.Codelists)
	}

	// Staff see every query that used it; a researcher of another project
	// sees none until one is released.
	if got, _ := svc.FindCodelist(f.Reviewer, name); len(got.UsedBy) != 1 || got.UsedBy[0].QueryID != q.ID {
		t.Fatalf("used by (reviewer) = %+v", got.UsedBy)
	}
	if got, _ := svc.FindCodelist(f.Outsider, name); len(got.UsedBy) != 0 {
		t.Fatalf("used by (outsider) = %+v, want none before release", got.UsedBy)
	}
	if err := svc.CompleteJob(f.Agent, q.ID, l.Token, f.ResultOf(t, CodelistSQL(name), 0.5)); err != nil {
		t.Fatalf("complete: %v", err)
	}
	if _, err := svc.ReleaseQuery(f.Checker, q.ID, "safe"); err != nil {
		t.Fatalf("release: %v", err)
	}
	if got, _ := svc.FindCodelist(f.Outsider, name); len(got.UsedBy) != 1 || got.UsedBy[0].Status != broker.StatusReleased {
		t.Fatalf("used by (outsider) = %+v, want the released query", got.UsedBy)
	}
	reg, err := svc.Register(f.Outsider)
	if err != nil || len(reg) != 1 || !slices.Equal(reg[0].Codelists, want) {
		t.Fatalf("register = %+v, %v; want the codelist by name and hash", reg, err)
	}

	// The same query over the next version of the codelist is a
	// near-duplicate of the first.
	const name2 = "opensafely/asthma-diagnosis/2021-01-01"
	if _, err := svc.CreateCodelist(f.Reviewer, broker.CodelistUpload{Name: name2, CSV: codelistCSV(5)}); err != nil {
		t.Fatalf("upload v2: %v", err)
	}
	q2 := f.MustSubmit(f.Researcher, CodelistSQL(name2), 0.5)
	if len(q2.RiskFlags) != 1 || q2.RiskFlags[0].Kind != broker.RiskDifferencing || q2.RiskFlags[0].SimilarQueryID != q.ID ||
		!strings.Contains(q2.RiskFlags[0].Message, name2) {
		t.Fatalf("flags of the codelist swap = %+v, want differencing against query %d", q2.RiskFlags, q.ID)
	}
	f.MustVerify()
}
