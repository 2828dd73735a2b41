package broker

import "context"

// userKey is the unexported context key under which the caller travels.
type userKey struct{}

// NewContext returns a copy of ctx carrying u as the authenticated caller.
func NewContext(ctx context.Context, u *User) context.Context {
	return context.WithValue(ctx, userKey{}, u)
}

// UserFromContext returns the caller stored by NewContext, or nil.
func UserFromContext(ctx context.Context) *User {
	u, _ := ctx.Value(userKey{}).(*User)
	return u
}
