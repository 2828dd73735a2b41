package dp

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
)

// MaxSites caps the parts Combine accepts.
const MaxSites = 1000

// Combine is the broker's half of a federated query: it checks that every
// part belongs to s (CheckPartial), sums the parts' noisy statistics group
// by group, and post-processes the sums exactly as Protect post-processes
// one site's noisy statistics: suppression on the noisy patient count with
// the release threshold for the combined noise, clamping, rounding, 95%
// intervals and the disclosure report, which says how many sites took part
// (Report.Sites). Every decision is a function of the parts' noisy values.
// A quantile is read from the node-by-node sum of the sites' noisy trees
// (combineTrees), as the library reads one tree, and its cell is released
// or suppressed with its group, on the combined noisy patient count, as
// Protect does.
//
// The noise on a combined statistic is the sum of the N sites' independent
// Gaussian noises of standard deviation σ: Gaussian with σ√N. Thresholds,
// intervals and the report's noise scales come from the library for L∞
// scaled by √N (federatedPlan), which gives σ√N. The dominance rules are
// not applied: they need exact per-patient contributions, which stay at
// each site.
//
// The report's ε and δ are what each site spent on its own patients
// (Spec.Cost): with disjoint populations the sites' releases compose in
// parallel.
func Combine(s Spec, parts []*Partial) (*Result, error) {
	if err := s.ValidateFederated(); err != nil {
		return nil, fmt.Errorf("combine: %w", err)
	}
	if len(parts) == 0 {
		return nil, errors.New("combine: no partial results")
	}
	if len(parts) > MaxSites {
		return nil, fmt.Errorf("combine: %d partial results, at most %d sites", len(parts), MaxSites)
	}
	for i, part := range parts {
		if err := s.checkPartialShape(part); err != nil {
			return nil, fmt.Errorf("combine: site %d: %w", i+1, err)
		}
	}
	p := s.federatedPlan(len(parts))
	groups := make([]noisyGroup, len(parts[0].Groups))
	var nodes []int64 // one tree's summed node counts, reused
	if len(s.TreeOwners()) > 0 {
		nodes = make([]int64, p.tree.nodes()+1)
	}
	for gi, g := range parts[0].Groups {
		keys := make([]*string, len(g.Keys))
		for j := range g.Keys {
			keys[j] = &parts[0].Groups[gi].Keys[j]
		}
		sum := make([]float64, len(p.stats))
		for _, part := range parts {
			for j, v := range part.Groups[gi].Stats {
				sum[j] += v
			}
		}
		groups[gi] = noisyGroup{keys: keys, stats: sum, dominance: make([][]string, len(s.Aggregates))}
		if err := combineTrees(s, p, parts, gi, &groups[gi], nodes); err != nil {
			return nil, fmt.Errorf("combine: %w", err)
		}
	}
	res, err := postProcess(s, p, groups)
	if err != nil {
		return nil, fmt.Errorf("combine: %w", err)
	}
	s.fillReport(p, &res.Report, SelectionPublicDomain)
	r := &res.Report
	r.Sites = len(parts)
	var dropped int64
	for _, part := range parts {
		dropped += part.RowsDroppedByBounding
	}
	r.RowsDroppedByBounding = int64(roundNearest(float64(dropped), s.RoundingBase))
	r.OptOut, r.Sandbox, r.Synthetic = mergeSiteReports(parts)
	return res, nil
}

