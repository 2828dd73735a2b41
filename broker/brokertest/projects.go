package brokertest

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nhs-tre/tre/broker"
)

func testProjects(t *testing.T, f *Fixture) {
	svc := f.Service
	bad := []struct {
		name string
		p    broker.Project
	}{
		{"no title", broker.Project{Organisation: "o", Purpose: "p", LawfulBasis: "l", Members: []string{"a"}, Datasets: []string{Dataset}, EpsilonBudget: 1, ExpiresAt: f.Clock.Now().Add(time.Hour)}},
		{"no members", broker.Project{Title: "t", Organisation: "o", Purpose: "p", LawfulBasis: "l", Datasets: []string{Dataset}, EpsilonBudget: 1, ExpiresAt: f.Clock.Now().Add(time.Hour)}},
		{"zero budget", broker.Project{Title: "t", Organisation: "o", Purpose: "p", LawfulBasis: "l", Members: []string{"a"}, Datasets: []string{Dataset}, ExpiresAt: f.Clock.Now().Add(time.Hour)}},
		{"expires before start", broker.Project{Title: "t", Organisation: "o", Purpose: "p", LawfulBasis: "l", Members: []string{"a"}, Datasets: []string{Dataset}, EpsilonBudget: 1, ExpiresAt: f.Clock.Now().Add(-time.Hour)}},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			p := tt.p
			MustCode(t, svc.CreateProject(f.Admin, &p), broker.EINVALID)
		})
	}

	q := f.MustSubmit(f.Researcher, DefaultSQL, 0.5)
	suspended := broker.ProjectSuspended
	if _, err := svc.UpdateProject(f.Admin, f.Project.ID, broker.ProjectUpdate{Status: &suspended}); err != nil {
		t.Fatal(err)
	}
	_, err := svc.SubmitQuery(f.Researcher, broker.QuerySubmission{ProjectID: f.Project.ID, Purpose: "test", SQL: DefaultSQL})
	MustCode(t, err, broker.EFORBIDDEN)
	_, err = svc.ApproveQuery(f.Reviewer, q.ID, "")
	MustCode(t, err, broker.EFORBIDDEN)
	active := broker.ProjectActive
	if _, err := svc.UpdateProject(f.Admin, f.Project.ID, broker.ProjectUpdate{Status: &active}); err != nil {
		t.Fatal(err)
	}
	f.Clock.Advance(400 * 24 * time.Hour) // past expiry
	_, err = svc.SubmitQuery(f.Researcher, broker.QuerySubmission{ProjectID: f.Project.ID, Purpose: "test", SQL: DefaultSQL})
	MustCode(t, err, broker.EFORBIDDEN)
	if !strings.Contains(broker.ErrorMessage(err), "expired") {
		t.Errorf("message %q does not say expired", broker.ErrorMessage(err))
	}
	_, err = svc.ApproveQuery(f.Reviewer, q.ID, "")
	MustCode(t, err, broker.EFORBIDDEN)

	_, err = svc.FindProjectByID(f.Admin, 999999)
	MustCode(t, err, broker.ENOTFOUND)
	_, err = svc.FindQueryByID(f.Admin, 999999)
	MustCode(t, err, broker.ENOTFOUND)
	_, err = svc.SubmitQuery(f.Researcher, broker.QuerySubmission{ProjectID: f.Project.ID, SQL: "   "})
	MustCode(t, err, broker.EINVALID)
	// Reviewers judge a query by its purpose: a submission needs one.
	_, err = svc.SubmitQuery(f.Researcher, broker.QuerySubmission{ProjectID: f.Project.ID, SQL: DefaultSQL, Purpose: " \n"})
	MustCode(t, err, broker.EINVALID)
	if !strings.Contains(broker.ErrorMessage(err), "purpose is required") {
		t.Errorf("message %q does not say the purpose is required", broker.ErrorMessage(err))
	}
}

