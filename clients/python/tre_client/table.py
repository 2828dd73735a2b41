"""Protected tables as data frames, or as plain rows without pandas.

A released table (and a dry run's, and the table of an output) arrives as
columns and rows of cells. to_table lays it out as the CSV download does
(docs/cli.md, "Result CSV"): one column per group key, then for each
aggregate NAME the columns NAME, NAME_ci_low, NAME_ci_high (the 95%
interval of the noise) and NAME_flag ("suppressed", "secondary_suppressed",
or "" for a released value). A suppressed cell's value and interval are
missing (None; NaN in a DataFrame), as is a NULL group key. Values are the
JSON result's, unrounded (the CSV rounds them to the precision the noise
leaves).
"""

import importlib

# What a table carries besides its cells, when the answer has it: the
# query, when it was released (as researchers see it), the researcher's
# part of the disclosure report, and for a dry run that it is synthetic,
# what it is (run: "synthetic", or "synthetic_single_site" — one site's
# answer — over a dataset several sites hold, with federation), its
# dataset, cost and accuracy.
_ATTRS = ("query_id", "released_at", "report", "synthetic", "run", "federation", "dataset", "cost", "accuracy")


def _pandas(frame):
    """pandas when it is wanted and importable; None for plain rows."""
    if frame is False:
        return None
    try:
        return importlib.import_module("pandas")
    except ImportError:
        if frame:
            raise ImportError("frame=True needs pandas; install it (Debian: apt-get install python3-pandas) or pass frame=False")
        return None


class Rows(list):
    """A table without pandas: a list of dicts, one per row, keyed by the
    column names in .columns; .attrs holds what a DataFrame's attrs would
    (report, query_id, released_at, …)."""

    def __init__(self, rows, columns, attrs):
        super().__init__(rows)
        self.columns = list(columns)
        self.attrs = dict(attrs)

    def __repr__(self):
        def text(v):
            if v is None:
                return ""
            if isinstance(v, float):
                return format(v, "g")
            return str(v)
        grid = [list(self.columns)] + [[text(r.get(c)) for c in self.columns] for r in self]
        widths = [max(len(row[i]) for row in grid) for i in range(len(self.columns))]
        return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in grid)


def flag(cell):
    """A cell's suppression mark: "secondary_suppressed", "suppressed" or ""."""
    if cell.get("secondary"):
        return "secondary_suppressed"
    if cell.get("suppressed"):
        return "suppressed"
    return ""


def to_table(result, frame=None):
    """Lays out result (a mapping with columns, rows and report: a released
    result, a dry run, or an output's result) as a table: a pandas
    DataFrame when pandas is importable (frame=None) or frame=True, plain
    Rows when frame=False or without pandas."""
    columns = result["columns"] or []
    names, numeric = [], []
    for c in columns:
        name = c["name"]
        if c["kind"] == "group":
            names.append(name)
        else:
            names += [name, name + "_ci_low", name + "_ci_high", name + "_flag"]
            numeric += [name, name + "_ci_low", name + "_ci_high"]
    records = []
    for row in result["rows"] or []:
        rec = {}
        for i, c in enumerate(columns):
            cell = row[i] if i < len(row) else {}
            name = c["name"]
            if c["kind"] == "group":
                rec[name] = None if cell.get("null") else cell.get("key")
                continue
            mark = flag(cell)
            released = mark == ""
            rec[name] = cell.get("value") if released else None
            rec[name + "_ci_low"] = cell.get("ci_low") if released else None
            rec[name + "_ci_high"] = cell.get("ci_high") if released else None
            rec[name + "_flag"] = mark
        records.append(rec)
    attrs = {k: result[k] for k in _ATTRS if k in result}
    pd = _pandas(frame)
    if pd is None:
        return Rows(records, names, attrs)
    df = pd.DataFrame.from_records(records, columns=names)
    for n in numeric:
        df[n] = df[n].astype("float64")
    df.attrs.update(attrs)
    return df
