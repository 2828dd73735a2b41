package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/nhs-tre/tre/api"
	"github.com/nhs-tre/tre/broker"
	"github.com/nhs-tre/tre/dp"
	"github.com/nhs-tre/tre/job"
	"github.com/nhs-tre/tre/queries"
	"github.com/nhs-tre/tre/sandbox"
	"github.com/nhs-tre/tre/site"
)

// `tre bench --federated N` (issue 21): the typical queries over one
// dataset that N sites hold, each site with its own sandbox (its own
// Runner, scratch directory and release snapshot, over the same data
// file), against a real broker (`tre serve --dev` wiring, SQLite).
//
// Per query it measures each site's own single-site protected run
// (Runner.Run, a fresh sandbox child per run, as the Cold column of the
// full report), then the federated query through the broker: submitted,
// approved, each site's part leased, run in that site's sandbox
// (Runner.RunPartial) and uploaded through the agent's own broker client
// (site.Client over HTTP), the last upload combining the parts
// (dp.Combine) and storing the combined table in its transaction. The
// agent's poll wait is left out (a lease is taken at once).
//
// The sites run one after another, as each would on its own machine: on
// this machine's cores three concurrent children would measure the
// machine, not the broker. The federated time is then that of sites
// running side by side on their own machines: the slowest site's lease
// and run, plus the last upload (the broker's combine and store). The
// same query is also run with the sites concurrent on this machine
// (approval to the last upload, wall time) for comparison.

// fedResult is one typical query measured federated.
type fedResult struct {
	Name string
	// Refused is the broker's reason when the query cannot be federated.
	Refused string
	// Own is each site's own single-site protected run (Runner.Run).
	Own []sample
	// Lease and Run are each site's lease round trip and part
	// (Runner.RunPartial), by site; Upload the upload of each part that
	// did not complete the query, Last the upload that did (the
	// broker's combine and store, HTTP included).
	Lease, Run []sample
	Upload     sample
	Last       sample
	// Federated is, per repetition, max over sites of lease + run, plus
	// the last upload.
	Federated sample
	// Combine is dp.Combine of the same parts, timed in this process.
	Combine sample
	// Concurrent is approval to the last upload with every site's part
	// run at once on this machine.
	Concurrent sample
	// Rows is the combined table's rows (before suppression).
	Rows int
}

// slowestOwn is the slowest site's median own run time.
func (r fedResult) slowestOwn() time.Duration {
	var d time.Duration
	for _, s := range r.Own {
		d = max(d, s.median())
	}
	return d
}

// broker is the median broker work on the federated path: the slowest
// lease round trip and the last upload.
func (r fedResult) brokerWork() time.Duration {
	var l time.Duration
	for _, s := range r.Lease {
		l = max(l, s.median())
	}
	return l + r.Last.median()
}

// Issue 21's target: federated ≤ 1.2 × the slowest site's own run time
// plus at most 100 ms of broker work.
const (
	fedTargetRatio  = 1.2
	fedTargetBroker = 100 * time.Millisecond
)

// meets judges r against issue 21's target.
func (r fedResult) meets() bool {
	own := r.slowestOwn()
	return r.Federated.median() <= time.Duration(fedTargetRatio*float64(own))+fedTargetBroker && r.brokerWork() <= fedTargetBroker
}

// fedSite is one site of the federated run.
type fedSite struct {
	id     string
	runner *sandbox.Runner
	client *site.Client
}

// fedBench is the broker side of the federated run.
type fedBench struct {
	sites      []*fedSite
	researcher *api.Client
	reviewer   *api.Client
	admin      *api.Client
	project    int64
	parser     *queries.Parser
	cat        *queries.Catalog
}

