package queries

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/nhs-tre/tre/dp"
)

// TestCompileFederated: a federated compile differs from the ordinary one
// only in its mechanism (Gaussian), the same for every compile of the same
// SQL (the sites' parts carry its hash); a query on a public domain passes
// ValidateFederated, one needing partition selection is refused with the
// reason.
func TestCompileFederated(t *testing.T) {
	p := MustParser(t)
	cat := MustLoadTestCatalog(t)
	const sql = `SELECT p.sex, count(DISTINCT p.patient_id) AS n FROM patients p GROUP BY p.sex`
	compile := func(sql string, fed bool) *Plan {
		t.Helper()
		plan, err := p.Compile(context.Background(), cat, sql, Options{Seed: 1, Federated: fed})
		if err != nil {
			t.Fatal(err)
		}
		return plan
	}
	plain, fed, again := compile(sql, false), compile(sql, true), compile(sql, true)
	if fed.Spec.Mechanism != dp.MechanismGaussian {
		t.Fatalf("federated spec mechanism %q, want gaussian", fed.Spec.Mechanism)
	}
	if fed.Spec.Hash() != again.Spec.Hash() || fed.Spec.Hash() == plain.Spec.Hash() {
		t.Errorf("spec hashes: federated %s and %s, plain %s", fed.Spec.Hash(), again.Spec.Hash(), plain.Spec.Hash())
	}
	s := plain.Spec
	s.Mechanism = dp.MechanismGaussian
	if s.Hash() != fed.Spec.Hash() {
		t.Error("a federated spec differs from the plain one in more than its mechanism")
	}
	if err := fed.Spec.ValidateFederated(); err != nil {
		t.Errorf("public-domain federated query refused: %v", err)
	}
	if err := plain.Spec.ValidateFederated(); err == nil {
		t.Error("a Laplace spec passed ValidateFederated")
	}
	sel := compile(`SELECT snomed_code, count(*) AS n FROM clinical_events GROUP BY snomed_code`, true)
	if err := sel.Spec.ValidateFederated(); err == nil {
		t.Error("a federated query grouping on a column without public domain passed ValidateFederated")
	}
}

// monthKeys lists the first days of the months from first to last
// (YYYY-MM), as a federated monthly query's domain writes them.
func monthKeys(tb testing.TB, first, last string) []string {
	tb.Helper()
	from, err1 := time.Parse("2006-01", first)
	to, err2 := time.Parse("2006-01", last)
	if err1 != nil || err2 != nil {
		tb.Fatalf("month keys %s to %s: %v %v", first, last, err1, err2)
	}
	var out []string
	for m := from; !m.After(to); m = m.AddDate(0, 1, 0) {
		out = append(out, m.Format("2006-01-02"))
	}
	return out
}

// withTimestamps is the test catalog with medications.date a TIMESTAMP.
func withTimestamps(tb testing.TB) *Catalog {
	tb.Helper()
	cat := MustLoadTestCatalog(tb)
	cat.Table("medications").Column("date").Type = "TIMESTAMP"
	return cat
}

