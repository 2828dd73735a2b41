package web

import (
	"math"
	"strconv"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/nhs-tre/tre/broker"
)

// TestTimelineFoldsRetries: every lease and failed attempt of one run is one
// row counting the attempts; staff see seconds, others minutes.
func TestTimelineFoldsRetries(t *testing.T) {
	t0 := time.Date(2026, 3, 1, 12, 0, 5, 0, time.UTC)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	q := &broker.Query{SubmittedBy: "alice", SubmittedAt: t0, History: []broker.Event{
		{To: broker.StatusSubmitted, Actor: "alice", At: at(0)},
		{From: broker.StatusSubmitted, To: broker.StatusApproved, Actor: "bob", Comment: "fine", At: at(60)},
		{From: broker.StatusApproved, To: broker.StatusRunning, Actor: "site", At: at(61)},
		{From: broker.StatusRunning, To: broker.StatusRunning, Actor: "site", Comment: "attempt 1 failed: crashed", At: at(62)},
		{From: broker.StatusRunning, To: broker.StatusRunning, Actor: "site", At: at(63)},
		{From: broker.StatusRunning, To: broker.StatusRunning, Actor: "site", Comment: "attempt 2 failed: crashed", At: at(64)},
		{From: broker.StatusRunning, To: broker.StatusRunning, Actor: "site", At: at(65)},
		{From: broker.StatusRunning, To: broker.StatusAwaitingOutputCheck, Actor: "site", At: at(70)},
	}}
	want := []timelineRow{
		{When: "2026-03-01 12:00:05 UTC", Status: broker.StatusSubmitted, Actor: "alice"},
		{When: "2026-03-01 12:01:05 UTC", Status: broker.StatusApproved, Actor: "bob", Comments: []string{"fine"}},
		{When: "2026-03-01 12:01:06 UTC", Until: "2026-03-01 12:01:10 UTC", Status: broker.StatusRunning, Actor: "site", Attempts: 3,
			Comments: []string{"attempt 1 failed: crashed", "attempt 2 failed: crashed"}},
		{When: "2026-03-01 12:01:15 UTC", Status: broker.StatusAwaitingOutputCheck, Actor: "site"},
	}
	if diff := cmp.Diff(want, timeline(q, true)); diff != "" {
		t.Errorf("staff timeline (-want +got):\n%s", diff)
	}
	if got := timeline(q, false)[0].When; got != "2026-03-01 12:00 UTC" {
		t.Errorf("researcher's time %q, want minutes", got)
	}
	if got := timeline(&broker.Query{SubmittedBy: "alice", SubmittedAt: t0}, false); len(got) != 1 || got[0].Status != broker.StatusSubmitted {
		t.Errorf("timeline without history = %+v", got)
	}
}

func TestNiceTicks(t *testing.T) {
	tests := []struct {
		lo, hi     float64
		labels     []string
		start, end float64
	}{
		{0, 176, []string{"0", "50", "100", "150", "200"}, 0, 200},
		{0, 1078.5, []string{"0", "250", "500", "750", "1000", "1250"}, 0, 1250},
		{-3, 3, []string{"-4", "-2", "0", "2", "4"}, -4, 4},
		{0, 0, []string{"0.0", "0.2", "0.4", "0.6", "0.8", "1.0"}, 0, 1},
		{0, 0.37, []string{"0.0", "0.1", "0.2", "0.3", "0.4"}, 0, 0.4},
		{10, 22, []string{"10.0", "12.5", "15.0", "17.5", "20.0", "22.5"}, 10, 22.5},
	}
	for _, tt := range tests {
		ticks, start, end, decimals := niceTicks(tt.lo, tt.hi)
		var labels []string
		for _, x := range ticks {
			labels = append(labels, strconv.FormatFloat(x, 'f', decimals, 64))
		}
		if diff := cmp.Diff(tt.labels, labels); diff != "" || math.Abs(start-tt.start) > 1e-9 || math.Abs(end-tt.end) > 1e-9 {
			t.Errorf("niceTicks(%v, %v) = %v [%v, %v], want %v [%v, %v]", tt.lo, tt.hi, labels, start, end, tt.labels, tt.start, tt.end)
		}
	}
}

func TestFmtDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		time.Second: "1 second", 45 * time.Second: "45 seconds", time.Minute: "1 minute", 40 * time.Minute: "40 minutes",
		time.Hour: "1 hour", 47 * time.Hour: "47 hours", 72 * time.Hour: "3 days",
	} {
		if got := fmtDuration(d); got != want {
			t.Errorf("fmtDuration(%s) = %q, want %q", d, got, want)
		}
	}
}
