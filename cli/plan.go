package cli

import (
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/nhs-tre/tre/dp"
	"github.com/nhs-tre/tre/queries"
)

// PrintPlan prints what `tre check` learnt of a query: its cost, bounds,
// groups, expected accuracy and rewritten SQL.
func PrintPlan(w io.Writer, plan *queries.Plan) error {
	s := plan.Spec
	fmt.Fprintf(w, "accepted: dataset %s\n\n", plan.Dataset)
	fmt.Fprintf(w, "cost: ε = %g, δ = %g\n", plan.Cost.Epsilon, plan.Cost.Delta)
	fmt.Fprintf(w, "bounds: at most %d group(s) and %d row(s) per group per patient; counts rounded to %d (%s)\n",
		s.MaxGroupsPerPatient, s.MaxRowsPerGroup, s.RoundingBase, s.Rounding)
	if len(s.Sets) > 0 {
		fmt.Fprintf(w, "totals: %d grouping sets, shown as %q; a patient counts in up to %d cells (L0 = k × %d), and the noise is calibrated to it\n",
			len(s.Sets), dp.TotalKey, s.MaxGroupsPerPatient*len(s.Sets), len(s.Sets))
	}
	if len(plan.Accuracy) > 0 {
		fmt.Fprintf(w, "suppression: a group is released when its noisy count of distinct patients is at least %s (policy threshold %d)\n",
			fmtFloat(plan.Accuracy[0].ReleaseThreshold), s.Threshold)
	}
	if len(s.Groups) > 0 {
		fmt.Fprintln(w, "groups:")
		for _, g := range s.Groups {
			if len(g.Domain) > 0 {
				fmt.Fprintf(w, "  %s (public domain of %d values: every key released)\n", g.Name, len(g.Domain))
			} else {
				fmt.Fprintf(w, "  %s (no public domain: keys pass DP partition selection)\n", g.Name)
			}
		}
	}
	fmt.Fprintln(w, "\nexpected accuracy (95% half-width of the noise):")
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  column\tkind\tbounds\t± 95%\tnote")
	for i, a := range s.Aggregates {
		bounds := "-"
		if a.Kind != "count" && a.Kind != "count_patients" {
			bounds = fmt.Sprintf("[%g, %g]", a.Lower, a.Upper)
		}
		half, note := "", ""
		if i < len(plan.Accuracy) {
			half, note = fmt.Sprintf("%.4g", plan.Accuracy[i].HalfWidth95), plan.Accuracy[i].Note
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\n", a.Name, a.Kind, bounds, half, note)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(w, "\nrewritten SQL (over the opt-out-filtered views):\n%s\n", plan.Rewritten)
	return nil
}
