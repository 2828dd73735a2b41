package web

import (
	"net/http"
	"strconv"
	"strings"

	"github.com/nhs-tre/tre/broker"
	"github.com/nhs-tre/tre/dp"
)

// queryView is one query as any role sees it; sections appear by role and
// status. The Can* flags only decide which buttons are drawn: the broker
// decides again on every action.
type queryView struct {
	Q       *broker.Query
	Project *broker.Project
	// Codelists are the codelists the query joins, as the list has them.
	Codelists []*broker.Codelist
	// Output is the output as an output checker checks it (the full
	// disclosure report or the failure notice); Released is what a
	// researcher may see of a released one. At most one is set.
	Output   *broker.Output
	Released *broker.ReleasedResult
	Chart    *chart
	// Charts link to the chart of each released aggregate (?chart=NAME);
	// ChartKeys, for a table too long for one chart, to the chart of each
	// key of its last group column (?at=KEY).
	Charts    []chartLink
	ChartKeys []chartLink
	// KM is the Kaplan–Meier curve when the table is a survival table.
	KM *chart
	// Totals is what staff read of a query with totals (its grouping
	// sets), nil for any other.
	Totals *totalsView
	// FailedMessage explains a failed query without saying anything that
	// depends on the data (broker.FailedMessage).
	FailedMessage string
	Timeline      []timelineRow
	// Staff marks a reviewer, output checker or admin: they see times to
	// the second.
	Staff bool

	IsSubmitter bool
	CanCancel   bool
	// CanReview / CanCheck: the caller holds the role, the status allows the
	// action and separation of duties does not forbid it.
	CanReview bool
	CanCheck  bool
	// ReviewBlocked / CheckBlocked explain a missing button to a reviewer or
	// output checker.
	ReviewBlocked string
	CheckBlocked  string
	ShowRewritten bool

	// Comment and Reason are what the caller typed, kept after a refusal.
	Comment string
	Reason  string
}

// doneNotices are the confirmations a redirect may ask for (?done=…); the
// text never comes from the request.
var doneNotices = map[string]string{
	"submitted": "Query submitted. A reviewer will look at it next.",
	"approved":  "Query approved. The budget is reserved and the site will run it.",
	"rejected":  "Query rejected. The researcher will see your reason.",
	"released":  "Result released to the researcher.",
	"withheld":  "Result withheld. The researcher will see your reason.",
	"cancelled": "Query cancelled.",
}

func (h *Handler) query(w http.ResponseWriter, r *http.Request, s *session) {
	id, ok := h.pathID(w, r, s)
	if !ok {
		return
	}
	h.queryPage(w, r, s, id, http.StatusOK, doneNotices[r.URL.Query().Get("done")], "", nil)
}

