// Package dp turns exact, contribution-bounded aggregates into a table that is
// safe to release: differential-privacy noise from google/differential-privacy,
// partition selection, small-cell suppression, rounding and a disclosure
// report. It also does the privacy-budget arithmetic the broker's ledger uses.
//
// dp is pure computation. It must never do I/O, never draw noise from anything
// but the DP library, and never let a post-processing decision (suppression,
// rounding, clamping) look at an exact value.
package dp

// AggKind is the statistic an output column releases.
type AggKind string

// Aggregate kinds. Stored values never change.
const (
	AggCount         AggKind = "count"          // count(*) of bounded rows
	AggCountPatients AggKind = "count_patients" // count(DISTINCT <privacy unit>)
	AggSum           AggKind = "sum"
	AggMean          AggKind = "mean"
	AggVariance      AggKind = "variance"
	AggStddev        AggKind = "stddev"
	// AggQuantile is a DP quantile (median, quantile_cont) from the DP
	// library's quantile tree (quantile.go).
	AggQuantile AggKind = "quantile"
	// AggRatio is a ratio of two other aggregates of the same query (its
	// AggSpec.Num over AggSpec.Den), computed from their noisy values
	// (ratio.go): post-processing, no budget of its own.
	AggRatio AggKind = "ratio"
)

// Spec says how to protect one query's result. The query compiler
// (queries.Compile) builds it from the SQL and the dataset catalog; the
// sandbox hands it, with the exact per-group statistics, to Protect.
type Spec struct {
	Groups     []GroupSpec `json:"groups"`
	Aggregates []AggSpec   `json:"aggregates"`

	// MaxGroupsPerPatient (k, the L0 sensitivity) and MaxRowsPerGroup (C)
	// are the contribution bounds the rewritten SQL enforced.
	MaxGroupsPerPatient int `json:"max_groups_per_patient"`
	MaxRowsPerGroup     int `json:"max_rows_per_group"`

	// Epsilon and Delta are the total budget the query spends.
	Epsilon float64 `json:"epsilon"`
	Delta   float64 `json:"delta"`

	Threshold    int    `json:"threshold"`     // small-cell threshold
	RoundingBase int    `json:"rounding_base"` // counts rounded to a multiple
	Rounding     string `json:"rounding"`      // "nearest" or "midpoint6"

	// Mechanism is the noise distribution: MechanismLaplace (the default
	// when empty) or MechanismGaussian. Gaussian noise needs δ > 0 and takes
	// part of it (see Spec.Cost).
	Mechanism string `json:"mechanism,omitempty"`
	// Margins says the output's totals are released too (a total row, or
	// the margins of a cross table), so a suppressed cell could be recovered
	// by subtraction; Protect then applies secondary (complementary)
	// suppression. The compiler sets it with Sets.
	Margins bool `json:"margins,omitempty"`
	// Sets, when not empty, are the grouping sets of GROUP BY ROLLUP, CUBE
	// or GROUPING SETS: each lists the indexes of the Groups it groups by,
	// and a released cell of a set shows TotalKey in every other column.
	// Every group column needs a public domain, the full grouping must be
	// one of the sets, and Margins must be set (margins.go). A patient's
	// bounded rows count once in each set, so the noise is calibrated to
	// L0 = k × len(Sets).
	Sets [][]int `json:"grouping_sets,omitempty"`
}

// Noise mechanisms and rounding rules. Stored values never change.
const (
	MechanismLaplace  = "laplace"
	MechanismGaussian = "gaussian"

	RoundingNearest   = "nearest"
	RoundingMidpoint6 = "midpoint6"
)

// Partition selection modes reported in Report.PartitionSelection.
const (
	// SelectionPublicDomain: every key of the cross product of the group
	// columns' public domains is released (also for a query without GROUP
	// BY, whose single keyless group is the empty cross product).
	SelectionPublicDomain = "public_domain"
	// SelectionPreThreshold: keys present in the data pass the DP library's
	// pre-aggregation partition selection with a pre-threshold.
	SelectionPreThreshold = "dp_pre_threshold"
)

// GroupSpec is one output grouping column.
type GroupSpec struct {
	Name string `json:"name"`
	// Domain, when every group column has one, lists all keys to release
	// (empty ones too) and partition selection is skipped.
	Domain []string `json:"domain,omitempty"`
	// Closed says the Domain holds every key the query's rows can have,
	// not just the ones to release: a date bucket's keys derived from the
	// query's WHERE bounds (queries, federated). A key outside it (NULL
	// too) means the derivation and the data disagree, say on how a key is
	// written, and would silently leave every cell empty: Protect and the
	// Selector fail instead.
	Closed bool `json:"closed,omitempty"`
}

