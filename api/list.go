package api

import (
	"net/url"
	"strconv"

	"github.com/nhs-tre/tre/broker"
)

// Page sizes for list endpoints.
const (
	DefaultPageLimit = 50
	MaxPageLimit     = 500
)

// List is every list endpoint's shape: one page of items, the total the
// filter matched, and the page asked for. The server writes it and the
// client reads it (items are pointers on the server, values in the client).
type List[T any] struct {
	Items  []T `json:"items"`
	Total  int `json:"total"`
	Limit  int `json:"limit"`
	Offset int `json:"offset"`
}

// ListOptions selects a page; zero values take the server's defaults.
type ListOptions struct {
	Limit, Offset int
}

func (o ListOptions) values() url.Values {
	v := url.Values{}
	if o.Limit > 0 {
		v.Set("limit", strconv.Itoa(o.Limit))
	}
	if o.Offset > 0 {
		v.Set("offset", strconv.Itoa(o.Offset))
	}
	return v
}

// RegisterList is the public register: a page of projects, and the audit
// chain's current head, which anyone may keep: `tre audit verify
// --expect-head HASH --expect-count N` detects entries removed after it.
type RegisterList struct {
	List[*broker.RegisterEntry]
	AuditChain *broker.AuditHead `json:"audit_chain"`
}