// queryPage renders the query page, with errMsg and status after a refused
// action.
func (h *Handler) queryPage(w http.ResponseWriter, r *http.Request, s *session, id int64, status int, notice, errMsg string, typed *queryView) {
	ctx := r.Context()
	u := s.user
	staff := u.HasRole(broker.RoleReviewer) || u.HasRole(broker.RoleOutputChecker) || u.HasRole(broker.RoleAdmin)
	read := ctx
	if staff { // the page shows staff the rewritten SQL
		read = broker.WithRewritten(ctx)
	}
	q, err := h.svc.FindQueryByID(read, id)
	if err != nil {
		h.fail(w, r, s, err)
		return
	}
	access, err := h.svc.QueryAccess(ctx, id)
	if err != nil {
		h.fail(w, r, s, err)
		return
	}
	qv := &queryView{Q: q, IsSubmitter: q.SubmittedBy == u.Subject}
	if qv.Codelists, err = h.queryCodelists(r, q); err != nil {
		h.fail(w, r, s, err)
		return
	}
	if typed != nil {
		qv.Comment, qv.Reason = typed.Comment, typed.Reason
	}
	// The project's budget is context for the reviewer. Only callers who may
	// read the project ask for it: asking for others would record a refusal
	// in the audit chain for a page they may open.
	if u.HasRole(broker.RoleAdmin) || u.HasRole(broker.RoleReviewer) || (access.Member && u.HasRole(broker.RoleResearcher)) {
		if p, err := h.svc.FindProjectByID(ctx, q.ProjectID); err == nil {
			qv.Project = p
		}
	}
	qv.CanCancel = qv.IsSubmitter && q.Status == broker.StatusSubmitted
	qv.ShowRewritten = staff && q.Rewritten != ""
	qv.Staff, qv.Timeline = staff, timeline(q, staff)
	// Separation of duties decides the buttons, in the broker's words.
	if u.HasRole(broker.RoleReviewer) && q.Status == broker.StatusSubmitted {
		qv.CanReview = access.Review.Allowed
		if !qv.CanReview {
			qv.ReviewBlocked = dutyNotice(access.Review.Reason, "reviewer must decide on it")
		}
	}
	checker := u.HasRole(broker.RoleOutputChecker)
	if checker && q.Status == broker.StatusAwaitingOutputCheck {
		qv.CanCheck = access.Check.Allowed
		if !qv.CanCheck {
			qv.CheckBlocked = dutyNotice(access.Check.Reason, "output checker must check its result")
		}
	}
	if q.Status == broker.StatusFailed {
		qv.FailedMessage = broker.FailedMessage
	}
	qv.Totals = h.totals(r, id)
	// ?chart= names the released aggregate the chart draws (the first
	// when it names none); ?at= the key of a long table's last group
	// column it draws.
	pick, at := r.URL.Query().Get("chart"), r.URL.Query().Get("at")
	// Before release only an output checker separation of duties allows
	// sees the output, as the checker checks it; once released, the
	// project's researchers see what a researcher receives of it.
	var outErr error
	switch q.Status {
	case broker.StatusAwaitingOutputCheck, broker.StatusReleased, broker.StatusWithheld, broker.StatusFailed:
		switch {
		case access.CheckerView:
			qv.Output, outErr = h.svc.FindOutput(ctx, id)
			if qv.Output != nil && qv.Output.Result != nil {
				res := qv.Output.Result
				qv.Chart = newChart(res.Columns, res.Rows, pick, at)
				qv.Charts, qv.ChartKeys = chartLinks(id, res.Columns, qv.Chart)
				qv.KM = newKMChart(res.Columns, res.Rows)
			}
		case q.Status == broker.StatusReleased && access.Member && u.HasRole(broker.RoleResearcher):
			qv.Released, outErr = h.svc.ReleasedOutput(ctx, id)
			if qv.Released != nil {
				res := qv.Released.Result
				qv.Chart = newChart(res.Columns, res.Rows, pick, at)
				qv.Charts, qv.ChartKeys = chartLinks(id, res.Columns, qv.Chart)
				qv.KM = newKMChart(res.Columns, res.Rows)
			}
		}
	}
	switch broker.ErrorCode(outErr) {
	case "", broker.EFORBIDDEN, broker.ENOTFOUND:
		// Not this caller's to see; the page says nothing more.
	default:
		h.fail(w, r, s, outErr)
		return
	}
	v := newView(s, "Query "+strconv.FormatInt(q.ID, 10), "", qv)
	v.Notice, v.Error = notice, errMsg
	switch {
	case u.HasRole(broker.RoleReviewer) && q.Status == broker.StatusSubmitted:
		v.Active = "review"
	case checker && q.Status == broker.StatusAwaitingOutputCheck:
		v.Active = "outputs"
	case qv.IsSubmitter:
		v.Active = "queries"
	}
	h.render(w, r, status, "query.html", v)
}

// totalsView is a query with totals (GROUP BY ROLLUP, CUBE or GROUPING
// SETS) as its researchers, reviewer and output checker read it: its
// grouping sets, the key its total rows show and the L0 its noise is
// calibrated to.
type totalsView struct {
	// Sets name each grouping set by its group columns.
	Sets  []string
	Key   string
	K, L0 int
}

