// Package api is tre's HTTP contract, as CONTRACT.md and openapi.json
// describe it: the wire types of every request and response, the one
// pagination envelope (List), the one error type (Error) with the one table
// mapping domain error codes to HTTP statuses, the Go client the CLI and
// the site agent use, the released-table CSV writer every download goes
// through, and the broker operations behind the contract (service.go),
// declared once for the JSON API and the web pages.
//
// Beneath it: api/server serves the contract with gin, api/web serves the
// browser pages, api/auth verifies bearer tokens, api/metrics holds the
// Prometheus instruments and api/apitest checks responses against
// openapi.json. api itself must never import gin or any HTTP router (the
// site agent and the clients link it), never log tokens, request bodies or
// query results, and never decide anything about the domain.
package api

import _ "embed"

//go:embed openapi.json
var openAPIDoc []byte

// OpenAPI returns the OpenAPI 3 document of the HTTP API (openapi.json).
// The slice is shared: callers must not modify it.
func OpenAPI() []byte { return openAPIDoc }
