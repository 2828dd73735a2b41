package site

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/nhs-tre/tre/dp"
	"github.com/nhs-tre/tre/internal/ctxtime"
	"github.com/nhs-tre/tre/job"
	"github.com/nhs-tre/tre/queries"
)

// fakeBroker is an in-memory Broker: a queue of jobs, scripted failures,
// and a record of outcomes.
type fakeBroker struct {
	mu          sync.Mutex
	queue       []*leasedJob
	leaseErrs   int  // fail this many Lease calls first (outage)
	lostOnBeat  bool // heartbeats report the lease lost
	dupComplete bool // Complete reports the job already completed
	// refuse makes the named call ("publish", "lease", "complete") answer
	// ErrRefused, as the broker does for a token of another site.
	refuse    string
	published int
	leases    int // Lease calls answered
	outcomes  []string
	done      chan struct{}
	want      int
	// codelistErrs fails this many Codelist calls first (outage).
	codelistErrs int
}

// testCodes is the one codelist the fake broker holds, testCodelist.
var testCodes = []job.CodelistCode{{Code: "195967001", Term: "Asthma"}, {Code: "13645005", Term: "COPD"}}

const testCodelist = "test/asthma/1"

func (b *fakeBroker) Codelist(ctx context.Context, name string) ([]job.CodelistCode, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.codelistErrs > 0 {
		b.codelistErrs--
		return nil, errors.New("connection refused")
	}
	if name != testCodelist {
		return nil, fmt.Errorf("%w: codelist %s not found", ErrRefused, name)
	}
	return testCodes, nil
}

func (b *fakeBroker) PublishCatalog(ctx context.Context, site string, cat *queries.Catalog) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.published++
	if b.refuse == "publish" {
		return fmt.Errorf("%w: dataset %q is already published by site %q", ErrRefused, cat.Dataset, "other")
	}
	return nil
}

// leasedJob is a job in the fake broker's queue with its lease token.
type leasedJob struct {
	job.Job
	token string
}

func (b *fakeBroker) Lease(ctx context.Context, site string) (*job.Job, string, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.leases++
	if b.refuse == "lease" {
		return nil, "", fmt.Errorf("%w: site %q is not registered", ErrRefused, site)
	}
	if b.leaseErrs > 0 {
		b.leaseErrs--
		return nil, "", errors.New("connection refused")
	}
	if len(b.queue) == 0 {
		return nil, "", nil
	}
	j := b.queue[0]
	b.queue = b.queue[1:]
	return &j.Job, j.token, nil
}

func (b *fakeBroker) Heartbeat(ctx context.Context, queryID int64, token string) error {
	if b.lostOnBeat {
		return ErrLeaseLost
	}
	return nil
}

func (b *fakeBroker) record(s string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.outcomes = append(b.outcomes, s)
	if len(b.outcomes) == b.want {
		close(b.done)
	}
}

func (b *fakeBroker) Complete(ctx context.Context, queryID int64, token string, r *dp.Result) error {
	b.record(fmt.Sprint("complete q", queryID))
	if b.refuse == "complete" {
		return fmt.Errorf("%w: the result does not match the approved query", ErrRefused)
	}
	if b.dupComplete {
		return ErrLeaseLost
	}
	return nil
}

func (b *fakeBroker) CompletePartial(ctx context.Context, queryID int64, token string, p *dp.Partial) error {
	b.record(fmt.Sprint("complete partial q", queryID, " ", p.SpecHash))
	if b.refuse == "complete" {
		return fmt.Errorf("%w: the partial result does not match the approved query", ErrRefused)
	}
	return nil
}

func (b *fakeBroker) Fail(ctx context.Context, queryID int64, token, code, msg string) error {
	b.record(fmt.Sprint("fail q", queryID, " ", code))
	return nil
}

// fakeRunner answers by SQL: "crash", "slow" (blocks until cancelled) or
// anything else (a result).
type fakeRunner struct{}

