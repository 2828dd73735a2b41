package sqlstore

import (
	"encoding/json"
	"fmt"
	"slices"
	"sync"
)

// jsonCache remembers the decoded values of a JSON column whose values are
// written once and repeat across rows (a query's accuracy, risk flags and
// codelists: every read of a query decoded them, 6 % of a read's CPU).
// Each caller gets its own copy of the slice; T must hold no pointers,
// slices or maps, so a copy shares nothing. It is cleared when full.
type jsonCache[T any] struct {
	mu sync.Mutex
	m  map[string][]T
}

// Bounds of a jsonCache: entries, and the longest text it keeps.
const (
	jsonCacheEntries = 1024
	jsonCacheMaxText = 4 << 10
)

// decode sets *out as json.Unmarshal would from s ("" leaves it as it is).
func (c *jsonCache[T]) decode(s string, out *[]T) error {
	if s == "" {
		return nil
	}
	c.mu.Lock()
	v, ok := c.m[s]
	c.mu.Unlock()
	if ok {
		*out = slices.Clone(v)
		return nil
	}
	if err := json.Unmarshal([]byte(s), out); err != nil {
		return fmt.Errorf("decode column: %w", err)
	}
	if len(s) > jsonCacheMaxText {
		return nil
	}
	c.mu.Lock()
	if c.m == nil || len(c.m) >= jsonCacheEntries {
		c.m = make(map[string][]T)
	}
	c.m[s] = slices.Clone(*out)
	c.mu.Unlock()
	return nil
}
