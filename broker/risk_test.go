package broker

import (
	"math/rand/v2"
	"slices"
	"testing"
)

// TestPredicateKeysMatchDiffersByOne checks the claim the differencing lookup
// rests on: two predicate lists of one shape share a key and are different
// sets exactly when differsByOnePredicate says they differ by one predicate.
func TestPredicateKeysMatchDiffersByOne(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	alphabet := []string{"a = 1", "b = 2", "c > 3", "d IS NULL", "e <> 'x'"}
	list := func() []string {
		var out []string
		for range r.IntN(6) {
			out = append(out, alphabet[r.IntN(len(alphabet))]) // duplicates on purpose
		}
		return out
	}
	matches := func(shapeA string, a []string, shapeB string, b []string) bool {
		setA, keysA := PredicateKeys(shapeA, a)
		setB, keysB := PredicateKeys(shapeB, b)
		if setA == setB {
			return false
		}
		for _, k := range keysA {
			if slices.Contains(keysB, k) {
				return true
			}
		}
		return false
	}
	counts := map[bool]int{}
	for range 20000 {
		a, b := list(), list()
		_, want := differsByOnePredicate(a, b)
		if got := matches("shape", a, "shape", b); got != want {
			t.Fatalf("keys match = %v, differsByOnePredicate = %v for %q and %q", got, want, a, b)
		}
		if matches("shape", a, "other shape", b) {
			t.Fatalf("keys of different shapes match for %q and %q", a, b)
		}
		counts[want]++
	}
	if counts[true] < 1000 || counts[false] < 1000 {
		t.Fatalf("too few cases of each kind: %v", counts)
	}
}

func TestPredicateKeys(t *testing.T) {
	set, keys := PredicateKeys("s", []string{"b", "a", "b"})
	set2, keys2 := PredicateKeys("s", []string{"a", "b"})
	if set != set2 || !slices.Equal(keys, keys2) {
		t.Errorf("order and duplicates change the keys")
	}
	if len(keys) != 3 || keys[0] != set {
		t.Errorf("keys = %d, want the set key and one per distinct predicate", len(keys))
	}
	// Length prefixes keep ["ab"] and ["a", "b"] apart.
	if a, _ := PredicateKeys("s", []string{"ab"}); a == set {
		t.Errorf("different predicate lists share a set key")
	}
	if empty, k := PredicateKeys("s", nil); len(k) != 1 || k[0] != empty {
		t.Errorf("no predicates: keys = %v, want just the set key", k)
	}
}