// combineTrees sums, for group gi, each quantile tree's noisy node counts
// over the parts (into nodes, scratch of p.tree.nodes()+1) and reads every
// quantile of the tree from the sum (mergedTree.result), with its interval
// for the combined node noise of the federated plan p (σ√N) and the
// combined noisy count of the tree's values, as addQuantiles does for one
// site's tree.
func combineTrees(s Spec, p budgetPlan, parts []*Partial, gi int, g *noisyGroup, nodes []int64) error {
	for t, owner := range s.TreeOwners() {
		clear(nodes)
		for i, part := range parts {
			if err := addTree(nodes, part.Groups[gi].Trees[t]); err != nil {
				return fmt.Errorf("site %d: partial group %d: %w", i+1, gi+1, err)
			}
		}
		for ai, a := range s.Aggregates {
			if a.Kind != AggQuantile || a.Tree != t+1 {
				continue
			}
			if g.quantiles == nil {
				g.quantiles = make([][3]float64, len(s.Aggregates))
			}
			idx := p.aggStats[owner]
			tree := mergedTree{shape: p.tree, nodes: nodes, lower: a.Lower, upper: a.Upper}
			v, lo, hi, err := quantileRelease(tree.result, a, p.tree, p.scale(p.stats[idx[1]]), g.stats[idx[0]])
			if err != nil {
				return err
			}
			g.quantiles[ai] = [3]float64{v, lo, hi}
		}
	}
	return nil
}

// federatedPlan is the budget plan of a site's part (partialPlan) with
// every statistic's L∞ scaled by √sites: for the library's analytic
// Gaussian mechanism σ is linear in the L2 sensitivity L∞·√L0, so its
// noise scale, thresholds and confidence intervals are those of the sum of
// sites independent noises, each of the unscaled plan's σ (within the
// library's σ accuracy, 1e-3 relative). The release threshold is
// recomputed from the scaled suppression count: the library's Gaussian
// threshold is L∞ + σ·z, so with L∞ = √N it is √N − 1 above what a cell of
// one patient (a combined count of 1, since the sites' patients are
// disjoint) strictly needs: conservative.
func (s Spec) federatedPlan(sites int) budgetPlan {
	p := s.partialPlan()
	p.stats = slices.Clone(p.stats)
	f := math.Sqrt(float64(sites))
	for i := range p.stats {
		p.stats[i].lInf *= f
	}
	p.release = s.releaseThreshold(p)
	return p
}

// FederatedAccuracy is the expected 95% half-width of every aggregate of a
// federated query over the given number of sites, and the release
// threshold of its combined counts: Accuracy for noise of standard
// deviation σ√sites. Half-widths of counts and sums grow as √sites; the
// release threshold too (its noise part), so small cells need more
// patients; a mean over N values per site keeps about the same half-width,
// since its denominator grows with the sites too (the figure quoted is for
// 1000 values in all, as for Accuracy).
func (s Spec) FederatedAccuracy(sites int) ([]Accuracy, error) {
	if err := s.ValidateFederated(); err != nil {
		return nil, err
	}
	if sites < 1 || sites > MaxSites {
		return nil, fmt.Errorf("a federated query runs at 1 to %d sites, got %d", MaxSites, sites)
	}
	return s.accuracy(s.federatedPlan(sites))
}

// mergeSiteReports is the report of the sites' runs as one: the opt-out
// filter is applied only if every site applied it (the sites' snapshot
// hashes in order, comma-separated), the sandbox layers are those every
// site had, the missing ones those any site lacked, and the result is
// synthetic if any part was.
func mergeSiteReports(parts []*Partial) (OptOutReport, SandboxReport, bool) {
	o := OptOutReport{Applied: true, Table: parts[0].OptOut.Table}
	sb := SandboxReport{Layers: slices.Clone(parts[0].Sandbox.Layers), Version: parts[0].Sandbox.Version}
	var hashes []string
	synthetic := false
	for _, part := range parts {
		o.Applied = o.Applied && part.OptOut.Applied
		if part.OptOut.Table != o.Table {
			o.Table = ""
		}
		hashes = append(hashes, part.OptOut.SnapshotHash)
		sb.Layers = slices.DeleteFunc(sb.Layers, func(l string) bool { return !slices.Contains(part.Sandbox.Layers, l) })
		for _, m := range part.Sandbox.Missing {
			if !slices.Contains(sb.Missing, m) {
				sb.Missing = append(sb.Missing, m)
			}
		}
		sb.Degraded = sb.Degraded || part.Sandbox.Degraded
		if part.Sandbox.Version != sb.Version {
			sb.Version = ""
		}
		synthetic = synthetic || part.Synthetic
	}
	slices.Sort(sb.Missing)
	o.SnapshotHash = strings.Join(hashes, ",")
	return o, sb, synthetic
}
