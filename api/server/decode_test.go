package server

import (
	"testing"

	"github.com/nhs-tre/tre/api"
	"github.com/nhs-tre/tre/broker"
)

// FuzzDecode checks that the strict decoder never panics and that anything
// it rejects is a caller's error (400), never an internal one.
func FuzzDecode(f *testing.F) {
	for _, s := range []string{
		`{"project_id":1,"sql":"SELECT 1","purpose":"p","epsilon":0.5}`,
		`{"project_id":1} {}`,
		`{"token":"t","result":{"columns":[{"name":"n","kind":"count"}],"rows":[[{"value":1}]],"report":{}}}`,
		`{"site_id":"s","catalog":{"dataset":"gp","tables":[{"name":"t","columns":[{"name":"c","type":"VARCHAR","role":"categorical"}]}]}}`,
		`{"title":"t","members":["a"],"expires_at":"2026-01-01T00:00:00Z"}`,
		"{\"sql\":\"\xff\"}", `[]`, `null`, ``, `{"a":`, `{"project_id":1e999}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		targets := []any{&api.QueryRequest{}, &api.CompleteRequest{}, &api.CatalogRequest{}, &api.ProjectRequest{}, &broker.ProjectUpdate{}, &api.FailRequest{}}
		for _, v := range targets {
			err := decodeJSON(data, v)
			if err == nil {
				continue
			}
			if api.HTTPStatus(err) != 400 {
				t.Fatalf("decode %T: %v is not a 400", v, err)
			}
		}
	})
}
