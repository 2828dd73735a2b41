package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/nhs-tre/tre/api"
	"github.com/nhs-tre/tre/broker"
)

// The demo's steps as a client takes them (tre demo): the site and project
// an admin sets up, and the walkthrough of one query through every role.

// DemoSite is the site the demo's agent acts for.
const DemoSite = "demo-site"

// demoProject is the title of the demo's project.
const demoProject = "Cardiometabolic disease in English primary care (demo)"

// EnsureDemoSite registers the demo site once, as an admin must before its
// agent may act; later runs find it registered.
func EnsureDemoSite(ctx context.Context, admin *api.Client) error {
	_, err := admin.CreateSite(ctx, api.SiteRequest{ID: DemoSite, Name: "Demo site", Organisation: "Demo NHS Trust"})
	var ae *api.Error
	if errors.As(err, &ae) && ae.Code == broker.ECONFLICT {
		return nil
	}
	if err != nil {
		return fmt.Errorf("register the demo site: %w", err)
	}
	return nil
}

// WaitForDataset waits until the agent has published its catalog.
func WaitForDataset(ctx context.Context, c *api.Client) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	for {
		list, err := c.Datasets(ctx, api.ListOptions{})
		if err == nil && len(list.Items) > 0 {
			return list.Items[0].Dataset, nil
		}
		select {
		case <-ctx.Done():
			return "", errors.New("the site agent did not publish its catalog within 60 s (see tre.log)")
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// EnsureDemoProject creates the demo project once; later runs reuse it.
func EnsureDemoProject(ctx context.Context, admin *api.Client, dataset string, now time.Time) (int64, error) {
	list, err := admin.Projects(ctx, api.ListOptions{Limit: api.MaxPageLimit})
	if err != nil {
		return 0, err
	}
	for _, p := range list.Items {
		if p.Title == demoProject && p.Status == broker.ProjectActive && p.ExpiresAt.After(now) {
			return p.ID, nil
		}
	}
	p, err := admin.CreateProject(ctx, api.ProjectRequest{
		Title:                demoProject,
		Organisation:         "University of Leeds",
		Purpose:              "Describe the prevalence and management of type 2 diabetes, hypertension and heart failure by age, sex, region and deprivation, to plan NHS services.",
		LawfulBasis:          "UK GDPR Art. 6(1)(e) and 9(2)(j); COPI Regulation 3",
		DataSharingAgreement: "DSA-DEMO-0001",
		Members:              []string{"alice"},
		Datasets:             []string{dataset},
		EpsilonBudget:        10,
		DeltaBudget:          1e-4,
		ExpiresAt:            now.AddDate(1, 0, 0),
	})
	if err != nil {
		return 0, fmt.Errorf("create demo project: %w", err)
	}
	return p.ID, nil
}

const demoSQL = `SELECT p.region, count(DISTINCT p.patient_id) AS patients_with_t2d
FROM patients p JOIN clinical_events e ON e.patient_id = p.patient_id
WHERE e.snomed_code = '44054006'
GROUP BY p.region`

// Walkthrough drives submit → review → run → output check → release →
// download through the real HTTP API, one role at a time.
func Walkthrough(ctx context.Context, w io.Writer, url string, tokens map[broker.Role]string, projectID int64) error {
	as := func(r broker.Role) *api.Client { return &api.Client{BaseURL: url, Token: tokens[r]} }
	step := func(format string, args ...any) { fmt.Fprintf(w, "\n▶ "+format+"\n", args...) }

	step("Researcher (alice) submits a question to project #%d:\n%s", projectID, indent(demoSQL))
	q, err := as(broker.RoleResearcher).SubmitQuery(ctx, api.QueryRequest{ProjectID: projectID, SQL: demoSQL, Purpose: "Type 2 diabetes by region", Epsilon: 0.5})
	if err != nil {
		return fmt.Errorf("submit: %w", err)
	}
	fmt.Fprintf(w, "  query #%d %s; cost ε=%g δ=%g", q.ID, q.Status, q.Cost.Epsilon, q.Cost.Delta)
	for _, a := range q.Accuracy {
		fmt.Fprintf(w, "; %s ±%.1f (95%%)", a.Column, a.HalfWidth95)
	}
	fmt.Fprintln(w)
	for _, f := range q.RiskFlags {
		fmt.Fprintf(w, "  risk flag %s: %s\n", f.Kind, f.Message)
	}

	step("Reviewer (bob) approves it; the budget is reserved in the same transaction")
	if q, err = as(broker.RoleReviewer).ApproveQuery(ctx, q.ID, "Aggregate by region only; purpose matches the project."); err != nil {
		return fmt.Errorf("approve: %w", err)
	}
	fmt.Fprintf(w, "  query #%d %s\n", q.ID, q.Status)

	step("The site agent leases the job and runs it in the sandbox")
	if q, err = waitForStatus(ctx, as(broker.RoleReviewer), q.ID, broker.StatusAwaitingOutputCheck); err != nil {
		return err
	}
	fmt.Fprintf(w, "  query #%d %s\n", q.ID, q.Status)

	step("Output checker (carol) reviews the protected table and its disclosure report")
	out, err := as(broker.RoleOutputChecker).Output(ctx, q.ID)
	if err != nil {
		return fmt.Errorf("output: %w", err)
	}
	if out.Result == nil {
		return fmt.Errorf("the run failed at the site: %+v", out.Failure)
	}
	rep := out.Result.Report
	fmt.Fprintf(w, "  ε=%g δ=%g mechanism=%s k=%d C=%d threshold=%d rounding=%d partition selection=%s\n",
		rep.Epsilon, rep.Delta, rep.Mechanism, rep.MaxGroupsPerPatient, rep.MaxRowsPerGroup, rep.Threshold, rep.RoundingBase, rep.PartitionSelection)
	fmt.Fprintf(w, "  groups released=%d suppressed=%d; opt-out filter applied=%v; sandbox layers: %s",
		rep.GroupsReleased, rep.GroupsSuppressed, rep.OptOut.Applied, strings.Join(rep.Sandbox.Layers, ", "))
	if rep.Sandbox.Degraded {
		fmt.Fprintf(w, " (DEGRADED: missing %s)", strings.Join(rep.Sandbox.Missing, ", "))
	}
	fmt.Fprintln(w)
	if q, err = as(broker.RoleOutputChecker).ReleaseQuery(ctx, q.ID, "Noisy, rounded counts by region; nothing below threshold."); err != nil {
		return fmt.Errorf("release: %w", err)
	}
	fmt.Fprintf(w, "  query #%d %s\n", q.ID, q.Status)

	step("Researcher downloads the released table")
	// Researchers see the release from the next multiple of the broker's
	// time granularity on.
	if _, err = waitForStatus(ctx, as(broker.RoleResearcher), q.ID, broker.StatusReleased); err != nil {
		return err
	}
	res, err := as(broker.RoleResearcher).Result(ctx, q.ID)
	if err != nil {
		return fmt.Errorf("result: %w", err)
	}
	if err := PrintResultTable(w, res.Columns, res.Rows); err != nil {
		return err
	}
	csv, err := as(broker.RoleResearcher).ResultRaw(ctx, q.ID, "csv")
	if err != nil {
		return fmt.Errorf("result csv: %w", err)
	}
	fmt.Fprintf(w, "\n  (CSV: %d bytes)\n\nWalkthrough complete.\n", len(csv))
	fmt.Fprintf(w, "\nWhat next: keep the demo running (go run ./cmd/tre demo) and open the web interface it prints,\n")
	fmt.Fprintf(w, "or follow README.md with curl, Python or the tre command.\n")
	return nil
}

// waitForStatus polls a query until it reaches want, fails or times out.
func waitForStatus(ctx context.Context, c *api.Client, id int64, want broker.Status) (*broker.Query, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	for {
		q, err := c.Query(ctx, id)
		if err != nil {
			return nil, err
		}
		switch q.Status {
		case want:
			return q, nil
		case broker.StatusFailed, broker.StatusCancelled, broker.StatusRejected, broker.StatusWithheld:
			return q, fmt.Errorf("query #%d ended %s (%s)", id, q.Status, q.FailureCode)
		}
		select {
		case <-ctx.Done():
			return q, fmt.Errorf("query #%d still %s after 3 minutes", id, q.Status)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func indent(s string) string { return "    " + strings.ReplaceAll(s, "\n", "\n    ") }
