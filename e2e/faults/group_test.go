package faults

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nhs-tre/tre/api"
	"github.com/nhs-tre/tre/broker"
	"github.com/nhs-tre/tre/e2e"
	"github.com/nhs-tre/tre/queries"
)

// TestBrokerKill9DuringSubmissions kills the SQLite broker with SIGKILL
// while many researchers' submissions are in flight, so that commits are
// shared between them (group commit), twice. After the last restart every
// acknowledged submission is there, the audit chain verifies, and every
// stored query has exactly its one query.submit entry and nothing else of
// a submission is stored without its query: nothing was half-written.
func TestBrokerKill9DuringSubmissions(t *testing.T) {
	s := startFaultSite(t, "", false)
	ctx := context.Background()
	// No agent: the catalog is published as one would, and nothing runs.
	cat, err := queries.LoadCatalog(s.Catalog)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.As("site").PublishCatalog(ctx, e2e.SiteID, cat); err != nil {
		t.Fatal(err)
	}
	projectID := s.CreateProject(t, 1000)

	const submitters = 12
	var mu sync.Mutex
	acked := map[int64]bool{}
	count := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(acked)
	}
	wctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for i := range submitters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := s.quick("alice")
			// Texts differ per submitter so risk flags and the predicate
			// sets get written too.
			sql := faultSQL
			if i%2 == 1 {
				sql = "SELECT sex, count(*) AS n FROM patients WHERE region = 'London' GROUP BY sex"
			}
			for wctx.Err() == nil {
				q, err := c.SubmitQuery(wctx, api.QueryRequest{ProjectID: projectID, SQL: sql, Purpose: "kill -9 " + strconv.Itoa(i), Epsilon: faultEpsilon})
				if err == nil {
					mu.Lock()
					acked[q.ID] = true
					mu.Unlock()
				} else {
					time.Sleep(20 * time.Millisecond) // broker down
				}
			}
		}()
	}
	for kill := 0; kill < 2; kill++ {
		n0 := count()
		e2e.Eventually(t, 60*time.Second, "acknowledged submissions before a kill", func() error {
			if n := count(); n < n0+50 {
				return fmt.Errorf("%d new acknowledged submissions", n-n0)
			}
			return nil
		})
		s.Broker.Kill()
		s.restartBroker(t)
	}
	n0 := count()
	e2e.Eventually(t, 60*time.Second, "acknowledged submissions after the last restart", func() error {
		if n := count(); n < n0+10 {
			return fmt.Errorf("%d new acknowledged submissions", n-n0)
		}
		return nil
	})
	stop()
	wg.Wait()
	t.Logf("%d acknowledged submissions", len(acked))

	admin := s.As("dave")
	if v, err := admin.VerifyAudit(ctx); err != nil || !v.OK {
		t.Fatalf("audit chain after kill -9: %+v, %v", v, err)
	}
	// A submission in flight when the submitters stopped can still commit
	// after they return (the broker finishes what it acknowledges on a
	// detached context), so the counts are compared until they agree: a real
	// loss or a stray audit entry never does.
	var stored map[int64]bool
	e2e.Eventually(t, 15*time.Second, "stored queries, acknowledgements and query.submit entries agree", func() error {
		var err error
		stored, err = checkSubmissions(ctx, admin, projectID, acked)
		return err
	})
	// Every stored query has its history (the submission event).
	for id := range stored {
		q, err := admin.Query(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if len(q.History) != 1 || q.History[0].To != broker.StatusSubmitted {
			t.Errorf("query %d history = %+v", id, q.History)
		}
	}
}

// checkSubmissions lists the project's queries and the query.submit audit
// entries and reports the first disagreement: a query not submitted, an
// acknowledged submission lost, a query without exactly one entry, or an
// entry for a query that is not stored.
func checkSubmissions(ctx context.Context, admin *api.Client, projectID int64, acked map[int64]bool) (map[int64]bool, error) {
	stored := map[int64]bool{}
	for off := 0; ; {
		page, err := admin.Queries(ctx, api.QueryListOptions{ProjectID: projectID, ListOptions: api.ListOptions{Limit: 500, Offset: off}})
		if err != nil {
			return nil, err
		}
		for _, q := range page.Items {
			stored[q.ID] = true
			if q.Status != broker.StatusSubmitted {
				return nil, fmt.Errorf("query %d is %s", q.ID, q.Status)
			}
		}
		off += len(page.Items)
		if len(page.Items) == 0 || off >= page.Total {
			break
		}
	}
	for id := range acked {
		if !stored[id] {
			return nil, fmt.Errorf("acknowledged submission %d lost", id)
		}
	}
	audited := map[int64]int{}
	for off := 0; ; {
		page, err := admin.Audit(ctx, api.AuditOptions{Action: "query.submit", ListOptions: api.ListOptions{Limit: 1000, Offset: off}})
		if err != nil {
			return nil, err
		}
		for _, e := range page.Items {
			id, err := strconv.ParseInt(strings.TrimPrefix(e.Object, "query/"), 10, 64)
			if err != nil {
				return nil, fmt.Errorf("query.submit entry for %q", e.Object)
			}
			audited[id]++
		}
		off += len(page.Items)
		if len(page.Items) == 0 || off >= page.Total {
			break
		}
	}
	for id := range stored {
		if audited[id] != 1 {
			return nil, fmt.Errorf("query %d has %d query.submit entries, want 1", id, audited[id])
		}
	}
	for id := range audited {
		if !stored[id] {
			return nil, fmt.Errorf("query.submit entry for query %d, which is not stored", id)
		}
	}
	return stored, nil
}