// AggSpec is one output aggregate column.
type AggSpec struct {
	Name string  `json:"name"`
	Kind AggKind `json:"kind"`
	// Lower and Upper are the clamping bounds of each contributing value
	// (unused for counts).
	Lower float64 `json:"lower,omitempty"`
	Upper float64 `json:"upper,omitempty"`
	// PatientCount says the aggregate, a count or count_patients, is
	// exactly the number of distinct patients in its group (the query
	// compiler proves it: count(DISTINCT patient_id) without FILTER, or
	// count(*) where each patient adds one row). Suppression then decides
	// on its noisy value; otherwise on a hidden noisy patient count.
	PatientCount bool `json:"patient_count,omitempty"`
	// Rank is a quantile's rank q in (0, 1): 0.5 for a median.
	Rank float64 `json:"rank,omitempty"`
	// Tree numbers a quantile's tree, from 1: quantiles with the same Tree
	// read one tree over the same values and bounds (the histogram of the
	// first of them, AggStats.Hist), and so cost one statistic whatever
	// number of ranks they release.
	Tree int `json:"tree,omitempty"`
	// Num and Den are, for a ratio (AggRatio), the 1-based indexes in
	// Spec.Aggregates of its numerator (a count, count_patients or sum)
	// and denominator (a count or count_patients).
	Num int `json:"num,omitempty"`
	Den int `json:"den,omitempty"`
	// Proportion says a ratio's numerator counts a subset of what its
	// denominator counts (the compiler proves it: the same count with a
	// FILTER on the numerator only), so the ratio lies in [0, 1].
	Proportion bool `json:"proportion,omitempty"`
	// Hidden marks a ratio's part that the query does not release as a
	// column of its own: planned, noised and budgeted like any aggregate,
	// but not a column of the result, nor in Accuracy.
	Hidden bool `json:"hidden,omitempty"`
}

// Midpoint is m = L + (U−L)/2, the value the statistics of a mean,
// variance or standard deviation are centred on (AggStats). The query
// rewrite centres on exactly this value.
func (a AggSpec) Midpoint() float64 { return a.Lower + (a.Upper-a.Lower)/2 }

// Centred reports whether an aggregate of kind k is computed from
// statistics centred on the midpoint of its bounds: means, variances and
// standard deviations.
func (k AggKind) Centred() bool { return k == AggMean || k == AggVariance || k == AggStddev }

// GroupStats are the exact, contribution-bounded statistics of one group, as
// the rewritten SQL computes them inside the sandbox. They never leave it.
type GroupStats struct {
	// Keys holds the group's key values in GroupSpec order; nil is SQL NULL.
	Keys []*string
	// Patients is the number of distinct patients contributing to the group
	// (after bounding).
	Patients int64
	// Aggs holds one entry per AggSpec, in order.
	Aggs []AggStats
}

// UsesSumSq reports whether protecting an aggregate of kind k reads
// AggStats.SumSq: only variance and stddev do.
func (k AggKind) UsesSumSq() bool { return k == AggVariance || k == AggStddev }

// UsesTop reports whether an aggregate of kind k is judged by the dominance
// rules and so reads AggStats.Top1 and Top2: sums and means, whose totals
// one patient could dominate.
func (k AggKind) UsesTop() bool { return k == AggSum || k == AggMean }

// AggStats are the exact bounded sufficient statistics of one aggregate in
// one group. Count is the number of contributing rows (≤ C per patient), Sum
// and SumSq are over the clamped values, Top1 and Top2 are the largest two
// per-patient contributions to the (uncentred) sum, for dominance checks.
// For a mean, variance or standard deviation (Centred) Sum and SumSq are of
// the values less the midpoint m of the bounds, Σ(x−m) and Σ(x−m)²: each
// term is then at most (U−L)/2 in size, so the sums keep the precision the
// noise is calibrated to (Σx² − 2mΣx + m²n over raw values loses it). For a
// count_patients aggregate Count is the number of distinct patients
// counted; for a count aggregate it is the number of bounded rows. A
// statistic the kind does not use (UsesSumSq, UsesTop) may be left 0.
//
// For a quantile Count is the number of bounded values and Hist the
// number of them in each leaf of the quantile tree (QuantileLeaf), leaf
// index to count; only the first aggregate of a tree (AggSpec.Tree) needs
// it.
type AggStats struct {
	Count float64
	Sum   float64
	SumSq float64
	Top1  float64
	Top2  float64
	Hist  map[int]int64
}

// Cost is the privacy budget a query spends.
type Cost struct {
	Epsilon float64 `json:"epsilon"`
	Delta   float64 `json:"delta"`
}

// Accuracy is the expected accuracy of one released aggregate, known before
// the query runs.
type Accuracy struct {
	Column string `json:"column"`
	// HalfWidth95 is the half-width of the 95% interval of the noise alone.
	HalfWidth95 float64 `json:"ci95_half_width"`
	// ReleaseThreshold is the noisy count of distinct patients a group
	// needs for this aggregate to be released (Report.ReleaseThreshold).
	ReleaseThreshold float64 `json:"release_threshold"`
	Note             string  `json:"note,omitempty"`
}

// Result is a protected table and its disclosure report: everything that
// crosses the sandbox boundary.
type Result struct {
	Columns []Column `json:"columns"`
	Rows    [][]Cell `json:"rows"`
	Report  Report   `json:"report"`
}

// Column describes one column of a protected table.
type Column struct {
	Name string `json:"name"`
	// Kind is "group" for a key column, else the AggKind.
	Kind string `json:"kind"`
}

