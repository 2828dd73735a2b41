package dp

import (
	"errors"
	"fmt"
	"math"
)

// Dominance thresholds: the (n,k) rule with n = 2, k = 90% and the p% rule
// with p = 10%.
const (
	DominanceNK = "nk"
	DominanceP  = "p%"

	dominanceK = 0.9
	dominanceP = 0.1
)

// RoundCount post-processes a noisy count: negative values become 0, then
// the count is rounded to a multiple of base. With rule RoundingNearest the
// value goes to the nearest multiple (halves away from zero). With
// RoundingMidpoint6 (NHS style, base 5) the value is first rounded to an
// integer; 0 stays 0, 1–7 become 5, and everything else goes to the nearest
// multiple of 5.
func RoundCount(noisy float64, base int, rule string) float64 {
	v := math.Max(0, noisy)
	if rule == RoundingMidpoint6 {
		n := math.Round(v)
		switch {
		case n == 0:
			return 0
		case n <= 7:
			return 5
		}
		return roundNearest(n, 5)
	}
	return roundNearest(v, base)
}

func roundNearest(v float64, base int) float64 {
	b := float64(max(base, 1))
	return math.Round(v/b) * b
}

// Dominance reports which dominance rules a cell breaks, judged from the
// exact sum of per-patient contributions and the two largest of them:
//
//   - (n,k) with n = 2, k = 90%: the top two contribute more than 90% of
//     the total (Top1 + Top2 > 0.9·Sum);
//   - p% with p = 10%: the rest of the total would let the second-largest
//     contributor estimate the largest within 10% (Sum − Top1 − Top2 <
//     0.1·Top1).
//
// The rules assume non-negative contributions; a cell whose sum or largest
// contribution is not positive is not judged. The flags are computed inside
// the sandbox; only they leave it.
func Dominance(sum, top1, top2 float64) []string {
	if top2 > top1 {
		top1, top2 = top2, top1
	}
	if sum <= 0 || top1 <= 0 {
		return nil
	}
	top2 = math.Max(top2, 0)
	var flags []string
	if top1+top2 > dominanceK*sum {
		flags = append(flags, DominanceNK)
	}
	if sum-top1-top2 < dominanceP*top1 {
		flags = append(flags, DominanceP)
	}
	return flags
}

// SecondarySuppress chooses complementary suppressions for a table whose
// margins are released. Cell i has the key tuple keys[i], a noisy ranking
// value noisy[i] (its noisy count) and is primary-suppressed when
// suppressed[i]. A line is a set of cells that agree on every key but one;
// its total is a margin, so a line with exactly one suppressed cell would
// give that cell away by subtraction. For every such line the unsuppressed
// cell with the smallest noisy value (the first on ties) is suppressed too,
// and this repeats until no line has exactly one suppressed cell, since a
// new suppression can leave a crossing line with a single one. That is not
// enough in two or more dimensions: two blocks of suppressed cells joined
// by one suppressed cell (a bridge) leave every line with two suppressed
// cells while the margins still determine the bridge. So the lines'
// relations are then solved (completeSuppression, margins.go) and cells
// suppressed until no suppressed cell is determined by the released cells
// and margins. It returns which cells were suppressed only for these
// reasons.
//
// Only noisy values are used. A line with a single cell cannot be protected
// by suppressing other cells: its margin equals the cell.
func SecondarySuppress(keys [][]*string, noisy []float64, suppressed []bool) ([]bool, error) {
	n := len(keys)
	if len(noisy) != n || len(suppressed) != n {
		return nil, fmt.Errorf("secondary suppression: %d key tuples, %d values, %d flags", n, len(noisy), len(suppressed))
	}
	secondary := make([]bool, n)
	if n == 0 {
		return secondary, nil
	}
	dims := len(keys[0])
	for i := range keys {
		if len(keys[i]) != dims {
			return nil, errors.New("secondary suppression: key tuples differ in length")
		}
	}
	var lines [][]int
	for d := range dims {
		byLine := make(map[string]int)
		other := make([]*string, dims-1)
		for i, k := range keys {
			copy(other, k[:d])
			copy(other[d:], k[d+1:])
			ks := keyString(other)
			li, ok := byLine[ks]
			if !ok {
				li = len(lines)
				byLine[ks] = li
				lines = append(lines, nil)
			}
			lines[li] = append(lines[li], i)
		}
	}
	isSuppressed := func(i int) bool { return suppressed[i] || secondary[i] }
	for changed := true; changed; {
		changed = false
		for _, line := range lines {
			count, pick := 0, -1
			for _, i := range line {
				if isSuppressed(i) {
					count++
				} else if pick < 0 || noisy[i] < noisy[pick] {
					pick = i
				}
			}
			if count == 1 && pick >= 0 {
				secondary[pick] = true
				changed = true
			}
		}
	}
	var rels []relation
	for _, line := range lines {
		if len(line) > 1 {
			r := relation{cells: line, coef: make([]float64, len(line))}
			for i := range r.coef {
				r.coef[i] = 1
			}
			rels = append(rels, r)
		}
	}
	already := make([]bool, n)
	for i := range already {
		already[i] = isSuppressed(i)
	}
	for i, more := range completeSuppression(n, rels, nil, noisy, already) {
		secondary[i] = secondary[i] || more
	}
	return secondary, nil
}
