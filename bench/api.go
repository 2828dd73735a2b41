package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/nhs-tre/tre/api"
	"github.com/nhs-tre/tre/broker"
	"github.com/nhs-tre/tre/queries"
	"github.com/nhs-tre/tre/synth"
)

// apiResult is one load phase against one store.
type apiResult struct {
	Store    string
	Op       string // "submit" or "read"
	Sent     int
	Errors   int
	FirstErr string
	Elapsed  time.Duration
	Lat      sample
	Capped   bool // the time cap ended the phase before every request was sent
	// CPU is the CPU time the whole process (broker and load generator)
	// used during the phase.
	CPU time.Duration
	// DBCPU is the CPU time this machine's PostgreSQL server processes
	// used during the phase (0 when none runs here).
	DBCPU time.Duration
	// Groups and Grouped count the shared commits of the phase and the
	// writes they held (stores with group commit only).
	Groups, Grouped int64
}

// cpuPerRequest is the process CPU time per successful request, client
// side included, so an upper bound on the broker's own cost.
func (r apiResult) cpuPerRequest() time.Duration {
	if r.Lat.n() == 0 {
		return 0
	}
	return r.CPU / time.Duration(r.Lat.n())
}

func (r apiResult) perSecond() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Lat.n()) / r.Elapsed.Seconds()
}

