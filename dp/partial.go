package dp

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
)

// Federation (issue 21): one query over several sites, each site's rows
// staying at that site. Every site runs the same contribution-bounded SQL
// and ProtectPartial: noise from the DP library on every statistic of every
// group of the public-domain cross product, and nothing else. The broker
// sums the sites' noisy statistics with Combine and post-processes the sums
// as Protect does (suppression, release threshold, rounding, intervals).
//
// The sum of N independent Gaussian noises of standard deviation σ is
// Gaussian with standard deviation σ√N, and the analytic Gaussian σ the
// library computes is linear in the L2 sensitivity, so the library's own
// Threshold and ConfidenceInterval, called with L∞ scaled by √N, are those
// of the combined value (Spec.federatedPlan). The library has no such call
// for a sum of Laplace variables, so federated queries use Gaussian noise.
//
// A quantile is read from a quantile tree (quantile.go). Each site sends
// its whole tree: the library's integer noise on the count of every node
// below the root, empty ones too (fedtree.go: a tree of
// FederatedTreeHeight levels of FederatedBranching children, 584 nodes,
// about 600 bytes at typical noise scales). The broker sums the sites'
// trees node by node and walks the sum exactly as the library's
// BoundedQuantiles.Result walks one tree; every node of the sum has noise
// σ√N, so the rank half-width (rankHalfWidth), read from the federated
// plan, grows as √N for the same number of values, and the interval in
// values with it (less in practice: N sites usually bring N times the
// values, and the rank error shrinks as 1/n).

// Partial is one site's part of a federated query: the noisy, unrounded,
// unsuppressed value of every statistic of the budget plan, for every group
// of the public-domain cross product, in domain order. It holds no exact
// statistic: every number in Stats went through the DP library's noise, and
// the other fields are what a site's Result report already carries.
type Partial struct {
	// SpecHash is the Spec.Hash of the Spec the site compiled; Combine
	// refuses parts of another Spec.
	SpecHash string `json:"spec_hash"`
	// Statistics names the noisy statistics, in the order of every
	// group's Stats ("n", "bmi/count", "bmi/sum", "suppression_count", …).
	Statistics []string `json:"statistics"`
	// Groups is the cross product of the group columns' public domains, in
	// domain order (one keyless group for a query without GROUP BY; with
	// grouping sets, the totals too, as Protect releases them).
	Groups []PartialGroup `json:"groups"`

	// RowsDroppedByBounding is the site's Report field: the rows the k/C
	// bounds removed, rounded to the rounding base (not DP; checker only).
	RowsDroppedByBounding int64 `json:"rows_dropped_by_bounding"`
	// Filled in by the sandbox, as in a Result's report.
	OptOut    OptOutReport  `json:"optout"`
	Sandbox   SandboxReport `json:"sandbox"`
	Synthetic bool          `json:"synthetic,omitempty"`
}

// PartialGroup is one group of a Partial: its keys and the noisy value of
// each statistic (Partial.Statistics).
type PartialGroup struct {
	Keys  []string  `json:"keys"`
	Stats []float64 `json:"stats"`
	// Trees holds each quantile tree's noisy node counts, in
	// Spec.TreeOwners order: every node below the root, in the library's
	// breadth-first order, as zig-zag varints (base64 in JSON).
	Trees [][]byte `json:"trees,omitempty"`
}

