package dp

import (
	"math"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// validSpec is a one-count query over a two-column public domain: ε = 1,
// k = 1, C = 1, threshold 10, rounding to 5.
func validSpec() Spec {
	return Spec{
		Groups: []GroupSpec{
			{Name: "sex", Domain: []string{"F", "M"}},
			{Name: "region", Domain: []string{"London", "North", "South"}},
		},
		Aggregates:          []AggSpec{{Name: "n", Kind: AggCountPatients, PatientCount: true}},
		MaxGroupsPerPatient: 1,
		MaxRowsPerGroup:     1,
		Epsilon:             1,
		Delta:               1e-6,
		Threshold:           10,
		RoundingBase:        5,
		Rounding:            RoundingNearest,
	}
}

func TestSpecValidate(t *testing.T) {
	tests := []struct {
		name   string
		modify func(*Spec)
		want   string // substring of the error; "" for valid
	}{
		{name: "valid", modify: func(*Spec) {}},
		{name: "zero epsilon", modify: func(s *Spec) { s.Epsilon = 0 }, want: "epsilon must be a finite number above 0"},
		{name: "negative epsilon", modify: func(s *Spec) { s.Epsilon = -1 }, want: "epsilon"},
		{name: "NaN epsilon", modify: func(s *Spec) { s.Epsilon = math.NaN() }, want: "epsilon"},
		{name: "infinite epsilon", modify: func(s *Spec) { s.Epsilon = math.Inf(1) }, want: "epsilon"},
		{name: "negative delta", modify: func(s *Spec) { s.Delta = -1e-9 }, want: "delta must be at least 0 and below 1e-05"},
		{name: "delta at limit", modify: func(s *Spec) { s.Delta = 1e-5 }, want: "delta must be"},
		{name: "NaN delta", modify: func(s *Spec) { s.Delta = math.NaN() }, want: "delta must be"},
		{name: "k zero", modify: func(s *Spec) { s.MaxGroupsPerPatient = 0 }, want: "max_groups_per_patient (k) must be at least 1"},
		{name: "C zero", modify: func(s *Spec) { s.MaxRowsPerGroup = 0 }, want: "max_rows_per_group (C) must be at least 1"},
		{name: "negative threshold", modify: func(s *Spec) { s.Threshold = -1 }, want: "threshold must be at least 0"},
		{name: "rounding base zero", modify: func(s *Spec) { s.RoundingBase = 0 }, want: "rounding_base must be at least 1"},
		{name: "unknown rounding", modify: func(s *Spec) { s.Rounding = "banker" }, want: `rounding must be "nearest" or "midpoint6"`},
		{name: "midpoint6 base 10", modify: func(s *Spec) { s.Rounding = RoundingMidpoint6; s.RoundingBase = 10 }, want: "needs rounding_base 5"},
		{name: "unknown mechanism", modify: func(s *Spec) { s.Mechanism = "uniform" }, want: "mechanism must be"},
		{name: "gaussian without delta", modify: func(s *Spec) { s.Mechanism = MechanismGaussian; s.Delta = 0 }, want: "gaussian noise needs delta above 0"},
		{name: "laplace without delta on public domain", modify: func(s *Spec) { s.Delta = 0 }, want: "public-domain cell of one patient"},
		{name: "selection without delta", modify: func(s *Spec) { s.Groups[1].Domain = nil; s.Delta = 0 }, want: "keys need DP partition selection"},
		{name: "unnamed group", modify: func(s *Spec) { s.Groups[0].Name = "" }, want: "group column 1 has no name"},
		{name: "duplicate domain value", modify: func(s *Spec) { s.Groups[0].Domain = []string{"F", "F"} }, want: `group column "sex": domain lists a value twice`},
		{name: "domain too large", modify: func(s *Spec) {
			big := make([]string, 1001)
			for i := range big {
				big[i] = strings.Repeat("x", i+1)
			}
			s.Groups = []GroupSpec{{Name: "a", Domain: big}, {Name: "b", Domain: big}}
		}, want: "more than the 1000000 allowed"},
		{name: "no aggregates", modify: func(s *Spec) { s.Aggregates = nil }, want: "at least one aggregate"},
		{name: "unnamed aggregate", modify: func(s *Spec) { s.Aggregates[0].Name = "" }, want: "aggregate 1 has no name"},
		{name: "unknown kind", modify: func(s *Spec) { s.Aggregates[0].Kind = "median" }, want: `unknown kind "median"`},
		{name: "lower above upper", modify: func(s *Spec) {
			s.Aggregates = []AggSpec{{Name: "bmi", Kind: AggMean, Lower: 60, Upper: 10}}
		}, want: `aggregate "bmi": lower bound 60 must be below upper bound 10`},
		{name: "equal bounds", modify: func(s *Spec) {
			s.Aggregates = []AggSpec{{Name: "bmi", Kind: AggSum, Lower: 5, Upper: 5}}
		}, want: "must be below upper bound"},
		{name: "infinite bound", modify: func(s *Spec) {
			s.Aggregates = []AggSpec{{Name: "bmi", Kind: AggSum, Lower: 0, Upper: math.Inf(1)}}
		}, want: `aggregate "bmi": bounds must be finite`},
		{name: "NaN bound", modify: func(s *Spec) {
			s.Aggregates = []AggSpec{{Name: "bmi", Kind: AggVariance, Lower: math.NaN(), Upper: 1}}
		}, want: "bounds must be finite"},
		{name: "huge bounds", modify: func(s *Spec) {
			s.Aggregates = []AggSpec{{Name: "x", Kind: AggVariance, Lower: -1e300, Upper: 1e300}}
		}, want: "bounds must lie within ±1e+15"},
		{name: "bounds at the limit", modify: func(s *Spec) {
			s.Aggregates = []AggSpec{{Name: "x", Kind: AggVariance, Lower: -1e15, Upper: 1e15}}
		}},
		{name: "epsilon above max", modify: func(s *Spec) { s.Epsilon = 100.5 }, want: "epsilon must be at most 100"},
		{name: "epsilon share below 2^-50", modify: func(s *Spec) { s.Epsilon = 0x1p-51 }, want: "below 2^-50"},
		{name: "selection share below 2^-50", modify: func(s *Spec) { s.Groups[1].Domain = nil; s.Epsilon = 0x1p-50 }, want: "partition selection's share"},
		{name: "count ignores bounds", modify: func(s *Spec) {
			s.Aggregates = []AggSpec{{Name: "n", Kind: AggCount, Lower: 3, Upper: 1}}
		}},
		{name: "no group by", modify: func(s *Spec) { s.Groups = nil }},
		{name: "no group by without delta", modify: func(s *Spec) { s.Groups = nil; s.Delta = 0 }, want: "public-domain cell of one patient"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := validSpec()
			tt.modify(&s)
			err := s.Validate()
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("Validate() = %v, want nil", err)
			case tt.want != "" && err == nil:
				t.Fatalf("Validate() = nil, want error containing %q", tt.want)
			case tt.want != "" && !strings.Contains(err.Error(), tt.want):
				t.Fatalf("Validate() = %q, want it to contain %q", err, tt.want)
			}
		})
	}
}

