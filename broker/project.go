package broker

import (
	"context"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/nhs-tre/tre/dp"
)

// CreateProject creates a safe project. Admins only.
func (s *Service) CreateProject(ctx context.Context, p *Project) error {
	u, err := s.authorize(ctx, "project.create", "projects", RoleAdmin)
	if err != nil {
		return err
	}
	if p == nil {
		return Errorf(EINVALID, "project is required")
	}
	now := s.clock()
	if p.StartsAt.IsZero() {
		p.StartsAt = now
	}
	p.StartsAt = p.StartsAt.UTC().Truncate(time.Microsecond)
	p.ExpiresAt = p.ExpiresAt.UTC().Truncate(time.Microsecond)
	if p.Status == "" {
		p.Status = ProjectActive
	}
	p.Members = dedupe(p.Members)
	p.Datasets = dedupe(p.Datasets)
	if err := validateProject(p); err != nil {
		return err
	}
	if err := projectDuty(u, "project.create", "projects", p.Members); err != nil {
		return s.settle(ctx, u, err)
	}
	p.CreatedBy = u.Subject
	p.CreatedAt = now
	p.Budget = Budget{EpsilonRemaining: p.EpsilonBudget, DeltaRemaining: p.DeltaBudget}
	return s.update(ctx, u, func(tx Tx) error {
		if err := tx.CreateProject(ctx, p); err != nil {
			return err
		}
		return appendAudit(ctx, tx, now, u.Subject, "project.create", projectObject(p.ID),
			auditDetail("title", p.Title, "epsilon_budget", fmtFloat(p.EpsilonBudget), "delta_budget", fmtFloat(p.DeltaBudget),
				"members", strings.Join(p.Members, ","), "datasets", strings.Join(p.Datasets, ",")))
	})
}

func validateProject(p *Project) error {
	for _, f := range []struct{ name, value string }{
		{"title", p.Title}, {"organisation", p.Organisation}, {"purpose", p.Purpose}, {"lawful_basis", p.LawfulBasis},
	} {
		if strings.TrimSpace(f.value) == "" {
			return Errorf(EINVALID, "project %s is required", f.name)
		}
	}
	if len(p.Members) == 0 {
		return Errorf(EINVALID, "project members are required")
	}
	for _, m := range p.Members {
		if strings.TrimSpace(m) == "" {
			return Errorf(EINVALID, "project members must be non-empty subjects")
		}
	}
	if len(p.Datasets) == 0 {
		return Errorf(EINVALID, "project datasets are required")
	}
	for _, d := range p.Datasets {
		if err := validName("dataset", d); err != nil {
			return err
		}
	}
	if math.IsNaN(p.EpsilonBudget) || math.IsInf(p.EpsilonBudget, 0) || p.EpsilonBudget <= 0 {
		return Errorf(EINVALID, "project epsilon_budget must be a positive number")
	}
	if math.IsNaN(p.DeltaBudget) || math.IsInf(p.DeltaBudget, 0) || p.DeltaBudget < 0 || p.DeltaBudget >= 1 {
		return Errorf(EINVALID, "project delta_budget must be at least 0 and below 1")
	}
	if p.ExpiresAt.IsZero() {
		return Errorf(EINVALID, "project expires_at is required")
	}
	if !p.ExpiresAt.After(p.StartsAt) {
		return Errorf(EINVALID, "project expires_at must be after starts_at")
	}
	switch p.Status {
	case ProjectActive, ProjectSuspended:
	default:
		return Errorf(EINVALID, "project status must be %q or %q", ProjectActive, ProjectSuspended)
	}
	return nil
}

// usable refuses work on a project that is suspended, not started or
// expired.
func usable(p *Project, now time.Time) error {
	switch {
	case p.Status != ProjectActive:
		return Errorf(EFORBIDDEN, "project %d is %s: queries are refused", p.ID, p.Status)
	case now.Before(p.StartsAt):
		return Errorf(EFORBIDDEN, "project %d starts on %s: queries are refused until then", p.ID, p.StartsAt.Format(time.RFC3339))
	case !now.Before(p.ExpiresAt):
		return Errorf(EFORBIDDEN, "project %d expired on %s: queries are refused", p.ID, p.ExpiresAt.Format(time.RFC3339))
	}
	return nil
}

// FindProjectByID returns a project with its budget position. Admins and
// reviewers see every project, researchers only their own.
func (s *Service) FindProjectByID(ctx context.Context, id int64) (*Project, error) {
	u, err := s.authorize(ctx, "project.read", projectObject(id), RoleAdmin, RoleReviewer, RoleResearcher)
	if err != nil {
		return nil, err
	}
	var p *Project
	err = s.view(ctx, u, func(tx Tx) error {
		p, err = tx.FindProject(ctx, id)
		if err != nil {
			return err
		}
		if !u.HasRole(RoleAdmin) && !u.HasRole(RoleReviewer) && !slices.Contains(p.Members, u.Subject) {
			return deny("project.read", projectObject(id), "you are not a member of project %d", id)
		}
		if researcherOf(u, p) {
			return s.researcherBudget(ctx, tx, p, s.cutoff())
		}
		return siteLedgers(ctx, tx, p)
	})
	if err != nil {
		return nil, err
	}
	return p, nil
}