// Cell is one released value with the disclosure-control marks an output
// checker needs.
type Cell struct {
	// Key is the value of a group column; Null marks SQL NULL.
	Key  string `json:"key,omitempty"`
	Null bool   `json:"null,omitempty"`
	// Value is the released (noisy, post-processed) value of an aggregate;
	// nil when suppressed.
	Value *float64 `json:"value,omitempty"`
	// CILow and CIHigh bound the 95% confidence interval of the noise.
	CILow  *float64 `json:"ci_low,omitempty"`
	CIHigh *float64 `json:"ci_high,omitempty"`

	Suppressed bool `json:"suppressed,omitempty"`
	// Secondary marks a cell suppressed only so that a suppressed cell
	// cannot be recovered from totals.
	Secondary bool `json:"secondary,omitempty"`
	Rounded   bool `json:"rounded,omitempty"`
	// Dominance lists the dominance rules the exact contributions broke
	// ("nk" for n=2,k=90%; "p%" for p=10%). Only the flags leave the sandbox.
	Dominance []string `json:"dominance,omitempty"`
}

// Report is the disclosure report attached to every protected result.
type Report struct {
	Epsilon   float64 `json:"epsilon"`
	Delta     float64 `json:"delta"`
	Mechanism string  `json:"mechanism"` // "laplace" or "gaussian"
	// Noise lists, per released statistic, its share of the budget and the
	// noise scale.
	Noise []NoiseReport `json:"noise"`

	MaxGroupsPerPatient int `json:"max_groups_per_patient"`
	MaxRowsPerGroup     int `json:"max_rows_per_group"`
	Threshold           int `json:"threshold"`
	// ReleaseThreshold is the noisy count of distinct patients a group must
	// reach to be released: Threshold, or with public domains the higher
	// point at which a cell of one patient is released with probability at
	// most δ (docs/privacy.md §5). It depends on the Spec alone.
	ReleaseThreshold float64 `json:"release_threshold"`
	RoundingBase     int     `json:"rounding_base"`
	Rounding         string  `json:"rounding"`
	// PartitionSelection is "public_domain" or "dp_pre_threshold".
	PartitionSelection string `json:"partition_selection"`
	// GroupingSets is the number of groupings released (ROLLUP, CUBE,
	// GROUPING SETS; absent for one): each patient counts in up to
	// MaxGroupsPerPatient cells of each, so the noise's L0 is their product.
	GroupingSets int `json:"grouping_sets,omitempty"`

	// GroupsReleased counts rows with values; GroupsSuppressed rows whose
	// statistics were all withheld (by the threshold or by secondary
	// suppression). CellsSuppressed counts aggregate cells withheld by the
	// threshold, CellsSecondary those withheld only by secondary
	// suppression. PartitionsNotRelease counts keys dropped by partition
	// selection, rounded to the rounding base (it is not DP).
	GroupsReleased       int `json:"groups_released"`
	GroupsSuppressed     int `json:"groups_suppressed"`
	CellsSuppressed      int `json:"cells_suppressed"`
	CellsSecondary       int `json:"cells_secondary_suppressed"`
	CellsRounded         int `json:"cells_rounded"`
	CellsDominanceFlags  int `json:"cells_dominance_flagged"`
	PartitionsNotRelease int `json:"partitions_not_released"`

	// RowsDroppedByBounding is the number of rows the k/C bounds removed,
	// rounded to the rounding base so it cannot be used as an exact count.
	RowsDroppedByBounding int64 `json:"rows_dropped_by_bounding"`

	// Sites is the number of sites whose partial results Combine summed
	// (a federated query); 0 for one site's Protect.
	Sites int `json:"sites,omitempty"`
	// Ratios says how each ratio column was derived: from which noisy
	// statistics (Noise), as post-processing. It depends on the Spec alone.
	Ratios []RatioReport `json:"ratios,omitempty"`

	// Filled in by the sandbox, not by Protect.
	OptOut  OptOutReport  `json:"optout"`
	Sandbox SandboxReport `json:"sandbox"`
	// Synthetic marks a dry run on synthetic data.
	Synthetic bool `json:"synthetic,omitempty"`
}

// NoiseReport is the noise applied to one statistic.
type NoiseReport struct {
	Statistic string  `json:"statistic"` // column name, or "partition_selection"
	Mechanism string  `json:"mechanism"`
	Epsilon   float64 `json:"epsilon"`
	Delta     float64 `json:"delta"`
	// Scale is the noise standard deviation.
	Scale float64 `json:"scale"`
}

// OptOutReport says which opt-out filter the query was bound to.
type OptOutReport struct {
	Applied bool   `json:"applied"`
	Table   string `json:"table"`
	// SnapshotHash is a SHA-256 over the sorted opted-out ids at run time.
	SnapshotHash string `json:"snapshot_hash"`
}

// SandboxReport says which isolation layers the run had.
type SandboxReport struct {
	Layers []string `json:"layers"`
	// Degraded is true when the operator allowed a run without every layer.
	Degraded bool     `json:"degraded"`
	Missing  []string `json:"missing,omitempty"`
	Version  string   `json:"version,omitempty"`
}
