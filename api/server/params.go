package server

import (
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
