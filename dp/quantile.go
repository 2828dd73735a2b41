package dp

import (
	"fmt"
	"math"

	"github.com/google/differential-privacy/go/v3/dpagg"
	"github.com/google/differential-privacy/go/v3/noise"
)

// Quantile trees. A quantile (AggQuantile) is released from the DP
// library's quantile tree, dpagg.BoundedQuantiles, with its default shape:
// QuantileBranching children per node, QuantileTreeHeight levels below the
// root, QuantileLeaves equal-width leaves between the bounds. Adding a
// value increments the count of every node on the path from its leaf up;
// the noise is the library's, on every node it reads; a rank is found by
// walking down the noisy counts. Any number of ranks read one tree, so
// they cost one statistic.
//
// The sandbox does not send values: DuckDB counts the bounded values per
// leaf (QuantileLeaf, computed in SQL with the same arithmetic), and
// newTree adds to the library's tree one value inside each leaf as many
// times as the leaf's count. The tree's state is a function of the leaf
// of each value alone (BoundedQuantiles.Add clamps, takes the leaf and
// increments its path), so the tree, its noise and every result are those
// of adding the values themselves (TestTreeFromHistogramIsTreeFromValues).
const (
	QuantileTreeHeight = dpagg.DefaultTreeHeight
	QuantileBranching  = dpagg.DefaultBranchingFactor
	// QuantileLeaves is QuantileBranching^QuantileTreeHeight.
	QuantileLeaves = QuantileBranching * QuantileBranching * QuantileBranching * QuantileBranching
	// FederatedTreeHeight and FederatedBranching are the shape of the
	// trees a site sends whole for a federated quantile (fedtree.go):
	// three levels of eight children, 584 nodes and 512 leaves, each 128
	// of QuantileLeaves wide. Each node is a draw of the library's secure
	// sampler at the site, where the library's default tree (four levels
	// of 16) has 69,904 nodes. A value counts in one node per level, so
	// the nodes' noise is that of L0 = 3·k·sets, not 4·k·sets, and the
	// walk reads 8 noisy children a level, not 16: against three levels
	// of 16 (4,368 nodes) the median is closer below about 10,000 values
	// a site and further above, by at most a leaf
	// (BenchmarkFederatedTreeShapes; docs/privacy.md).
	FederatedTreeHeight = 3
	FederatedBranching  = 8
)

// treeShape is the shape of a quantile tree: height levels below the
// root, branching (B) children a node, nodes numbered breadth first from
// the root (0) as the library numbers them, the children of node i being
// i·B+1 … (i+1)·B. B is a power of two and B^height divides
// QuantileLeaves, so that each leaf of the finest tree (QuantileLeaf)
// lies in exactly one leaf of t (leafOf).
type treeShape struct{ height, branching int }

var (
	// siteTree is the library's default tree, which one site's quantiles
	// are read from (newTree).
	siteTree = treeShape{QuantileTreeHeight, QuantileBranching}
	// fedTree is the tree a site sends whole for a federated quantile.
	fedTree = treeShape{FederatedTreeHeight, FederatedBranching}
)

// leaves is B^height.
func (t treeShape) leaves() int {
	n := 1
	for range t.height {
		n *= t.branching
	}
	return n
}

// nodes is the number of nodes below the root: B + B² + … + B^height.
func (t treeShape) nodes() int {
	n, level := 0, 1
	for range t.height {
		level *= t.branching
		n += level
	}
	return n
}

// firstLeaf is the index of the leftmost leaf.
func (t treeShape) firstLeaf() int { return t.nodes() + 1 - t.leaves() }

// leafOf is the leaf of t a leaf of the finest tree (QuantileLeaf)
// falls in: its ancestor at t's depth. The library computes a leaf as
// ⌊(x−lower)/(upper−lower)·leaves⌋, and scaling by a power of two is
// exact, so this is the leaf the library's tree of t's height gives the
// value itself (TestMergedTreeWalkIsLibraryWalk).
func (t treeShape) leafOf(leaf int) int { return leaf / (QuantileLeaves / t.leaves()) }

// leafWidth is the width of a leaf of t over [lower, upper].
func (t treeShape) leafWidth(lower, upper float64) float64 {
	return (upper - lower) / float64(t.leaves())
}

