package federation

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	_ "github.com/duckdb/duckdb-go/v2"

	"github.com/nhs-tre/tre/api"
	"github.com/nhs-tre/tre/api/auth"
	"github.com/nhs-tre/tre/broker"
	"github.com/nhs-tre/tre/dp"
	"github.com/nhs-tre/tre/e2e"
	"github.com/nhs-tre/tre/queries"
)

// TestMain builds the tre binary the tests run.
func TestMain(m *testing.M) { e2e.Main(m) }

// dataset is the federated dataset's name: every site's synthetic data is
// published under it.
const dataset = "fed_gp"

// regionSQL is the federated query: every group column has a public domain.
const regionSQL = "SELECT region, count(*) AS n FROM patients GROUP BY region"

// fedSite is one NHS site: its own directory, synthetic data and agent
// process, in a network namespace of its own where the machine allows.
type fedSite struct {
	id, dir, data, catalog string
	agent                  *e2e.Process
	ns                     *e2e.NetSite // nil: on loopback
}

// newFedSite registers site id, generates its data (its own seed and size)
// and returns it, its agent not started yet.
func newFedSite(t *testing.T, b *e2e.LonelyBroker, id string, seed, patients int) *fedSite {
	t.Helper()
	s := &fedSite{id: id, dir: t.TempDir()}
	s.data = filepath.Join(s.dir, "gp.duckdb")
	s.catalog = filepath.Join(s.dir, "gp.catalog.yaml")
	if out, code := e2e.RunTreIn(t, s.dir, "synth", "--out", s.data, "--patients", fmt.Sprint(patients),
		"--seed", fmt.Sprint(seed), "--dataset", dataset); code != 0 {
		t.Fatalf("tre synth for %s exited %d:\n%s", id, code, out)
	}
	if _, err := b.As("dave").CreateSite(context.Background(), api.SiteRequest{ID: id, Name: "Site " + id, Organisation: "NHS Trust " + id}); err != nil {
		t.Fatalf("register %s: %v", id, err)
	}
	return s
}

// start starts the site's agent, with a token bound to the site.
func (s *fedSite) start(t *testing.T, b *e2e.LonelyBroker) {
	t.Helper()
	token := b.Mint(t, auth.DevClaims{Subject: "agent-" + s.id, Roles: []broker.Role{broker.RoleAgent}, Site: s.id})
	tokenFile := e2e.WriteAgentToken(t, s.dir, token)
	// --report-timeout: a part finished while its site is cut off is still
	// being uploaded when the site is reconnected past the deadline (the
	// default 30s could give up first).
	args := []string{"agent", "--broker", b.URL, "--site-id", s.id, "--token-file", tokenFile,
		"--data", s.data, "--catalog", s.catalog, "--poll-interval", "100ms", "--memory-limit", "512MB",
		"--scratch-dir", filepath.Join(s.dir, "scratch"), "--report-timeout", "3m"}
	if s.ns != nil {
		s.agent = s.ns.StartTre(t, args...)
	} else {
		s.agent = e2e.StartTre(t, args...)
	}
}

// stall stops (SIGSTOP) every process below the site's agent, its pooled
// sandbox child among them, so that the next part the site leases stays
// running, whatever the machine's load, until resume is called (the lease
// is the broker's "running"; the part's run and upload wait for the
// child). It waits for the agent to have a child; the test's end resumes
// them, whatever happened.
func (s *fedSite) stall(t *testing.T) (resume func()) {
	t.Helper()
	var pids []int
	e2e.Eventually(t, time.Minute, s.id+"'s sandbox child", func() error {
		if pids = e2e.DescendantPIDs(s.agent.Cmd.Process.Pid); len(pids) == 0 {
			return errors.New("none yet")
		}
		return nil
	})
	for _, p := range pids {
		_ = syscall.Kill(p, syscall.SIGSTOP)
	}
	resume = func() {
		for _, p := range pids {
			_ = syscall.Kill(p, syscall.SIGCONT)
		}
	}
	t.Cleanup(resume)
	return resume
}

// exactByRegion is regionSQL's exact answer on the site's data, without
// opted-out patients, computed with DuckDB as the test's own reference.
func (s *fedSite) exactByRegion(t *testing.T) map[string]float64 {
	t.Helper()
	return s.exactCounts(t, `SELECT region, count(*) FROM patients
		WHERE patient_id NOT IN (SELECT patient_id FROM optouts WHERE patient_id IS NOT NULL) GROUP BY region`)
}

