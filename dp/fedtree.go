package dp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"

	"github.com/google/differential-privacy/go/v3/noise"
)

// Federated quantiles (issue 21). The library's quantile tree
// (dpagg.BoundedQuantiles) noises a node only when Result reads it, and
// keeps its noisy counts to itself, so one site's tree cannot be summed
// with another's. A site's part of a federated quantile is therefore the
// tree itself, of FederatedTreeHeight levels of FederatedBranching
// children (fedTree: 584 nodes, where the default tree has 69,904, each a
// draw of the library's secure sampler): the exact count of every node
// below the root, empty nodes too, so which nodes are empty does not
// show, each with the library's integer noise (noise.Noise.AddNoiseInt64)
// for the L0, L∞, ε and δ the library's tree of that shape gives its
// nodes (treeNodeSensitivity: the norm of the partial plan's tree
// statistic, L0 = h·k·sets and L∞ = C, or L∞ = C·√k as L0 = h·k²·sets
// and L∞ = C with grouping sets, whole numbers for integer noise). That
// is the library's quantile-tree mechanism releasing every node instead
// of the nodes one walk reads: the same sensitivities, so the same (ε, δ).
//
// The broker sums the sites' noisy counts node by node (post-processing)
// and reads a rank from the sum by walking it exactly as
// BoundedQuantiles.Result walks its own noisy counts (mergedTree.result;
// TestMergedTreeWalkIsLibraryWalk). Each summed node carries the sum of N
// independent noises of standard deviation σ: σ√N, which the interval
// (rankHalfWidth) and FederatedAccuracy take from the federated plan.

const (
	// treeAlpha and treeTolerance are the library's alpha (a child
	// holding less than this share of its siblings' clamped total counts
	// as empty) and numericalTolerance, constants of dpagg's walk.
	treeAlpha     = 0.0075
	treeTolerance = 1e-6
	// maxNodeCount bounds a site's noisy node count: float64 holds it
	// exactly, and MaxSites of them sum within int64.
	maxNodeCount = 1 << 53
)

// noisyTreeNodes is a site's part of one quantile tree of one group: the
// count of every node below the root, from the leaf histogram hist, with
// the library's noise for the tree statistic st (treeNodeSensitivity: the
// sensitivities the library's own tree gives its nodes), encoded
// (encodeTree). The exact counts do not outlive it.
func noisyTreeNodes(s Spec, t treeShape, st stat, hist map[int]int64, nz noise.Noise) ([]byte, error) {
	l0, lInf := treeNodeSensitivity(s, t)
	nodes := make([]int64, t.nodes()+1) // [0] is the root, not part of the tree's counts
	firstLeaf := t.firstLeaf()
	for leaf, n := range hist {
		for i := firstLeaf + t.leafOf(leaf); i != 0; i = (i - 1) / t.branching {
			nodes[i] += n
		}
	}
	// One draw of the library's secure Gaussian sampler per node, 7–9 µs
	// of CPU each. On one goroutine: the library's randomness is one
	// buffer behind one lock, and two goroutines noised a tree in the same
	// wall time as one, with twice the CPU.
	for i := 1; i < len(nodes); i++ {
		v, err := nz.AddNoiseInt64(nodes[i], l0, lInf, st.eps, st.delta)
		if err != nil {
			return nil, fmt.Errorf("noise on %s: %w", st.name, err)
		}
		nodes[i] = v
	}
	return encodeTree(nodes[1:]), nil
}

// encodeTree encodes a tree's noisy node counts, in node order, as
// zig-zag varints: about one byte a node at typical noise scales (a noise
// or a count under 64 in size takes one byte, under 8,192 two). DEFLATE
// would save about 15% and cost the broker six times the decoding time.
func encodeTree(counts []int64) []byte {
	out := make([]byte, 0, len(counts)+len(counts)/8)
	for _, c := range counts {
		out = binary.AppendVarint(out, c)
	}
	return out
}

// addTree decodes one site's encoded tree and adds its node counts to
// sum (a tree's nodes()+1 counts, root first). It refuses anything but
// exactly len(sum)−1 counts of at most maxNodeCount in size. Messages
// never quote a value.
func addTree(sum []int64, enc []byte) error {
	nodes := len(sum) - 1
	if len(enc) > nodes*binary.MaxVarintLen64 {
		return fmt.Errorf("a quantile tree holds more than %d node counts", nodes)
	}
	i := 1
	for ; len(enc) > 0 && i < len(sum); i++ {
		v, n := binary.Varint(enc)
		if n <= 0 {
			return errors.New("a quantile tree's node count is not a valid varint")
		}
		if v > maxNodeCount || v < -maxNodeCount {
			return fmt.Errorf("a quantile tree's node count is beyond ±2^53")
		}
		sum[i] += v
		enc = enc[n:]
	}
	if i != len(sum) || len(enc) > 0 {
		return fmt.Errorf("a quantile tree must hold %d node counts, every node of the federated tree (an agent of an older tre sends trees of 4,368)", nodes)
	}
	return nil
}

// mergedTree is the node-by-node sum of the sites' noisy counts of one
// quantile tree (library numbering, nodes[0] the root, unused), over the
// bounds [lower, upper].
type mergedTree struct {
	shape        treeShape
	nodes        []int64
	lower, upper float64
}

// result is the value of rank read from t exactly as the library's
// BoundedQuantiles.Result reads its own noisy counts: the rank clamped to
// [0.005, 0.995]; from the root down, at each node, negative children
// clamped to 0 for their total, children below treeAlpha of it skipped,
// the first child whose running share reaches the rank taken, the rank
// rescaled within it; a node whose children are all empty ends the walk;
// and linear interpolation between the ends of the node reached.
func (t mergedTree) result(rank float64) (float64, error) {
	rank = math.Max(math.Min(rank, 0.995), 0.005)
	b, firstLeaf, leaves := t.shape.branching, t.shape.firstLeaf(), float64(t.shape.leaves())
	index := 0
	for index < firstLeaf {
		first, last := index*b+1, (index+1)*b
		total := 0.0
		for i := first; i <= last; i++ {
			total += math.Max(0.0, float64(t.nodes[i]))
		}
		corrected := 0.0
		for i := first; i <= last; i++ {
			if c := float64(t.nodes[i]); c >= total*treeAlpha {
				corrected += c
			}
		}
		if corrected == 0.0 {
			break
		}
		next := index
		partial := 0.0
		for i := first; i <= last; i++ {
			c := float64(t.nodes[i])
			if c < total*treeAlpha {
				continue
			}
			partial += c
			if partial/corrected >= rank-treeTolerance {
				rank = math.Min(math.Max(0.0, (rank-(partial-c)/corrected)/(c/corrected)), 1.0)
				next = i
				break
			}
		}
		if next == index {
			// Not reached: the last counted child's running share is
			// corrected/corrected = 1. Interpolate within this node.
			break
		}
		index = next
	}
	left, right := index, index
	for left < firstLeaf {
		left = left*b + 1
	}
	for right < firstLeaf {
		right = (right + 1) * b
	}
	lv := (t.upper-t.lower)*(float64(left-firstLeaf)/leaves) + t.lower
	rv := (t.upper-t.lower)*(float64(right-firstLeaf+1)/leaves) + t.lower
	return (1-rank)*lv + rank*rv, nil
}