func testCatalogs(t *testing.T, f *Fixture) {
	svc := f.Service
	siteB := f.MustSite("site-b")
	// Another site may hold the dataset only with an agreeing catalog
	// (FederatedCatalogs); this one disagrees.
	other := Catalog(t)
	other.Policy.RoundingBase = 10
	MustCode(t, svc.PublishCatalog(AgentOf("agent2", "site-b"), "site-b", "", other), broker.ECONFLICT)
	if err := svc.PublishCatalog(f.Agent, SiteID, "tre 1.2.3", Catalog(t)); err != nil {
		t.Fatalf("republish: %v", err)
	}
	cats, err := svc.FindDatasets(f.Researcher)
	if err != nil || len(cats) != 1 || cats[0].Dataset != Dataset {
		t.Fatalf("datasets = %v, %v", cats, err)
	}
	sites, err := svc.FindSites(f.Admin)
	if err != nil {
		t.Fatal(err)
	}
	now := f.Clock.Now()
	want := []*broker.Site{
		{ID: SiteID, Name: "Test site " + SiteID, Organisation: "Test NHS Trust", Registered: true, RegisteredBy: "admin1",
			RegisteredAt: now, Datasets: []string{Dataset}, LastSeen: now, Version: "tre 1.2.3"},
		{ID: "site-b", Name: siteB.Name, Organisation: siteB.Organisation, Registered: true, RegisteredBy: "admin1",
			RegisteredAt: now, Datasets: []string{}},
	}
	if diff := cmp.Diff(want, sites); diff != "" {
		t.Errorf("sites (-want +got):\n%s", diff)
	}
	bad := Catalog(t)
	bad.PrivacyUnit = ""
	MustCode(t, svc.PublishCatalog(f.Agent, SiteID, "", bad), broker.EINVALID)
	MustCode(t, svc.PublishCatalog(f.Agent, SiteID, "bad\nversion", Catalog(t)), broker.EINVALID)
	_, err = svc.FindDatasets(context.Background())
	MustCode(t, err, broker.EUNAUTHORIZED)
}

