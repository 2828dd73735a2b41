package sqlstore

import (
	"fmt"
	"testing"

	"github.com/nhs-tre/tre/broker"
)

// TestJSONCache: a cached value decodes as json.Unmarshal would (null, an
// empty array, "" leaving the value as it is), each caller's copy is its
// own, and a full cache starts again.
func TestJSONCache(t *testing.T) {
	var c jsonCache[broker.RiskFlag]
	const text = `[{"kind":"repeat","message":"m","similar_query_id":3}]`
	for i := range 2 { // a miss, then a hit
		var got []broker.RiskFlag
		if err := c.decode(text, &got); err != nil {
			t.Fatal(err)
		}
		if len(got) != 1 || got[0].Kind != "repeat" || got[0].SimilarQueryID != 3 {
			t.Fatalf("decode %d: %+v", i, got)
		}
		got[0].Kind = "changed" // must not reach the cache or the next caller
	}
	for _, tc := range []struct {
		text    string
		start   []broker.RiskFlag
		wantNil bool
		wantLen int
	}{
		{"null", []broker.RiskFlag{}, true, 0},
		{"[]", nil, false, 0},
		{"", []broker.RiskFlag{{Kind: "kept"}}, false, 1},
	} {
		for range 2 {
			got := tc.start
			if err := c.decode(tc.text, &got); err != nil {
				t.Fatal(err)
			}
			if (got == nil) != tc.wantNil || len(got) != tc.wantLen {
				t.Errorf("decode %q from %#v: %#v", tc.text, tc.start, got)
			}
		}
	}
	var bad []broker.RiskFlag
	if err := c.decode(`[{"kind":`, &bad); err == nil {
		t.Error("a malformed column decoded")
	}
	for i := range jsonCacheEntries + 1 {
		var v []broker.RiskFlag
		if err := c.decode(fmt.Sprintf(`[{"kind":"k%d"}]`, i), &v); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(c.m); n > jsonCacheEntries {
		t.Errorf("the cache holds %d entries, at most %d", n, jsonCacheEntries)
	}
}
