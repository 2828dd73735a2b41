package broker

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nhs-tre/tre/dp"
	"github.com/nhs-tre/tre/queries"
)

// prepared is a compiled submission ready to store.
type prepared struct {
	project *Project
	cat     *queries.Catalog
	plan    *queries.Plan
	// sites is how many sites hold the dataset: more than one makes the
	// query federated (federate).
	sites int
}

// validSubmission checks a submission's fields before any lookup.
func validSubmission(sub QuerySubmission) error {
	switch {
	case sub.ProjectID <= 0:
		return Errorf(EINVALID, "project_id is required")
	case strings.TrimSpace(sub.SQL) == "":
		return Errorf(EINVALID, "sql is required")
	case len(sub.SQL) > MaxSQLBytes:
		return Errorf(EINVALID, "sql is longer than %d bytes", MaxSQLBytes)
	case math.IsNaN(sub.Epsilon) || math.IsInf(sub.Epsilon, 0) || sub.Epsilon < 0:
		// Well-formed, but no dataset accepts it: refused like an ε below
		// the dataset's min_epsilon or above its max_epsilon.
		return Errorf(EREFUSED, "epsilon (ε) must be a positive, finite number (or omitted for the dataset's default)")
	}
	return nil
}

// submitter checks in tx that the caller may submit to project p and
// returns the project and the catalog of the dataset the query is over,
// with the catalog's hash.
func (s *Service) submitter(ctx context.Context, tx Tx, u *User, p *Project, sub QuerySubmission, now time.Time) (*prepared, string, error) {
	if !slices.Contains(p.Members, u.Subject) {
		return nil, "", deny("query.submit", projectObject(p.ID), "you are not a member of project %d", p.ID)
	}
	if err := usable(p, now); err != nil {
		return nil, "", err
	}
	dataset := sub.Dataset
	switch {
	case dataset == "" && len(p.Datasets) == 1:
		dataset = p.Datasets[0]
	case dataset == "":
		return nil, "", Errorf(EINVALID, "project %d has several datasets (%s): name one in dataset", p.ID, strings.Join(p.Datasets, ", "))
	case !slices.Contains(p.Datasets, dataset):
		return nil, "", Errorf(EFORBIDDEN, "project %d is not approved for dataset %q", p.ID, dataset)
	}
	// The holders, earliest first, name the catalog too: one statement.
	holders, err := tx.FindCatalogHolders(ctx, dataset, false)
	if err != nil {
		return nil, "", err
	}
	if len(holders) == 0 {
		return nil, "", unpublished(dataset)
	}
	cat, hash, err := s.catalogOf(ctx, tx, dataset, holders[0].Hash)
	if err != nil {
		return nil, "", err
	}
	return &prepared{project: p, cat: cat, sites: len(holders)}, hash, nil
}

// compileError turns a compilation failure into what the caller sees.
func (s *Service) compileError(err error, projectID int64) error {
	var ref *queries.Refusal
	var appErr *Error
	switch {
	case errors.As(err, &ref):
		return Errorf(EREFUSED, "%s", ref.Message)
	case errors.As(err, &appErr):
		return appErr
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return err
	}
	s.log.Error("compile query", "project", projectID, "err", err)
	return fmt.Errorf("compile query: %w", err)
}

// prepare checks the caller may submit to the project and compiles the SQL.
func (s *Service) prepare(ctx context.Context, u *User, sub QuerySubmission) (*prepared, error) {
	if err := validSubmission(sub); err != nil {
		return nil, err
	}
	now := s.clock()
	var pr *prepared
	var catalogHash string
	err := s.view(ctx, u, func(tx Tx) error {
		p, err := tx.FindProject(ctx, sub.ProjectID)
		if err != nil {
			return err
		}
		pr, catalogHash, err = s.submitter(ctx, tx, u, p, sub, now)
		return err
	})
	if err != nil {
		return nil, err
	}
	plan, err := s.compile(ctx, pr.cat, catalogHash, sub.SQL, sub.Epsilon, pr.sites > 1)
	if err != nil {
		return nil, s.compileError(err, sub.ProjectID)
	}
	if pr.sites > 1 {
		if err := federatedPlan(pr.cat.Dataset, pr.sites, plan); err != nil {
			return nil, err
		}
	}
	if len(plan.Codelists) > 0 {
		// Each codelist it names must exist (the submission checks again
		// in its own transaction).
		err = s.view(ctx, u, func(tx Tx) error {
			_, err := codelistRefs(ctx, tx, plan)
			return err
		})
		if err != nil {
			return nil, err
		}
	}
	pr.plan = plan
	return pr, nil
}

// needPlan ends a submission's transaction whose plan is not compiled yet:
// compiling (up to milliseconds) waits outside the transaction, which on
// SQLite holds the only writer.
type needPlan struct {
	cat       *queries.Catalog
	hash      string
	federated bool
}

