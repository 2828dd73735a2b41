package synth

import (
	"fmt"
	"math"
	"time"
)

// The extract window: every event, prescription, admission and vaccination
// falls inside it, and ages are measured at its last day (the index date).
var (
	windowStart = time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
	windowEnd   = time.Date(2024, 12, 31, 0, 0, 0, 0, time.UTC)
)

// Date literals for SQL.
const (
	windowStartSQL = "DATE '2020-01-01'"
	windowEndSQL   = "DATE '2024-12-31'"
	// Ages are whole years at the index date; date_of_birth is the first of
	// a month, so birth = indexMonth - (12*age + m) months for m in 0..11.
	indexMonthSQL = "DATE '2024-12-01'"
	maxAge        = 100
)

// ageBands is England's population by five-year age band, mid-2022 (ONS
// mid-year population estimates, percent; normalised when used). The last
// band is 90 and over.
var ageBands = [19]float64{
	5.4, 5.9, 6.1, 5.8, 6.1, 6.6, 6.9, 6.8, 6.5, 6.2,
	6.8, 6.7, 5.9, 5.0, 4.7, 3.9, 2.5, 1.6, 0.9,
}

// femaleShare is the share of women in each age band (ONS mid-year
// estimates: near half until the 50s, rising with age because women live
// longer). A small share of records have sex 'unknown'.
var femaleShare = [19]float64{
	0.488, 0.488, 0.487, 0.486, 0.49, 0.495, 0.5, 0.505, 0.505, 0.507,
	0.508, 0.508, 0.51, 0.515, 0.525, 0.54, 0.56, 0.6, 0.68,
}

const unknownSexShare = 0.0005

// Sexes, in the order used by risk-table keys.
var sexes = [3]string{"female", "male", "unknown"}

// regions with their share of England's population (ONS mid-2022).
var regions = [9]string{
	"North East", "North West", "Yorkshire and The Humber", "East Midlands",
	"West Midlands", "East of England", "London", "South East", "South West",
}
var regionShare = [9]float64{4.7, 13.0, 9.7, 8.7, 10.5, 11.2, 15.7, 16.3, 10.1}

// imdByRegion is the share of each region's population living in each
// national IMD quintile (1 = most deprived), shaped on the English Indices of
// Deprivation 2019: the North East, North West, West Midlands and Yorkshire
// have the most people in the most deprived fifth, London is concentrated in
// quintiles 1–2, the South East and East the least deprived. Nationally each
// quintile holds about a fifth of the population.
var imdByRegion = [9][5]float64{
	{0.32, 0.22, 0.18, 0.15, 0.13}, // North East
	{0.31, 0.19, 0.17, 0.16, 0.17}, // North West
	{0.29, 0.20, 0.18, 0.16, 0.17}, // Yorkshire and The Humber
	{0.20, 0.20, 0.21, 0.20, 0.19}, // East Midlands
	{0.29, 0.21, 0.18, 0.16, 0.16}, // West Midlands
	{0.09, 0.17, 0.22, 0.25, 0.27}, // East of England
	{0.20, 0.33, 0.24, 0.14, 0.09}, // London
	{0.07, 0.14, 0.21, 0.27, 0.31}, // South East
	{0.10, 0.19, 0.25, 0.25, 0.21}, // South West
}

// Ethnic groups (ONS 5 groups plus 'Unknown' for records with none).
var ethnicities = [6]string{"White", "Mixed", "Asian", "Black", "Other", "Unknown"}

// ethnicityEngland is the 2021 Census split for England; ethnicityLondon for
// London. Other regions get the remainder so the national split holds.
var (
	ethnicityEngland = [5]float64{81.0, 3.0, 9.6, 4.2, 2.2}
	ethnicityLondon  = [5]float64{53.8, 5.7, 20.7, 13.5, 6.3}
)

// unknownEthnicityShare of records have no recorded ethnicity, as in GP
// data; the rest follow the Census shares.
const unknownEthnicityShare = 0.04

