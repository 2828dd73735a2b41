package bench

import (
	"fmt"
	"sort"
	"time"
)

// sample is a set of timings.
type sample struct{ d []time.Duration }

func (s *sample) add(d time.Duration) { s.d = append(s.d, d) }
func (s sample) n() int               { return len(s.d) }

func (s sample) sorted() []time.Duration {
	c := append([]time.Duration(nil), s.d...)
	sort.Slice(c, func(i, j int) bool { return c[i] < c[j] })
	return c
}

// quantile is the nearest-rank quantile (q in [0,1]); 0 for no data.
func (s sample) quantile(q float64) time.Duration {
	c := s.sorted()
	if len(c) == 0 {
		return 0
	}
	i := int(q*float64(len(c))+0.999999) - 1
	return c[max(0, min(i, len(c)-1))]
}

// median is the middle value (mean of the two middle ones for an even n).
func (s sample) median() time.Duration {
	c := s.sorted()
	switch {
	case len(c) == 0:
		return 0
	case len(c)%2 == 1:
		return c[len(c)/2]
	}
	return (c[len(c)/2-1] + c[len(c)/2]) / 2
}

func (s sample) min() time.Duration { return s.quantile(0) }
func (s sample) max() time.Duration { return s.quantile(1) }

// spread renders "median (min–max)".
func (s sample) spread() string {
	if s.n() == 0 {
		return "–"
	}
	if s.n() == 1 {
		return fmtDur(s.median())
	}
	return fmt.Sprintf("%s (%s–%s)", fmtDur(s.median()), fmtDur(s.min()), fmtDur(s.max()))
}

func fmtDur(d time.Duration) string {
	switch {
	case d >= 10*time.Second:
		return fmt.Sprintf("%.1f s", d.Seconds())
	case d >= time.Second:
		return fmt.Sprintf("%.2f s", d.Seconds())
	case d >= 10*time.Millisecond:
		return fmt.Sprintf("%.0f ms", float64(d)/1e6)
	case d >= time.Millisecond:
		return fmt.Sprintf("%.1f ms", float64(d)/1e6)
	}
	return fmt.Sprintf("%.0f µs", float64(d)/1e3)
}

// ratio is a/b of medians, "–" when either is missing.
func ratio(a, b sample) string {
	if a.n() == 0 || b.n() == 0 || b.median() == 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f×", float64(a.median())/float64(b.median()))
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