// totals is the totals of query id when it has grouping sets, from the
// spec it compiles to (broker.Service.QuerySpec); nil for any other, or
// when the spec cannot be had (the page shows the rest: the report still
// says how many sets a result has).
func (h *Handler) totals(r *http.Request, id int64) *totalsView {
	spec, err := h.svc.QuerySpec(r.Context(), id)
	if err != nil {
		h.logger.Info("web: query spec", "query", id, "code", broker.ErrorCode(err))
		return nil
	}
	if len(spec.Sets) == 0 {
		return nil
	}
	tv := &totalsView{Key: dp.TotalKey, K: spec.MaxGroupsPerPatient, L0: spec.MaxGroupsPerPatient * len(spec.Sets)}
	for _, set := range spec.Sets {
		var names []string
		for _, c := range set {
			names = append(names, spec.Groups[c].Name)
		}
		switch {
		case len(set) == 0:
			tv.Sets = append(tv.Sets, "the grand total (every group column totalled)")
		case len(set) == len(spec.Groups):
			tv.Sets = append(tv.Sets, strings.Join(names, " × ")+" (the cells)")
		default:
			tv.Sets = append(tv.Sets, strings.Join(names, " × ")+" (subtotals)")
		}
	}
	return tv
}

// dutyNotice explains a button separation of duties hides: the broker's
// reason and who acts instead.
func dutyNotice(reason, instead string) string {
	if reason == "" {
		return ""
	}
	return strings.ToUpper(reason[:1]) + reason[1:] + ": another " + instead + " (separation of duties)."
}

// queryAction performs approve, reject, release, withhold or cancel and
// returns to the query page, showing the broker's refusal if there is one.
func (h *Handler) queryAction(w http.ResponseWriter, r *http.Request, s *session) {
	id, ok := h.pathID(w, r, s)
	if !ok {
		return
	}
	ctx := r.Context()
	typed := &queryView{
		Comment: strings.TrimSpace(r.PostForm.Get("comment")),
		Reason:  strings.TrimSpace(r.PostForm.Get("reason")),
	}
	needReason := func(what string) bool {
		if typed.Reason != "" {
			return true
		}
		h.queryPage(w, r, s, id, http.StatusUnprocessableEntity, "", "Give a reason to "+what+": the researcher will see it.", typed)
		return false
	}
	var err error
	action := r.PathValue("action")
	switch action {
	case "approve":
		_, err = h.svc.ApproveQuery(ctx, id, typed.Comment)
	case "reject":
		if !needReason("reject the query") {
			return
		}
		_, err = h.svc.RejectQuery(ctx, id, typed.Reason)
	case "release":
		_, err = h.svc.ReleaseQuery(ctx, id, typed.Comment)
	case "withhold":
		if !needReason("withhold the result") {
			return
		}
		_, err = h.svc.WithholdQuery(ctx, id, typed.Reason)
	case "cancel":
		_, err = h.svc.CancelQuery(ctx, id)
	default:
		h.notFound(w, r)
		return
	}
	if err != nil {
		status, msg := h.errStatus(r, err)
		if status == http.StatusNotFound {
			h.renderMessage(w, r, s, status, "Not found", msg)
			return
		}
		h.queryPage(w, r, s, id, status, "", msg, typed)
		return
	}
	done := map[string]string{"approve": "approved", "reject": "rejected", "release": "released", "withhold": "withheld", "cancel": "cancelled"}[action]
	h.logger.Info("web: query decision", "query", id, "action", action, "subject", s.user.Subject)
	http.Redirect(w, r, "/ui/queries/"+strconv.FormatInt(id, 10)+"?done="+done, http.StatusSeeOther)
}

type queueView struct {
	Queries []*broker.Query
}

func (h *Handler) reviewQueue(w http.ResponseWriter, r *http.Request, s *session) {
	qs, err := h.svc.ReviewQueue(r.Context())
	if err != nil {
		h.fail(w, r, s, err)
		return
	}
	h.render(w, r, http.StatusOK, "review.html", newView(s, "Review queue", "review", queueView{Queries: qs}))
}

func (h *Handler) outputQueue(w http.ResponseWriter, r *http.Request, s *session) {
	qs, err := h.svc.OutputQueue(r.Context())
	if err != nil {
		h.fail(w, r, s, err)
		return
	}
	h.render(w, r, http.StatusOK, "outputs.html", newView(s, "Output check queue", "outputs", queueView{Queries: qs}))
}