// TestCostSplit checks that the shares of the plan add up to the declared
// budget, that Cost reports it, and which statistics each aggregate costs.
func TestCostSplit(t *testing.T) {
	aggs := []AggSpec{
		{Name: "n", Kind: AggCount, PatientCount: true},
		{Name: "total", Kind: AggSum, Lower: -2, Upper: 10},
		{Name: "bmi", Kind: AggMean, Lower: 10, Upper: 60},
		{Name: "sd", Kind: AggStddev, Lower: 10, Upper: 60},
	}
	tests := []struct {
		name      string
		mechanism string
		domain    bool
		aggs      []AggSpec
		wantStats []string
		wantCost  Cost
	}{
		{name: "laplace public domain", mechanism: MechanismLaplace, domain: true, aggs: aggs,
			wantStats: []string{"n", "total", "bmi/count", "bmi/sum", "sd/count", "sd/sum", "sd/sumsq"},
			wantCost:  Cost{Epsilon: 0.7}},
		{name: "laplace selection", mechanism: MechanismLaplace, aggs: aggs,
			wantStats: []string{"n", "total", "bmi/count", "bmi/sum", "sd/count", "sd/sum", "sd/sumsq"},
			wantCost:  Cost{Epsilon: 0.7, Delta: 3e-6}},
		{name: "gaussian public domain", mechanism: MechanismGaussian, domain: true, aggs: aggs[1:],
			wantStats: []string{"total", "bmi/count", "bmi/sum", "sd/count", "sd/sum", "sd/sumsq", "suppression_count"},
			wantCost:  Cost{Epsilon: 0.7, Delta: 3e-6}},
		{name: "gaussian selection", mechanism: MechanismGaussian, aggs: aggs[1:3],
			wantStats: []string{"total", "bmi/count", "bmi/sum", "suppression_count"},
			wantCost:  Cost{Epsilon: 0.7, Delta: 3e-6}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := validSpec()
			s.Epsilon, s.Delta, s.Mechanism, s.Aggregates = 0.7, 3e-6, tt.mechanism, tt.aggs
			if !tt.domain {
				s.Groups[1].Domain = nil
			}
			if err := s.Validate(); err != nil {
				t.Fatal(err)
			}
			p := s.plan()
			var names []string
			eps, delta := p.selEps, p.selDelta
			for _, st := range p.stats {
				names = append(names, st.name)
				eps += st.eps
				delta += st.delta
			}
			if diff := cmp.Diff(tt.wantStats, names); diff != "" {
				t.Errorf("statistics (-want +got):\n%s", diff)
			}
			got := s.Cost()
			if diff := cmp.Diff(tt.wantCost, got); diff != "" {
				t.Errorf("Cost() (-want +got):\n%s", diff)
			}
			if math.Abs(eps-got.Epsilon) > 1e-12 || math.Abs(delta-got.Delta) > 1e-12 {
				t.Errorf("shares add to (%v, %v), Cost() = %+v", eps, delta, got)
			}
			if p.selection && math.Abs(p.selEps-0.35) > 1e-12 {
				t.Errorf("selection ε = %v, want half of 0.7", p.selEps)
			}
		})
	}
}

