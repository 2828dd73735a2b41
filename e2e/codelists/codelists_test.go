package codelists

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nhs-tre/tre/api"
	"github.com/nhs-tre/tre/broker"
	"github.com/nhs-tre/tre/e2e"
	"github.com/nhs-tre/tre/job"
)

// asthmaCSV is an OpenCodelists download (as opensafely/asthma-diagnosis
// exports it: code, term and columns tre ignores), with a code the
// synthetic data never records.
const asthmaCSV = "code,term,notes\r\n" +
	"195967001,Asthma,\r\n" +
	"\"44054006\",\"Diabetes mellitus type 2\",\"not asthma, kept to test a second code\"\r\n" +
	"266361008,\"Intrinsic asthma\",never in the synthetic data\r\n"

const asthmaName = "tre-e2e/asthma-diagnosis/2020-04-15"

// TestCodelistFlow uploads a codelist with the CLI, submits a query joining
// it, has it approved, run at the real agent and sandbox, released and
// downloaded; the audit log and the register name the codelist and its
// hash; every bad upload is refused with a 4xx naming the problem.
func TestCodelistFlow(t *testing.T) {
	s := e2e.StartSite(t, 3000)
	ctx := context.Background()
	projectID := s.CreateProject(t, 5)
	csvPath := filepath.Join(s.Dir, "asthma.csv")
	if err := os.WriteFile(csvPath, []byte(asthmaCSV), 0o600); err != nil {
		t.Fatal(err)
	}
	tokenFile := e2e.WriteAgentToken(t, t.TempDir(), s.Tokens["alice"])
	out, code := e2e.RunTreIn(t, s.Dir, "codelist", "upload", "--broker", s.URL, "--token-file", tokenFile, "--name", asthmaName, csvPath)
	if code != 0 || !strings.Contains(out, "3 codes") {
		t.Fatalf("tre codelist upload exited %d:\n%s", code, out)
	}
	codes := []job.CodelistCode{{Code: "195967001", Term: "Asthma"}, {Code: "44054006", Term: "Diabetes mellitus type 2"}, {Code: "266361008", Term: "Intrinsic asthma"}}
	hash := job.CodelistHash(codes)
	if !strings.Contains(out, hash) {
		t.Fatalf("upload printed no hash %s:\n%s", hash, out)
	}
	out, code = e2e.RunTreIn(t, s.Dir, "codelist", "show", "--broker", s.URL, "--token-file", tokenFile, asthmaName)
	if code != 0 || !strings.Contains(out, "Intrinsic asthma") || !strings.Contains(out, "266361008") {
		t.Fatalf("tre codelist show exited %d:\n%s", code, out)
	}

	badUploads(t, s)

	sql := "SELECT p.sex, count(DISTINCT p.patient_id) AS patients FROM patients p " +
		"JOIN clinical_events e ON e.patient_id = p.patient_id " +
		"JOIN codelists cl ON cl.code = e.snomed_code AND cl.codelist = '" + asthmaName + "' GROUP BY p.sex"
	// A codelist that does not exist is refused at submission, by name.
	_, err := s.As("alice").SubmitQuery(ctx, api.QueryRequest{ProjectID: projectID, SQL: strings.ReplaceAll(sql, "2020-04-15", "2099-01-01"), Purpose: "x"})
	if e2e.APIStatus(err) != http.StatusUnprocessableEntity || !strings.Contains(err.Error(), "2099-01-01") {
		t.Fatalf("missing codelist: %v, want a 422 naming it", err)
	}
	// The dry run names the code the synthetic data never holds.
	dry, err := s.As("alice").DryRun(ctx, api.QueryRequest{ProjectID: projectID, SQL: sql, Purpose: "dry"})
	if err != nil || len(dry.Rows) == 0 || len(dry.AbsentCodes) != 1 || dry.AbsentCodes[0].Count != 1 || dry.AbsentCodes[0].Codes[0] != "266361008" {
		t.Fatalf("dry run: %+v, %v; want rows and code 266361008 absent", dry, err)
	}

	q, err := s.As("alice").SubmitQuery(ctx, api.QueryRequest{ProjectID: projectID, SQL: sql, Purpose: "asthma by sex", Epsilon: 1})
	if err != nil {
		t.Fatalf("submit: %v", err)
	}
	if len(q.Codelists) != 1 || q.Codelists[0] != (broker.CodelistRef{Name: asthmaName, Hash: hash}) {
		t.Fatalf("query codelists = %+v", q.Codelists)
	}
	if _, err := s.As("bob").ApproveQuery(ctx, q.ID, "codelist checked"); err != nil {
		t.Fatalf("approve: %v", err)
	}
	e2e.WaitStatus(t, s.As("bob"), q.ID, broker.StatusAwaitingOutputCheck)
	o, err := s.As("carol").Output(ctx, q.ID)
	if err != nil || o.Result == nil || len(o.Result.Rows) == 0 {
		t.Fatalf("output: %+v, %v; want the protected table (the site ran the join)", o, err)
	}
	if _, err := s.As("carol").ReleaseQuery(ctx, q.ID, "safe"); err != nil {
		t.Fatalf("release: %v", err)
	}
	e2e.WaitStatus(t, s.As("alice"), q.ID, broker.StatusReleased)
	res, err := s.As("alice").Result(ctx, q.ID)
	if err != nil || len(res.Rows) == 0 {
		t.Fatalf("result: %+v, %v", res, err)
	}
	if csv, err := s.As("alice").ResultRaw(ctx, q.ID, "csv"); err != nil || !strings.Contains(string(csv), "patients") {
		t.Fatalf("CSV: %v\n%s", err, csv)
	}

	entries, err := s.As("dave").Audit(ctx, api.AuditOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var uploaded, submitted bool
	for _, e := range entries.Items {
		uploaded = uploaded || e.Action == "codelist.upload" && strings.Contains(e.Detail, asthmaName) && strings.Contains(e.Detail, hash)
		submitted = submitted || e.Action == "query.submit" && strings.Contains(e.Detail, asthmaName+"@sha256:"+hash)
	}
	if !uploaded || !submitted {
		t.Errorf("audit log: upload entry %v, submission entry %v; want both with the name and hash", uploaded, submitted)
	}
	reg, err := (&api.Client{BaseURL: s.URL}).Register(ctx, api.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, e := range reg.Items {
		for _, c := range e.Codelists {
			found = found || c.Name == asthmaName && c.Hash == hash
		}
	}
	if !found {
		t.Errorf("register %+v does not name the codelist with its hash", reg.Items)
	}
	if v, err := s.As("dave").VerifyAudit(ctx); err != nil || !v.OK {
		t.Errorf("audit verify = %+v, %v", v, err)
	}
}

// badUploads checks each refusal of an upload through HTTP: a 4xx JSON
// error whose message names the line or the name, and nothing stored.
func badUploads(t *testing.T, s *e2e.Site) {
	ctx := context.Background()
	many := &strings.Builder{}
	many.WriteString("code,term\n")
	for i := range broker.MaxCodelistCodes + 1 {
		many.WriteString(fmt.Sprintf("%d,t\n", i))
	}
	cases := []struct {
		name, csv string
		status    int
		says      string
	}{
		{"tre-e2e/no-header/1", "195967001,Asthma\n", 400, "line 1"},
		{"tre-e2e/empty-code/1", "code,term\n195967001,Asthma\n,Nothing\n", 400, "line 3: the code is empty"},
		{"tre-e2e/duplicate/1", "code,term\n195967001,Asthma\n44054006,T2DM\n195967001,Asthma again\n", 400, "line 4: code \"195967001\" is listed twice (first on line 2)"},
		{"tre-e2e/too-many/1", many.String(), 400, "at most 100000 codes"},
		{"asthma", asthmaCSV, 400, "ORG/SLUG/VERSION"},
		{"tre-e2e/asthma/../1", asthmaCSV, 400, "ORG/SLUG/VERSION"},
		{asthmaName, asthmaCSV, 409, "already exists"},
	}
	for _, c := range cases {
		_, err := s.As("alice").UploadCodelist(ctx, api.CodelistRequest{Name: c.name, CSV: c.csv})
		if e2e.APIStatus(err) != c.status || !strings.Contains(err.Error(), c.says) {
			t.Errorf("upload %s: %v, want %d saying %q", c.name, err, c.status, c.says)
		}
	}
	_, err := s.As("carol").UploadCodelist(ctx, api.CodelistRequest{Name: "tre-e2e/checker/1", CSV: asthmaCSV})
	if e2e.APIStatus(err) != http.StatusForbidden {
		t.Errorf("an output checker uploads: %v, want 403", err)
	}
	list, err := s.As("carol").Codelists(ctx, api.ListOptions{})
	if err != nil || list.Total != 1 || list.Items[0].Name != asthmaName {
		t.Errorf("codelists after the refusals = %+v, %v; want only %s", list, err, asthmaName)
	}
}
