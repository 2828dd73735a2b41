"""Kaplan–Meier curves from released survival tables.

A survival table (docs/sql.md, "Survival") is released as a group column
of time bands, in order (the last group column; any before it are strata,
one curve each), and count columns of deaths and of censorings per band. kaplan_meier computes the life-table curve from it as `tre query km`
does (api.KaplanMeier in the Go code): with n0 the sum of every band's
deaths and censorings, n_j = n0 - sum_{i<j}(d_i + c_i) at risk entering
band j and S(t_j) = prod_{i<=j}(1 - q_i), where q_j, the probability of
dying within band j, solves the life table with a constant hazard within
the band and censorings spread evenly over it:
d_j/n_j = q - (c_j/n_j)(1 - (1 - q)(1 - ln(1 - q)))/q (the actuarial
d_j/(n_j - c_j/2) is its first-order approximation, which overstates
survival where many die within a band). Its 95% interval adds Greenwood's
variance, S^2 sum d_i/(n'_i (n'_i - d_i)) with n'_i = d_i/q_i, and the
noise's: each released count's own interval read as +-1.96 standard
deviations, carried through S by its numerical derivative. It reads only
released values: post-processing, no privacy budget.
"""

import math

from .table import Rows, _pandas

_Z = 1.959963984540054

# The curve's columns, in order.
KM_COLUMNS = ("band", "at_risk", "deaths", "censored", "survival", "ci_low", "ci_high")


def _band_q(n, d, c):
    """The probability of dying within a band from n at risk, d deaths and c
    censorings in it (api.bandDeathProb), by bisection."""
    if n <= 0 or d <= 0:
        return 0.0
    a, b = min(1.0, d / n), min(1.0, c / n)

    def f(q):
        lam = -math.log1p(-q)
        return q - b * (1 - (1 - q) * (1 + lam)) / q - a

    lo, hi = 0.0, 1.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if mid == lo or mid == hi:
            break
        if f(mid) < 0:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _curve(bands, x):
    n0 = sum(x)
    out, s, at_risk = [], 1.0, n0
    for j, band in enumerate(bands):
        d, c = x[2 * j], x[2 * j + 1]
        s *= 1 - _band_q(at_risk, d, c)
        out.append([band, at_risk, d, c, s, None, None])
        at_risk -= d + c
    return out


def kaplan_meier(result, deaths="deaths", censored="censored", frame=None):
    """The Kaplan-Meier curve of a released survival table. result is the
    JSON result (columns and rows, as Client.result's request returns it,
    or a to_table input). The time bands are the last group column; group
    columns before it are strata, one curve each (GROUP BY sex, years_band),
    and the result then starts with a column "stratum" naming each curve's
    keys ("sex=female"). Returns a DataFrame with pandas (frame=None or
    True), else Rows, with the columns KM_COLUMNS (after "stratum"). Raises
    ValueError when the table is not a survival table (saying what is
    expected and what it has) or a band is suppressed."""
    columns = result["columns"] or []
    groups = []
    di = ci = -1
    for i, c in enumerate(columns):
        if c["kind"] == "group":
            groups.append(i)
        elif c["name"] == deaths:
            di = i
        elif c["name"] == censored:
            ci = i
    have = ", ".join("{} ({})".format(c["name"], c["kind"]) for c in columns)
    shape = ("a survival table has a group column of time bands, in order, as its last group column "
             "(any before it are strata, one curve each), and count columns "
             "{!r} and {!r} (docs/sql.md, Survival); this one has {}".format(deaths, censored, have))
    counts = ("count", "count_patients")
    if not groups or di < 0 or ci < 0 or columns[di]["kind"] not in counts or columns[ci]["kind"] not in counts:
        raise ValueError("not a survival table: " + shape)
    gi, strata = groups[-1], groups[:-1]
    order, by = [], {}
    for row in result["rows"] or []:
        if len(row) != len(columns) or row[gi].get("key") == "(total)":
            continue
        st = ", ".join("{}={}".format(columns[g]["name"], "(missing)" if row[g].get("null") else row[g].get("key"))
                       for g in strata)
        if st not in by:
            order.append(st)
            by[st] = []
        by[st].append(row)
    if not order:
        raise ValueError("the survival table has no bands: " + shape)
    records = []
    for st in order:
        try:
            curve = _stratum(by[st], gi, di, ci, columns)
        except ValueError as e:
            if st:
                raise ValueError("stratum {}: {}".format(st, e)) from None
            raise
        for b in curve:
            rec = dict(zip(KM_COLUMNS, b))
            if strata:
                rec = dict(stratum=st, **rec)
            records.append(rec)
    names = (("stratum",) if strata else ()) + KM_COLUMNS
    pd = _pandas(frame)
    if pd is None:
        return Rows(records, names, {})
    return pd.DataFrame.from_records(records, columns=list(names))


def _stratum(rows, gi, di, ci, columns):
    """The curve of one stratum's rows (band column gi, deaths di,
    censorings ci), as lists in KM_COLUMNS order."""
    bands, x, sd = [], [], []
    for row in rows:
        band = row[gi].get("key")
        for j in (di, ci):
            cell = row[j]
            if cell.get("value") is None:
                raise ValueError("band {!r}: {} is suppressed, so the curve cannot be computed through it".format(band, columns[j]["name"]))
            x.append(max(0.0, float(cell.get("value"))))
            lo, hi = cell.get("ci_low"), cell.get("ci_high")
            sd.append((hi - lo) / 2 / _Z if lo is not None and hi is not None else 0.0)
        bands.append(band)
    out = _curve(bands, x)
    noise = [0.0] * len(out)
    for k in range(len(x)):
        up, down = list(x), list(x)
        up[k] += 0.5
        down[k] = max(0.0, down[k] - 0.5)
        su, sdn = _curve(bands, up), _curve(bands, down)
        for j in range(len(out)):
            d = (su[j][4] - sdn[j][4]) / (up[k] - down[k])
            noise[j] += d * d * sd[k] * sd[k]
    green = 0.0
    for j, b in enumerate(out):
        _, at_risk, d, c, s = b[:5]
        q = _band_q(at_risk, d, c)
        if 0 < q < 1:
            eff = d / q
            green += d / (eff * (eff - d))
        half = _Z * math.sqrt(s * s * green + noise[j])
        b[5], b[6] = max(0.0, s - half), min(1.0, s + half)
    return out