const londonIndex = 6

// ethnicityByRegion returns P(ethnicity | London) and P(ethnicity | rest).
func ethnicityByRegion() (london, rest [6]float64) {
	ls := regionShare[londonIndex] / sum(regionShare[:])
	for e := range 5 {
		l := ethnicityLondon[e] / 100
		n := ethnicityEngland[e] / 100
		london[e] = l * (1 - unknownEthnicityShare)
		rest[e] = (n - ls*l) / (1 - ls) * (1 - unknownEthnicityShare)
	}
	london[5], rest[5] = unknownEthnicityShare, unknownEthnicityShare
	return london, rest
}

// condition is a recorded long-term condition: its SNOMED CT diagnosis code,
// the recorded prevalence to reach (QOF 2022–23 register sizes, England), and
// how the risk varies: byBand is the relative prevalence by five-year age
// band, multiplied by sex, IMD quintile and ethnicity factors. The generator
// scales the product so the expected prevalence over the generated
// population equals target exactly.
type condition struct {
	name   string
	code   string
	term   string
	target float64 // share of patients (of adults when adultsOnly)
	// adultsOnly: the QOF denominator is adults (18+) and nobody under 18 has
	// the condition.
	adultsOnly bool
	byBand     [19]float64
	bySex      [3]float64 // female, male, unknown
	byIMD      [5]float64 // quintile 1 (most deprived) .. 5
	byEth      [6]float64 // White, Mixed, Asian, Black, Other, Unknown
}

// Bits of the per-patient condition mask, in conditions order.
const (
	condHypertension = iota
	condT2D
	condAsthma
	condCOPD
	condCHD
	condAF
	condDepression
	condHeartFailure
	nConditions
)

