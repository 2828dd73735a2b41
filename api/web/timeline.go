package web

import (
	"time"

	"github.com/nhs-tre/tre/broker"
)

// timelineRow is one line of a query's timeline. A run retried at the site
// is one row, however many leases and failed attempts it took.
type timelineRow struct {
	When, Until string // Until is set when the row spans several events
	Status      broker.Status
	Actor       string
	Comments    []string
	Attempts    int
}

// timeline folds q's history into rows for the query page: consecutive
// events into "running" (each lease, each failed attempt sent back to the
// queue) become one row counting the attempts. Staff see times to the
// second; others to the minute, as the broker gives them.
func timeline(q *broker.Query, staff bool) []timelineRow {
	at := fmtTime
	if staff {
		at = fmtStamp
	}
	var rows []timelineRow
	for _, e := range q.History {
		if n := len(rows); n > 0 && e.To == broker.StatusRunning && rows[n-1].Status == broker.StatusRunning {
			r := &rows[n-1]
			r.Until = at(e.At)
			if e.Comment == "" {
				r.Attempts++ // a new lease
			} else {
				r.Comments = append(r.Comments, e.Comment)
			}
			continue
		}
		r := timelineRow{When: at(e.At), Status: e.To, Actor: e.Actor}
		if e.Comment != "" {
			r.Comments = []string{e.Comment}
		}
		if e.To == broker.StatusRunning {
			r.Attempts = 1
		}
		rows = append(rows, r)
	}
	if len(rows) == 0 {
		rows = append(rows, timelineRow{When: at(q.SubmittedAt), Status: broker.StatusSubmitted, Actor: q.SubmittedBy})
	}
	return rows
}

// fmtStamp is a time to the second with its zone, for staff.
func fmtStamp(t time.Time) string {
	if t.IsZero() {
		return "—"
	}
	return t.UTC().Format("2006-01-02 15:04:05 UTC")
}
