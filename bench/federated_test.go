package bench

import (
	"strings"
	"testing"
)

// TestFederatedVerdict: issue 21's target is judged on the slowest site's
// own time (federated ≤ 1.2 × it + 100 ms) and on the broker's work
// (≤ 100 ms); a query the broker refuses to federate is listed with its
// reason, not judged.
func TestFederatedVerdict(t *testing.T) {
	q := func(fed, last int) fedResult {
		return fedResult{Name: "q", Own: []sample{ms(800), ms(1000), ms(900)}, Lease: []sample{ms(5), ms(10), ms(5)},
			Run: []sample{ms(900), ms(1100), ms(950)}, Upload: ms(20), Last: ms(last), Federated: ms(fed), Combine: ms(1), Concurrent: ms(2000)}
	}
	for _, tt := range []struct {
		fed, last int
		want      bool
	}{
		{1300, 40, true},  // 1.3 s ≤ 1.2 × 1 s + 100 ms
		{1301, 40, false}, // just over
		{1100, 91, false}, // broker work 10 + 91 ms > 100 ms
		{1100, 90, true},
	} {
		if got := q(tt.fed, tt.last).meets(); got != tt.want {
			t.Errorf("federated %d ms, last upload %d ms: meets %v, want %v", tt.fed, tt.last, got, tt.want)
		}
	}
	r := &benchReport{Patients: 1000, Federated: []fedResult{q(1300, 40), {Name: "quantiles", Refused: `dataset "d" is held by 3 sites, and this query cannot be combined across them: quantile "q" cannot be federated`}}}
	md := r.federatedMarkdown(3)
	for _, want := range []string{
		"## tre bench --federated 3: 1,000 patients at each site",
		"| q | 1.00 s | 1.30 s | 1.30× | 50 ms | 40 ms | 1.0 ms | 2.00 s | 2.00× | yes |",
		"| **all (sum of medians)** | 1.00 s | 1.30 s | 1.30× | | | | | | 1 of 1 |",
		`Not federated (the broker refuses them over several sites): quantiles (quantile "q" cannot be federated).`,
		"site 2 own 1.00 s, lease 10 ms, part 1.10 s",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
}