// Hash is the hex SHA-256 of s's JSON encoding: two sites that compiled the
// same query against agreeing catalogs have the same hash.
func (s Spec) Hash() string {
	b, err := json.Marshal(s)
	if err != nil { // a Spec is plain data; only a NaN bound fails, which Validate refuses
		return ""
	}
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// federatedKinds are the aggregate kinds whose noisy statistics add up
// across sites: each is a count or a (midpoint-shifted) sum, a ratio,
// which is post-processing of two of them, or a quantile, read from the
// sum of the sites' noisy trees.
var federatedKinds = []AggKind{AggCount, AggCountPatients, AggSum, AggMean, AggVariance, AggStddev, AggRatio, AggQuantile}

// MaxPartialBytes is the largest partial result a site may upload (the
// broker's limit on a job completion's body): room for MaxFederatedTrees
// trees at 4 bytes a node (3 bytes of varint, a count or a noise of up to
// 2^20, in base64), 2.3 MB, and the other statistics of up to 600 months
// of keys, with room to spare (it was set for trees of 4,368 nodes).
const MaxPartialBytes = 32 << 20

// MaxFederatedTrees caps the quantile trees of a federated query: groups
// times distinct quantile trees. Each site sends every node of each tree
// (fedTree.nodes() = 584 noisy counts, and the library's noise drawn for
// each: 4–6 ms of a site's CPU a tree).
const MaxFederatedTrees = 1000

// ValidateFederated reports whether s can be run as a federated query
// (ProtectPartial at each site, Combine at the broker); the error names the
// reason. On top of Validate it requires:
//
//   - every group column has a public domain: DP partition selection at
//     each site keeps a key by that site's own noisy count, so a key could
//     be kept at one site and dropped at another, and the combined table
//     would have no sound release rule or interval for it;
//   - Gaussian noise: a sum of N Gaussian noises is Gaussian (σ√N), which
//     the library's thresholds and intervals describe; there is no library
//     call for a sum of N Laplace noises;
//   - quantiles in at most MaxFederatedTrees trees (groups × trees), each
//     of which every site sends whole. A site noises the nodes with the
//     plan's tree norm (treeNodeSensitivity), which covers a patient's
//     values in a cell's tree and in the totals' trees.
func (s Spec) ValidateFederated() error {
	if err := s.Validate(); err != nil {
		return err
	}
	for _, g := range s.Groups {
		if len(g.Domain) == 0 {
			return fmt.Errorf("group column %q has no public domain: a federated query may group only on columns with a public domain, or on a month, quarter or year of a date the WHERE clause bounds on both sides (partition selection at each site cannot be combined soundly)", g.Name)
		}
	}
	if s.mechanism() != MechanismGaussian {
		return fmt.Errorf("a federated query needs gaussian noise, not %q: the sum of the sites' noises must have a known distribution", s.mechanism())
	}
	for _, a := range s.Aggregates {
		if !slices.Contains(federatedKinds, a.Kind) {
			return fmt.Errorf("aggregate %q: kind %q cannot be federated yet", a.Name, a.Kind)
		}
	}
	if trees := len(s.TreeOwners()) * s.DomainCells(); trees > MaxFederatedTrees {
		return fmt.Errorf("the quantiles read %d trees (groups × distinct quantile columns); a federated query may read at most %d, since every site sends every node of each", trees, MaxFederatedTrees)
	}
	return nil
}

// ProtectPartial is a site's part of a federated query: it adds the DP
// library's noise to every statistic of every group of the public-domain
// cross product (Protect's noisyGroups) and stops there: no suppression, no
// rounding, no clamping, no intervals, which Combine applies to the sum of
// the sites' parts. groups are the exact contribution-bounded statistics
// the rewritten SQL computed; nothing exact is in the Partial.
func ProtectPartial(s Spec, groups []GroupStats, opts Options) (*Partial, error) {
	if err := s.ValidateFederated(); err != nil {
		return nil, fmt.Errorf("protect partial: %w", err)
	}
	if err := checkGroups(s, groups); err != nil {
		return nil, fmt.Errorf("protect partial: %w", err)
	}
	p := s.partialPlan()
	nz := opts.Noise
	if nz == nil {
		nz = p.declaredNoise()
	}
	noisy, _, _, err := noisyGroups(s, p, groups, nz, opts.Selected, true)
	if err != nil {
		return nil, fmt.Errorf("protect partial: %w", err)
	}
	out := &Partial{
		SpecHash:              s.Hash(),
		Statistics:            p.statNames(),
		Groups:                make([]PartialGroup, len(noisy)),
		RowsDroppedByBounding: int64(roundNearest(float64(max(opts.DroppedRows, 0)), s.RoundingBase)),
	}
	for i, g := range noisy {
		keys := make([]string, len(g.keys))
		for j, k := range g.keys {
			keys[j] = *k // public domains: never NULL
		}
		// Only the noisy statistics: the dominance flags noisyGroups also
		// computed come from exact values and stay at the site.
		out.Groups[i] = PartialGroup{Keys: keys, Stats: g.stats, Trees: g.trees}
	}
	return out, nil
}

func (p budgetPlan) statNames() []string {
	names := make([]string, len(p.stats))
	for i, st := range p.stats {
		names[i] = st.name
	}
	return names
}

// CheckPartial reports whether part could be what ProtectPartial returns
// for s: the same Spec (hash), the same statistics, exactly the keys
// Protect releases in its order (the cross product of the public domains,
// with grouping sets their totals too), a finite noisy value for every
// statistic, and for each quantile tree every node's noisy count. The
// broker calls it on an upload. Messages never quote a key or a value.
func (s Spec) CheckPartial(part *Partial) error {
	if err := s.checkPartialShape(part); err != nil {
		return err
	}
	sum := make([]int64, fedTree.nodes()+1)
	for i, g := range part.Groups {
		for _, t := range g.Trees {
			clear(sum)
			if err := addTree(sum, t); err != nil {
				return fmt.Errorf("partial group %d: %w", i+1, err)
			}
		}
	}
	return nil
}

// checkPartialShape is CheckPartial but for the contents of the quantile
// trees, which Combine decodes as it sums them.
func (s Spec) checkPartialShape(part *Partial) error {
	if err := s.ValidateFederated(); err != nil {
		return err
	}
	if part == nil {
		return errors.New("the partial result is empty")
	}
	if part.SpecHash != s.Hash() {
		return errors.New("the partial result was computed for another query specification (spec hash differs)")
	}
	names := s.plan().statNames()
	if !slices.Equal(part.Statistics, names) {
		return fmt.Errorf("the partial result has statistics %d, the approved query %d, or in another order", len(part.Statistics), len(names))
	}
	want := s.releasedKeys()
	trees := len(s.TreeOwners())
	if len(part.Groups) != len(want) {
		return fmt.Errorf("the partial result has %d groups; the approved query's public domains have %d", len(part.Groups), len(want))
	}
	for i, g := range part.Groups {
		if len(g.Keys) != len(s.Groups) {
			return fmt.Errorf("partial group %d has %d keys for %d group columns", i+1, len(g.Keys), len(s.Groups))
		}
		for j, k := range g.Keys {
			if k != *want[i][j] {
				return fmt.Errorf("partial group %d: the key of group column %q is not the public domain's next value", i+1, s.Groups[j].Name)
			}
		}
		if len(g.Stats) != len(names) {
			return fmt.Errorf("partial group %d has %d statistics, want %d", i+1, len(g.Stats), len(names))
		}
		for _, v := range g.Stats {
			if math.IsNaN(v) || math.IsInf(v, 0) {
				return fmt.Errorf("partial group %d: a statistic is not a finite number", i+1)
			}
		}
		if len(g.Trees) != trees {
			return fmt.Errorf("partial group %d has %d quantile trees, want %d", i+1, len(g.Trees), trees)
		}
	}
	return nil
}
