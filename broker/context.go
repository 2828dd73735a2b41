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

// rewrittenKey marks a context whose reads of queries include their
// rewritten SQL.
type rewrittenKey struct{}

// WithRewritten returns a copy of ctx under which the queries that
// FindQueryByID, FindQueries, ReviewQueue and OutputQueue return carry
// their rewritten SQL (Query.Rewritten). Without it they leave it empty:
// about 10 kB a query, stored apart from the query's row, that most reads
// (a researcher polling for a result) never show.
func WithRewritten(ctx context.Context) context.Context {
	return context.WithValue(ctx, rewrittenKey{}, true)
}

// WantsRewritten reports whether ctx came from WithRewritten.
func WantsRewritten(ctx context.Context) bool {
	v, _ := ctx.Value(rewrittenKey{}).(bool)
	return v
}