func TestSensitivities(t *testing.T) {
	s := validSpec()
	s.MaxGroupsPerPatient, s.MaxRowsPerGroup = 3, 4
	s.Aggregates = []AggSpec{
		{Name: "rows", Kind: AggCount},
		{Name: "pts", Kind: AggCountPatients},
		{Name: "sum", Kind: AggSum, Lower: -5, Upper: 2},
		{Name: "var", Kind: AggVariance, Lower: 10, Upper: 30},
	}
	p := s.plan()
	got := map[string][2]float64{}
	for _, st := range p.stats {
		got[st.name] = [2]float64{float64(st.l0), st.lInf}
	}
	want := map[string][2]float64{
		"rows":      {3, 4},
		"pts":       {3, 1},
		"sum":       {3, 20},
		"var/count": {3, 4},
		"var/sum":   {3, 40},
		"var/sumsq": {3, 400},
		// No aggregate is the patient count: suppression's hidden one.
		"suppression_count": {3, 1},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(L0, L∞) (-want +got):\n%s", diff)
	}
}

func TestAccuracy(t *testing.T) {
	// One count over a public domain: the whole ε = 1 on a statistic with
	// L0 = L∞ = 1, Laplace scale b = 1, so the 95% half-width is b·ln(20).
	s := validSpec()
	acc, err := s.Accuracy()
	if err != nil {
		t.Fatal(err)
	}
	if len(acc) != 1 || acc[0].Column != "n" || math.Abs(acc[0].HalfWidth95-math.Log(20)) > 1e-9 {
		t.Fatalf("Accuracy() = %+v, want n ± %v", acc, math.Log(20))
	}

	s.Aggregates = append(s.Aggregates,
		AggSpec{Name: "bmi", Kind: AggMean, Lower: 10, Upper: 60},
		AggSpec{Name: "bmi_var", Kind: AggVariance, Lower: 10, Upper: 60},
		AggSpec{Name: "bmi_sd", Kind: AggStddev, Lower: 10, Upper: 60},
	)
	acc, err = s.Accuracy()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range acc {
		if !(a.HalfWidth95 > 0) || math.IsInf(a.HalfWidth95, 0) {
			t.Errorf("%s: half-width %v, want positive and finite", a.Column, a.HalfWidth95)
		}
	}
	if acc[3].HalfWidth95 != math.Sqrt(acc[2].HalfWidth95) {
		t.Errorf("stddev half-width %v, want √(variance half-width %v)", acc[3].HalfWidth95, acc[2].HalfWidth95)
	}

	s.Epsilon = -1
	if _, err := s.Accuracy(); err == nil {
		t.Error("Accuracy() of an invalid spec: want error")
	}
}