// QuantileLeaf is the leaf of a quantile tree over [lower, upper] a value
// x falls in, after clamping, as the library computes it, except that a
// value just below upper whose quotient rounds up to QuantileLeaves goes
// to the last leaf (the library would file it past the last leaf, outside
// its tree). The rewritten SQL of package queries computes exactly this.
func QuantileLeaf(x, lower, upper float64) int {
	x = clamp(x, lower, upper)
	return min(int((x-lower)/(upper-lower)*float64(QuantileLeaves)), QuantileLeaves-1)
}

// leafValue is a value inside leaf: its midpoint, which the library's
// leaf arithmetic maps back to the leaf for any bounds Validate accepts
// (a leaf is at least 2^-16 of the range wide).
func leafValue(leaf int, lower, upper float64) float64 {
	return lower + (upper-lower)*(float64(leaf)+0.5)/float64(QuantileLeaves)
}

// treePartitions is the MaxPartitionsContributed P a quantile tree of s
// is built with. The library noises each node it reads for L0 = h·P and
// L∞ = C (MaxContributionsPerPartition), so P must give the node noise
// the norm the plan's tree statistic has (L0 = h·k·sets and L∞ =
// setsLInf):
//
//   - without grouping sets, or with Laplace noise (L1 = L0·L∞), P = k·sets:
//     L1 = h·k·sets·C, the plan's;
//   - with grouping sets and Gaussian noise (L2 = √L0·L∞) the plan's L∞ is
//     C·√k, a total holding up to k of a patient's cells, and P = k²·sets:
//     L2 = √(h·k²·sets)·C = √(h·k·sets)·C·√k, the plan's.
//
// Before this, trees were built with P = k, whatever the sets: a query with
// grouping sets (ROLLUP, CUBE) had quantile trees noised for one grouping
// while a patient's values are in the trees of every set.
func treePartitions(s Spec) int64 {
	p := int64(s.MaxGroupsPerPatient) * int64(s.setCount())
	if len(s.Sets) > 0 && s.mechanism() == MechanismGaussian {
		p *= int64(s.MaxGroupsPerPatient)
	}
	return p
}

// treeNodeSensitivity is the L0 and L∞ the library's noise gets for a
// node of a quantile tree of shape t: those BoundedQuantiles gives its
// nodes when built with treePartitions. Unlike the plan's L∞, C·√k with
// grouping sets and Gaussian noise, they are whole numbers, as integer
// noise needs.
func treeNodeSensitivity(s Spec, t treeShape) (l0, lInf int64) {
	return int64(t.height) * treePartitions(s), int64(s.MaxRowsPerGroup)
}

// newTree builds the library's quantile tree of shape t for one group
// from the leaf histogram of its bounded values, its node noise that of
// the tree statistic st (treePartitions). Protect builds siteTree's
// shape; tests build fedTree's to check the federated walk against it.
func newTree(s Spec, t treeShape, st stat, a AggSpec, hist map[int]int64, nz noise.Noise) (*dpagg.BoundedQuantiles, error) {
	bq, err := dpagg.NewBoundedQuantiles(&dpagg.BoundedQuantilesOptions{
		Epsilon:                      st.eps,
		Delta:                        st.delta,
		MaxPartitionsContributed:     treePartitions(s),
		MaxContributionsPerPartition: int64(s.MaxRowsPerGroup),
		Lower:                        a.Lower,
		Upper:                        a.Upper,
		Noise:                        nz,
		TreeHeight:                   t.height,
		BranchingFactor:              t.branching,
	})
	if err != nil {
		return nil, fmt.Errorf("quantile tree of %s: %w", a.Name, err)
	}
	for leaf, n := range hist {
		x := leafValue(leaf, a.Lower, a.Upper)
		for range n {
			if err := bq.Add(x); err != nil {
				return nil, fmt.Errorf("quantile tree of %s: %w", a.Name, err)
			}
		}
	}
	return bq, nil
}

// zScore is the two-sided standard normal quantile for alpha.
func zScore(alpha float64) float64 { return math.Sqrt2 * math.Erfinv(1-alpha) }