// siteLedgers sets p's per-site ledgers, with what remains of each.
func siteLedgers(ctx context.Context, tx Tx, p *Project) error {
	ls, err := tx.FindSiteLedgers(ctx, p.ID)
	if err != nil {
		return err
	}
	for i := range ls {
		l := &ls[i]
		l.EpsilonRemaining = max(p.EpsilonBudget-l.EpsilonSpent-l.EpsilonReserved, 0)
		l.DeltaRemaining = max(p.DeltaBudget-l.DeltaSpent-l.DeltaReserved, 0)
	}
	p.SiteLedgers = ls
	return nil
}

// FindProjects lists projects; researchers see only those they belong to.
func (s *Service) FindProjects(ctx context.Context, f ProjectFilter) ([]*Project, int, error) {
	u, err := s.authorize(ctx, "project.list", "projects", RoleAdmin, RoleReviewer, RoleResearcher)
	if err != nil {
		return nil, 0, err
	}
	if !u.HasRole(RoleAdmin) && !u.HasRole(RoleReviewer) {
		f.Member = &u.Subject
	}
	f.Limit = pageLimit(f.Limit)
	var ps []*Project
	var n int
	err = s.store.View(ctx, func(tx Tx) error {
		ps, n, err = tx.FindProjects(ctx, f)
		if err != nil {
			return err
		}
		cutoff := s.cutoff()
		for _, p := range ps {
			if !researcherOf(u, p) {
				continue
			}
			if err := s.researcherBudget(ctx, tx, p, cutoff); err != nil {
				return err
			}
		}
		return nil
	})
	return ps, n, err
}

// UpdateProject changes a project. Admins only; budgets cannot drop below
// what is already spent and reserved.
func (s *Service) UpdateProject(ctx context.Context, id int64, upd ProjectUpdate) (*Project, error) {
	u, err := s.authorize(ctx, "project.update", projectObject(id), RoleAdmin)
	if err != nil {
		return nil, err
	}
	now := s.clock()
	var p *Project
	err = s.update(ctx, u, func(tx Tx) error {
		if err := tx.LockProject(ctx, id); err != nil {
			return err
		}
		p, err = tx.FindProject(ctx, id)
		if err != nil {
			return err
		}
		if err := projectDuty(u, "project.update", projectObject(id), p.Members); err != nil {
			return err
		}
		var changed []string
		set := func(name string, ok bool, apply func()) {
			if ok {
				apply()
				changed = append(changed, name)
			}
		}
		set("title", upd.Title != nil, func() { p.Title = *upd.Title })
		set("organisation", upd.Organisation != nil, func() { p.Organisation = *upd.Organisation })
		set("purpose", upd.Purpose != nil, func() { p.Purpose = *upd.Purpose })
		set("lawful_basis", upd.LawfulBasis != nil, func() { p.LawfulBasis = *upd.LawfulBasis })
		set("data_sharing_agreement", upd.DataSharingAgreement != nil, func() { p.DataSharingAgreement = *upd.DataSharingAgreement })
		set("members", upd.Members != nil, func() { p.Members = dedupe(*upd.Members) })
		set("datasets", upd.Datasets != nil, func() { p.Datasets = dedupe(*upd.Datasets) })
		set("epsilon_budget", upd.EpsilonBudget != nil, func() { p.EpsilonBudget = *upd.EpsilonBudget })
		set("delta_budget", upd.DeltaBudget != nil, func() { p.DeltaBudget = *upd.DeltaBudget })
		set("starts_at", upd.StartsAt != nil, func() { p.StartsAt = upd.StartsAt.UTC().Truncate(time.Microsecond) })
		set("expires_at", upd.ExpiresAt != nil, func() { p.ExpiresAt = upd.ExpiresAt.UTC().Truncate(time.Microsecond) })
		set("status", upd.Status != nil, func() { p.Status = *upd.Status })
		if len(changed) == 0 {
			return Errorf(EINVALID, "project update changes nothing")
		}
		if err := validateProject(p); err != nil {
			return err
		}
		if err := projectDuty(u, "project.update", projectObject(id), p.Members); err != nil {
			return err
		}
		if used := p.used(); !(dp.Cost{}).Fits(used, p.limit()) {
			return Errorf(ECONFLICT, "project %d budget cannot drop below what is spent and reserved (ε %s, δ %s)",
				id, fmtFloat(used.Epsilon), fmtFloat(used.Delta))
		}
		if err := tx.UpdateProject(ctx, p); err != nil {
			return err
		}
		if p, err = tx.FindProject(ctx, id); err != nil {
			return err
		}
		return appendAudit(ctx, tx, now, u.Subject, "project.update", projectObject(id), auditDetail("changed", strings.Join(changed, ",")))
	})
	if err != nil {
		return nil, err
	}
	return p, nil
}

// used is what of p's budget is spent or reserved, and limit the budget:
// the ledger's position in dp's terms (dp.Cost.Fits judges it).
func (p *Project) used() dp.Cost {
	return dp.Cost{Epsilon: p.Budget.EpsilonSpent + p.Budget.EpsilonReserved, Delta: p.Budget.DeltaSpent + p.Budget.DeltaReserved}
}

func (p *Project) limit() dp.Cost { return dp.Cost{Epsilon: p.EpsilonBudget, Delta: p.DeltaBudget} }