func (*needPlan) Error() string { return "the query must be compiled first" }

// Checked is a submission checked and planned, nothing stored: its plan
// and, over a dataset several sites hold, how it would run at them and
// what it would cost (Federation, without a deadline; nil otherwise). The
// plan's Accuracy is then the combined answer's.
type Checked struct {
	*queries.Plan
	Federation *Federation
}

// CheckQuery validates and plans a submission without storing anything.
func (s *Service) CheckQuery(ctx context.Context, sub QuerySubmission) (*Checked, error) {
	u, err := s.authorize(ctx, "query.check", projectObject(sub.ProjectID), RoleResearcher)
	if err != nil {
		return nil, err
	}
	pr, err := s.prepare(ctx, u, sub)
	if err != nil {
		return nil, err
	}
	c := &Checked{Plan: pr.plan}
	if pr.sites > 1 {
		rec := &QueryRecord{Query: &Query{Cost: pr.plan.Cost}}
		markFederated(rec, pr) // as federate records a submission, with no deadline
		c.Federation = rec.Query.Federation
	}
	return c, nil
}

// SubmitQuery validates, plans and stores a researcher's query with its
// cost, accuracy and risk flags. The caller's membership and the project
// are checked in the transaction that stores the query; the plan comes from
// the plan cache, or from a compilation between two attempts.
func (s *Service) SubmitQuery(ctx context.Context, sub QuerySubmission) (*Query, error) {
	u, err := s.authorize(ctx, "query.submit", projectObject(sub.ProjectID), RoleResearcher)
	if err != nil {
		return nil, err
	}
	if err := validSubmission(sub); err != nil {
		return nil, err
	}
	if strings.TrimSpace(sub.Purpose) == "" {
		// Checks and dry runs need none; a submission goes to a reviewer,
		// who judges the query by it.
		return nil, Errorf(EINVALID, "purpose is required: say why the project needs this query (the reviewer judges it by this)")
	}
	now := s.clock()
	var compiled *queries.Plan // compiled outside the transaction, for compiledHash and compiledFed
	var compiledHash string
	var compiledFed bool
	var q *Query
	for attempt := 1; ; attempt++ {
		// Submissions are the broker's most frequent write: concurrent
		// ones share a commit (each is still checked and stored alone).
		err = s.updateGrouped(ctx, u, func(tx Tx) error {
			// The project's lock serialises its submissions where
			// transactions run concurrently (PostgreSQL), so that each sees
			// every earlier one: two identical twins committed together
			// must still flag each other as repeats. SQLite's writers are
			// serial already, and the lock costs it one read. A submission
			// reserves nothing: the project's row is all it reads.
			p, err := tx.LockProjectRow(ctx, sub.ProjectID)
			if err != nil {
				return err
			}
			pr, hash, err := s.submitter(ctx, tx, u, p, sub, now)
			if err != nil {
				return err
			}
			plan, federated := compiled, pr.sites > 1
			if compiledHash != hash || compiledFed != federated {
				if plan = s.cachedPlan(hash, sub.SQL, sub.Epsilon, federated); plan == nil {
					return &needPlan{cat: pr.cat, hash: hash, federated: federated}
				}
			}
			q, err = s.storeSubmission(ctx, tx, u, sub, pr, plan, now)
			return err
		})
		var np *needPlan
		if !errors.As(err, &np) {
			break
		}
		if attempt == 3 {
			return nil, Errorf(EUNAVAILABLE, "the dataset's catalog changed while the query was compiled: try again")
		}
		if compiled, err = s.compile(ctx, np.cat, np.hash, sub.SQL, sub.Epsilon, np.federated); err != nil {
			return nil, s.compileError(err, sub.ProjectID)
		}
		compiledHash, compiledFed = np.hash, np.federated
	}
	if err != nil {
		return nil, err
	}
	q.History = []Event{{To: StatusSubmitted, Actor: u.Subject, At: now}}
	// The submitter is a member of the project: a researcher of it.
	return s.researcherQuery(q, q.History, s.cutoff(), true), nil
}