// conditions lists the modelled conditions. Age curves follow published
// prevalence by age (QOF and Health Survey for England shapes); deprivation
// gradients follow the QOF/ONS pattern: strong for COPD, diabetes, CHD and
// heart failure, mild for hypertension and asthma, reversed slightly for AF
// (which is detected more in older, less deprived populations).
var conditions = [nConditions]condition{
	condHypertension: {
		name: "hypertension", code: "38341003", term: "Hypertensive disorder, systemic arterial", target: 0.14,
		byBand: [19]float64{0, 0, 0, 0.2, 0.5, 1, 2, 3.5, 6, 9, 14, 19, 26, 33, 40, 47, 53, 57, 58},
		bySex:  [3]float64{0.92, 1.08, 1},
		byIMD:  [5]float64{1.12, 1.06, 1, 0.95, 0.9},
		byEth:  [6]float64{1, 1, 1.1, 1.4, 1, 0.9},
	},
	condT2D: {
		name: "type_2_diabetes", code: "44054006", term: "Diabetes mellitus type 2", target: 0.07, adultsOnly: true,
		byBand: [19]float64{0, 0, 0, 0.3, 0.3, 0.6, 1.2, 2, 3.5, 5, 7.5, 10, 13, 15, 17, 18, 18, 16, 13},
		bySex:  [3]float64{0.8, 1.25, 1},
		byIMD:  [5]float64{1.45, 1.2, 1, 0.85, 0.72},
		byEth:  [6]float64{1, 1.2, 2.2, 1.7, 1.3, 1},
	},
	condAsthma: {
		name: "asthma", code: "195967001", term: "Asthma", target: 0.065,
		byBand: [19]float64{1, 5, 8, 8, 6.5, 6.5, 6.5, 6.5, 6.5, 6.5, 6.5, 6.5, 6.5, 7.5, 7.5, 7.5, 6.5, 6.5, 6.5},
		bySex:  [3]float64{1.12, 0.88, 1},
		byIMD:  [5]float64{1.15, 1.07, 1, 0.95, 0.9},
		byEth:  [6]float64{1, 1, 0.9, 0.9, 0.9, 1},
	},
	condCOPD: {
		name: "copd", code: "13645005", term: "Chronic obstructive lung disease", target: 0.02,
		byBand: [19]float64{0, 0, 0, 0, 0, 0, 0, 0.2, 0.4, 0.8, 1.4, 2.3, 3.5, 5, 6.5, 7.5, 8, 7.5, 6},
		bySex:  [3]float64{0.95, 1.05, 1},
		byIMD:  [5]float64{2.0, 1.4, 1, 0.75, 0.55},
		byEth:  [6]float64{1, 0.8, 0.5, 0.5, 0.6, 1},
	},
	condCHD: {
		name: "coronary_heart_disease", code: "53741008", term: "Coronary arteriosclerosis", target: 0.03,
		byBand: [19]float64{0, 0, 0, 0, 0, 0, 0, 0.1, 0.3, 0.7, 1.5, 2.7, 4.5, 7, 10, 13, 16, 18, 19},
		bySex:  [3]float64{0.6, 1.5, 1},
		byIMD:  [5]float64{1.4, 1.2, 1, 0.88, 0.78},
		byEth:  [6]float64{1, 1, 1.4, 0.8, 1, 1},
	},
	condAF: {
		name: "atrial_fibrillation", code: "49436004", term: "Atrial fibrillation", target: 0.02,
		byBand: [19]float64{0, 0, 0, 0, 0, 0, 0.02, 0.05, 0.1, 0.2, 0.5, 0.9, 1.6, 3, 5, 8, 11, 14, 15},
		bySex:  [3]float64{0.8, 1.25, 1},
		byIMD:  [5]float64{0.92, 0.96, 1, 1.03, 1.06},
		byEth:  [6]float64{1.1, 0.7, 0.6, 0.6, 0.6, 1},
	},
	condDepression: {
		name: "depression", code: "35489007", term: "Depressive disorder", target: 0.13, adultsOnly: true,
		byBand: [19]float64{0, 0, 0, 11, 11, 14, 14, 15, 15, 15, 15, 13, 13, 10, 10, 9, 9, 9, 9},
		bySex:  [3]float64{1.4, 0.62, 1},
		byIMD:  [5]float64{1.35, 1.15, 1, 0.9, 0.8},
		byEth:  [6]float64{1.1, 1, 0.6, 0.6, 0.7, 0.8},
	},
	condHeartFailure: {
		name: "heart_failure", code: "84114007", term: "Heart failure", target: 0.011,
		byBand: [19]float64{0, 0, 0, 0, 0, 0, 0, 0, 0, 0.2, 0.2, 0.7, 0.7, 2, 2, 5, 5, 10, 12},
		bySex:  [3]float64{0.8, 1.25, 1},
		byIMD:  [5]float64{1.4, 1.2, 1, 0.9, 0.8},
		byEth:  [6]float64{1, 1, 1, 1, 1, 1},
	},
}

// The rare condition: Fabry disease, about 1 in 50,000 recorded.
const (
	fabryCode  = "16652001"
	fabryTerm  = "Fabry's disease"
	fabryRate  = 1.0 / 50000
	maxRisk    = 0.95 // no demographic cell is certain to have a condition
	adultAge   = 18
	elderlyAge = 65
)

func sum(xs []float64) float64 {
	var s float64
	for _, x := range xs {
		s += x
	}
	return s
}

// agePMF returns P(age = a) for a in 0..maxAge-1: a band's share spread evenly
// over its five years, the 90+ band spread over 90..99 with weights falling
// the way survival does (ages are drawn in SQL with the same rule: see
// ageSQL).
func agePMF() [maxAge]float64 {
	var p [maxAge]float64
	total := sum(ageBands[:])
	for b := range 18 {
		for y := range 5 {
			p[b*5+y] = ageBands[b] / total / 5
		}
	}
	w := oldAgeWeights()
	for y := range 10 {
		p[90+y] = ageBands[18] / total * w[y]
	}
	return p
}