// exactCounts runs query, a key and a count per row, on the site's data,
// read-only: the test's own reference.
func (s *fedSite) exactCounts(t *testing.T, query string) map[string]float64 {
	t.Helper()
	db, err := sql.Open("duckdb", s.data+"?access_mode=read_only")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rows, err := db.Query(query)
	if err != nil {
		t.Fatalf("exact answer at %s: %v", s.id, err)
	}
	defer rows.Close()
	out := map[string]float64{}
	for rows.Next() {
		var key sql.NullString
		var n float64
		if err := rows.Scan(&key, &n); err != nil {
			t.Fatal(err)
		}
		out[key.String] += n
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestFederation runs one broker and three site agents, each in its own
// process, directory and (where the machine allows) network namespace over
// its own synthetic data: a conflicting catalog is refused naming the
// difference; a federated query's released answer (patients by region, a
// median, patients by month of a year bounded in WHERE) agrees with the
// sites' exact answers; each site's ledger is charged; sites cut off
// before and during their part, and a site killed mid-job, fail the query
// as a whole after the deadline, as a failure notice the researcher sees
// as failed, each site charged only if it ran; a reconnected site's late
// upload is refused and changes nothing.
func TestFederation(t *testing.T) {
	nw, noNet := e2e.NewNet(t)
	host, serve := "127.0.0.1", []string{"--federation-deadline", "20s"}
	if nw != nil {
		// Plain HTTP on the test's own private network: the broker refuses
		// it on a non-loopback address unless told TLS is done in front.
		host, serve = nw.Addr, append(serve, "--behind-tls-proxy")
	} else {
		t.Logf("sites on loopback, not cut off: %s", noNet)
	}
	// The broker's synthetic data for dry runs, of the federated dataset.
	dry := filepath.Join(t.TempDir(), "dry.duckdb")
	if out, code := e2e.RunTreIn(t, t.TempDir(), "synth", "--out", dry, "--patients", "1000", "--seed", "99", "--dataset", dataset); code != 0 {
		t.Fatalf("tre synth for dry runs exited %d:\n%s", code, out)
	}
	admin := e2e.FreeAddr(t)
	b := e2e.StartLonelyBrokerOn(t, host, append(serve, "--admin-addr", admin, "--dry-run-data", dry)...)
	metrics := "http://" + admin + "/metrics"
	ctx := context.Background()
	var sites []*fedSite
	exact := map[string]float64{}
	var bmis []float64 // the sites' bounded BMI values, one per patient
	for i, n := range []int{3000, 2000, 2500} {
		s := newFedSite(t, b, fmt.Sprintf("fed-%d", i+1), 101+i, n)
		for k, v := range s.exactByRegion(t) {
			exact[k] += v
		}
		bmis = append(bmis, s.exactBMIs(t)...)
		if nw != nil {
			s.ns = nw.AddSite()
		}
		s.start(t, b)
		sites = append(sites, s)
	}
	e2e.Eventually(t, 2*time.Minute, "every site publishing "+dataset, func() error {
		list, err := b.As("dave").Sites(ctx, api.ListOptions{})
		if err != nil {
			return err
		}
		held := 0
		for _, s := range list.Items {
			if strings.HasPrefix(s.ID, "fed-") && len(s.Datasets) == 1 && s.Datasets[0] == dataset {
				held++
			}
		}
		if held != 3 {
			return fmt.Errorf("%d sites hold %s", held, dataset)
		}
		return nil
	})

	t.Run("conflicting catalog refused", func(t *testing.T) { conflictingCatalog(t, b, sites[0]) })

	p, err := b.As("dave").CreateProject(ctx, api.ProjectRequest{
		Title: "Federated study", Organisation: "Test University", Purpose: "Patients by region across three sites",
		LawfulBasis: "Art. 6(1)(e)", Members: []string{"alice"}, Datasets: []string{dataset},
		EpsilonBudget: 100, DeltaBudget: 1e-3, ExpiresAt: time.Now().AddDate(0, 1, 0),
	})
	if err != nil {
		t.Fatal(err)
	}
	q := releasedAnswer(t, b, p.ID, exact)
	eps := q.Cost.Epsilon
	k := &books{site: map[string]float64{}}
	k.approved(eps, "fed-1", "fed-2", "fed-3")
	k.check(t, b, p.ID)
	t.Run("released median", func(t *testing.T) {
		k.approved(releasedMedian(t, b, p.ID, bmis), "fed-1", "fed-2", "fed-3")
		k.check(t, b, p.ID)
	})
	t.Run("released months", func(t *testing.T) {
		k.approved(releasedMonths(t, b, p.ID, sites), "fed-1", "fed-2", "fed-3")
		k.check(t, b, p.ID)
	})
	t.Run("dry run", func(t *testing.T) { dryRun(t, b, q, k) })
	reg, err := (&api.Client{BaseURL: b.URL}).Register(ctx, api.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range reg.Items {
		if e.ProjectID == p.ID && strings.Join(e.Sites, ",") != "fed-1,fed-2,fed-3" {
			t.Errorf("register names sites %v, want fed-1..3", e.Sites)
		}
	}
	t.Run("cut off", func(t *testing.T) {
		if nw == nil {
			t.Skip(noNet)
		}
		cutOff(t, b, metrics, p.ID, sites, eps, k)
	})
	killedMidJob(t, b, p.ID, sites[2], eps, k)
	allSitesDown(t, b, p.ID, sites, eps, k)
}

// dryRun: a dry run of q's SQL over the federated dataset runs once on
// the broker's synthetic data and says so (one site's answer), with q's
// sites, costs and combined accuracy; it charges no ledger.
func dryRun(t *testing.T, b *e2e.LonelyBroker, q *broker.Query, k *books) {
	r, err := b.As("alice").DryRun(context.Background(), api.QueryRequest{ProjectID: q.ProjectID, SQL: q.SQL, Epsilon: q.Cost.Epsilon})
	if err != nil {
		t.Fatal(err)
	}
	if !r.Synthetic || !r.Report.Synthetic || r.Run != api.DryRunSyntheticSingleSite || len(r.Rows) == 0 {
		t.Errorf("dry run: synthetic %v, run %q, %d rows; want one site's synthetic table", r.Synthetic, r.Run, len(r.Rows))
	}
	if r.Federation == nil || r.Federation.Sites != 3 || r.Federation.SiteCost != q.Cost || r.Federation.ProjectCost != q.Federation.ProjectCost {
		t.Errorf("dry run's federation %+v, want the query's %+v", r.Federation, q.Federation)
	}
	if r.Cost != q.Cost || fmt.Sprint(r.Accuracy) != fmt.Sprint(q.Accuracy) {
		t.Errorf("dry run costs %+v with accuracy %v; want the query's %+v, %v (the combined answer's)", r.Cost, r.Accuracy, q.Cost, q.Accuracy)
	}
	k.check(t, b, q.ProjectID)
}

// books is what the test expects the ledgers to hold: ε spent at each
// site, and by the project, which every approved query over the three
// sites charges 3 × ε, never refunded.
type books struct {
	site    map[string]float64
	project float64
}

// approved books a query of ε that ran at the sites ran (charged there)
// and nowhere else (refunded there).
func (k *books) approved(eps float64, ran ...string) {
	k.project += 3 * eps
	for _, s := range ran {
		k.site[s] += eps
	}
}

// check compares the ledgers with the books.
func (k *books) check(t *testing.T, b *e2e.LonelyBroker, project int64) {
	t.Helper()
	ledgers(t, b, project, k.site, k.project)
}

// allSitesDown stops every site's agent and has a query approved: no lease
// poll comes, so the broker's own deadline sweep fails it as a whole; the
// sites' ledgers are refunded, the project's charge stands (a refund there
// would tell the researcher whether the sites ran).
func allSitesDown(t *testing.T, b *e2e.LonelyBroker, project int64, sites []*fedSite, eps float64, k *books) {
	t.Helper()
	ctx := context.Background()
	for _, s := range sites {
		s.agent.Stop()
	}
	q := approvedRegionQuery(t, b, project, "patients by region, sites down", eps)
	got := e2e.WaitStatus(t, b.As("bob"), q.ID, broker.StatusAwaitingOutputCheck)
	if got.FailureCode != broker.FailureFederationDeadline {
		t.Fatalf("failure %q, want %q", got.FailureCode, broker.FailureFederationDeadline)
	}
	for _, s := range sites {
		if !strings.Contains(got.FailureDetail, s.id+" failed after 0 attempt(s), refunded") {
			t.Errorf("notice %q does not list %s as never started", got.FailureDetail, s.id)
		}
	}
	if _, err := b.As("carol").ReleaseQuery(ctx, q.ID, "tell the researcher"); err != nil {
		t.Fatal(err)
	}
	e2e.WaitStatus(t, b.As("alice"), q.ID, broker.StatusFailed)
	// This one ran nowhere: the sites' ledgers are as before, the project
	// is charged its 3 × ε all the same.
	k.approved(eps)
	k.check(t, b, project)
}

// conflictingCatalog: a fourth site publishing the dataset with other
// bounds is refused with 409 naming the path.
func conflictingCatalog(t *testing.T, b *e2e.LonelyBroker, s *fedSite) {
	ctx := context.Background()
	cat, err := queries.LoadCatalog(s.catalog)
	if err != nil {
		t.Fatal(err)
	}
	ce := cat.Table("clinical_events")
	ce.Column("numeric_value").Bounds = &[2]float64{0, 100}
	if _, err := b.As("dave").CreateSite(ctx, api.SiteRequest{ID: "fed-4", Name: "Site fed-4", Organisation: "NHS Trust fed-4"}); err != nil {
		t.Fatal(err)
	}
	agent := &api.Client{BaseURL: b.URL, Token: b.Mint(t, auth.DevClaims{Subject: "agent-fed-4", Roles: []broker.Role{broker.RoleAgent}, Site: "fed-4"})}
	err = agent.PublishCatalog(ctx, "fed-4", cat)
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Status != 409 || !strings.Contains(ae.Message, "differs at tables.clinical_events.columns.numeric_value.bounds") {
		t.Fatalf("conflicting catalog: %v, want 409 naming tables.clinical_events.columns.numeric_value.bounds", err)
	}
}

// released submits sql to project as alice at ε = 1, has bob approve it
// and carol release it once every site's part is in, and returns the query
// and the researcher's result: combined over the three sites, each site's
// report (opt-out applied) in the checker's output.
func released(t *testing.T, b *e2e.LonelyBroker, project int64, sql, purpose string) (*broker.Query, *api.ResultResponse) {
	t.Helper()
	ctx := context.Background()
	q, err := b.As("alice").SubmitQuery(ctx, api.QueryRequest{ProjectID: project, SQL: sql, Purpose: purpose, Epsilon: 1})
	if err != nil {
		t.Fatal(err)
	}
	if q.Federation == nil || q.Federation.Sites != 3 || q.Federation.ProjectCost.Epsilon != 3*q.Cost.Epsilon {
		t.Fatalf("federation %+v, want 3 sites costing the project 3 × ε %g", q.Federation, q.Cost.Epsilon)
	}
	if _, err := b.As("bob").ApproveQuery(ctx, q.ID, "ok"); err != nil {
		t.Fatal(err)
	}
	if got := e2e.WaitStatus(t, b.As("bob"), q.ID, broker.StatusAwaitingOutputCheck); got.FailureCode != "" {
		t.Fatalf("%s: failed: %s %s", purpose, got.FailureCode, got.FailureDetail)
	}
	o, err := b.As("carol").Output(ctx, q.ID)
	if err != nil {
		t.Fatal(err)
	}
	if o.Result == nil || len(o.Sites) != 3 {
		t.Fatalf("output: result %v, %d sites; want the combined table and 3 sites", o.Result != nil, len(o.Sites))
	}
	for _, s := range o.Sites {
		if s.Status != broker.JobDone || s.Report == nil || !s.Report.OptOut.Applied {
			t.Errorf("site %s: %s, report %+v; want done with the opt-out applied", s.SiteID, s.Status, s.Report)
		}
	}
	if _, err := b.As("carol").ReleaseQuery(ctx, q.ID, "safe"); err != nil {
		t.Fatal(err)
	}
	e2e.WaitStatus(t, b.As("alice"), q.ID, broker.StatusReleased)
	res, err := b.As("alice").Result(ctx, q.ID)
	if err != nil {
		t.Fatal(err)
	}
	if res.Report.Sites != 3 {
		t.Errorf("report says %d sites, want 3", res.Report.Sites)
	}
	return q, res
}

// releasedAnswer releases regionSQL (released) and compares the released
// table with the sum of the sites' exact answers.
func releasedAnswer(t *testing.T, b *e2e.LonelyBroker, project int64, exact map[string]float64) *broker.Query {
	t.Helper()
	q, res := released(t, b, project, regionSQL, "patients by region")
	compareCounts(t, res, exact)
	return q
}

// compareCounts compares the released counts of res (a key, a count) with
// the sum over the sites of their exact answers.
func compareCounts(t *testing.T, res *api.ResultResponse, exact map[string]float64) {
	t.Helper()
	checked, inside := 0, 0
	for _, row := range res.Rows {
		key, c := row[0].Key, row[1]
		want := exact[key]
		if c.Value == nil || c.CILow == nil || c.CIHigh == nil {
			continue // suppressed: nothing to compare
		}
		checked++
		// The stated 95% interval holds the exact sum in 95% of cells;
		// twice its half-width (3.9σ) and the rounding base bound a
		// failure by chance to about 1 in 10,000 per cell.
		half := (*c.CIHigh - *c.CILow) / 2
		if math.Abs(*c.Value-want) > 2*half+5 {
			t.Errorf("%q: released %g [%g, %g], exact sum over the sites %g", key, *c.Value, *c.CILow, *c.CIHigh, want)
		}
		if want >= *c.CILow-5 && want <= *c.CIHigh+5 {
			inside++
		}
	}
	if checked == 0 {
		t.Fatalf("no released cell to compare: %+v", res.Rows)
	}
	t.Logf("%d of %d released cells hold the exact sum in their stated interval (± the rounding base)", inside, checked)
}

// monthSQL is a federated query grouping by month: the months come from
// its WHERE bounds (the year 2024), the same at the broker and every site.
const monthSQL = `SELECT date_trunc('month', date) AS month, count(DISTINCT patient_id) AS patients FROM clinical_events
WHERE date >= DATE '2024-01-01' AND date < DATE '2025-01-01' GROUP BY month`

// releasedMonths releases monthSQL (released): every month of 2024 in
// order, each count near the sum of the sites' exact counts, keyed by
// DuckDB's own text of the month. It returns the query's ε.
func releasedMonths(t *testing.T, b *e2e.LonelyBroker, project int64, sites []*fedSite) float64 {
	t.Helper()
	exact := map[string]float64{}
	for _, s := range sites {
		for k, v := range s.exactCounts(t, `SELECT CAST(CAST(date_trunc('month', date) AS DATE) AS VARCHAR), count(DISTINCT patient_id)
			FROM clinical_events WHERE date >= DATE '2024-01-01' AND date < DATE '2025-01-01'
			AND patient_id NOT IN (SELECT patient_id FROM optouts WHERE patient_id IS NOT NULL) GROUP BY 1`) {
			exact[k] += v
		}
	}
	q, res := released(t, b, project, monthSQL, "patients seen by month across three sites")
	if len(res.Rows) != 12 {
		t.Fatalf("%d months released, want the 12 of 2024", len(res.Rows))
	}
	for i, row := range res.Rows {
		if want := fmt.Sprintf("2024-%02d-01", i+1); row[0].Key != want {
			t.Errorf("row %d: month %q, want %q", i+1, row[0].Key, want)
		}
	}
	compareCounts(t, res, exact)
	return q.Cost.Epsilon
}

// medianSQL is a federated quantile: the median of each patient's highest
// BMI reading, bounded, over the three sites (one group, one tree).
const medianSQL = `WITH bmi AS (
  SELECT patient_id, max(numeric_value) AS bmi FROM clinical_events WHERE snomed_code = '60621009' GROUP BY patient_id)
SELECT count(*) AS patients, median(greatest(12, least(70, bmi))) AS median_bmi FROM bmi`

// exactBMIs is the site's values of medianSQL, without opted-out patients,
// computed with DuckDB as the test's own reference.
func (s *fedSite) exactBMIs(t *testing.T) []float64 {
	t.Helper()
	db, err := sql.Open("duckdb", s.data+"?access_mode=read_only")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rows, err := db.Query(`SELECT greatest(12, least(70, max(numeric_value))) FROM clinical_events
		WHERE snomed_code = '60621009' AND patient_id NOT IN (SELECT patient_id FROM optouts WHERE patient_id IS NOT NULL)
		GROUP BY patient_id HAVING max(numeric_value) IS NOT NULL`)
	if err != nil {
		t.Fatalf("exact values at %s: %v", s.id, err)
	}
	defer rows.Close()
	var out []float64
	for rows.Next() {
		var v float64
		if err := rows.Scan(&v); err != nil {
			t.Fatal(err)
		}
		out = append(out, v)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// releasedMedian releases medianSQL (released): each site sends its whole
// noisy quantile tree, the broker merges them, and the released median
// must lie near the exact median of
// the union of the three sites' values (DuckDB's quantile_cont, in Go).
// The stated 95% interval holds it 95% of the time; the test fails only
// outside the interval widened on each side by its own half-width and a
// leaf of the tree (65,536 leaves over [12, 70]): about the rank interval
// for z = 3.9 where the values are dense, as at a BMI median, a failure by
// chance of about 1 in 10,000. It returns the query's ε.
func releasedMedian(t *testing.T, b *e2e.LonelyBroker, project int64, values []float64) float64 {
	t.Helper()
	q, res := released(t, b, project, medianSQL, "median BMI across three sites")
	if len(res.Rows) != 1 || res.Columns[1].Kind != "quantile" {
		t.Fatalf("result: %d rows, columns %+v; want one row with a quantile", len(res.Rows), res.Columns)
	}
	c := res.Rows[0][1]
	if c.Value == nil || c.CILow == nil || c.CIHigh == nil {
		t.Fatalf("median of %d patients not released: %+v", len(values), c)
	}
	slices.Sort(values)
	pos := float64(len(values)-1) / 2
	lo := int(pos)
	want := values[lo] + (pos-float64(lo))*(values[min(lo+1, len(values)-1)]-values[lo])
	v, low, high := *c.Value, *c.CILow, *c.CIHigh
	leaf := (70.0 - 12.0) / math.Pow(dp.FederatedBranching, dp.FederatedTreeHeight) // a federated tree's leaf
	if want < low-(v-low)-leaf || want > high+(high-v)+leaf {
		t.Errorf("released median %g [%g, %g], exact median of the union %g", v, low, high, want)
	}
	t.Logf("released median %g [%g, %g]; exact median of the %d values at the three sites %g (inside the stated interval: %v)",
		v, low, high, len(values), want, low <= want && want <= high)
	return q.Cost.Epsilon
}

// ledgers checks each site's ledger and the project's ε spent.
func ledgers(t *testing.T, b *e2e.LonelyBroker, project int64, want map[string]float64, projectSpent float64) {
	t.Helper()
	p, err := b.As("dave").Project(context.Background(), project)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, l := range p.SiteLedgers {
		got[l.SiteID] = l.EpsilonSpent
		if l.EpsilonReserved != 0 {
			t.Errorf("site %s still has ε %g reserved", l.SiteID, l.EpsilonReserved)
		}
	}
	for s, eps := range want {
		if math.Abs(got[s]-eps) > 1e-9 {
			t.Errorf("site %s ledger: ε %g spent, want %g", s, got[s], eps)
		}
	}
	if math.Abs(p.Budget.EpsilonSpent-projectSpent) > 1e-9 {
		t.Errorf("project ε spent %g, want %g", p.Budget.EpsilonSpent, projectSpent)
	}
}

// killedMidJob kills the last site's agent once its part is running (its
// sandbox stalled until then): the query fails as a whole after the
// deadline, its notice lists each site, and the researcher sees it failed
// once the notice is released. A site whose part finished before the kill
// anyway (another sandbox child than the stalled one), or reported in the
// instant before it, would not test this: the query is then submitted
// again (up to three times).
func killedMidJob(t *testing.T, b *e2e.LonelyBroker, project int64, victim *fedSite, eps float64, k *books) {
	t.Helper()
	ctx := context.Background()
	for attempt := 1; ; attempt++ {
		resume := victim.stall(t)
		q := approvedRegionQuery(t, b, project, "patients by region, again", eps)
		k.approved(eps, "fed-1", "fed-2", "fed-3")
		if partStarted(t, b, q.ID, victim.id) != broker.JobRunning {
			resume()
			// Its part was done before we looked: try again.
			if attempt == 3 {
				t.Fatalf("%s's part finished before the agent could be killed, three times", victim.id)
			}
			e2e.WaitStatus(t, b.As("bob"), q.ID, broker.StatusAwaitingOutputCheck)
			continue
		}
		victim.agent.Kill()
		resume() // its sandbox children die with it (pdeathsig)
		got := e2e.WaitStatus(t, b.As("bob"), q.ID, broker.StatusAwaitingOutputCheck)
		if got.FailureCode == "" && attempt < 3 {
			// Its part reported between our look and the kill (the
			// combined table is waiting for its check): start the
			// agent again and submit again.
			t.Logf("%s's part reported before the kill (attempt %d); again", victim.id, attempt)
			victim.start(t, b)
			continue
		}
		if got.FailureCode != broker.FailureFederationDeadline {
			t.Fatalf("failure %q, want %q (the part reported before the kill, three times)", got.FailureCode, broker.FailureFederationDeadline)
		}
		t.Logf("%s killed with its part running (query %d, attempt %d)", victim.id, q.ID, attempt)
		o, err := b.As("carol").Output(ctx, q.ID)
		if err != nil {
			t.Fatal(err)
		}
		if o.Result != nil || o.Failure == nil || len(o.Sites) != 3 {
			t.Fatalf("output: %+v, want a failure notice with 3 sites", o)
		}
		for _, s := range []string{"fed-1", "fed-2", "fed-3"} {
			if !strings.Contains(o.Failure.Detail, s) {
				t.Errorf("notice %q does not list %s", o.Failure.Detail, s)
			}
		}
		if _, err := b.As("carol").ReleaseQuery(ctx, q.ID, "tell the researcher"); err != nil {
			t.Fatal(err)
		}
		researcherSeesFailure(t, b, q.ID)
		// Every site started its part: each is charged, none refunded.
		k.check(t, b, project)
		return
	}
}

// approvedRegionQuery submits regionSQL to project as alice for purpose at
// ε eps and approves it as bob.
func approvedRegionQuery(t *testing.T, b *e2e.LonelyBroker, project int64, purpose string, eps float64) *broker.Query {
	t.Helper()
	ctx := context.Background()
	q, err := b.As("alice").SubmitQuery(ctx, api.QueryRequest{ProjectID: project, SQL: regionSQL, Purpose: purpose, Epsilon: eps})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.As("bob").ApproveQuery(ctx, q.ID, "ok"); err != nil {
		t.Fatal(err)
	}
	return q
}

// partStarted waits for site's part of query id to be leased and returns
// its status then: running, or done already.
func partStarted(t *testing.T, b *e2e.LonelyBroker, id int64, site string) broker.JobStatus {
	t.Helper()
	var state broker.JobStatus
	e2e.Eventually(t, time.Minute, site+"'s part starting", func() error {
		v, err := b.As("dave").Query(context.Background(), id)
		if err != nil {
			return err
		}
		for _, s := range v.Sites {
			if s.SiteID == site && s.Status != broker.JobPending {
				state = s.Status
				return nil
			}
		}
		return errors.New("not leased yet")
	})
	return state
}

// researcherSeesFailure waits for the researcher to see query id failed,
// generically: the same words whatever happened, no failure code, no
// site's state, and no table.
func researcherSeesFailure(t *testing.T, b *e2e.LonelyBroker, id int64) {
	t.Helper()
	ctx := context.Background()
	e2e.Eventually(t, time.Minute, "researcher seeing the failure", func() error {
		v, err := b.As("alice").Query(ctx, id)
		if err != nil {
			return err
		}
		if v.Status != broker.StatusFailed || v.FailureCode != "" || v.FailureDetail != "" {
			return fmt.Errorf("status %s, failure %q: %q", v.Status, v.FailureCode, v.FailureDetail)
		}
		for _, s := range v.Sites {
			if s.Status != "" || s.Attempts != 0 {
				return fmt.Errorf("the researcher sees site %s %s after %d attempt(s)", s.SiteID, s.Status, s.Attempts)
			}
		}
		if len(v.History) == 0 {
			return errors.New("no history")
		}
		if last := v.History[len(v.History)-1]; last.Comment != broker.FailedMessage {
			return fmt.Errorf("the researcher is told %q", last.Comment)
		}
		return nil
	})
	if _, err := b.As("alice").Result(ctx, id); e2e.APIStatus(err) < 400 || e2e.APIStatus(err) > 499 {
		t.Errorf("result of a failed federated query: %v, want a 4xx refusal", err)
	}
}

// cutOff cuts one site off before its part starts and another once its
// part is running, their agents running on: the query waits for its
// deadline and fails as a whole, generically for the researcher, with no
// table; the site that never started is refunded, the others stay charged.
// Reconnected, the second site's late upload is refused (a 409 the broker
// counts) and changes nothing, and both sites take part in the next query.
// The second site's sandbox is stalled until the cut so that its part is
// surely running then; should a part still be done before the cut (a
// sandbox child other than the stalled one), the query is submitted again.
func cutOff(t *testing.T, b *e2e.LonelyBroker, metrics string, project int64, sites []*fedSite, eps float64, k *books) {
	ctx := context.Background()
	ran, late, early := sites[0], sites[1], sites[2]
	early.ns.Cut(t)
	var q *broker.Query
	for attempt := 1; q == nil; attempt++ {
		resume := late.stall(t)
		sub := approvedRegionQuery(t, b, project, "patients by region, sites cut off", eps)
		cut := partStarted(t, b, sub.ID, late.id) == broker.JobRunning
		if cut {
			late.ns.Cut(t)
		}
		// The part runs and is done now, its upload lost on the cut line.
		resume()
		got := e2e.WaitStatus(t, b.As("bob"), sub.ID, broker.StatusAwaitingOutputCheck)
		if got.FailureCode != broker.FailureFederationDeadline {
			t.Fatalf("failure %q, want %q", got.FailureCode, broker.FailureFederationDeadline)
		}
		// The late site's part was running when we looked; it may still
		// have reported in the instant before the cut.
		abandoned := late.id + " failed after 1 attempt(s) (abandoned)"
		lateState := abandoned
		if !cut || !strings.Contains(got.FailureDetail, abandoned) {
			cut, lateState = false, late.id+" reported after 1 attempt(s)"
		}
		for _, want := range []string{ran.id + " reported after 1 attempt(s)", lateState, early.id + " failed after 0 attempt(s), refunded"} {
			if !strings.Contains(got.FailureDetail, want) {
				t.Errorf("notice %q does not say %q", got.FailureDetail, want)
			}
		}
		noTable(t, b, sub.ID)
		// Charged where the part started, refunded where it never did.
		k.approved(eps, ran.id, late.id)
		k.check(t, b, project)
		switch {
		case cut:
			t.Logf("%s cut off before its part started, %s once its part was running (query %d, attempt %d)", early.id, late.id, sub.ID, attempt)
			q = got
		case attempt == 3:
			t.Fatalf("%s's part finished before the site could be cut off, three times", late.id)
		default:
			reconnect(t, b, late)() // in case it was cut too late
		}
	}

	before := refusedUploads(t, metrics)
	waitPolling := reconnect(t, b, late, early)
	// The late site's upload, retried since its part finished, gets
	// through now and is refused: its lease ended with the query.
	e2e.Eventually(t, 2*time.Minute, late.id+"'s late upload refused", func() error {
		if n := refusedUploads(t, metrics); n <= before {
			return fmt.Errorf("%g uploads refused, as before the reconnection", n)
		}
		return nil
	})
	t.Logf("%s reconnected: its late upload was refused", late.id)
	after, err := b.As("bob").Query(ctx, q.ID)
	if err != nil {
		t.Fatal(err)
	}
	if after.Status != broker.StatusAwaitingOutputCheck || after.FailureDetail != q.FailureDetail {
		t.Errorf("after the late upload: %s, %q; want it as it was: %s, %q", after.Status, after.FailureDetail, q.Status, q.FailureDetail)
	}
	noTable(t, b, q.ID)
	k.check(t, b, project)
	if _, err := b.As("carol").ReleaseQuery(ctx, q.ID, "tell the researcher"); err != nil {
		t.Fatal(err)
	}
	researcherSeesFailure(t, b, q.ID)

	// Both agents ran on through it, and poll again.
	for _, s := range []*fedSite{late, early} {
		select {
		case err := <-s.agent.Done():
			t.Fatalf("%s's agent exited: %v", s.id, err)
		default:
		}
	}
	waitPolling()
	sub := approvedRegionQuery(t, b, project, "patients by region, sites back", eps)
	if got := e2e.WaitStatus(t, b.As("bob"), sub.ID, broker.StatusAwaitingOutputCheck); got.FailureCode != "" {
		t.Fatalf("with every site back: failure %q: %s", got.FailureCode, got.FailureDetail)
	}
	k.approved(eps, "fed-1", "fed-2", "fed-3")
	k.check(t, b, project)
}

// reconnect reconnects sites; the function it returns waits until each
// has polled the broker since (a poll sent before the cut may be lost,
// and the agent waits for it up to its HTTP client's timeout).
func reconnect(t *testing.T, b *e2e.LonelyBroker, sites ...*fedSite) (waitPolling func()) {
	t.Helper()
	seen := lastSeen(t, b)
	for _, s := range sites {
		s.ns.Reconnect(t)
	}
	return func() {
		t.Helper()
		e2e.Eventually(t, 2*time.Minute, "the reconnected sites polling", func() error {
			now := lastSeen(t, b)
			for _, s := range sites {
				if !now[s.id].After(seen[s.id]) {
					return fmt.Errorf("%s last seen %s", s.id, now[s.id])
				}
			}
			return nil
		})
	}
}

// noTable checks the output of query id is a failure notice for the three
// sites, with no table.
func noTable(t *testing.T, b *e2e.LonelyBroker, id int64) {
	t.Helper()
	o, err := b.As("carol").Output(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	if o.Result != nil || o.Failure == nil || len(o.Sites) != 3 {
		t.Fatalf("output: result %v, failure %v, %d sites; want a failure notice with 3 sites and no table", o.Result != nil, o.Failure, len(o.Sites))
	}
}

// lastSeen is when each site's agent last polled, by the broker's clock.
func lastSeen(t *testing.T, b *e2e.LonelyBroker) map[string]time.Time {
	t.Helper()
	list, err := b.As("dave").Sites(context.Background(), api.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]time.Time{}
	for _, s := range list.Items {
		seen[s.ID] = s.LastSeen
	}
	return seen
}

// refusedUploads is how many job uploads (complete) the broker has refused
// with 409, from its metrics.
func refusedUploads(t *testing.T, metrics string) float64 {
	t.Helper()
	resp, err := http.Get(metrics)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	const series = `tre_http_requests_total{method="POST",route="/api/v1/agent/jobs/:id/complete",status="409"} `
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, series); ok {
			n, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("metric %q: %v", line, err)
			}
			return n
		}
	}
	return 0
}
