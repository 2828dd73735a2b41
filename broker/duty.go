package broker

import (
	"context"
	"slices"
)

// Separation of duties is by person, not by role: whatever roles a user
// holds,
//   - whoever submitted a query never decides on it (approve, reject,
//     release, withhold) and never sees its output before release;
//   - reviewers and output checkers never act on queries of a project they
//     are members of, and output checkers never read such a query's output
//     before release;
//   - whoever approved a query never releases or withholds it;
//   - an admin never creates or changes a project they are a member of.
// docs/threat-model.md has the table. These functions are the only place
// the rules are written; the service applies them inside the transaction
// that acts, and QueryAccess reports them to the web interface.

// reviewDuty refuses u deciding on q (approve or reject) when the rules
// forbid it. member says whether u is a member of q's project.
func reviewDuty(u *User, q *Query, member bool, action string) error {
	switch {
	case q.SubmittedBy == u.Subject:
		return deny(action, queryObject(q.ID), "a reviewer cannot decide on their own query")
	case member:
		return deny(action, queryObject(q.ID), "a reviewer cannot decide on a query of a project they are a member of (project %d)", q.ProjectID)
	}
	return nil
}

// checkDuty refuses u releasing or withholding q's output when the rules
// forbid it.
func checkDuty(u *User, q *Query, member bool, action string) error {
	switch {
	case q.SubmittedBy == u.Subject:
		return deny(action, queryObject(q.ID), "an output checker cannot check their own query")
	case q.ApprovedBy == u.Subject:
		return deny(action, queryObject(q.ID), "an output checker cannot check a query they approved")
	case member:
		return deny(action, queryObject(q.ID), "an output checker cannot check a query of a project they are a member of (project %d)", q.ProjectID)
	}
	return nil
}

// checkerView reports whether u may read q's output as an output checker,
// before it is released: an output checker who neither submitted it nor is
// a member of its project. Everyone else reads an output only once it is
// released, and only as a member of the project.
func checkerView(u *User, q *Query, member bool) bool {
	return u.HasRole(RoleOutputChecker) && q.SubmittedBy != u.Subject && !member
}

// projectDuty refuses an admin creating or changing a project whose
// members include them: they could raise their own budget or approve
// themselves into a project.
func projectDuty(u *User, action, object string, members []string) error {
	if slices.Contains(members, u.Subject) {
		return deny(action, object, "an admin cannot create or change a project they are a member of")
	}
	return nil
}

// Permission is whether the caller may take an action, and if not why.
type Permission struct {
	Allowed bool   `json:"allowed"`
	Reason  string `json:"reason,omitempty"`
}

// Access is what separation of duties lets the caller do with one query,
// whatever its status: the web interface draws its buttons from it. The
// service applies the same rules again on every action.
type Access struct {
	// Member: the caller is a member of the query's project.
	Member bool `json:"member"`
	// Review is approving or rejecting; Check releasing or withholding.
	Review Permission `json:"review"`
	Check  Permission `json:"check"`
	// CheckerView: the caller may read the output before release.
	CheckerView bool `json:"checker_view"`
}

func permission(hasRole bool, role Role, err error) Permission {
	switch {
	case !hasRole:
		return Permission{Reason: "you do not hold the " + string(role) + " role"}
	case err != nil:
		return Permission{Reason: ErrorMessage(err)}
	}
	return Permission{Allowed: true}
}

// QueryAccess reports what the caller may do with query id by separation
// of duties. Callers who may not see the query get the error FindQueryByID
// gives them.
func (s *Service) QueryAccess(ctx context.Context, id int64) (*Access, error) {
	u, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	var a *Access
	err = s.view(ctx, u, func(tx Tx) error {
		q, err := visibleQuery(ctx, tx, u, id)
		if err != nil {
			return err
		}
		member, err := tx.IsMember(ctx, q.ProjectID, u.Subject)
		if err != nil {
			return err
		}
		a = &Access{
			Member:      member,
			Review:      permission(u.HasRole(RoleReviewer), RoleReviewer, reviewDuty(u, q, member, "query.approve")),
			Check:       permission(u.HasRole(RoleOutputChecker), RoleOutputChecker, checkDuty(u, q, member, "output.release")),
			CheckerView: checkerView(u, q, member),
		}
		return nil
	})
	return a, err
}