// storeSubmission flags and stores a compiled submission in tx and audits
// it.
func (s *Service) storeSubmission(ctx context.Context, tx Tx, u *User, sub QuerySubmission, pr *prepared, plan *queries.Plan, now time.Time) (*Query, error) {
	q := &Query{
		ProjectID:   pr.project.ID,
		Dataset:     plan.Dataset,
		SQL:         sub.SQL,
		SQLHash:     hashString(sub.SQL),
		Purpose:     sub.Purpose,
		Rewritten:   plan.Rewritten,
		Status:      StatusSubmitted,
		SubmittedBy: u.Subject,
		SubmittedAt: now,
		UpdatedAt:   now,
		Cost:        plan.Cost,
		Accuracy:    plan.Accuracy,
		RiskFlags:   []RiskFlag{},
	}
	if q.Dataset == "" {
		q.Dataset = pr.cat.Dataset
	}
	if q.Accuracy == nil {
		q.Accuracy = []dp.Accuracy{}
	}
	refs, err := codelistRefs(ctx, tx, plan)
	if err != nil {
		return nil, err
	}
	if len(refs) > 0 {
		q.Codelists = refs
	}
	rec := &QueryRecord{
		Query:          q,
		Normalized:     plan.Normalized,
		NormalizedHash: hashString(q.Dataset + "\x00" + plan.Normalized),
		ShapeHash:      shapeHash(q.Dataset, plan.Shape),
		Predicates:     plan.Predicates,
		Ledger:         LedgerNone,
	}
	rec.PredicateSet, rec.PredicateKeys = PredicateKeys(rec.ShapeHash, rec.Predicates)
	if err := federate(rec, pr, plan); err != nil {
		return nil, err
	}
	flags, err := s.similarityFlags(ctx, tx, rec)
	if err != nil {
		return nil, err
	}
	q.RiskFlags = append(q.RiskFlags, flags...)
	if reason := narrowPopulation(pr.cat, plan.Predicates); reason != "" {
		q.RiskFlags = append(q.RiskFlags, RiskFlag{Kind: RiskNarrowPopulation, Message: reason})
	}
	if err := tx.CreateQuery(ctx, rec, Event{To: StatusSubmitted, Actor: u.Subject, At: now}); err != nil {
		return nil, err
	}
	kinds := make([]string, len(q.RiskFlags))
	for i, f := range q.RiskFlags {
		kinds[i] = f.Kind
	}
	detail := []string{"project", strconv.FormatInt(q.ProjectID, 10), "dataset", q.Dataset, "sql_sha256", q.SQLHash,
		"epsilon", fmtFloat(q.Cost.Epsilon), "delta", fmtFloat(q.Cost.Delta), "risk_flags", strings.Join(kinds, ",")}
	if rec.Sites > 0 {
		detail = append(detail, "sites", strconv.Itoa(rec.Sites), "project_epsilon", fmtFloat(projectCost(rec).Epsilon))
	}
	if len(refs) > 0 {
		names := make([]string, len(refs))
		for i, r := range refs {
			names[i] = r.Name + "@sha256:" + r.Hash
		}
		detail = append(detail, "codelists", strings.Join(names, ","))
	}
	return q, appendAudit(ctx, tx, now, u.Subject, "query.submit", queryObject(q.ID), auditDetail(detail...))
}

// similarityFlags compares a new query with the project's earlier ones:
// an identical normalised form is a repeat (averaging attack); the same
// output shape with one predicate added, removed or changed is a
// differencing risk. Every earlier query of the project is considered.
func (s *Service) similarityFlags(ctx context.Context, tx Tx, rec *QueryRecord) ([]RiskFlag, error) {
	q := rec.Query
	var flags []RiskFlag
	rep, o, err := tx.FindSimilar(ctx, q.ProjectID, rec.NormalizedHash, rec.PredicateSet, rec.PredicateKeys)
	if err != nil {
		return nil, err
	}
	if rep != nil {
		f := RiskFlag{
			Kind:           RiskRepeat,
			Message:        fmt.Sprintf("repeats query %d of this project: repeated answers can be averaged to remove the noise", rep.ID),
			SimilarQueryID: rep.ID,
			SimilarSQL:     rep.SQL,
		}
		f.setSimilar(rep.Status)
		flags = append(flags, f)
	}
	if o == nil {
		return flags, nil
	}
	diff, ok := differsByOnePredicate(rec.Predicates, o.Predicates)
	if !ok {
		// Only a SHA-256 collision, or predicates stored by an older compiler
		// under the same keys, can get here.
		s.log.Error("differencing lookup matched a query that does not differ by one predicate", "query", o.ID)
		return flags, nil
	}
	f := RiskFlag{
		Kind:           RiskDifferencing,
		Message:        fmt.Sprintf("differs from query %d only in that it %s: subtracting the answers can isolate a small group", o.ID, diff),
		SimilarQueryID: o.ID,
		SimilarSQL:     o.SQL,
	}
	f.setSimilar(o.Status)
	return append(flags, f), nil
}

// refreshFlags sets each risk flag's view of the earlier query to its
// status now: a reviewer deciding days later must know whether the earlier
// answer has been released since.
func refreshFlags(ctx context.Context, tx Tx, q *Query) error {
	for i := range q.RiskFlags {
		f := &q.RiskFlags[i]
		if f.SimilarQueryID == 0 {
			continue
		}
		rec, err := tx.FindQuery(ctx, f.SimilarQueryID)
		if ErrorCode(err) == ENOTFOUND {
			continue
		} else if err != nil {
			return err
		}
		f.setSimilar(rec.Query.Status)
	}
	return nil
}