func (fakeRunner) Run(ctx context.Context, j job.Job) (*dp.Result, error) {
	if j.Partial {
		return nil, job.Errorf(job.CodeInternal, "Run called for a federated part")
	}
	switch j.SQL {
	case "crash":
		return nil, job.Errorf(job.CodeCrashed, "the sandbox stopped unexpectedly")
	case "slow":
		<-ctx.Done()
		return nil, ctx.Err()
	case "codelist":
		if len(j.Codelists) != 1 || len(j.Codelists[0].Codes) != len(testCodes) {
			return nil, job.Errorf(job.CodeInternal, "the job reached the runner without its codelist's codes")
		}
	}
	return &dp.Result{}, nil
}

// RunPartial answers a federated part: "crash", or a partial result whose
// spec hash says it came from RunPartial.
func (fakeRunner) RunPartial(ctx context.Context, j job.Job) (*dp.Partial, error) {
	if !j.Partial {
		return nil, job.Errorf(job.CodeInternal, "RunPartial called for a job that is not a federated part")
	}
	if j.SQL == "crash" {
		return nil, job.Errorf(job.CodeCrashed, "the sandbox stopped unexpectedly")
	}
	return &dp.Partial{SpecHash: "partial-of-" + j.SQL}, nil
}

// partialJob is a federated part.
func partialJob(id int64, sql string) *leasedJob {
	l := leased(id, sql)
	l.Partial = true
	return l
}

func leased(id int64, sql string) *leasedJob {
	return &leasedJob{Job: job.Job{QueryID: id, SQL: sql, SQLHash: queries.SQLHash(sql), Dataset: "nhs_gp_synthetic"}, token: fmt.Sprint("tok-", id)}
}

// withCodelist is a codelist job naming name with hash.
func withCodelist(id int64, name, hash string) *leasedJob {
	l := leased(id, "codelist")
	l.Codelists = []job.Codelist{{Name: name, Hash: hash}}
	return l
}

func fastSleep(ctx context.Context, d time.Duration) error {
	return ctxtime.Sleep(ctx, time.Millisecond)
}

// mustCatalog is the sandbox tests' catalog (dataset nhs_gp_synthetic).
func mustCatalog(tb testing.TB) *queries.Catalog {
	tb.Helper()
	cat, err := queries.LoadCatalog("../sandbox/testdata/catalog.yaml")
	if err != nil {
		tb.Fatal(err)
	}
	return cat
}

