package broker

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// outputDuty applies checkDuty to u and q in tx.
func outputDuty(ctx context.Context, tx Tx, u *User, q *Query, action string) error {
	member, err := tx.IsMember(ctx, q.ProjectID, u.Subject)
	if err != nil {
		return err
	}
	return checkDuty(u, q, member, action)
}

// ReleaseQuery releases a checked output to the researchers: a result
// becomes released; a failure notice makes the query failed, and the
// researchers learn only FailedMessage.
func (s *Service) ReleaseQuery(ctx context.Context, id int64, comment string) (*Query, error) {
	u, err := s.authorize(ctx, "output.release", queryObject(id), RoleOutputChecker)
	if err != nil {
		return nil, err
	}
	now := s.clock()
	return s.decide(ctx, u, id, func(tx Tx, rec *QueryRecord) error {
		if err := checkTransition(id, rec.Query.Status, StatusReleased); err != nil {
			return err
		}
		to := StatusReleased
		if rec.Query.FailureCode != "" {
			to = StatusFailed
		}
		if err := outputDuty(ctx, tx, u, rec.Query, "output.release"); err != nil {
			return err
		}
		if err := tx.SetOutputReleased(ctx, id, now); err != nil {
			return err
		}
		return move(ctx, tx, rec, to, u.Subject, comment, "output.release", "", now)
	})
}

// WithholdQuery withholds a checked output with a reason.
func (s *Service) WithholdQuery(ctx context.Context, id int64, reason string) (*Query, error) {
	u, err := s.authorize(ctx, "output.withhold", queryObject(id), RoleOutputChecker)
	if err != nil {
		return nil, err
	}
	if strings.TrimSpace(reason) == "" {
		return nil, Errorf(EINVALID, "a reason is required to withhold an output")
	}
	now := s.clock()
	return s.decide(ctx, u, id, func(tx Tx, rec *QueryRecord) error {
		if err := checkTransition(id, rec.Query.Status, StatusWithheld); err != nil {
			return err
		}
		if err := outputDuty(ctx, tx, u, rec.Query, "output.withhold"); err != nil {
			return err
		}
		return move(ctx, tx, rec, StatusWithheld, u.Subject, reason, "output.withhold", "", now)
	})
}

// FindOutput returns a query's output as the output checker sees it (the
// full disclosure report, or the failure notice): to output checkers who
// neither submitted the query nor are members of its project
// (checkerView), once it exists. Everyone else reads a released output
// through ReleasedOutput. Every view is audited.
func (s *Service) FindOutput(ctx context.Context, id int64) (*Output, error) {
	u, err := s.authorize(ctx, "output.view", queryObject(id), RoleOutputChecker)
	if err != nil {
		return nil, err
	}
	o, _, err := s.readOutput(ctx, u, id, "output.view", asChecker)
	return o, err
}

// ReleasedOutput returns a released output as the project's researchers see
// it (ReleasedResult), and audits the view.
func (s *Service) ReleasedOutput(ctx context.Context, id int64) (*ReleasedResult, error) {
	u, err := s.authorize(ctx, "output.view", queryObject(id), RoleResearcher)
	if err != nil {
		return nil, err
	}
	o, _, err := s.readOutput(ctx, u, id, "output.view", asMember)
	if err != nil {
		return nil, err
	}
	return s.releasedResult(o)
}

// DownloadResult returns a released output as the project's researchers see
// it (ReleasedResult), and audits the download.
func (s *Service) DownloadResult(ctx context.Context, id int64) (*ReleasedResult, error) {
	u, err := s.authorize(ctx, "result.download", queryObject(id), RoleResearcher)
	if err != nil {
		return nil, err
	}
	o, _, err := s.readOutput(ctx, u, id, "result.download", asMember)
	if err != nil {
		return nil, err
	}
	return s.releasedResult(o)
}

// OutputView is a query's output as its reader may see it: exactly one of
// Checker (an output checker's view: FindOutput) and Released (a
// researcher's: ReleasedOutput) is set.
type OutputView struct {
	Checker  *Output
	Released *ReleasedResult
}