// TestFederatedBucketKeys: a federated query grouping by a month, quarter
// or year bucket of a date column gets the public keys its WHERE bounds
// allow, in order, closed (dp.GroupSpec.Closed), whatever the comparison
// operators; without both bounds, with too many keys or with no day left
// it is refused saying what to change. The single-site compile of the same
// query keeps partition selection (no domain).
func TestFederatedBucketKeys(t *testing.T) {
	p := MustParser(t)
	dateCat, tsCat := MustLoadTestCatalog(t), withTimestamps(t)
	const sel = `SELECT date_trunc('month', m.date) AS month, count(*) AS n FROM medications m WHERE `
	const grp = ` GROUP BY month`
	years := func(ys ...string) []string { return ys }
	for _, tt := range []struct {
		name  string
		ts    bool // medications.date is a TIMESTAMP
		sql   string
		want  []string
		wantK int    // the Spec's k when below the catalog's 4; 0: 4
		why   string // part of the refusal, when refused
	}{
		{name: ">= and < the first of a month adds no empty month", sql: sel + `m.date >= DATE '2023-01-01' AND m.date < DATE '2024-01-01'` + grp, want: monthKeys(t, "2023-01", "2023-12")},
		{name: "< the second of a month includes that month", sql: sel + `m.date >= DATE '2023-01-01' AND m.date < DATE '2023-03-02'` + grp, want: monthKeys(t, "2023-01", "2023-03"), wantK: 3},
		{name: "<= the first of a month includes that month", sql: sel + `m.date >= DATE '2023-01-01' AND m.date <= DATE '2023-03-01'` + grp, want: monthKeys(t, "2023-01", "2023-03"), wantK: 3},
		{name: "> the last day of a month starts the next (DATE)", sql: sel + `m.date > DATE '2022-12-31' AND m.date <= DATE '2023-02-28'` + grp, want: monthKeys(t, "2023-01", "2023-02"), wantK: 3},
		{name: "> the last day of a month keeps it (TIMESTAMP)", ts: true, sql: sel + `m.date > DATE '2022-12-31' AND m.date <= DATE '2023-02-28'` + grp, want: monthKeys(t, "2022-12", "2023-02"), wantK: 3},
		{name: "< the first of a month adds no empty month (TIMESTAMP)", ts: true, sql: sel + `m.date >= DATE '2023-01-01' AND m.date < DATE '2023-03-01'` + grp, want: monthKeys(t, "2023-01", "2023-02"), wantK: 2},
		{name: "partly covered months at both ends are included", sql: sel + `m.date > DATE '2023-01-15' AND m.date < DATE '2023-03-10'` + grp, want: monthKeys(t, "2023-01", "2023-03"), wantK: 3},
		{name: "BETWEEN is inclusive", sql: sel + `m.date BETWEEN DATE '2022-11-30' AND DATE '2023-01-01'` + grp, want: monthKeys(t, "2022-11", "2023-01"), wantK: 3},
		{name: "literals on the left, bare strings", sql: sel + `'2023-06-01' <= m.date AND DATE '2023-07-31' >= m.date` + grp, want: monthKeys(t, "2023-06", "2023-07"), wantK: 2},
		{name: "equality is one month", sql: sel + `m.date = DATE '2023-05-17'` + grp, want: monthKeys(t, "2023-05", "2023-05"), wantK: 1},
		{name: "bounds intersected", sql: sel + `m.date >= DATE '2020-01-01' AND m.date < DATE '2024-01-01' AND m.date >= DATE '2023-10-01' AND m.date <= DATE '2023-12-31'` + grp, want: monthKeys(t, "2023-10", "2023-12"), wantK: 3},
		{name: "plural unit", sql: `SELECT date_trunc('months', date) AS mo, count(*) AS n FROM medications WHERE date >= DATE '2023-01-01' AND date < DATE '2023-03-01' GROUP BY mo`, want: monthKeys(t, "2023-01", "2023-02"), wantK: 2},
		{name: "quarters", sql: `SELECT date_trunc('quarter', date) AS q, count(*) AS n FROM medications WHERE date >= DATE '2022-11-15' AND date < DATE '2023-04-01' GROUP BY q`, want: []string{"2022-10-01", "2023-01-01"}, wantK: 2},
		{name: "date_trunc years", sql: `SELECT date_trunc('year', date) AS y, count(*) AS n FROM medications WHERE date >= DATE '2021-06-01' AND date <= DATE '2023-01-01' GROUP BY y`, want: []string{"2021-01-01", "2022-01-01", "2023-01-01"}, wantK: 3},
		{name: "year()", sql: `SELECT year(date) AS y, count(*) AS n FROM medications WHERE date >= DATE '2021-06-01' AND date < DATE '2024-01-01' GROUP BY y`, want: years("2021", "2022", "2023"), wantK: 3},
		{name: "years before 1000", sql: `SELECT year(date) AS y, date_trunc('year', date) AS t, count(*) AS n FROM medications WHERE date BETWEEN DATE '0998-12-01' AND DATE '0999-01-31' GROUP BY y, t`, want: years("998", "999")},
		{name: "600 months", sql: sel + `m.date >= DATE '1974-01-01' AND m.date < DATE '2024-01-01'` + grp, want: monthKeys(t, "1974-01", "2023-12")},
		{name: "601 months", sql: sel + `m.date >= DATE '1973-12-01' AND m.date < DATE '2024-01-01'` + grp, why: "span 601 months; a query over several sites may release at most 600: narrow the range"},
		{name: "no WHERE", sql: `SELECT date_trunc('month', m.date) AS month, count(*) AS n FROM medications m GROUP BY month`, why: "bound m.date on both sides in WHERE, e.g. m.date >= DATE '2023-01-01' AND m.date < DATE '2024-01-01'"},
		{name: "a lower bound only", sql: sel + `m.date >= DATE '2023-01-01'` + grp, why: "add an upper bound on m.date to WHERE, e.g. m.date < DATE '2024-01-01'"},
		{name: "an upper bound only", sql: sel + `m.date < DATE '2023-01-01'` + grp, why: "add a lower bound on m.date to WHERE, e.g. m.date >= DATE '2023-01-01'"},
		{name: "bounds inside an OR prove nothing", sql: sel + `(m.date >= DATE '2023-01-01' AND m.date < DATE '2023-03-01') OR m.dmd_code = 'x'` + grp, why: "bound m.date on both sides"},
		{name: "bounds on another date column", sql: `SELECT date_trunc('month', c.date) AS month, count(*) AS n FROM medications m JOIN clinical_events c ON c.patient_id = m.patient_id WHERE m.date >= DATE '2023-01-01' AND m.date < DATE '2023-03-01' GROUP BY month`, why: "bound c.date on both sides"},
		{name: "no day left", sql: sel + `m.date > DATE '2023-01-31' AND m.date < DATE '2023-02-01'` + grp, why: "leave no day to group"},
		{name: "weeks", sql: `SELECT date_trunc('week', date) AS w, count(*) AS n FROM medications WHERE date >= DATE '2023-01-01' AND date < DATE '2023-03-01' GROUP BY w`, why: "may group a date only by date_trunc('month', …)"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cat := dateCat
			if tt.ts {
				cat = tsCat
			}
			plan, err := p.Compile(context.Background(), cat, tt.sql, Options{Federated: true, Seed: 1})
			if tt.why != "" {
				var ref *Refusal
				if !errors.As(err, &ref) || !strings.Contains(ref.Message, tt.why) || ref.Pos < 0 {
					t.Fatalf("got %v, want a refusal with a position saying %q", err, tt.why)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			g := plan.Spec.Groups[0]
			if diff := cmp.Diff(tt.want, g.Domain); diff != "" || !g.Closed {
				t.Errorf("domain (-want +got), closed %v:\n%s", g.Closed, diff)
			}
			if err := plan.Spec.ValidateFederated(); err != nil {
				t.Errorf("ValidateFederated: %v", err)
			}
			wantK := tt.wantK
			if wantK == 0 {
				wantK = cat.Policy.MaxGroupsPerPatient
			}
			if plan.Spec.MaxGroupsPerPatient != wantK {
				t.Errorf("k = %d, want %d", plan.Spec.MaxGroupsPerPatient, wantK)
			}
			again, err := p.Compile(context.Background(), cat, tt.sql, Options{Federated: true, Seed: 2})
			if err != nil || again.Spec.Hash() != plan.Spec.Hash() {
				t.Errorf("a second compile (another site) has another spec: %v", err)
			}
			single, err := p.Compile(context.Background(), cat, tt.sql, Options{Seed: 1})
			if err != nil {
				t.Fatal(err)
			}
			for _, g := range single.Spec.Groups {
				if g.Domain != nil || g.Closed {
					t.Errorf("the single-site spec has a domain for %q: %v", g.Name, g.Domain)
				}
			}
		})
	}
}

// TestFederatedBucketKeysDuckDB: the keys DuckDB's run of the rewritten
// SQL gives a federated date-bucket group are byte for byte its derived
// domain (dp rejects any other, GroupSpec.Closed), over DATE and TIMESTAMP
// columns, with rows on every day (and, for timestamps, at the last second
// of every day) inside and around the WHERE range.
func TestFederatedBucketKeysDuckDB(t *testing.T) {
	p := MustParser(t)
	dateCat, tsCat := MustLoadTestCatalog(t), withTimestamps(t)
	rows := func(from string, days int, ts bool) string {
		day := fmt.Sprintf("DATE '%s' + CAST(i / 2 AS INTEGER)", from)
		if ts {
			day = fmt.Sprintf("TIMESTAMP '%s' + to_days(CAST(i / 2 AS INTEGER)) + to_seconds(CAST(i %% 2 AS BIGINT) * 86399)", from)
		}
		return fmt.Sprintf(`INSERT INTO medications SELECT 1 + i %% 7, %s, 'a1' FROM range(%d) t(i)`, day, 2*days)
	}
	dbs := map[bool]*sql.DB{
		false: MustTestDB(t, dateCat, rows("2019-01-01", 6*366, false), rows("0998-10-01", 200, false)),
		true:  MustTestDB(t, tsCat, rows("2019-01-01", 6*366, true), rows("0998-10-01", 200, true)),
	}
	for _, tt := range []struct {
		name string
		ts   bool
		sql  string
	}{
		{name: "months of a DATE", sql: `SELECT date_trunc('month', date) AS month, count(*) AS n FROM medications WHERE date >= '2023-11-15' AND date < DATE '2024-03-01' GROUP BY month`},
		{name: "months of a TIMESTAMP, strict lower bound", ts: true, sql: `SELECT date_trunc('month', date) AS month, count(*) AS n FROM medications WHERE date > DATE '2023-10-31' AND date < DATE '2024-03-01' GROUP BY month`},
		{name: "quarters and years of a DATE", sql: `SELECT date_trunc('quarter', date) AS q, year(date) AS y, count(*) AS n FROM medications WHERE date BETWEEN DATE '2020-02-01' AND DATE '2021-08-31' GROUP BY q, y`},
		{name: "years of a TIMESTAMP", ts: true, sql: `SELECT date_trunc('year', date) AS t, year(date) AS y, count(*) AS n FROM medications WHERE date >= DATE '2020-06-01' AND date <= DATE '2023-01-01' GROUP BY t, y`},
		{name: "years before 1000", sql: `SELECT date_trunc('month', date) AS m, year(date) AS y, count(*) AS n FROM medications WHERE date BETWEEN DATE '0998-12-01' AND DATE '0999-01-31' GROUP BY m, y`},
		{name: "years before 1000 of a TIMESTAMP", ts: true, sql: `SELECT date_trunc('month', date) AS m, year(date) AS y, count(*) AS n FROM medications WHERE date BETWEEN DATE '0998-12-01' AND DATE '0999-01-31' GROUP BY m, y`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cat := dateCat
			if tt.ts {
				cat = tsCat
			}
			plan, err := p.Compile(context.Background(), cat, tt.sql, Options{Federated: true, Seed: 1})
			if err != nil {
				t.Fatal(err)
			}
			groups, _ := runPlan(t, dbs[tt.ts], plan)
			for i, g := range plan.Spec.Groups {
				seen := map[string]bool{}
				for _, row := range groups {
					if row.Keys[i] == nil {
						t.Fatalf("group %q: a NULL key", g.Name)
					}
					seen[*row.Keys[i]] = true
				}
				var got []string
				for k := range seen {
					got = append(got, k)
				}
				want := slices.Clone(g.Domain)
				slices.Sort(got)
				slices.Sort(want)
				if diff := cmp.Diff(want, got); diff != "" {
					t.Errorf("group %q: DuckDB's keys differ from the domain (-domain +DuckDB):\n%s", g.Name, diff)
				}
			}
			part, err := dp.ProtectPartial(plan.Spec, groups, dp.Options{})
			if err != nil {
				t.Fatal(err)
			}
			if want := plan.Spec.DomainCells(); len(part.Groups) != want {
				t.Errorf("partial has %d groups, want %d", len(part.Groups), want)
			}
		})
	}
}