// runFederated is `tre bench --federated N`.
func (m *harness) runFederated(ctx context.Context, dir string, rep *benchReport) error {
	data, cat, err := m.dataset(ctx, dir, rep, func() {})
	if err != nil {
		return err
	}
	raw, err := Open(ctx, data, Options{Threads: 1})
	if err != nil {
		return err
	}
	rep.DataRows, err = raw.Tables(ctx)
	raw.Close()
	if err != nil {
		return fmt.Errorf("list tables: %w", err)
	}
	rep.Patients = patientsOf(rep)

	p := newBenchProgress(m.Stderr, m.Terminal, len(queries.TypicalQueries)*m.Federated*3*(m.Warmup+m.Reps)+m.Federated)
	defer p.finish()
	brokers, stop, err := m.startBrokers(ctx, apiStore{"sqlite", 1}, dir)
	if err != nil {
		return err
	}
	defer stop()
	fb, err := m.federation(ctx, brokers[0], data, cat, dir, p, rep)
	if fb != nil {
		defer fb.close()
	}
	if err != nil {
		return err
	}
	for _, tq := range queries.TypicalQueries {
		r, err := m.measureFederatedQuery(ctx, p, fb, tq.Name, tq.SQL)
		if err != nil {
			return fmt.Errorf("%s: %w", tq.Name, err)
		}
		rep.Federated = append(rep.Federated, r)
	}
	p.finish()
	rep.Machine.LoadEnd = loadAverage()
	text := rep.federatedMarkdown(m.Federated)
	if _, err := io.WriteString(m.Stdout, text); err != nil {
		return err
	}
	if m.Out != "" {
		return os.WriteFile(m.Out, []byte(text), 0o644)
	}
	return nil
}