// oldAgeWeights is P(age = 90+y | 90+), y = 0..9: age = 90 + floor(10 u²)
// so P(y) = sqrt((y+1)/10) - sqrt(y/10).
func oldAgeWeights() [10]float64 {
	var w [10]float64
	for y := range 10 {
		w[y] = math.Sqrt(float64(y+1)/10) - math.Sqrt(float64(y)/10)
	}
	return w
}

// band returns the five-year band index of age.
func band(age int) int { return min(age/5, 18) }

// imdEthJoint is P(imd quintile, ethnicity) over the population: the two are
// independent given region.
func imdEthJoint() [5][6]float64 {
	london, rest := ethnicityByRegion()
	total := sum(regionShare[:])
	var j [5][6]float64
	for r := range 9 {
		pr := regionShare[r] / total
		eth := rest
		if r == londonIndex {
			eth = london
		}
		q := imdByRegion[r]
		qs := sum(q[:])
		for i := range 5 {
			for e := range 6 {
				j[i][e] += pr * q[i] / qs * eth[e]
			}
		}
	}
	return j
}

// riskCell is one demographic cell of the risk table.
type riskCell struct {
	age, sex, imd, eth int
	p                  [nConditions]float64
}

// riskKey is the integer key SQL joins the risk table on.
func riskKey(age, sex, imd, eth int) int { return age*1000 + sex*100 + imd*10 + eth }

const riskKeySQL = "age * 1000 + sex_i * 100 + imd * 10 + eth_i"

// riskTable computes, for every (age, sex, imd, eth) cell, the probability of
// each condition: the product of the condition's factors times a scale found
// by bisection so that the expected prevalence over the population model
// (including the cap at maxRisk) equals the target. Doing this in Go from
// the model, not in SQL from the drawn sample, keeps the output independent
// of floating-point summation order, so a seed always gives the same file.
func riskTable() ([]riskCell, error) {
	ages := agePMF()
	joint := imdEthJoint()
	type cellW struct {
		age, sex, imd, eth int
		w                  float64
	}
	var cells []cellW
	for a := range maxAge {
		fs := femaleShare[band(a)]
		psex := [3]float64{fs * (1 - unknownSexShare), (1 - fs) * (1 - unknownSexShare), unknownSexShare}
		for s := range 3 {
			for i := range 5 {
				for e := range 6 {
					cells = append(cells, cellW{a, s, i, e, ages[a] * psex[s] * joint[i][e]})
				}
			}
		}
	}
	out := make([]riskCell, len(cells))
	for k, c := range cells {
		out[k] = riskCell{age: c.age, sex: c.sex, imd: c.imd + 1, eth: c.eth}
	}
	for ci, cond := range conditions {
		base := make([]float64, len(cells))
		var denom float64
		for k, c := range cells {
			if cond.adultsOnly && c.age < adultAge {
				continue
			}
			denom += c.w
			base[k] = cond.byBand[band(c.age)] * cond.bySex[c.sex] * cond.byIMD[c.imd] * cond.byEth[c.eth]
		}
		expected := func(scale float64) float64 {
			var s float64
			for k, c := range cells {
				s += c.w * math.Min(maxRisk, scale*base[k])
			}
			return s / denom
		}
		lo, hi := 0.0, 1.0
		for expected(hi) < cond.target {
			hi *= 2
			if hi > 1e6 {
				return nil, fmt.Errorf("condition %s: target prevalence %.3f unreachable under the risk cap", cond.name, cond.target)
			}
		}
		for range 100 {
			mid := (lo + hi) / 2
			if expected(mid) < cond.target {
				lo = mid
			} else {
				hi = mid
			}
		}
		for k := range cells {
			out[k].p[ci] = math.Min(maxRisk, hi*base[k])
		}
	}
	return out, nil
}

// mortality5y is the probability of dying within the five-year window for
// someone of the given age at the index date: a Gompertz hazard fitted by eye
// to England's life tables (annual q ≈ 0.0005 at 30, 0.003 at 50, 0.09 at 85).
const mortality5ySQL = "1 - pow(1 - least(0.3, exp(-10.5 + 0.095 * age)), 5)"
