package web

import (
	"bytes"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/nhs-tre/tre/api"
	"github.com/nhs-tre/tre/broker"
	"github.com/nhs-tre/tre/dp"
	"github.com/nhs-tre/tre/queries"
)

// view is what every page template receives.
type view struct {
	Title  string
	User   *broker.User
	CSRF   string
	Active string // nav entry to mark as current
	Error  string // a refusal or validation message shown at the top
	Notice string // a confirmation shown at the top
	Data   any
}

// pages holds one template set per page: the layout, the shared partials
// and that page's "content".
type pages struct {
	set map[string]*template.Template
}

var funcs = template.FuncMap{
	"hasRole":    func(u *broker.User, r string) bool { return u.HasRole(broker.Role(r)) },
	"time":       fmtTime,
	"stamp":      fmtStamp,
	"date":       func(t time.Time) string { return fmtDate(t) },
	"eps":        fmtEps,
	"num":        fmtNum,
	"sql":        highlightSQL,
	"status":     statusLabel,
	"statusKind": statusKind,
	"cell":       cellText,
	"budgetBar":  newBudgetBar,
	"join":       strings.Join,
	"roles": func(u *broker.User) string {
		var s []string
		for _, r := range u.Roles {
			s = append(s, roleLabel(r))
		}
		return strings.Join(s, ", ")
	},
	"roleLabel":   func(r broker.Role) string { return roleLabel(r) },
	"add":         func(a, b int) int { return a + b },
	"mul":         func(a, b int) int { return a * b },
	"totalRow":    totalRow,
	"plural":      api.Plural,
	"sqlString":   sqlString,
	"failureHelp": failureHelp,
	"isOptOut":    func(c *queries.Catalog, table string) bool { return strings.EqualFold(c.Policy.OptOutTable, table) },
}

func mustParsePages() *pages {
	base := template.Must(template.New("base").Funcs(funcs).ParseFS(templateFS, "templates/base.html", "templates/partials.html"))
	names, err := fs.Glob(templateFS, "templates/*.html")
	if err != nil {
		panic("web: templates: " + err.Error())
	}
	p := &pages{set: map[string]*template.Template{}}
	for _, n := range names {
		name := strings.TrimPrefix(n, "templates/")
		if name == "base.html" || name == "partials.html" {
			continue
		}
		p.set[name] = template.Must(template.Must(base.Clone()).ParseFS(templateFS, n))
	}
	return p
}