// ViewOutput returns query id's output as the caller may see it: as an
// output checker when separation of duties lets them check it, else as a
// researcher of the project once released. Every view is audited.
func (s *Service) ViewOutput(ctx context.Context, id int64) (*OutputView, error) {
	u, err := s.authorize(ctx, "output.view", queryObject(id), RoleOutputChecker, RoleResearcher)
	if err != nil {
		return nil, err
	}
	o, checker, err := s.readOutput(ctx, u, id, "output.view", asCheckerOrMember)
	if err != nil {
		return nil, err
	}
	if checker {
		return &OutputView{Checker: o}, nil
	}
	r, err := s.releasedResult(o)
	if err != nil {
		return nil, err
	}
	return &OutputView{Released: r}, nil
}

// releasedResult is what a researcher receives of a released output.
func (s *Service) releasedResult(o *Output) (*ReleasedResult, error) {
	if o.Result == nil || o.ReleasedAt == nil { // a released output is a result; fail closed
		return nil, fmt.Errorf("released output of query %d has no result or release time", o.QueryID)
	}
	return &ReleasedResult{QueryID: o.QueryID, ReleasedAt: *o.ReleasedAt, Result: o.Result.ForResearcher()}, nil
}

// outputReader says as whom readOutput reads an output.
type outputReader int

const (
	asChecker         outputReader = iota // only as an output checker (checkerView)
	asMember                              // only as a researcher of the project, once released
	asCheckerOrMember                     // as a checker if checkerView allows, else as a member
)

// readOutput returns query id's output to u, and whether u read it as an
// output checker: as a checker when how and checkerView allow it, else as
// a researcher member once it is released and the release is visible to
// researchers (researcher.go).
func (s *Service) readOutput(ctx context.Context, u *User, id int64, action string, how outputReader) (*Output, bool, error) {
	now := s.clock()
	var o *Output
	var checker bool
	err := s.update(ctx, u, func(tx Tx) error {
		rec, err := tx.FindQuery(ctx, id)
		if err != nil {
			return err
		}
		q := rec.Query
		member, err := tx.IsMember(ctx, q.ProjectID, u.Subject)
		if err != nil {
			return err
		}
		checker = how != asMember && checkerView(u, q, member)
		var releasedAt time.Time // as researchers see it
		if !checker {
			released, at, err := s.releasedToResearchers(ctx, tx, q)
			if err != nil {
				return err
			}
			releasedAt = at
			switch {
			case how == asChecker:
				return deny(action, queryObject(id), "only an output checker who neither submitted query %d nor is a member of its project reads its output as a checker; its researchers read it once released", id)
			case !member:
				return deny(action, queryObject(id), "you are not a member of the project of query %d", id)
			case !released && u.HasRole(RoleOutputChecker):
				return deny(action, queryObject(id), "the output of query %d has not been released, and you submitted it or are a member of its project: another output checker checks it", id)
			case !released:
				return deny(action, queryObject(id), "the output of query %d has not been released", id)
			case !u.HasRole(RoleResearcher):
				return deny(action, queryObject(id), "released results are for the project's researchers")
			}
		}
		switch q.Status {
		case StatusAwaitingOutputCheck, StatusReleased, StatusWithheld, StatusFailed:
		default:
			return Errorf(ENOTFOUND, "query %d has no output (it is %s)", id, q.Status)
		}
		if o, err = tx.FindOutput(ctx, id); err != nil {
			return err
		}
		if !checker {
			o.ReleasedAt = &releasedAt
		} else if rec.Sites > 0 {
			jobs, err := tx.FindJobs(ctx, id)
			if err != nil {
				return err
			}
			o.Sites = siteOutputs(jobs)
		}
		return appendAudit(ctx, tx, now, u.Subject, action, queryObject(id), auditDetail("status", string(q.Status)))
	})
	if err != nil {
		return nil, false, err
	}
	return o, checker, nil
}

// releasedToResearchers reports whether q is released and its researchers
// see it released already, and when they see the release.
func (s *Service) releasedToResearchers(ctx context.Context, tx Tx, q *Query) (bool, time.Time, error) {
	if q.Status != StatusReleased {
		return false, time.Time{}, nil
	}
	events, err := tx.FindEvents(ctx, q.ID)
	if err != nil {
		return false, time.Time{}, err
	}
	v := s.researcherQuery(q, events, s.cutoff(), false)
	return v.Status == StatusReleased, v.UpdatedAt, nil
}
