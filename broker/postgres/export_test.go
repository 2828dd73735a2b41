package postgres

import (
	"context"

	"github.com/jackc/pgx/v5"
)

// OpenTraced is Open with tracer told of every statement sent.
func OpenTraced(ctx context.Context, url string, tracer pgx.QueryTracer) (*Store, error) {
	return open(ctx, url, tracer)
}
