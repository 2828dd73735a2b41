package dp

// ResearcherResult is what a researcher may see of a protected result: the
// released table and the part of the disclosure report that is a function of
// the query, the catalog's policy and the released (noisy) table alone.
//
// Everything else the sandbox reports was computed from exact data or from
// the site's opt-out list — dominance flags, partitions not released, rows
// dropped by bounding, the opt-out snapshot hash — and two datasets that
// differ in one patient can give different values for it. Those stay with
// the output checker (Result). A field added to Report is checker-only until
// it is added here with the argument for why it cannot depend on one patient.
type ResearcherResult struct {
	Columns []Column         `json:"columns"`
	Rows    [][]Cell         `json:"rows"`
	Report  ResearcherReport `json:"report"`
}

// ResearcherReport is the researcher's part of Report. Each field is either
// fixed before the query runs (budget, mechanism, noise scales, bounds,
// threshold and release threshold, rounding, how groups are selected, how
// ratios are derived) or can be counted from the released table's own marks.
type ResearcherReport struct {
	Epsilon             float64       `json:"epsilon"`
	Delta               float64       `json:"delta"`
	Mechanism           string        `json:"mechanism"`
	Noise               []NoiseReport `json:"noise"`
	MaxGroupsPerPatient int           `json:"max_groups_per_patient"`
	MaxRowsPerGroup     int           `json:"max_rows_per_group"`
	Threshold           int           `json:"threshold"`
	ReleaseThreshold    float64       `json:"release_threshold"`
	RoundingBase        int           `json:"rounding_base"`
	Rounding            string        `json:"rounding"`
	PartitionSelection  string        `json:"partition_selection"`
	GroupingSets        int           `json:"grouping_sets,omitempty"`
	GroupsReleased      int           `json:"groups_released"`
	GroupsSuppressed    int           `json:"groups_suppressed"`
	CellsSuppressed     int           `json:"cells_suppressed"`
	CellsSecondary      int           `json:"cells_secondary_suppressed"`
	CellsRounded        int           `json:"cells_rounded"`
	// Sites is the number of sites a federated result combines: fixed by
	// the query before it runs.
	Sites     int           `json:"sites,omitempty"`
	Ratios    []RatioReport `json:"ratios,omitempty"`
	Synthetic bool          `json:"synthetic,omitempty"`
}

// ForResearcher returns the researcher's view of r: a copy of the table
// without dominance flags, and the report without the figures computed from
// exact data. r is not modified.
func (r *Result) ForResearcher() *ResearcherResult {
	out := &ResearcherResult{
		Columns: append([]Column(nil), r.Columns...),
		Rows:    make([][]Cell, len(r.Rows)),
	}
	for i, row := range r.Rows {
		cells := make([]Cell, len(row))
		for j, c := range row {
			c.Dominance = nil
			cells[j] = c
		}
		out.Rows[i] = cells
	}
	rep := &r.Report
	out.Report = ResearcherReport{
		Epsilon:             rep.Epsilon,
		Delta:               rep.Delta,
		Mechanism:           rep.Mechanism,
		Noise:               append([]NoiseReport(nil), rep.Noise...),
		MaxGroupsPerPatient: rep.MaxGroupsPerPatient,
		MaxRowsPerGroup:     rep.MaxRowsPerGroup,
		Threshold:           rep.Threshold,
		ReleaseThreshold:    rep.ReleaseThreshold,
		RoundingBase:        rep.RoundingBase,
		Rounding:            rep.Rounding,
		PartitionSelection:  rep.PartitionSelection,
		GroupingSets:        rep.GroupingSets,
		GroupsReleased:      rep.GroupsReleased,
		GroupsSuppressed:    rep.GroupsSuppressed,
		CellsSuppressed:     rep.CellsSuppressed,
		CellsSecondary:      rep.CellsSecondary,
		CellsRounded:        rep.CellsRounded,
		Sites:               rep.Sites,
		Ratios:              append([]RatioReport(nil), rep.Ratios...),
		Synthetic:           rep.Synthetic,
	}
	return out
}
