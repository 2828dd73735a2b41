package server

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/nhs-tre/tre/api/apitest"
	"github.com/nhs-tre/tre/broker"
	"github.com/nhs-tre/tre/broker/brokertest"
)

// checkerOnly are words and keys of what only an output checker may see of
// the outputs in TestResearcherSeesNoCheckerData.
var checkerOnly = []string{
	`"attempts"`, `"failure_code"`, `"failure_detail"`, `"failure"`, "timeout", "past its 300 s limit", "agent1",
	`"dominance"`, `"cells_dominance_flagged"`, `"partitions_not_released"`, `"rows_dropped_by_bounding"`, "4321",
	`"optout"`, `"sandbox"`, `"site_id"`, `"created_at"`,
}

// TestResearcherSeesNoCheckerData drives a result with every checker-only
// diagnostic and a failed run through the real broker, and reads both
// through every route a researcher may call: neither the diagnostics nor the
// failure's class, detail or attempts ever reach the researcher, while the
// output checker sees them all. Every response is checked against the
// OpenAPI document, whose researcher shapes allow no other property.
func TestResearcherSeesNoCheckerData(t *testing.T) {
	e := newRealEnv(t)
	f, svc, cf := e.f, e.f.Service, apitest.NewConformance(t)
	member := mustToken(t, "res1", broker.RoleResearcher)
	checker := mustToken(t, "chk1", broker.RoleOutputChecker)

	ok := f.MustSubmit(f.Researcher, brokertest.DefaultSQL, 0.5)
	bad := f.MustSubmit(f.Researcher, brokertest.DefaultSQL, 0.5)
	f.MustApprove(ok.ID)
	f.MustApprove(bad.ID)
	full := f.DiagnosedResult(0.5)
	full.Report.OptOut.Applied, full.Report.Sandbox.Layers = true, []string{"landlock"}
	if err := svc.CompleteJob(f.Agent, ok.ID, f.MustLease(ok.ID).Token, full); err != nil {
		t.Fatal(err)
	}
	// A crash is retried; the timeout that follows ends the run.
	if err := svc.FailJob(f.Agent, bad.ID, f.MustLease(bad.ID).Token, "crashed", "the sandbox exited"); err != nil {
		t.Fatal(err)
	}
	if err := svc.FailJob(f.Agent, bad.ID, f.MustLease(bad.ID).Token, "timeout", "the query ran past its 300 s limit"); err != nil {
		t.Fatal(err)
	}

	get := func(token, path string, want int) string {
		t.Helper()
		status, body := checkedCall(t, cf, e.srv, "GET", path, token, nil)
		if status != want {
			t.Fatalf("GET %s: status %d, want %d: %s", path, status, want, body)
		}
		return string(body)
	}
	clean := func(what, body string) {
		t.Helper()
		for _, s := range checkerOnly {
			if strings.Contains(body, s) {
				t.Errorf("%s as the researcher sees it contains %s:\n%s", what, s, body)
			}
		}
	}
	researcherRoutes := func(stage string) {
		t.Helper()
		for _, p := range []string{
			fmt.Sprintf("/api/v1/queries/%d", ok.ID), fmt.Sprintf("/api/v1/queries/%d", bad.ID),
			"/api/v1/queries", "/api/v1/queries?status=awaiting_output_check", "/api/v1/queries?status=failed",
		} {
			clean(stage+" "+p, get(member, p, http.StatusOK))
		}
	}

	// Awaiting the output check: both look the same to the researcher.
	researcherRoutes("awaiting")
	var list struct{ Items []broker.Query }
	if err := json.Unmarshal([]byte(get(member, "/api/v1/queries?status=awaiting_output_check", 200)), &list); err != nil || len(list.Items) != 2 {
		t.Fatalf("researcher's awaiting list = %+v, %v", list, err)
	}
	get(member, fmt.Sprintf("/api/v1/queries/%d/output", bad.ID), http.StatusForbidden)

	// The checker sees the failure notice, in the queue and the output.
	notice := get(checker, fmt.Sprintf("/api/v1/queries/%d/output", bad.ID), 200)
	queue := get(checker, "/api/v1/outputs/queue", 200)
	for _, s := range []string{`"code":"timeout"`, "past its 300 s limit"} {
		if !strings.Contains(notice, s) {
			t.Errorf("checker's failure notice lacks %s: %s", s, notice)
		}
	}
	for _, s := range []string{`"failure_code":"timeout"`, "past its 300 s limit", `"attempts":2`} {
		if !strings.Contains(queue, s) {
			t.Errorf("checker's output queue lacks %s: %s", s, queue)
		}
	}
	if out := get(checker, fmt.Sprintf("/api/v1/queries/%d/output", ok.ID), 200); !strings.Contains(out, "4321") || !strings.Contains(out, `"dominance"`) {
		t.Errorf("checker's output lacks the diagnostics: %s", out)
	}

	if _, err := svc.ReleaseQuery(f.Checker, ok.ID, "safe"); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.ReleaseQuery(f.Checker, bad.ID, "timeout: the query ran past its 300 s limit"); err != nil {
		t.Fatal(err)
	}
	researcherRoutes("released")
	for _, p := range []string{"/output", "/result", "/result?format=json", "/result?format=csv"} {
		body := get(member, fmt.Sprintf("/api/v1/queries/%d%s", ok.ID, p), http.StatusOK)
		clean("released output "+p, body)
		if !strings.Contains(body, "female") {
			t.Errorf("released output %s lacks the value: %s", p, body)
		}
	}
	var failed broker.Query
	if err := json.Unmarshal([]byte(get(member, fmt.Sprintf("/api/v1/queries/%d", bad.ID), 200)), &failed); err != nil {
		t.Fatal(err)
	}
	last := failed.History[len(failed.History)-1]
	if failed.Status != broker.StatusFailed || last.Comment != broker.FailedMessage {
		t.Errorf("failed query as the researcher sees it: %s, last event %+v", failed.Status, last)
	}
	for _, p := range []string{"/output", "/result"} {
		get(member, fmt.Sprintf("/api/v1/queries/%d%s", bad.ID, p), http.StatusForbidden)
	}
}

