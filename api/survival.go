package api

import (
	"fmt"
	"math"
	"strings"

	"github.com/nhs-tre/tre/dp"
)

// KMBand is one band of a Kaplan–Meier curve computed from a released
// survival table (KaplanMeier).
type KMBand struct {
	// Stratum names the curve's keys of the group columns before the band
	// ("sex=female"); empty for a table with the band alone.
	Stratum  string  `json:"stratum,omitempty"`
	Band     string  `json:"band"`
	AtRisk   float64 `json:"at_risk"`
	Deaths   float64 `json:"deaths"`
	Censored float64 `json:"censored"`
	// Survival is S at the end of the band, Low and High its 95% interval.
	Survival float64 `json:"survival"`
	Low      float64 `json:"ci_low"`
	High     float64 `json:"ci_high"`
}

// kmZ is the normal quantile of a two-sided 95% interval.
const kmZ = 1.959963984540054

// KaplanMeier turns a released survival table — a group column of time
// bands in their order, and count columns of deaths and of censorings per
// band (docs/sql.md, "Survival") — into a life-table Kaplan–Meier curve,
// one per stratum when group columns come before the band's (GROUP BY
// sex, years_band: a curve for each sex, each band's Stratum naming it;
// a ROLLUP's total over the strata is a stratum of its own):
// with n₀ the sum of every band's deaths and censorings, nⱼ = n₀ −
// Σ_{i<j}(dᵢ + cᵢ) at risk entering band j, and S(tⱼ) = Π_{i≤j}(1 − qᵢ),
// where qⱼ, the probability of dying within band j, solves the life table
// with a constant hazard within the band and censorings spread evenly over
// it (bandDeathProb; the actuarial dⱼ/(nⱼ − cⱼ/2) is its first-order
// approximation, which overstates survival where many die within a band).
// Its 95% interval adds two variances: Greenwood's, S² Σ dᵢ/(n′ᵢ(n′ᵢ −
// dᵢ)) with n′ᵢ = dᵢ/qᵢ, for sampling, and the noise's, each released
// count's own interval read as ±1.96 standard deviations and carried
// through S by its numerical derivative (TestKaplanMeierCoverage measures
// the interval's coverage). It reads only released values:
// post-processing, no budget. A table of another shape is an error that
// says what is expected; a suppressed band is an error naming it.
func KaplanMeier(cols []dp.Column, rows [][]dp.Cell, deaths, censored string) ([]KMBand, error) {
	var gis []int
	di, ci := -1, -1
	for i, c := range cols {
		switch {
		case c.Kind == dp.KindGroup:
			gis = append(gis, i)
		case c.Name == deaths:
			di = i
		case c.Name == censored:
			ci = i
		}
	}
	var names []string
	for _, c := range cols {
		names = append(names, c.Name+" ("+c.Kind+")")
	}
	shape := fmt.Sprintf("a survival table has a group column of time bands, in order, as its last group column (any before it are strata, one curve each), and count columns %q and %q (docs/sql.md, Survival); this one has %s",
		deaths, censored, strings.Join(names, ", "))
	if len(gis) == 0 || di < 0 || ci < 0 || !isCount(cols[di]) || !isCount(cols[ci]) {
		return nil, fmt.Errorf("not a survival table: %s", shape)
	}
	gi, strata := gis[len(gis)-1], gis[:len(gis)-1]
	// Each stratum's rows, strata in the table's order.
	var order []string
	byStratum := map[string][][]dp.Cell{}
	for _, row := range rows {
		if len(row) != len(cols) || row[gi].Key == dp.TotalKey {
			continue // a ROLLUP's total is not a band
		}
		var keys []string
		for _, g := range strata {
			k := row[g].Key
			if row[g].Null {
				k = "(missing)"
			}
			keys = append(keys, cols[g].Name+"="+k)
		}
		st := strings.Join(keys, ", ")
		if _, ok := byStratum[st]; !ok {
			order = append(order, st)
		}
		byStratum[st] = append(byStratum[st], row)
	}
	if len(order) == 0 {
		return nil, fmt.Errorf("the survival table has no bands: %s", shape)
	}
	var out []KMBand
	for _, st := range order {
		curve, err := kmStratum(byStratum[st], gi, di, ci, cols)
		if err != nil {
			if st != "" {
				err = fmt.Errorf("stratum %s: %w", st, err)
			}
			return nil, err
		}
		for j := range curve {
			curve[j].Stratum = st
		}
		out = append(out, curve...)
	}
	return out, nil
}

