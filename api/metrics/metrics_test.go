package metrics

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

const (
	// A bearer token and SQL as a hostile caller might put them in a path.
	token = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJyZXNlYXJjaGVyIn0.c2lnbmF0dXJlc2lnbmF0dXJl"
	sql   = "SELECT count(*) FROM patients WHERE nhs_number = '9434765919'"
)

// scrape serves the registry's handler and parses what it returns.
func scrape(tb testing.TB, r *Registry) map[string]*dto.MetricFamily {
	tb.Helper()
	rec := httptest.NewRecorder()
	r.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if rec.Code != http.StatusOK {
		tb.Fatalf("GET /metrics = %d: %s", rec.Code, rec.Body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(rec.Body)
	if err != nil {
		tb.Fatalf("parse /metrics: %v", err)
	}
	return fams
}

// labelSets returns each sample of a family as "k=v,k=v" strings, sorted.
func labelSets(fam *dto.MetricFamily) []string {
	var out []string
	for _, m := range fam.GetMetric() {
		var parts []string
		for _, lp := range m.GetLabel() {
			parts = append(parts, lp.GetName()+"="+lp.GetValue())
		}
		out = append(out, strings.Join(parts, ","))
	}
	sort.Strings(out)
	return out
}

func TestMetricsAfterRequests(t *testing.T) {
	seen := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	r := New(Options{
		QueueDepth: func(context.Context) (map[string]int, error) {
			return map[string]int{"submitted": 3, "approved": 1, sql: 9}, nil
		},
		Budgets: func(context.Context) ([]Budget, error) {
			return []Budget{{ProjectID: 7, EpsilonSpent: 0.5, EpsilonLimit: 2, DeltaSpent: 1e-7, DeltaLimit: 1e-6}}, nil
		},
		AgentsLastSeen: func(context.Context) (map[string]time.Time, error) {
			return map[string]time.Time{"site-a": seen, "'; DROP TABLE sites; --": seen}, nil
		},
	})
	// What the server's router middleware passes for GET /healthz,
	// /api/v1/queries/{42,43,404,<token>}, /nowhere/<token> and /?q=<sql>:
	// route templates, "" where no route matched (the server's tests send
	// those paths through the real router).
	for _, o := range []struct {
		route  string
		status int
	}{
		{"/healthz", http.StatusOK},
		{"/api/v1/queries/:id", http.StatusOK},
		{"/api/v1/queries/:id", http.StatusOK},
		{"/api/v1/queries/:id", http.StatusNotFound},
		{"/api/v1/queries/:id", http.StatusOK},
		{"", http.StatusNotFound},
		{"", http.StatusNotFound},
	} {
		r.ObserveHTTP(o.route, http.MethodGet, o.status, time.Millisecond)
	}
	r.ObserveStateDuration("submitted", 90*time.Second)
	r.JobLeased()
	r.JobCompleted()
	r.JobFailed("timeout")
	r.JobFailed(sql)
	r.JobExpired()
	r.SandboxStarted()
	r.SandboxKilled("timeout")
	r.ObserveSandbox("ok", 2*time.Second)
	r.ObserveSandboxPeak(900<<20, false)
	r.ObserveSandboxPeak(1<<30, true)

	fams := scrape(t, r)

	tests := []struct {
		name   string
		family string
		want   []string
	}{
		{
			name:   "requests by route template",
			family: "tre_http_requests_total",
			want: []string{
				"method=GET,route=/api/v1/queries/:id,status=200",
				"method=GET,route=/api/v1/queries/:id,status=404",
				"method=GET,route=/healthz,status=200",
				"method=GET,route=unmatched,status=404",
			},
		},
		{
			name:   "latency by route template",
			family: "tre_http_request_duration_seconds",
			want: []string{
				"method=GET,route=/api/v1/queries/:id,status=200",
				"method=GET,route=/api/v1/queries/:id,status=404",
				"method=GET,route=/healthz,status=200",
				"method=GET,route=unmatched,status=404",
			},
		},
		{name: "queue depth", family: "tre_queries", want: []string{"status=approved", "status=invalid", "status=submitted"}},
		{name: "time in state", family: "tre_query_state_duration_seconds", want: []string{"state=submitted"}},
		{
			name:   "jobs",
			family: "tre_jobs_total",
			want:   []string{"code=,outcome=completed", "code=,outcome=expired", "code=,outcome=leased", "code=invalid,outcome=failed", "code=timeout,outcome=failed"},
		},
		{name: "sandbox starts", family: "tre_sandbox_starts_total", want: []string{""}},
		{name: "sandbox kills", family: "tre_sandbox_kills_total", want: []string{"reason=timeout"}},
		{name: "sandbox durations", family: "tre_sandbox_duration_seconds", want: []string{"outcome=ok"}},
		{name: "sandbox peak memory", family: "tre_sandbox_peak_resident_bytes", want: []string{"child=builder", "child=job"}},
		{
			name:   "budget spent",
			family: "tre_project_budget_spent",
			want:   []string{"parameter=delta,project=7", "parameter=epsilon,project=7"},
		},
		{
			name:   "budget limit",
			family: "tre_project_budget_limit",
			want:   []string{"parameter=delta,project=7", "parameter=epsilon,project=7"},
		},
		{name: "agent last seen", family: "tre_agent_last_seen_timestamp_seconds", want: []string{"site=invalid", "site=site-a"}},
		{name: "sources up", family: "tre_metrics_source_up", want: []string{"source=agents", "source=budgets", "source=queue"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fam, ok := fams[tt.family]
			if !ok {
				t.Fatalf("family %s missing", tt.family)
			}
			if diff := cmp.Diff(tt.want, labelSets(fam)); diff != "" {
				t.Errorf("%s labels (-want +got):\n%s", tt.family, diff)
			}
		})
	}

	if got := fams["tre_agent_last_seen_timestamp_seconds"].GetMetric()[1].GetGauge().GetValue(); got != float64(seen.Unix()) {
		t.Errorf("site-a last seen = %v, want %d", got, seen.Unix())
	}
	if got := fams["tre_http_requests_total"].GetMetric()[0].GetCounter().GetValue(); got != 3 {
		t.Errorf("requests to /api/v1/queries/:id with 200 = %v, want 3 (42, 43 and the token-shaped id)", got)
	}

	// No label anywhere may carry a token, SQL or a raw id-bearing path.
	tokenLike := regexp.MustCompile(`eyJ|[A-Za-z0-9_-]{24,}`)
	sqlLike := regexp.MustCompile(`(?i)\b(select|drop|from|where|insert|delete)\b|['";]|\s`)
	for name, fam := range fams {
		for _, m := range fam.GetMetric() {
			for _, lp := range m.GetLabel() {
				v := lp.GetValue()
				if strings.HasPrefix(name, "go_") && lp.GetName() == "version" {
					continue
				}
				if tokenLike.MatchString(v) || sqlLike.MatchString(v) || strings.Contains(v, "/42") {
					t.Errorf("%s{%s=%q}: label value looks like a token, SQL or a raw path", name, lp.GetName(), v)
				}
			}
		}
	}
}

func TestMetricsSourceDown(t *testing.T) {
	r := New(Options{
		QueueDepth: func(context.Context) (map[string]int, error) { return nil, errors.New("store unreachable") },
	})
	fams := scrape(t, r)
	up := fams["tre_metrics_source_up"]
	if up == nil || len(up.GetMetric()) != 1 || up.GetMetric()[0].GetGauge().GetValue() != 0 {
		t.Fatalf("tre_metrics_source_up = %v, want one sample with value 0", up)
	}
	if _, ok := fams["tre_http_requests_total"]; ok {
		t.Errorf("an unused vector should have no samples yet")
	}
}

// TestGroupCommitCounters: the store's group commit counters are exported
// as they are read, and only when the store has them.
func TestGroupCommitCounters(t *testing.T) {
	commits, writes := int64(3), int64(7)
	fams := scrape(t, New(Options{GroupCommits: func() (int64, int64) { return commits, writes }}))
	for name, want := range map[string]float64{"tre_store_group_commits_total": 3, "tre_store_grouped_writes_total": 7} {
		fam := fams[name]
		if fam == nil || len(fam.GetMetric()) != 1 {
			t.Fatalf("%s missing: %v", name, fam)
		}
		if got := fam.GetMetric()[0].GetCounter().GetValue(); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	if fams := scrape(t, New(Options{})); fams["tre_store_group_commits_total"] != nil {
		t.Errorf("group commit counters exported without a source")
	}
}

func TestLabelValue(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{name: "status", in: "awaiting_output_check", want: "awaiting_output_check"},
		{name: "site id", in: "rqm-01.trust", want: "rqm-01.trust"},
		{name: "sql", in: sql, want: "invalid"},
		{name: "quote", in: "a'b", want: "invalid"},
		{name: "too long", in: strings.Repeat("a", 65), want: "invalid"},
		{name: "empty", in: "", want: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := labelValue(tt.in); got != tt.want {
				t.Errorf("labelValue(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

func TestRouteLabel(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{name: "template", in: "/api/v1/queries/:id/result", want: "/api/v1/queries/:id/result"},
		{name: "wildcard", in: "/static/*file", want: "/static/*file"},
		{name: "unmatched", in: "unmatched", want: "unmatched"},
		{name: "space", in: "/a b", want: "invalid"},
		{name: "relative", in: "api", want: "invalid"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := routeLabel(tt.in); got != tt.want {
				t.Errorf("routeLabel(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

// The handler must not be the process-wide registry: two Registries in one
// process keep separate counts.
func TestRegistriesAreIndependent(t *testing.T) {
	a, b := New(Options{}), New(Options{})
	a.JobCompleted()
	if _, ok := scrape(t, b)["tre_jobs_total"]; ok {
		t.Fatal("a job counted on one Registry showed up on another")
	}
	rec := httptest.NewRecorder()
	a.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	if !strings.Contains(string(body), `tre_jobs_total{code="",outcome="completed"} 1`) {
		t.Errorf("scrape lacks the completed job:\n%s", body)
	}
}