// testSites checks that agents act only for their own registered site: a
// token without a site, for another site or for an unregistered site is
// refused on every agent call, a site leases only jobs over datasets it
// published, and a job leased by one site cannot be reported by another,
// even with the lease token.
func testSites(t *testing.T, f *Fixture) {
	svc := f.Service
	other := Catalog(t)
	other.Dataset = "gp_other"
	f.MustSite("site-b")
	siteB := AgentOf("agent-b", "site-b")
	if err := svc.PublishCatalog(siteB, "site-b", "", other); err != nil {
		t.Fatalf("site-b publishes its own dataset: %v", err)
	}
	q := f.MustSubmit(f.Researcher, DefaultSQL, 0.5)
	f.MustApprove(q.ID)
	if l, err := svc.LeaseJob(siteB, "site-b", ""); err != nil || l != nil {
		t.Fatalf("site-b leased a job over a dataset it does not hold: %+v, %v", l, err)
	}
	lease := f.MustLease(q.ID)

	noSite := as("agent0", broker.RoleAgent)
	unregistered := AgentOf("agent-x", "site-x")
	before := auditCount(t, f, "authz.denied")
	refused := []struct {
		name string
		do   func() error
	}{
		{"token without a site publishes", func() error { return svc.PublishCatalog(noSite, SiteID, "", Catalog(t)) }},
		{"token without a site leases", func() error { _, err := svc.LeaseJob(noSite, SiteID, ""); return err }},
		{"token without a site heartbeats", func() error { _, err := svc.HeartbeatJob(noSite, q.ID, lease.Token); return err }},
		{"token without a site completes", func() error { return svc.CompleteJob(noSite, q.ID, lease.Token, f.Result(0.5)) }},
		{"token without a site fails", func() error { return svc.FailJob(noSite, q.ID, lease.Token, "sandbox_error", "") }},
		{"site-b publishes as site-a", func() error { return svc.PublishCatalog(siteB, SiteID, "", Catalog(t)) }},
		{"site-b leases as site-a", func() error { _, err := svc.LeaseJob(siteB, SiteID, ""); return err }},
		{"site-b heartbeats site-a's job", func() error { _, err := svc.HeartbeatJob(siteB, q.ID, lease.Token); return err }},
		{"site-b completes site-a's job", func() error { return svc.CompleteJob(siteB, q.ID, lease.Token, f.Result(0.5)) }},
		{"site-b fails site-a's job", func() error { return svc.FailJob(siteB, q.ID, lease.Token, "sandbox_error", "") }},
		{"unregistered site publishes", func() error { return svc.PublishCatalog(unregistered, "site-x", "", other) }},
		{"unregistered site leases", func() error { _, err := svc.LeaseJob(unregistered, "site-x", ""); return err }},
		{"reviewer registers a site", func() error {
			return svc.CreateSite(f.Reviewer, &broker.Site{ID: "site-y", Name: "Y", Organisation: "Y"})
		}},
	}
	for _, tt := range refused {
		t.Run(tt.name, func(t *testing.T) { MustCode(t, tt.do(), broker.EFORBIDDEN) })
	}
	if got := auditCount(t, f, "authz.denied"); got != before+len(refused) {
		t.Errorf("authz.denied entries = %d, want %d", got, before+len(refused))
	}
	if got := f.MustQuery(q.ID); got.Status != broker.StatusRunning {
		t.Fatalf("after the refused calls query %d is %s, want running", q.ID, got.Status)
	}

	// Registration: admins only, once, with a valid id, name and organisation.
	MustCode(t, svc.CreateSite(f.Admin, &broker.Site{ID: "site-b", Name: "B", Organisation: "B"}), broker.ECONFLICT)
	MustCode(t, svc.CreateSite(f.Admin, &broker.Site{ID: "bad id", Name: "B", Organisation: "B"}), broker.EINVALID)
	MustCode(t, svc.CreateSite(f.Admin, &broker.Site{ID: "site-z", Organisation: "Z"}), broker.EINVALID)

	// A lease poll with no job records the site as seen, with its version.
	f.Clock.Advance(time.Minute)
	if l, err := svc.LeaseJob(siteB, "site-b", "tre 9.9"); err != nil || l != nil {
		t.Fatalf("empty poll = %+v, %v", l, err)
	}
	sites, err := svc.FindSites(f.Admin)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range sites {
		if s.ID == "site-b" && (!s.LastSeen.Equal(f.Clock.Now()) || s.Version != "tre 9.9" || !slices.Equal(s.Datasets, []string{"gp_other"})) {
			t.Errorf("site-b after a poll = %+v, want last seen now, version tre 9.9, dataset gp_other", s)
		}
	}

	// The right site completes its own job.
	if err := svc.CompleteJob(f.Agent, q.ID, lease.Token, f.Result(0.5)); err != nil {
		t.Fatalf("site-a completes its job: %v", err)
	}

	// A site an agent announced before registration existed is refused until
	// an admin registers it; registering keeps its health.
	ctx := context.Background()
	if err := f.Store.Exec(ctx, `INSERT INTO sites (id, last_seen, version) VALUES (?, ?, ?)`,
		"site-old", f.Clock.Now().Add(-time.Hour).UnixMicro(), "tre 0.1"); err != nil {
		t.Fatal(err)
	}
	old := AgentOf("agent-old", "site-old")
	_, err = svc.LeaseJob(old, "site-old", "")
	MustCode(t, err, broker.EFORBIDDEN)
	f.MustSite("site-old")
	if _, err := svc.LeaseJob(old, "site-old", ""); err != nil {
		t.Fatalf("registered site-old polls: %v", err)
	}
	f.MustVerify()
}

func testRegister(t *testing.T, f *Fixture) {
	a, tokA := f.QueryIn(broker.StatusReleased)
	_ = tokA
	f.QueryIn(broker.StatusWithheld)
	f.QueryIn(broker.StatusApproved)
	reg, err := f.Service.Register(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := []*broker.RegisterEntry{{
		ProjectID: f.Project.ID, Title: f.Project.Title, Organisation: f.Project.Organisation, Purpose: f.Project.Purpose,
		LawfulBasis: f.Project.LawfulBasis, StartsAt: f.Project.StartsAt, ExpiresAt: f.Project.ExpiresAt,
		Status: broker.ProjectActive, ReleasedQueries: 1, EpsilonSpent: 1, Sites: []string{SiteID},
	}}
	if diff := cmp.Diff(want, reg); diff != "" {
		t.Errorf("register (-want +got):\n%s", diff)
	}
	_ = a
}