// kmStratum is the curve of one stratum's rows: band column gi, deaths di
// and censorings ci.
func kmStratum(rows [][]dp.Cell, gi, di, ci int, cols []dp.Column) ([]KMBand, error) {
	var bands []string
	var x []float64 // deaths and censorings, band by band
	var sd []float64
	for _, row := range rows {
		band := row[gi].Key
		for _, j := range []int{di, ci} {
			c := row[j]
			if c.Value == nil {
				return nil, fmt.Errorf("band %q: %s is suppressed, so the curve cannot be computed through it", band, cols[j].Name)
			}
			x = append(x, math.Max(0, *c.Value))
			s := 0.0
			if c.CILow != nil && c.CIHigh != nil {
				s = (*c.CIHigh - *c.CILow) / 2 / kmZ
			}
			sd = append(sd, s)
		}
		bands = append(bands, band)
	}
	out := kmCurve(bands, x)
	// The noise's variance, by central differences on each released count.
	noiseVar := make([]float64, len(out))
	for k := range x {
		h := 0.5
		up, down := append([]float64(nil), x...), append([]float64(nil), x...)
		up[k] += h
		down[k] = math.Max(0, down[k]-h)
		su, sdn := kmCurve(bands, up), kmCurve(bands, down)
		for j := range out {
			d := (su[j].Survival - sdn[j].Survival) / (up[k] - down[k])
			noiseVar[j] += d * d * sd[k] * sd[k]
		}
	}
	green := 0.0
	for j := range out {
		b := &out[j]
		// Greenwood's term d/(n′(n′ − d)) with n′ = d/q, the effective
		// number at risk of the band's estimate q = d/n′.
		if q := bandDeathProb(b.AtRisk, b.Deaths, b.Censored); q > 0 && q < 1 {
			eff := b.Deaths / q
			green += b.Deaths / (eff * (eff - b.Deaths))
		}
		half := kmZ * math.Sqrt(b.Survival*b.Survival*green+noiseVar[j])
		b.Low, b.High = math.Max(0, b.Survival-half), math.Min(1, b.Survival+half)
	}
	return out, nil
}

// kmCurve is the life-table curve of bands with deaths x[2j] and
// censorings x[2j+1].
func kmCurve(bands []string, x []float64) []KMBand {
	n0 := 0.0
	for _, v := range x {
		n0 += v
	}
	out := make([]KMBand, len(bands))
	s, atRisk := 1.0, n0
	for j, band := range bands {
		d, c := x[2*j], x[2*j+1]
		s *= 1 - bandDeathProb(atRisk, d, c)
		out[j] = KMBand{Band: band, AtRisk: atRisk, Deaths: d, Censored: c, Survival: s}
		atRisk -= d + c
	}
	return out
}

func isCount(c dp.Column) bool {
	return c.Kind == string(dp.AggCount) || c.Kind == string(dp.AggCountPatients)
}

// bandDeathProb is the probability q of dying within a band, given alive
// at its start, from n at risk, d deaths and c censorings in it, under the
// life table's assumptions made exact: a constant hazard within the band
// and censorings spread evenly over it. Then, in band time u ∈ [0, 1] and
// with Λ = −ln(1 − q), d/n = q − (c/n)·(1 − e^{−Λ}(1 + Λ))/q, solved for q
// by bisection. The actuarial q = d/(n − c/2) is its first-order
// approximation, which overstates survival in a band where many die.
func bandDeathProb(n, d, c float64) float64 {
	if n <= 0 || d <= 0 {
		return 0
	}
	a, b := math.Min(1, d/n), math.Min(1, c/n)
	f := func(q float64) float64 {
		l := -math.Log1p(-q)
		return q - b*(1-(1-q)*(1+l))/q - a
	}
	lo, hi := 0.0, 1.0
	for range 100 {
		mid := (lo + hi) / 2
		if mid == lo || mid == hi {
			break
		}
		if f(mid) < 0 {
			lo = mid
		} else {
			hi = mid
		}
	}
	return (lo + hi) / 2
}
