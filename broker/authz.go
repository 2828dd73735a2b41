package broker

import (
	"context"
	"errors"
	"strconv"
	"strings"
)

// denial is a refused authorisation found inside a transaction; it is
// recorded in the audit chain after the transaction rolls back.
type denial struct {
	err            *Error
	action, object string
}

func (d *denial) Error() string { return d.err.Error() }
func (d *denial) Unwrap() error { return d.err }

func deny(action, object, format string, args ...any) error {
	return &denial{err: Errorf(EFORBIDDEN, format, args...), action: action, object: object}
}

// caller returns the authenticated user or EUNAUTHORIZED.
func caller(ctx context.Context) (*User, error) {
	u := UserFromContext(ctx)
	if u == nil || u.Subject == "" {
		return nil, Errorf(EUNAUTHORIZED, "authentication required")
	}
	return u, nil
}

// settle records a denial in the audit chain and turns it into its *Error.
func (s *Service) settle(ctx context.Context, u *User, err error) error {
	var d *denial
	if !errors.As(err, &d) {
		return err
	}
	subject := "anonymous"
	if u != nil {
		subject = u.Subject
	}
	s.recordAudit(ctx, subject, "authz.denied", d.object, auditDetail("action", d.action, "reason", d.err.Message))
	return d.err
}

// recordAudit appends one entry in its own transaction with a detached
// context: it must be written even if the request was cancelled.
func (s *Service) recordAudit(ctx context.Context, actor, action, object, detail string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.writeTimeout)
	defer cancel()
	err := s.store.Update(ctx, func(tx Tx) error {
		return appendAudit(ctx, tx, s.clock(), actor, action, object, detail)
	})
	if err != nil {
		s.log.Error("record audit entry", "action", action, "object", object, "err", err)
	}
}

// authorize returns the caller if they hold one of roles; otherwise the
// refusal is audited.
func (s *Service) authorize(ctx context.Context, action, object string, roles ...Role) (*User, error) {
	u, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	for _, r := range roles {
		if u.HasRole(r) {
			return u, nil
		}
	}
	names := make([]string, len(roles))
	for i, r := range roles {
		names[i] = string(r)
	}
	return nil, s.settle(ctx, u, deny(action, object, "%s requires the role %s", action, strings.Join(names, " or ")))
}

// update runs fn in a write transaction and settles denials.
func (s *Service) update(ctx context.Context, u *User, fn func(Tx) error) error {
	return s.write(ctx, u, s.store.Update, fn)
}

// updateGrouped is update for writes that may share a transaction and its
// commit with concurrent ones (Store.UpdateGrouped).
func (s *Service) updateGrouped(ctx context.Context, u *User, fn func(Tx) error) error {
	return s.write(ctx, u, s.store.UpdateGrouped, fn)
}

func (s *Service) write(ctx context.Context, u *User, run func(context.Context, func(Tx) error) error, fn func(Tx) error) error {
	if s.onTransition == nil {
		return s.settle(ctx, u, run(ctx, fn))
	}
	var last *observedTx // the attempt that committed, if any
	err := run(ctx, func(tx Tx) error {
		last = &observedTx{Tx: tx}
		return fn(last)
	})
	if err == nil && last != nil {
		for _, t := range last.transitions {
			s.onTransition(t)
		}
	}
	return s.settle(ctx, u, err)
}

// observedTx remembers the status changes made in one transaction attempt so
// they are reported only once it commits.
type observedTx struct {
	Tx
	transitions []Transition
}

// leaseLapsed marks the transition just recorded in tx as the end of a
// lease that lapsed, when lapsed is true.
func leaseLapsed(tx Tx, lapsed bool) {
	if o, ok := tx.(*observedTx); ok && lapsed && len(o.transitions) > 0 {
		o.transitions[len(o.transitions)-1].LeaseExpired = true
	}
}

// view runs fn in a read transaction and settles denials.
func (s *Service) view(ctx context.Context, u *User, fn func(Tx) error) error {
	return s.settle(ctx, u, s.store.View(ctx, fn))
}

func isStaff(u *User) bool {
	return u.HasRole(RoleReviewer) || u.HasRole(RoleOutputChecker) || u.HasRole(RoleAdmin)
}

func projectObject(id int64) string { return "project/" + strconv.FormatInt(id, 10) }
func queryObject(id int64) string   { return "query/" + strconv.FormatInt(id, 10) }
