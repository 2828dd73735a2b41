package broker

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"

	"github.com/nhs-tre/tre/queries"
)

// planKey identifies a compilation: Compile is a function of the catalog's
// content, the SQL text and the options, of which the broker sets only
// epsilon and federated (no seed, no unique tables).
type planKey struct {
	catalogHash string
	sql         string
	epsilon     float64
	federated   bool
}

// Plan cache bounds: texts longer than maxCachedPlanSQL are compiled every
// time; when maxCachedPlans are held an arbitrary one is dropped. A plan is
// a few times its SQL's size (rewritten and normalised texts), so the cache
// holds at most a few MB.
const (
	maxCachedPlans   = 256
	maxCachedPlanSQL = 8 << 10
)

type cachedCatalog struct {
	hash string
	cat  *queries.Catalog
}

// catalog returns the parsed catalog of dataset and its content hash,
// cached by that hash so submissions do not decode it each time.
func (s *Service) catalog(ctx context.Context, tx Tx, dataset string) (*queries.Catalog, string, error) {
	_, hash, _, err := tx.FindCatalog(ctx, dataset, false)
	if ErrorCode(err) == ENOTFOUND {
		return nil, "", unpublished(dataset)
	} else if err != nil {
		return nil, "", err
	}
	return s.catalogOf(ctx, tx, dataset, hash)
}

func unpublished(dataset string) error {
	return Errorf(EINVALID, "dataset %q has not been published by any site", dataset)
}

// catalogOf is catalog when the earliest holder's catalog hash is known
// (FindCatalogHolders' first): the cached catalog, or the stored one.
func (s *Service) catalogOf(ctx context.Context, tx Tx, dataset, hash string) (*queries.Catalog, string, error) {
	s.mu.Lock()
	c, ok := s.catalogs[dataset]
	s.mu.Unlock()
	if ok && c.hash == hash {
		return c.cat, hash, nil
	}
	_, hash, body, err := tx.FindCatalog(ctx, dataset, true)
	if err != nil {
		return nil, "", err
	}
	cat := new(queries.Catalog)
	if err := json.Unmarshal(body, cat); err != nil {
		return nil, "", fmt.Errorf("decode stored catalog %q: %w", dataset, err)
	}
	s.mu.Lock()
	s.catalogs[dataset] = cachedCatalog{hash: hash, cat: cat}
	s.mu.Unlock()
	return cat, hash, nil
}

// compile compiles sql against cat, reusing the plan of an identical
// earlier compilation (same catalog content, text, epsilon and federation).
// Refusals and errors are not cached. Callers get their own copy of the
// plan's slices. A federated query (over a dataset several sites hold) is
// compiled as each site compiles its part (queries.Options.Federated).
func (s *Service) compile(ctx context.Context, cat *queries.Catalog, catalogHash, sql string, epsilon float64, federated bool) (*queries.Plan, error) {
	if plan := s.cachedPlan(catalogHash, sql, epsilon, federated); plan != nil {
		return plan, nil
	}
	key := planKey{catalogHash: catalogHash, sql: sql, epsilon: epsilon, federated: federated}
	plan, err := s.compiler.Compile(ctx, cat, sql, queries.Options{Epsilon: epsilon, Federated: federated})
	if err != nil {
		return nil, err
	}
	if len(sql) <= maxCachedPlanSQL {
		s.mu.Lock()
		if len(s.plans) >= maxCachedPlans {
			for k := range s.plans { // map order: an arbitrary victim
				delete(s.plans, k)
				break
			}
		}
		s.plans[key] = clonePlan(plan)
		s.mu.Unlock()
	}
	return plan, nil
}

// cachedPlan returns a copy of the cached plan of sql over the catalog with
// the given hash at epsilon, federated or not, or nil.
func (s *Service) cachedPlan(catalogHash, sql string, epsilon float64, federated bool) *queries.Plan {
	s.mu.Lock()
	plan, ok := s.plans[planKey{catalogHash: catalogHash, sql: sql, epsilon: epsilon, federated: federated}]
	s.mu.Unlock()
	if !ok {
		return nil
	}
	return clonePlan(plan)
}

// clonePlan copies a plan deep enough that changing the copy's slices
// leaves the original alone.
func clonePlan(p *queries.Plan) *queries.Plan {
	c := *p
	c.Accuracy = slices.Clone(p.Accuracy)
	c.Predicates = slices.Clone(p.Predicates)
	c.Spec.Groups = slices.Clone(p.Spec.Groups)
	c.Spec.Aggregates = slices.Clone(p.Spec.Aggregates)
	return &c
}