// render executes a page into a buffer first, so that a template error
// becomes a clean 500 rather than half a page.
func (h *Handler) render(w http.ResponseWriter, r *http.Request, status int, name string, v *view) {
	t, ok := h.pages.set[name]
	if !ok {
		h.logger.Error("web: unknown template", "name", name)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	var buf bytes.Buffer
	if err := t.ExecuteTemplate(&buf, "base.html", v); err != nil {
		h.logger.Error("web: render", "template", name, "err", err)
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusInternalServerError)
		fmt.Fprintln(w, "internal error")
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	w.Write(buf.Bytes())
}

// messageView is the data of the message page (errors, refusals).
type messageView struct {
	Heading string
	Message string
	Status  int
}

func (h *Handler) renderMessage(w http.ResponseWriter, r *http.Request, s *session, status int, heading, msg string) {
	v := &view{Title: heading, Data: messageView{Heading: heading, Message: msg, Status: status}}
	if s != nil {
		v.User, v.CSRF = s.user, s.csrf
	}
	h.render(w, r, status, "message.html", v)
}

// errStatus returns the HTTP status and the safe message for err. Anything
// that is not a *broker.Error is internal: logged, never shown.
func (h *Handler) errStatus(r *http.Request, err error) (int, string) {
	var be *broker.Error
	if !errors.As(err, &be) || be.Code == broker.EINTERNAL {
		h.logger.Error("web: internal error", "path", r.URL.Path, "err", err)
		return http.StatusInternalServerError, "Something went wrong on our side. The error has been logged; please try again later."
	}
	return api.HTTPStatus(err), be.Message
}

// fail renders err as a message page with the right status.
func (h *Handler) fail(w http.ResponseWriter, r *http.Request, s *session, err error) {
	status, msg := h.errStatus(r, err)
	h.renderMessage(w, r, s, status, http.StatusText(status), msg)
}

func (h *Handler) notFound(w http.ResponseWriter, r *http.Request) {
	h.renderMessage(w, r, nil, http.StatusNotFound, "Not found", "There is no page at this address.")
}

// newView starts a page's view for a signed-in caller.
func newView(s *session, title, active string, data any) *view {
	return &view{Title: title, User: s.user, CSRF: s.csrf, Active: active, Data: data}
}

func fmtTime(t time.Time) string {
	if t.IsZero() {
		return "—"
	}
	return t.UTC().Format("2006-01-02 15:04 UTC")
}

func fmtDate(t time.Time) string {
	if t.IsZero() {
		return "—"
	}
	return t.UTC().Format("2 Jan 2006")
}

// fmtEps formats a privacy-budget amount compactly (ε and δ).
func fmtEps(f float64) string {
	if f == 0 {
		return "0"
	}
	if math.Abs(f) < 1e-3 {
		return strconv.FormatFloat(f, 'g', 3, 64)
	}
	return strconv.FormatFloat(math.Round(f*1000)/1000, 'f', -1, 64)
}

// fmtNum formats a released value: integers without decimals, others to
// two places.
func fmtNum(f float64) string {
	if f == math.Trunc(f) && math.Abs(f) < 1e15 {
		return strconv.FormatFloat(f, 'f', 0, 64)
	}
	return strconv.FormatFloat(f, 'f', 2, 64)
}

func roleLabel(r broker.Role) string {
	switch r {
	case broker.RoleResearcher:
		return "Researcher"
	case broker.RoleReviewer:
		return "Reviewer"
	case broker.RoleOutputChecker:
		return "Output checker"
	case broker.RoleAdmin:
		return "Admin"
	case broker.RoleAgent:
		return "Site agent"
	}
	return string(r)
}

func statusLabel(s broker.Status) string {
	switch s {
	case broker.StatusSubmitted:
		return "Submitted, awaiting review"
	case broker.StatusRejected:
		return "Rejected"
	case broker.StatusApproved:
		return "Approved, waiting to run"
	case broker.StatusCancelled:
		return "Cancelled"
	case broker.StatusRunning:
		return "Running at the site"
	case broker.StatusAwaitingOutputCheck:
		return "Awaiting output check"
	case broker.StatusReleased:
		return "Released"
	case broker.StatusWithheld:
		return "Withheld"
	case broker.StatusFailed:
		return "Failed"
	}
	return string(s)
}

// statusKind groups statuses for styling; the label always carries the
// meaning in text too.
func statusKind(s broker.Status) string {
	switch s {
	case broker.StatusReleased:
		return "good"
	case broker.StatusRejected, broker.StatusWithheld, broker.StatusFailed, broker.StatusCancelled:
		return "bad"
	}
	return "wait"
}

// cellView is one table cell as the templates show it: text plus marks
// (never colour alone).
type cellView struct {
	Text       string
	Class      string
	Marks      []string
	CI         string
	Suppressed bool
}

// totalRow reports whether a result row is a total or subtotal: a key
// column shows dp.TotalKey (no domain holds it).
func totalRow(cols []dp.Column, row []dp.Cell) bool {
	for i, c := range row {
		if i < len(cols) && cols[i].Kind == dp.KindGroup && !c.Null && c.Key == dp.TotalKey {
			return true
		}
	}
	return false
}

func cellText(col dp.Column, c dp.Cell) cellView {
	if col.Kind == "group" {
		if c.Null {
			return cellView{Text: "(missing)", Class: "key null"}
		}
		if c.Key == dp.TotalKey {
			return cellView{Text: c.Key, Class: "key total"}
		}
		return cellView{Text: c.Key, Class: "key"}
	}
	var v cellView
	v.Class = "num"
	switch {
	case c.Secondary:
		v.Text, v.Suppressed = "suppressed", true
		v.Class += " suppressed"
		v.Marks = append(v.Marks, "secondary")
	case c.Suppressed || c.Value == nil:
		v.Text, v.Suppressed = "suppressed", true
		v.Class += " suppressed"
	default:
		var lo, hi string
		v.Text, lo, hi = api.FormatCell(col, c)
		if lo != "" && hi != "" {
			v.CI = lo + " to " + hi
		}
	}
	if c.Rounded {
		v.Marks = append(v.Marks, "rounded")
		v.Class += " rounded"
	}
	for _, d := range c.Dominance {
		v.Marks = append(v.Marks, "dominance "+d)
		v.Class += " dominance"
	}
	return v
}

// budgetBar is a project's ε ledger drawn as one stacked bar (SVG
// attributes, since the CSP forbids inline styles).
type budgetBar struct {
	Total, Spent, Reserved, Remaining float64
	// Widths in percent of the bar.
	SpentW, ReservedW, RemainingW float64
	ReservedX, RemainingX         float64
}

func newBudgetBar(p *broker.Project) budgetBar {
	b := budgetBar{Total: p.EpsilonBudget, Spent: p.Budget.EpsilonSpent, Reserved: p.Budget.EpsilonReserved, Remaining: p.Budget.EpsilonRemaining}
	total := b.Spent + b.Reserved + b.Remaining
	if total <= 0 {
		return b
	}
	pct := func(x float64) float64 { return math.Round(1000*math.Max(0, x)/total) / 10 }
	b.SpentW, b.ReservedW = pct(b.Spent), pct(b.Reserved)
	b.RemainingW = math.Max(0, 100-b.SpentW-b.ReservedW)
	b.ReservedX = b.SpentW
	b.RemainingX = b.SpentW + b.ReservedW
	return b
}

// renderFragment executes one named template of a page's set (for the
// editor's live check).
func (h *Handler) renderFragment(w http.ResponseWriter, r *http.Request, status int, page, name string, data any) {
	t, ok := h.pages.set[page]
	var buf bytes.Buffer
	if !ok {
		h.logger.Error("web: unknown template", "name", page)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	if err := t.ExecuteTemplate(&buf, name, data); err != nil {
		h.logger.Error("web: render fragment", "template", name, "err", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	w.Write(buf.Bytes())
}