func TestAgent(t *testing.T) {
	bad := leased(9, "SELECT 1")
	bad.SQLHash = queries.SQLHash("SELECT 2")
	tests := []struct {
		name   string
		broker *fakeBroker
		want   []string
	}{
		{"runs jobs after a broker outage", &fakeBroker{leaseErrs: 3, queue: []*leasedJob{leased(1, "ok")}}, []string{"complete q1"}},
		{"sandbox crash fails the job and the next runs", &fakeBroker{queue: []*leasedJob{leased(1, "crash"), leased(2, "ok")}}, []string{"fail q1 crashed", "complete q2"}},
		{"hash mismatch refused before running", &fakeBroker{queue: []*leasedJob{bad, leased(2, "ok")}}, []string{"fail q9 invalid", "complete q2"}},
		{"duplicate completion is harmless", &fakeBroker{dupComplete: true, queue: []*leasedJob{leased(1, "ok"), leased(2, "ok")}}, []string{"complete q1", "complete q2"}},
		{"lost lease drops the job without reporting", &fakeBroker{lostOnBeat: true, queue: []*leasedJob{leased(1, "slow"), leased(2, "ok")}}, []string{"complete q2"}},
		// Not retried until the lease expires: reported as a failed run.
		{"codelists fetched through an outage and checked", &fakeBroker{codelistErrs: 2, queue: []*leasedJob{
			withCodelist(1, testCodelist, job.CodelistHash(testCodes)), withCodelist(2, testCodelist, job.CodelistHash(testCodes))}},
			[]string{"complete q1", "complete q2"}},
		{"a codelist that does not match its hash fails the job", &fakeBroker{queue: []*leasedJob{
			withCodelist(1, testCodelist, job.CodelistHash(testCodes[:1])), leased(2, "ok")}}, []string{"fail q1 invalid", "complete q2"}},
		{"a codelist the broker refuses fails the job", &fakeBroker{queue: []*leasedJob{
			withCodelist(1, "test/missing/1", job.CodelistHash(testCodes)), leased(2, "ok")}}, []string{"fail q1 invalid", "complete q2"}},
		{"a federated part runs as one and uploads its partial result", &fakeBroker{queue: []*leasedJob{partialJob(1, "ok"), leased(2, "ok")}},
			[]string{"complete partial q1 partial-of-ok", "complete q2"}},
		{"a federated part that fails is an ordinary failure", &fakeBroker{queue: []*leasedJob{partialJob(1, "crash")}}, []string{"fail q1 crashed"}},
		{"a partial result the broker refuses is reported as failed", &fakeBroker{refuse: "complete", queue: []*leasedJob{partialJob(1, "ok")}},
			[]string{"complete partial q1 partial-of-ok", "fail q1 " + codeResultRefused}},
		{"a result the broker refuses is reported as failed", &fakeBroker{refuse: "complete", queue: []*leasedJob{leased(1, "ok")}}, []string{"complete q1", "fail q1 " + codeResultRefused}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := tt.broker
			b.done, b.want = make(chan struct{}), len(tt.want)
			a, err := NewAgent(Config{
				SiteID: "site-1", Catalog: mustCatalog(t), Broker: b, Runner: fakeRunner{},
				HeartbeatInterval: time.Millisecond, Sleep: fastSleep,
			})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			errc := make(chan error, 1)
			go func() { errc <- a.Run(ctx) }()
			select {
			case <-b.done:
			case <-time.After(20 * time.Second):
				t.Fatal("agent did not finish the jobs")
			}
			cancel()
			if err := <-errc; err != nil {
				t.Fatalf("Run: %v", err)
			}
			b.mu.Lock()
			defer b.mu.Unlock()
			if diff := cmp.Diff(tt.want, b.outcomes); diff != "" {
				t.Errorf("outcomes (-want +got):\n%s", diff)
			}
			if b.published != 1 {
				t.Errorf("catalog published %d times", b.published)
			}
		})
	}
}

// TestAgentStopsWhenRefused checks that a broker refusing the agent itself
// (a catalog another site owns, a token for another site, an unregistered
// site) stops it with an error naming the refusal, after one call: it must
// not retry a 403 or 409 forever.
func TestAgentStopsWhenRefused(t *testing.T) {
	for _, call := range []string{"publish", "lease"} {
		t.Run(call, func(t *testing.T) {
			b := &fakeBroker{refuse: call}
			a, err := NewAgent(Config{SiteID: "site-1", Catalog: mustCatalog(t), Broker: b, Runner: fakeRunner{}, Sleep: fastSleep, Parallelism: 3})
			if err != nil {
				t.Fatal(err)
			}
			errc := make(chan error, 1)
			go func() { errc <- a.Run(context.Background()) }()
			select {
			case err = <-errc:
			case <-time.After(20 * time.Second):
				t.Fatal("the agent kept retrying a refusal")
			}
			if !errors.Is(err, ErrRefused) {
				t.Fatalf("Run = %v, want ErrRefused", err)
			}
			b.mu.Lock()
			defer b.mu.Unlock()
			if b.published != 1 || b.leases > 3 {
				t.Errorf("after a refusal: %d publishes, %d leases; want 1 and at most one per worker", b.published, b.leases)
			}
		})
	}
}

func TestAgentShutdownAbandonsRunningJob(t *testing.T) {
	b := &fakeBroker{queue: []*leasedJob{leased(1, "slow")}, done: make(chan struct{}), want: 1}
	a, err := NewAgent(Config{SiteID: "s", Catalog: mustCatalog(t), Broker: b, Runner: fakeRunner{}, Sleep: fastSleep, HeartbeatInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- a.Run(ctx) }()
	for {
		b.mu.Lock()
		n := len(b.queue)
		b.mu.Unlock()
		if n == 0 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	cancel()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if len(b.outcomes) != 0 {
		t.Errorf("abandoned job was reported: %v", b.outcomes)
	}
}