// runAPIOnly is `tre bench --api-only`: the broker API phases alone, with
// the catalog of --catalog (or of --data), for measuring the broker without
// the minute of DuckDB phases before them.
func (m *harness) runAPIOnly(ctx context.Context, dir string, rep *benchReport) error {
	catPath := m.Catalog
	if catPath == "" {
		catPath = synth.CatalogPath(m.Data)
	}
	cat, err := queries.LoadCatalog(catPath)
	if err != nil {
		return err
	}
	p := newBenchProgress(m.Stderr, m.Terminal, 2*len(m.apiStores()))
	defer p.finish()
	if err := m.measureAPIs(ctx, p, dir, cat, rep); err != nil {
		return err
	}
	p.finish()
	rep.Machine.LoadEnd = loadAverage()

	var b strings.Builder
	fmt.Fprintf(&b, "## tre bench --api-only: %s\n\n", rep.When.Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(&b, "- command: `%s`\n", rep.Command)
	fmt.Fprintf(&b, "- machine: %d CPUs (%s), %s RAM, Linux %s, %s\n", rep.Machine.CPUs, rep.Machine.CPU, rep.Machine.Memory, rep.Machine.Kernel, rep.Machine.Go)
	fmt.Fprintf(&b, "- load average (1/5/15 min) at start %s, at end %s: other processes on the machine inflate every timing\n\n", rep.Machine.LoadStart, rep.Machine.LoadEnd)
	rep.apiMarkdown(&b)
	if _, err := io.WriteString(m.Stdout, b.String()); err != nil {
		return err
	}
	if m.Out != "" {
		return os.WriteFile(m.Out, []byte(b.String()), 0o644)
	}
	return nil
}

// apiMarkdown renders the report's broker API section.
func (r *benchReport) apiMarkdown(b *strings.Builder) {
	w := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	w("### 4. Broker API\n\n")
	projects := "all in one shared project"
	if r.PerClient {
		projects = "each in its own project"
	}
	w("A real broker (`tre serve --dev` wiring) on loopback in this process, driven by an in-process load generator with %d concurrent clients (one researcher each, %s), a fixed number of requests and a time cap. ", r.Clients, projects)
	w("Submissions cycle through the typical queries (parsed, validated, compiled, risk-flagged and stored, with the audit append); reads fetch a submitted query with its history.\n\n")
	if slices.ContainsFunc(r.API, func(a apiResult) bool { return strings.Contains(a.Store, "×") }) {
		w("`postgres ×N` is N such brokers on one PostgreSQL database (their own store pools, caches and HTTP servers; one Go runtime), client i on broker i mod N, as behind a balancer.\n\n")
	}
	w("CPU/request is the whole process's CPU time (broker and load generator) per request; req/s at %d idle CPUs = %d ÷ CPU/request, the throughput the machine's cores could sustain if nothing else ran.\n\n", r.Machine.CPUs, r.Machine.CPUs)
	w("| store | operation | requests ok | errors | req/s | p50 | p99 | max | CPU/request | req/s at %d idle CPUs |\n|---|---|---|---|---|---|---|---|---|---|\n", r.Machine.CPUs)
	for _, a := range r.API {
		capped := ""
		if a.Capped {
			capped = " (time cap)"
		}
		w("| %s | %s | %d%s | %d | %.0f | %s | %s | %s | %s | %s |\n", a.Store, a.Op, a.Lat.n(), capped, a.Errors, a.perSecond(), fmtDur(a.Lat.quantile(0.5)), fmtDur(a.Lat.quantile(0.99)), fmtDur(a.Lat.max()),
			fmtDur(a.cpuPerRequest()), idleRate(a.cpuPerRequest(), r.Machine.CPUs))
	}
	for _, a := range r.API {
		if a.Groups > 0 {
			w("\n%s %s: %d writes in %d shared commits (%.2f per commit; group commit).\n", a.Store, a.Op, a.Grouped, a.Groups, float64(a.Grouped)/float64(a.Groups))
		}
	}
	for _, a := range r.API {
		if strings.HasPrefix(a.Store, "postgres") && a.DBCPU > 0 && a.Lat.n() > 0 {
			w("\n%s %s: the PostgreSQL server's processes on this machine used %s of CPU (%s a request) while this process (brokers and load generator) used %s.\n",
				a.Store, a.Op, fmtDur(a.DBCPU), fmtDur(a.DBCPU/time.Duration(a.Lat.n())), fmtDur(a.CPU))
		}
	}
	for _, a := range r.API {
		if a.FirstErr != "" {
			w("\nFirst %s %s error: %s\n", a.Store, a.Op, a.FirstErr)
		}
	}
	w("\n")
}

// Broker is a running broker for the API phases, started by
// Config.StartBroker.
type Broker interface {
	// URL is the broker's base URL.
	URL() string
	// Token mints a development token for subject with role (an agent's
	// names its site).
	Token(subject string, role broker.Role, site string) (string, error)
	// GroupCommits counts the store's shared commits and the writes they
	// held so far; ok is false for a store without group commit.
	GroupCommits() (groups, writes int64, ok bool)
	Close() error
}

// measureAPI starts a real broker (Config.StartBroker, as `tre serve --dev` does)
// on loopback with the given store and drives it with a bounded load
// generator: submissions of the typical queries (each parsed, validated,
// compiled and flagged by the broker) from several researchers, then reads
// of the submitted queries. One function (123 lines): the broker it starts
// and the phases it measures share their setup and teardown.
func (m *harness) measureAPI(ctx context.Context, p *benchProgress, store apiStore, dir string, cat *queries.Catalog) ([]apiResult, error) {
	p.stage("broker API (" + store.String() + ")")
	brokers, stop, err := m.startBrokers(ctx, store, dir)
	if err != nil {
		return nil, err
	}
	defer stop()
	b := brokers[0]

	const site = "bench-site"
	mint := func(sub string, role broker.Role) (string, error) {
		if role == broker.RoleAgent {
			return b.Token(sub, role, site)
		}
		return b.Token(sub, role, "")
	}
	transport := &http.Transport{MaxIdleConns: 2 * m.Clients, MaxIdleConnsPerHost: 2 * m.Clients, IdleConnTimeout: time.Minute}
	defer transport.CloseIdleConnections()
	httpClient := &http.Client{Transport: transport, Timeout: time.Minute}
	client := func(tok string) *api.Client {
		return &api.Client{BaseURL: b.URL(), Token: tok, HTTPClient: httpClient}
	}

	siteTok, err := mint("bench-site", broker.RoleAgent)
	if err != nil {
		return nil, err
	}
	adminTok, err := mint("bench-admin", broker.RoleAdmin)
	if err != nil {
		return nil, err
	}
	if _, err := client(adminTok).CreateSite(ctx, api.SiteRequest{ID: site, Name: "Benchmark site", Organisation: "tre bench"}); err != nil {
		return nil, fmt.Errorf("register site: %w", err)
	}
	if err := client(siteTok).PublishCatalog(ctx, site, cat); err != nil {
		return nil, fmt.Errorf("publish catalog: %w", err)
	}
	researchers := make([]*api.Client, m.Clients)
	members := make([]string, m.Clients)
	for i := range researchers {
		members[i] = fmt.Sprintf("bench-researcher-%d", i+1)
		tok, err := mint(members[i], broker.RoleResearcher)
		if err != nil {
			return nil, err
		}
		// Client i talks to replica i mod N, as behind a balancer.
		researchers[i] = &api.Client{BaseURL: brokers[i%len(brokers)].URL(), Token: tok, HTTPClient: httpClient}
	}
	// One project all clients share, or one per client (separate teams).
	newProject := func(members []string) (int64, error) {
		p, err := client(adminTok).CreateProject(ctx, api.ProjectRequest{
			Title: "Benchmark", Organisation: "tre bench", Purpose: "Measuring broker throughput",
			LawfulBasis: "Art. 6(1)(e)", Members: members, Datasets: []string{cat.Dataset},
			EpsilonBudget: 100, DeltaBudget: 1e-3, ExpiresAt: time.Now().AddDate(0, 1, 0),
		})
		if err != nil {
			return 0, fmt.Errorf("create project: %w", err)
		}
		return p.ID, nil
	}
	project := map[*api.Client]int64{}
	if m.PerClient {
		for i, c := range researchers {
			if project[c], err = newProject(members[i : i+1]); err != nil {
				return nil, err
			}
		}
	} else {
		shared, err := newProject(members)
		if err != nil {
			return nil, err
		}
		for _, c := range researchers {
			project[c] = shared
		}
	}

	groups0, writes0, grouped := b.GroupCommits()
	// Each client reads back its own submissions: with a project per
	// client, another client's are not its to see.
	var idsMu sync.Mutex
	ids := map[*api.Client][]int64{}
	submit := m.load(ctx, store.String(), "submit", m.Submissions, researchers, func(ctx context.Context, c *api.Client, i int) error {
		tq := queries.TypicalQueries[i%len(queries.TypicalQueries)]
		q, err := c.SubmitQuery(ctx, api.QueryRequest{ProjectID: project[c], SQL: tq.SQL, Purpose: "benchmark: " + tq.Name})
		if err != nil {
			return err
		}
		idsMu.Lock()
		ids[c] = append(ids[c], q.ID)
		idsMu.Unlock()
		return nil
	})
	if grouped {
		groups1, writes1, _ := b.GroupCommits()
		submit.Groups, submit.Grouped = groups1-groups0, writes1-writes0
	}
	p.step()
	for _, c := range researchers {
		if len(ids[c]) == 0 {
			return nil, fmt.Errorf("a client had no submission succeed: %s", submit.FirstErr)
		}
	}
	read := m.load(ctx, store.String(), "read", m.Reads, researchers, func(ctx context.Context, c *api.Client, i int) error {
		own := ids[c]
		return readQuery(ctx, c, own[i%len(own)])
	})
	p.step()
	return []apiResult{submit, read}, nil
}

// apiStore is a broker store the API phases measure, and how many broker
// replicas share it.
type apiStore struct {
	name     string // "sqlite" or "postgres"
	replicas int
}

func (s apiStore) String() string {
	if s.replicas > 1 {
		return fmt.Sprintf("%s ×%d", s.name, s.replicas)
	}
	return s.name
}

// apiStores are the broker stores the API phases measure: SQLite, and
// PostgreSQL with --postgres (and again with --replicas brokers on it).
func (m *harness) apiStores() []apiStore {
	stores := []apiStore{{"sqlite", 1}}
	if m.Postgres != "" {
		stores = append(stores, apiStore{"postgres", 1})
		if m.Replicas > 1 {
			stores = append(stores, apiStore{"postgres", m.Replicas})
		}
	}
	return stores
}

// startBrokers starts store.replicas brokers (Config.StartBroker, as `tre
// serve --dev` does) on loopback over one fresh store: SQLite in dir, or a
// new PostgreSQL schema. Replicas share the dev signing key's directory, as
// docs/operations.md says. stop closes them and drops the schema.
func (m *harness) startBrokers(ctx context.Context, store apiStore, dir string) (brokers []Broker, stop func(), err error) {
	brokerDir := filepath.Join(dir, "broker-"+store.name+fmt.Sprint(store.replicas))
	var undo []func()
	stop = func() {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
	}
	defer func() {
		if err != nil {
			stop()
		}
	}()
	var databaseURL string
	if store.name == "postgres" {
		schema := "tre_bench_broker_" + randomSuffix()
		conn, err := pgx.Connect(ctx, m.Postgres)
		if err != nil {
			return nil, nil, fmt.Errorf("connect: %w", err)
		}
		undo = append(undo, func() {
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
			defer cancel()
			_, _ = conn.Exec(dctx, "DROP SCHEMA IF EXISTS "+schema+" CASCADE")
			conn.Close(dctx)
		})
		if _, err := conn.Exec(ctx, "CREATE SCHEMA "+schema); err != nil {
			return nil, nil, err
		}
		databaseURL = withSearchPath(m.Postgres, schema)
	}
	for range store.replicas {
		b, err := m.StartBroker(ctx, brokerDir, databaseURL)
		if err != nil {
			return nil, nil, err
		}
		brokers = append(brokers, b)
		undo = append(undo, func() { b.Close() })
	}
	return brokers, stop, nil
}

// measureAPIs runs the API phases on every store into rep.API.
func (m *harness) measureAPIs(ctx context.Context, p *benchProgress, dir string, cat *queries.Catalog, rep *benchReport) error {
	for _, store := range m.apiStores() {
		res, err := m.measureAPI(ctx, p, store, dir, cat)
		if err != nil {
			return fmt.Errorf("broker API (%s): %w", store, err)
		}
		rep.API = append(rep.API, res...)
	}
	return nil
}

// readQuery is the load generator's read: GET /api/v1/queries/{id}
// (api.Client.QueryRaw), checked for a successful answer whose JSON object
// starts with the asked-for id, without decoding the ~10 kB document into
// a broker.Query. The generator shares the machine's cores with the
// broker: decoding was a quarter of the CPU a read cost (pprof), and even
// a two-field json.Unmarshal scans the whole document.
func readQuery(ctx context.Context, c *api.Client, id int64) error {
	body, err := c.QueryRaw(ctx, id)
	if err != nil {
		return err
	}
	if want := fmt.Sprintf(`{"id":%d,`, id); !strings.HasPrefix(string(body), want) {
		return fmt.Errorf("GET query %d: the answer does not start with %s", id, want)
	}
	return nil
}

// load sends n requests from len(clients) goroutines, each taking the next
// request number until n are sent or the time cap passes, and records the
// latency of each successful one.
func (m *harness) load(ctx context.Context, store, op string, n int, clients []*api.Client, do func(context.Context, *api.Client, int) error) apiResult {
	res := apiResult{Store: store, Op: op}
	ctx, cancel := context.WithTimeout(ctx, m.LoadCap)
	defer cancel()
	var next atomic.Int64
	var mu sync.Mutex
	var wg sync.WaitGroup
	start, cpu, dbCPU := time.Now(), cpuTime(), postgresCPU()
	for _, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var lat []time.Duration
			var errs int
			var first string
			for ctx.Err() == nil {
				i := int(next.Add(1)) - 1
				if i >= n {
					break
				}
				t := time.Now()
				err := do(ctx, c, i)
				d := time.Since(t)
				switch {
				case err == nil:
					lat = append(lat, d)
				case ctx.Err() != nil && errors.Is(err, context.DeadlineExceeded):
					// cut off by the time cap: not an error of the broker
				default:
					errs++
					if first == "" {
						first = err.Error()
					}
				}
			}
			mu.Lock()
			res.Lat.d = append(res.Lat.d, lat...)
			res.Errors += errs
			if res.FirstErr == "" {
				res.FirstErr = first
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	res.Elapsed, res.CPU, res.DBCPU = time.Since(start), cpuTime()-cpu, postgresCPU()-dbCPU
	res.Sent = min(int(next.Load()), n)
	res.Capped = ctx.Err() != nil && res.Lat.n()+res.Errors < n
	return res
}

// withSearchPath adds search_path to a PostgreSQL URL so the broker's
// tables go into the benchmark's own schema.
func withSearchPath(url, schema string) string {
	sep := "?"
	if strings.Contains(url, "?") {
		sep = "&"
	}
	return url + sep + "search_path=" + schema
}