// rankHalfWidth is the half-width, in rank, of the (1−alpha) interval of
// a quantile read from a tree whose nodes have noise of standard deviation
// sigma, over n values. At each level the walk picks the child where the
// noisy share of the values to its left reaches the rank: with A values
// on the left, B on the right and the noise of their b nodes, that share
// is off by (B·e_A − A·e_B)/(A+B)², of variance q(1−q)·b·σ²/N_node² for a
// rank q within the node. Scaled back to the whole tree (the node holds
// N_node of the n values) each level adds q(1−q)·b·σ²/n², at most
// b·σ²/(4n²), whatever the data; over the h levels the rank error has
// standard deviation at most √(h·b)·σ/(2n), and a normal approximation
// gives the width (first order: the noise on n itself is left out).
func rankHalfWidth(t treeShape, sigma, n, alpha float64) float64 {
	return zScore(alpha) * math.Sqrt(float64(t.height*t.branching)) * sigma / (2 * math.Max(n, 1))
}

// quantileRelease is the released value of rank q from a noisy tree,
// read by result (the library's BoundedQuantiles.Result for one site's
// tree, mergedTree.result for the sum of the sites' trees), and its
// (1−CIAlpha) interval: the tree (of shape t) read at q ± r, r the rank
// half-width for nodes of noise sigma and the noisy count nHat of values,
// widened by one leaf (the tree interpolates inside a leaf) and kept
// within the bounds. It reads only noisy counts: post-processing of the
// tree.
func quantileRelease(result func(rank float64) (float64, error), a AggSpec, t treeShape, sigma, nHat float64) (v, lo, hi float64, err error) {
	r := rankHalfWidth(t, sigma, nHat, CIAlpha)
	if v, err = result(a.Rank); err != nil {
		return 0, 0, 0, fmt.Errorf("quantile %s: %w", a.Name, err)
	}
	if lo, err = result(clamp(a.Rank-r, 0, 1)); err != nil {
		return 0, 0, 0, fmt.Errorf("quantile %s: %w", a.Name, err)
	}
	if hi, err = result(clamp(a.Rank+r, 0, 1)); err != nil {
		return 0, 0, 0, fmt.Errorf("quantile %s: %w", a.Name, err)
	}
	w := t.leafWidth(a.Lower, a.Upper)
	return v, clamp(math.Min(lo, v)-w, a.Lower, a.Upper), clamp(math.Max(hi, v)+w, a.Lower, a.Upper), nil
}

// quantileAccuracy is a quantile's expected 95% half-width before the query
// runs: the rank half-width for accuracyReferenceRows values, read as a
// width of values spread evenly over the bounds, plus one leaf of the
// plan's tree.
func quantileAccuracy(p budgetPlan, a AggSpec, tree stat) float64 {
	r := math.Min(rankHalfWidth(p.tree, p.scale(tree), accuracyReferenceRows, CIAlpha), 0.5)
	return r*(a.Upper-a.Lower) + p.tree.leafWidth(a.Lower, a.Upper)
}

// TreeOwners returns, for each quantile tree in Tree order (1, 2, …),
// the index of its first aggregate: the one whose AggStats.Hist is read.
// Meaningful for a Spec that passes Validate.
func (s Spec) TreeOwners() []int {
	var out []int
	for i, a := range s.Aggregates {
		if a.Kind == AggQuantile && a.Tree == len(out)+1 {
			out = append(out, i)
		}
	}
	return out
}

// checkTrees refuses ranks outside (0, 1), trees not numbered 1, 2, … in
// order of first use, and quantiles of one tree that disagree on their
// bounds.
func (s Spec) checkTrees() error {
	first := map[int]AggSpec{}
	for _, a := range s.Aggregates {
		if a.Kind != AggQuantile {
			continue
		}
		if !(a.Rank > 0 && a.Rank < 1) {
			return fmt.Errorf("quantile %q: rank must lie strictly between 0 and 1, got %v", a.Name, a.Rank)
		}
		f, ok := first[a.Tree]
		switch {
		case !ok && a.Tree != len(first)+1:
			return fmt.Errorf("quantile %q: tree %d, want %d (trees are numbered 1, 2, … in order of first use)", a.Name, a.Tree, len(first)+1)
		case !ok:
			first[a.Tree] = a
		case f.Lower != a.Lower || f.Upper != a.Upper:
			return fmt.Errorf("quantiles %q and %q share tree %d but not its bounds", f.Name, a.Name, a.Tree)
		}
	}
	return nil
}