// federation registers m.Federated sites at b, each with its own sandbox
// over data (release snapshot built), publishing cat, and a project whose
// researcher and reviewer drive the queries.
func (m *harness) federation(ctx context.Context, b Broker, data string, cat *queries.Catalog, dir string, p *benchProgress, rep *benchReport) (*fedBench, error) {
	transport := &http.Transport{MaxIdleConns: 16, MaxIdleConnsPerHost: 16, IdleConnTimeout: time.Minute}
	hc := &http.Client{Transport: transport, Timeout: 10 * time.Minute}
	client := func(sub string, role broker.Role, siteID string) (*api.Client, error) {
		tok, err := b.Token(sub, role, siteID)
		if err != nil {
			return nil, err
		}
		return &api.Client{BaseURL: b.URL(), Token: tok, HTTPClient: hc}, nil
	}
	fb := &fedBench{cat: cat}
	var err error
	if fb.admin, err = client("bench-admin", broker.RoleAdmin, ""); err != nil {
		return fb, err
	}
	if fb.researcher, err = client("bench-researcher", broker.RoleResearcher, ""); err != nil {
		return fb, err
	}
	if fb.reviewer, err = client("bench-reviewer", broker.RoleReviewer, ""); err != nil {
		return fb, err
	}
	if fb.parser, err = queries.NewParser(); err != nil {
		return fb, err
	}
	for i := range m.Federated {
		id := fmt.Sprintf("bench-site-%d", i+1)
		p.stage(id + ": release snapshot")
		scfg := sandbox.DefaultConfig()
		scfg.DataPath = data
		scfg.Catalog = cat
		scfg.ScratchDir = filepath.Join(dir, id, "scratch")
		scfg.AllowWeak = m.AllowWeak
		m.applyLimits(&scfg)
		scfg.Logger = slog.New(slog.NewTextHandler(m.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
		r, err := sandbox.NewRunner(scfg)
		if err != nil {
			return fb, err
		}
		s := &fedSite{id: id, runner: r}
		fb.sites = append(fb.sites, s)
		rep.Threads, rep.MemLimit = scfg.Threads, scfg.MemoryLimit
		start := time.Now()
		if err := r.Prepare(ctx); err != nil {
			return fb, fmt.Errorf("%s: release snapshot: %w", id, err)
		}
		rep.Snapshot = max(rep.Snapshot, time.Since(start))
		if _, err := fb.admin.CreateSite(ctx, api.SiteRequest{ID: id, Name: "Benchmark site " + id, Organisation: "tre bench"}); err != nil {
			return fb, fmt.Errorf("register %s: %w", id, err)
		}
		agent, err := client("agent-"+id, broker.RoleAgent, id)
		if err != nil {
			return fb, err
		}
		s.client = &site.Client{API: agent}
		if err := s.client.PublishCatalog(ctx, id, cat); err != nil {
			return fb, fmt.Errorf("%s publishes: %w", id, err)
		}
		p.step()
	}
	pr, err := fb.admin.CreateProject(ctx, api.ProjectRequest{
		Title: "Federated benchmark", Organisation: "tre bench", Purpose: "Measuring federated queries",
		LawfulBasis: "Art. 6(1)(e)", Members: []string{"bench-researcher"}, Datasets: []string{cat.Dataset},
		EpsilonBudget: 1e6, DeltaBudget: 0.5, ExpiresAt: time.Now().AddDate(0, 1, 0),
	})
	if err != nil {
		return fb, fmt.Errorf("create project: %w", err)
	}
	fb.project = pr.ID
	return fb, nil
}

func (fb *fedBench) close() {
	for _, s := range fb.sites {
		s.runner.Close()
	}
	if fb.parser != nil {
		fb.parser.Close()
	}
}

// approved submits sql as the researcher and has it approved: its id, or
// the broker's reason when it refuses to federate it.
func (fb *fedBench) approved(ctx context.Context, name, sql string) (int64, string, error) {
	q, err := fb.researcher.SubmitQuery(ctx, api.QueryRequest{ProjectID: fb.project, SQL: sql, Purpose: "benchmark: " + name})
	var ae *api.Error
	if errors.As(err, &ae) && ae.Code == broker.EREFUSED {
		return 0, ae.Message, nil
	}
	if err != nil {
		return 0, "", fmt.Errorf("submit: %w", err)
	}
	if q.Federation == nil || q.Federation.Sites != len(fb.sites) {
		return 0, "", fmt.Errorf("query %d is not federated over %d sites: %+v", q.ID, len(fb.sites), q.Federation)
	}
	if _, err := fb.reviewer.ApproveQuery(ctx, q.ID, "benchmark"); err != nil {
		return 0, "", fmt.Errorf("approve: %w", err)
	}
	return q.ID, "", nil
}

// part is one site's part of query id: leased, run in the site's sandbox
// and uploaded, each step timed.
type part struct {
	lease, run, upload time.Duration
	partial            *dp.Partial
	job                job.Job
}

// runPart leases s's part of query id, runs it and uploads it.
func (s *fedSite) runPart(ctx context.Context, id int64) (*part, error) {
	t := time.Now()
	j, token, err := s.client.Lease(ctx, s.id)
	if err != nil {
		return nil, fmt.Errorf("%s: lease: %w", s.id, err)
	}
	if j == nil || j.QueryID != id || !j.Partial {
		return nil, fmt.Errorf("%s: leased %+v, want query %d's part", s.id, j, id)
	}
	pt := &part{lease: time.Since(t), job: *j}
	t = time.Now()
	pt.partial, err = s.runner.RunPartial(ctx, *j)
	pt.run = time.Since(t)
	if err != nil {
		return nil, fmt.Errorf("%s: sandbox: %s: %s", s.id, job.Code(err), job.Message(err))
	}
	t = time.Now()
	if err := s.client.CompletePartial(ctx, id, token, pt.partial); err != nil {
		return nil, fmt.Errorf("%s: upload: %w", s.id, err)
	}
	pt.upload = time.Since(t)
	return pt, nil
}

// combined checks that query id was combined (not failed) and awaits the
// output check.
func (fb *fedBench) combined(ctx context.Context, id int64) error {
	q, err := fb.admin.Query(ctx, id)
	if err != nil {
		return err
	}
	if q.Status != broker.StatusAwaitingOutputCheck || q.FailureCode != "" {
		return fmt.Errorf("query %d is %s (failure %q) after every part, want awaiting_output_check with the combined table", id, q.Status, q.FailureCode)
	}
	return nil
}

// measureFederatedQuery measures one typical query: each site's own run,
// the federated query with the sites one after another, and with the
// sites concurrent.
func (m *harness) measureFederatedQuery(ctx context.Context, p *benchProgress, fb *fedBench, name, sql string) (fedResult, error) {
	r := fedResult{Name: name, Own: make([]sample, len(fb.sites)), Lease: make([]sample, len(fb.sites)), Run: make([]sample, len(fb.sites))}
	id, refused, err := fb.approved(ctx, name, sql)
	if err != nil || refused != "" {
		r.Refused = refused
		p.steps(len(fb.sites) * 3 * (m.Warmup + m.Reps))
		return r, err
	}
	own := job.Job{SQL: sql, SQLHash: queries.SQLHash(sql)}
	for i, s := range fb.sites {
		p.stage(name + ": " + s.id + " alone")
		for k := range m.Warmup + m.Reps {
			t := time.Now()
			_, err := s.runner.Run(ctx, own)
			d := time.Since(t)
			if err != nil {
				return r, fmt.Errorf("%s: own run: %s: %s", s.id, job.Code(err), job.Message(err))
			}
			if k >= m.Warmup {
				r.Own[i].add(d)
			}
			p.step()
		}
	}
	p.stage(name + ": federated")
	for k := range m.Warmup + m.Reps {
		if k > 0 {
			if id, _, err = fb.approved(ctx, name, sql); err != nil {
				return r, err
			}
		}
		var crit time.Duration
		parts := make([]*dp.Partial, len(fb.sites))
		var last time.Duration
		var plan *queries.Plan
		for i, s := range fb.sites {
			pt, err := s.runPart(ctx, id)
			if err != nil {
				return r, err
			}
			parts[i] = pt.partial
			crit = max(crit, pt.lease+pt.run)
			if i == len(fb.sites)-1 {
				last = pt.upload
				plan, err = fb.parser.Compile(ctx, fb.cat, sql, queries.Options{Epsilon: pt.job.Epsilon, Federated: true})
				if err != nil {
					return r, fmt.Errorf("compile: %w", err)
				}
			}
			if k >= m.Warmup {
				r.Lease[i].add(pt.lease)
				r.Run[i].add(pt.run)
				if i < len(fb.sites)-1 {
					r.Upload.add(pt.upload)
				}
			}
			p.step()
		}
		if err := fb.combined(ctx, id); err != nil {
			return r, err
		}
		t := time.Now()
		res, err := dp.Combine(plan.Spec, parts)
		c := time.Since(t)
		if err != nil {
			return r, fmt.Errorf("dp.Combine in the bench: %w", err)
		}
		r.Rows = len(res.Rows)
		if k >= m.Warmup {
			r.Last.add(last)
			r.Federated.add(crit + last)
			r.Combine.add(c)
		}
	}
	p.stage(name + ": federated, sites concurrent")
	for k := range m.Warmup + m.Reps {
		if id, _, err = fb.approved(ctx, name, sql); err != nil {
			return r, err
		}
		t := time.Now()
		errs := make([]error, len(fb.sites))
		var wg sync.WaitGroup
		for i, s := range fb.sites {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, errs[i] = s.runPart(ctx, id)
			}()
		}
		wg.Wait()
		d := time.Since(t)
		if err := errors.Join(errs...); err != nil {
			return r, err
		}
		if err := fb.combined(ctx, id); err != nil {
			return r, err
		}
		if k >= m.Warmup {
			r.Concurrent.add(d)
		}
		p.steps(len(fb.sites))
	}
	return r, nil
}

// federatedMarkdown renders `tre bench --federated N`'s report.
func (r *benchReport) federatedMarkdown(n int) string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	w("## tre bench --federated %d: %s patients at each site, %s\n\n", n, fmtInt(int64(r.Patients)), r.When.Format("2006-01-02 15:04 MST"))
	w("- command: `%s`\n", r.Command)
	w("- machine: %d CPUs (%s), %s RAM, Linux %s, %s\n", r.Machine.CPUs, r.Machine.CPU, r.Machine.Memory, r.Machine.Kernel, r.Machine.Go)
	w("- load average (1/5/15 min) at start %s, at end %s: other processes on the machine inflate every timing\n", r.Machine.LoadStart, r.Machine.LoadEnd)
	w("- sandbox: DuckDB threads %d, memory limit %s; every site reads the same data file (`%s`) through its own Runner, scratch directory and release snapshot (built in %s at the slowest site)\n", r.Threads, fmtBytes(r.MemLimit), filepath.Base(r.Data), fmtDur(r.Snapshot))
	w("- repetitions: %d measured after %d warm-up; times are medians\n\n", r.Reps, r.Warmup)
	w("### Federated queries over %d sites (issue 21)\n\n", n)
	w("own = each site's single-site protected run of the query (`Runner.Run`, a fresh sandbox child); the slowest site's median is the reference. ")
	w("Federated = the query through a real broker (`tre serve --dev` wiring, SQLite) and %d sandboxes: submitted and approved, then each site leases its part, runs it (`Runner.RunPartial`) and uploads it with the agent's client over HTTP, the last upload combining the parts (`dp.Combine`) and storing the combined table. ", n)
	w("The sites run one after another, as each would on its own machine, and the federated time is the sites side by side: max over sites of (lease + run), plus the last upload; the agents' poll wait is left out. ")
	w("Broker work = the slowest lease round trip + the last upload (HTTP, the approved spec, the partial's check, the transaction with the combine and the stored output); dp.Combine is also timed alone on the same parts. ")
	w("Concurrent = approval to the last upload with the %d sites' parts run at once on this machine's %d CPUs (so competing for them).\n\n", n, r.Machine.CPUs)
	w("| query | slowest own | federated | federated / own | broker work | last upload | dp.Combine | concurrent | concurrent / own | ≤ 1.2× + 100 ms |\n|---|---|---|---|---|---|---|---|---|---|\n")
	var own, fed time.Duration
	met, judged := 0, 0
	var refused []string
	for _, q := range r.Federated {
		if q.Refused != "" {
			_, why, ok := strings.Cut(q.Refused, "cannot be combined across them: ")
			if !ok {
				why = q.Refused
			}
			refused = append(refused, fmt.Sprintf("%s (%s)", q.Name, why))
			continue
		}
		judged++
		verdict := "**no**"
		if q.meets() {
			verdict = "yes"
			met++
		}
		so := q.slowestOwn()
		own += so
		fed += q.Federated.median()
		w("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", q.Name, fmtDur(so), fmtDur(q.Federated.median()), ratioDur(q.Federated.median(), so),
			fmtDur(q.brokerWork()), fmtDur(q.Last.median()), fmtDur(q.Combine.median()), fmtDur(q.Concurrent.median()), ratioDur(q.Concurrent.median(), so), verdict)
	}
	w("| **all (sum of medians)** | %s | %s | %s | | | | | | %d of %d |\n\n", fmtDur(own), fmtDur(fed), ratioDur(fed, own), met, judged)
	if len(refused) > 0 {
		w("Not federated (the broker refuses them over several sites): %s.\n\n", strings.Join(refused, "; "))
	}
	w("Per site (medians): ")
	var parts []string
	for _, q := range r.Federated {
		if q.Refused != "" {
			continue
		}
		var s []string
		for i := range q.Own {
			s = append(s, fmt.Sprintf("site %d own %s, lease %s, part %s", i+1, fmtDur(q.Own[i].median()), fmtDur(q.Lease[i].median()), fmtDur(q.Run[i].median())))
		}
		parts = append(parts, fmt.Sprintf("%s: %s; other uploads %s", q.Name, strings.Join(s, "; "), fmtDur(q.Upload.median())))
	}
	w("%s.\n", strings.Join(parts, ". "))
	return b.String()
}
