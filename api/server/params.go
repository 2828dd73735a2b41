package server

import (
	"context"
	"strconv"

	"github.com/gin-gonic/gin"

	"github.com/nhs-tre/tre/api"
	"github.com/nhs-tre/tre/broker"
)

func pathID(c *gin.Context) (int64, error) {
	id, err := strconv.ParseInt(c.Param("id"), 10, 64)
	if err != nil || id <= 0 {
		return 0, broker.Errorf(broker.EINVALID, "id in the path must be a positive integer")
	}
	return id, nil
}

// page is the pagination of a list request.
type page struct{ Limit, Offset int }

func parsePage(c *gin.Context) (page, error) {
	p := page{Limit: api.DefaultPageLimit}
	if v, ok := c.GetQuery("limit"); ok {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return p, broker.Errorf(broker.EINVALID, "limit must be a positive integer")
		}
		p.Limit = min(n, api.MaxPageLimit)
	}
	if v, ok := c.GetQuery("offset"); ok {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return p, broker.Errorf(broker.EINVALID, "offset must be a non-negative integer")
		}
		p.Offset = n
	}
	return p, nil
}

func newList[T any](items []T, total int, p page) api.List[T] {
	if items == nil {
		items = []T{}
	}
	return api.List[T]{Items: items, Total: total, Limit: p.Limit, Offset: p.Offset}
}

// paginate slices an unpaged list the service returned whole.
func paginate[T any](all []T, p page) api.List[T] {
	lo := min(p.Offset, len(all))
	hi := min(lo+p.Limit, len(all))
	return newList(all[lo:hi], len(all), p)
}

func queryInt64(c *gin.Context, name string) (*int64, error) {
	v, ok := c.GetQuery(name)
	if !ok {
		return nil, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return nil, broker.Errorf(broker.EINVALID, "%s must be a non-negative integer", name)
	}
	return &n, nil
}

func queryString(c *gin.Context, name string) *string {
	if v, ok := c.GetQuery(name); ok && v != "" {
		return &v
	}
	return nil
}

// includeRewritten reads the include parameter of a read of queries:
// "rewritten_sql" asks for each query's rewritten SQL, which a query in an
// answer leaves out otherwise (about 10 kB each, most of a query's JSON,
// stored apart from the query's row). It returns the request's context,
// asking the service for the rewritten SQL (broker.WithRewritten) when
// include does.
func includeRewritten(c *gin.Context) (context.Context, bool, error) {
	ctx := c.Request.Context()
	v, ok := c.GetQuery("include")
	if !ok {
		return ctx, false, nil
	}
	if v != "rewritten_sql" {
		return nil, false, broker.Errorf(broker.EINVALID, "include must be rewritten_sql, not %q", safeMessage(v))
	}
	return broker.WithRewritten(ctx), true, nil
}

// withoutRewritten returns qs without their rewritten SQL, unless include
// asked for it: copies, so a query the service shares is never changed.
func withoutRewritten(include bool, qs []*broker.Query) []*broker.Query {
	if include {
		return qs
	}
	out := make([]*broker.Query, len(qs))
	for i, q := range qs {
		v := *q
		v.Rewritten = ""
		out[i] = &v
	}
	return out
}