// TestEpsilonExtremes submits and dry-runs every kind of extreme ε through
// the HTTP API on the real broker: none is a 500; a number the dataset
// does not accept is refused with 422 naming ε, a malformed one with 400.
func TestEpsilonExtremes(t *testing.T) {
	e := newRealEnv(t)
	member := mustToken(t, "res1", broker.RoleResearcher)
	pid := e.f.Project.ID
	body := func(eps string) string {
		return fmt.Sprintf(`{"project_id":%d,"sql":%q,"purpose":"extremes","epsilon":%s}`, pid, brokertest.DefaultSQL, eps)
	}
	tests := []struct {
		eps  string
		want int // 0: any 4xx except 500s; the point is that it is never a 500
	}{
		{"1e-300", http.StatusUnprocessableEntity},
		{"8.881784197001252e-16", http.StatusUnprocessableEntity}, // 2^-50
		{"4.9e-324", http.StatusUnprocessableEntity},              // the smallest double
		{"1e-9", http.StatusUnprocessableEntity},
		{"-1", http.StatusUnprocessableEntity},
		{"-0", 0},
		{"1e300", http.StatusUnprocessableEntity},
		{"1.7976931348623157e308", http.StatusUnprocessableEntity},
		{"1e400", http.StatusBadRequest},
		{"NaN", http.StatusBadRequest},
		{"Infinity", http.StatusBadRequest},
		{`"0.5"`, http.StatusBadRequest},
		{"null", 0},
		{"true", http.StatusBadRequest},
		{"[0.5]", http.StatusBadRequest},
	}
	for _, route := range []string{"/api/v1/queries", "/api/v1/queries/dry-run"} {
		for _, tt := range tests {
			t.Run(route+" "+tt.eps, func(t *testing.T) {
				req := newRequest(t, http.MethodPost, route, member, body(tt.eps))
				rec := serve(e.srv, req)
				if rec.Code >= 500 {
					t.Fatalf("ε %s: status %d: %s", tt.eps, rec.Code, rec.Body)
				}
				if rec.Code >= 400 {
					errBody := mustErrorBody(t, rec.Body.Bytes())
					if rec.Code == http.StatusUnprocessableEntity && !strings.Contains(errBody.Message, "ε") && !strings.Contains(errBody.Message, "epsilon") {
						t.Errorf("ε %s: 422 that does not name ε: %q", tt.eps, errBody.Message)
					}
				}
				if tt.want != 0 && rec.Code != tt.want {
					t.Errorf("ε %s: status %d, want %d: %s", tt.eps, rec.Code, tt.want, rec.Body)
				}
			})
		}
	}
}
