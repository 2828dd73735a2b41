package dp

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func researcherFixture() *Result {
	v, lo, hi := 140.0, 134.5, 145.5
	return &Result{
		Columns: []Column{{Name: "region", Kind: "group"}, {Name: "total", Kind: string(AggSum)}},
		Rows: [][]Cell{{
			{Key: "London"},
			{Value: &v, CILow: &lo, CIHigh: &hi, Rounded: true, Dominance: []string{"nk", "p%"}},
		}},
		Report: Report{
			Epsilon: 1, Delta: 1e-6, Mechanism: MechanismLaplace,
			Noise:               []NoiseReport{{Statistic: "total", Mechanism: MechanismLaplace, Epsilon: 0.5, Scale: 2}},
			MaxGroupsPerPatient: 3, MaxRowsPerGroup: 2, Threshold: 10, ReleaseThreshold: 53.5, RoundingBase: 5, Rounding: RoundingNearest,
			PartitionSelection: SelectionPreThreshold, GroupingSets: 3, GroupsReleased: 1, CellsRounded: 1,
			CellsDominanceFlags: 1, PartitionsNotRelease: 10, RowsDroppedByBounding: 25, Sites: 3,
			Ratios:  []RatioReport{{Column: "share", Numerator: "share/numerator", Denominator: "total", Proportion: true}},
			OptOut:  OptOutReport{Applied: true, Table: "optouts", SnapshotHash: strings.Repeat("a", 64)},
			Sandbox: SandboxReport{Layers: []string{"seccomp"}, Version: "v1"},
		},
	}
}

// TestForResearcherDropsExactFigures: nothing computed from exact data
// reaches the researcher's JSON.
func TestForResearcherDropsExactFigures(t *testing.T) {
	b, err := json.Marshal(researcherFixture().ForResearcher())
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"dominance", "cells_dominance_flagged", "partitions_not_released", "rows_dropped_by_bounding", "optout", "snapshot_hash", "sandbox"} {
		if strings.Contains(string(b), `"`+key+`"`) {
			t.Errorf("researcher view has %q: %s", key, b)
		}
	}
}

// TestForResearcherIgnoresCheckerOnlyFields changes every Report field that
// is not in ResearcherReport, one at a time, and requires the researcher's
// view to stay the same; so a field added to Report later is checker-only
// until someone adds it to ResearcherReport on purpose.
func TestForResearcherIgnoresCheckerOnlyFields(t *testing.T) {
	base := researcherFixture()
	want := base.ForResearcher()
	shared := map[string]bool{}
	rt := reflect.TypeOf(ResearcherReport{})
	for i := range rt.NumField() {
		shared[rt.Field(i).Name] = true
	}
	ft := reflect.TypeOf(Report{})
	for i := range ft.NumField() {
		f := ft.Field(i)
		if shared[f.Name] {
			continue
		}
		r := researcherFixture()
		fv := reflect.ValueOf(&r.Report).Elem().Field(i)
		fv.Set(reflect.Zero(f.Type))
		if diff := cmp.Diff(want, r.ForResearcher()); diff != "" {
			t.Errorf("changing checker-only Report.%s changed the researcher's view (-want +got):\n%s", f.Name, diff)
		}
	}
	// And the shared fields are copied, not left at zero.
	got := reflect.ValueOf(want.Report)
	for i := range rt.NumField() {
		name := rt.Field(i).Name
		if got.Field(i).IsZero() && name != "Synthetic" && name != "GroupsSuppressed" && name != "CellsSuppressed" && name != "CellsSecondary" {
			t.Errorf("ResearcherReport.%s is zero although the fixture sets it", name)
		}
	}
	// The input keeps its flags.
	if len(base.Rows[0][1].Dominance) != 2 {
		t.Error("ForResearcher modified its receiver")
	}
}
