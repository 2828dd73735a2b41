"""The tre broker's HTTP API as Python calls."""

import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

from . import config, survival, table, wire
from .errors import APIError, BrokerUnreachable, WaitTimeout, api_error

__all__ = ["Client"]

# The most items one list request asks for (the API's maximum page).
_PAGE_LIMIT = 500


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuses redirects: the broker never redirects an API call, and a
    redirect must not carry the token elsewhere."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


_STATUS_TEXT = {
    "submitted": "submitted, waiting for a reviewer",
    "approved": "approved, waiting for the site agent to start it",
    "running": "running at the site",
    "awaiting_output_check": "awaiting_output_check, waiting for an output checker",
}


def describe_status(status):
    """What a status means to someone waiting on it (as `tre … --wait`
    says it)."""
    return _STATUS_TEXT.get(status, status)


class Client:
    """A connection to a tre broker as one person in one role.

    base_url is the broker's address and token the bearer token; when
    they are not given, they come from the environment or the demo's
    tokens file (see tre_client.config): TRE_BROKER, and the token of role
    (TRE_TOKEN_RESEARCHER for the default role "researcher",
    TRE_TOKEN_REVIEWER, TRE_TOKEN_OUTPUT_CHECKER, TRE_TOKEN_ADMIN), else
    TRE_TOKEN, else tre-demo/tokens.env. token_file names a file holding
    the token, or a tokens.env. timeout bounds each request, in seconds.

    Every call that the broker refuses raises an APIError (a subclass per
    error code) carrying the API's code and message. A query_id may be the
    id or the query (the dict submit, get and wait return).
    """

    def __init__(self, base_url=None, token=None, *, role="researcher", token_file=None, timeout=60.0):
        self.base_url, self._token = config.resolve(base_url, token, role, token_file, os.environ, os.getcwd())
        self.role = role
        self.timeout = timeout
        self._opener = urllib.request.build_opener(_NoRedirect)

    def __repr__(self):
        return "Client({!r}, role={!r})".format(self.base_url, self.role)

    # ---- HTTP ----

    def _call(self, name, ident=None, params=None, body=None):
        """Sends the request of OPERATIONS[name] (its {id} is ident: a
        query's or a project's) and returns its decoded JSON answer (or
        text, for CSV)."""
        op = wire.OPERATIONS[name]
        path = op.path
        if "{id}" in path:
            path = path.replace("{id}", str(_id(ident)))
        params = {k: v for k, v in (params or {}).items() if v is not None}
        unknown = set(params) - set(op.params)
        if unknown:
            raise ValueError("{} takes no parameter {}".format(name, ", ".join(sorted(unknown))))
        url = self.base_url + path
        if params:
            url += "?" + urllib.parse.urlencode(params)
        if body is not None:
            fields = set(wire.REQUESTS[op.request])
            unknown = set(body) - fields
            if unknown:
                raise ValueError("{} sends no field {}".format(name, ", ".join(sorted(unknown))))
            body = {k: v for k, v in body.items() if v is not None}
        csv = op.response == ("text/csv",)
        data = None if body is None else json.dumps(body).encode("utf-8")
        req = urllib.request.Request(url, data=data, method=op.method)
        # Unredirected: never sent on to another address.
        req.add_unredirected_header("Authorization", "Bearer " + self._token)
        req.add_header("Accept", "text/csv" if csv else "application/json")
        req.add_header("User-Agent", "tre-client-python")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            raise self._error(e) from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise BrokerUnreachable("cannot reach the broker at {}: {}".format(self.base_url, reason)) from None
        if csv:
            return raw.decode("utf-8")
        return json.loads(raw.decode("utf-8")) if raw else None

    def _error(self, e):
        """The exception for an HTTP error answer."""
        try:
            raw = e.read()
        finally:
            e.close()
        if 300 <= e.code < 400:
            return APIError(e.code, None, "the broker at {} answered with a redirect to {}: use that address".format(
                self.base_url, e.headers.get("Location", "?")))
        retry = e.headers.get("Retry-After")
        retry = int(retry) if retry and retry.isdigit() else None
        try:
            err = json.loads(raw.decode("utf-8"))["error"]
            return api_error(e.code, err["code"], err["message"], retry)
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            return APIError(e.code, None, "the broker answered HTTP {} without an error body".format(e.code), retry)

    def _all(self, name, params=None):
        """Every item of a paged list."""
        items, offset = [], 0
        while True:
            page = self._call(name, params=dict(params or {}, limit=_PAGE_LIMIT, offset=offset))
            got = page["items"] or []
            items += got
            offset += len(got)
            if not got or offset >= page["total"]:
                return items

    # ---- finding your way ----

    def datasets(self):
        """The catalogs of the datasets a query may use: tables, columns,
        their roles, bounds, value domains and example codes, and the
        privacy policy each query gets."""
        return self._all("datasets")

    def projects(self):
        """The projects you may see, with their budgets (spent, reserved,
        remaining)."""
        return self._all("projects")

    def project(self, project_id):
        """One project, with its budget."""
        return self._call("project", project_id)

    # ---- a researcher's queries ----

    def check(self, project_id, sql, epsilon=None, dataset=None):
        """Validates sql for the project as a submission would, storing and
        running nothing: returns its dataset, cost (epsilon, delta),
        expected accuracy and rewritten SQL. A refused query raises
        RefusedError naming the construct and its position."""
        return self._call("check", body=_query_body(project_id, sql, None, epsilon, dataset))

    def dry_run(self, project_id, sql, epsilon=None, dataset=None, frame=None):
        """Runs sql on the broker's synthetic data (never patient records;
        costs no budget) and returns the protected table as a researcher
        would receive it, marked attrs["synthetic"], with attrs cost,
        accuracy and report. frame as for result()."""
        body = self._call("dry_run", body=_query_body(project_id, sql, None, epsilon, dataset))
        return table.to_table(body, frame)

    def submit(self, project_id, sql, purpose, epsilon=None, dataset=None):
        """Submits sql to the project for review and returns the query (a
        dict: id, status, cost, accuracy, risk_flags, …). purpose says why
        the project needs it: the reviewer judges the query by it. epsilon
        defaults to the dataset's."""
        return self._call("submit", body=_query_body(project_id, sql, purpose, epsilon, dataset))

    def get(self, query_id, rewritten_sql=False):
        """The query as you may see it: status, history, cost, decisions.
        A researcher sees changes made by others from the next multiple of
        the broker's researcher_time_granularity on. rewritten_sql=True
        adds the "rewritten_sql" the sandbox runs (contribution-bounded,
        over the opt-out-filtered views; about 10 kB, left out otherwise)."""
        return self._call("query", query_id, _include(rewritten_sql))

    def status(self, query_id):
        """The query's status."""
        return self.get(query_id)["status"]

    def history(self, query_id):
        """The query's status changes, oldest first (from, to, actor,
        comment, at)."""
        return self.get(query_id)["history"] or []

    def queries(self, status=None, project_id=None):
        """Your queries (a researcher's: those of their projects; staff:
        all), optionally only those in status or of project_id."""
        if status is not None and status not in wire.STATUSES:
            raise ValueError("status {!r}: one of {}".format(status, ", ".join(wire.STATUSES)))
        return self._all("queries", {"status": status, "project_id": project_id})

    def cancel(self, query_id):
        """Cancels your query, until a reviewer has decided on it."""
        return self._call("cancel", query_id)

    def wait(self, query_id, timeout=900.0, final=False, progress=True, poll=2.0):
        """Waits while the query is with the site (approved or running) and
        returns it once it awaits a person (a reviewer or an output
        checker) or has ended; with final=True, until it has ended
        (released, rejected, withheld, failed or cancelled).

        progress=True tells each change of status on standard error (and
        every 30 s that it is still waiting); a callable is called with the
        query at each change instead; False is silent. Raises WaitTimeout
        (a TimeoutError) after timeout seconds."""
        query_id = _id(query_id)
        done = (lambda s: s in wire.ENDED) if final else (lambda s: s not in wire.AT_SITE)
        start = time.monotonic()
        deadline = start + timeout
        last, noted = None, start
        while True:
            q = self.get(query_id)
            status = q["status"]
            now = time.monotonic()
            if status != last:
                if callable(progress):
                    progress(q)
                elif progress:
                    _note(query_id, describe_status(status), now - start)
                last, noted = status, now
            elif progress is True and now - noted >= 30:
                _note(query_id, "still " + describe_status(status), now - start)
                noted = now
            if done(status):
                return q
            if now >= deadline:
                raise WaitTimeout(q, timeout)
            time.sleep(max(min(poll, deadline - now), 0))

    def result(self, query_id, frame=None):
        """The released table: a pandas DataFrame when pandas is importable
        (or frame=True), else Rows (frame=False, or without pandas). One
        column per group key, then per aggregate NAME: NAME, NAME_ci_low,
        NAME_ci_high (95% interval) and NAME_flag ("suppressed",
        "secondary_suppressed" or ""). attrs: query_id, released_at and the
        disclosure report. Until the query is released to you, raises
        ForbiddenError."""
        return table.to_table(self._call("result", query_id, {"format": "json"}), frame)

    def km(self, query_id, deaths="deaths", censored="censored", frame=None):
        """The Kaplan-Meier curve of a released survival table (a group
        column of time bands, the last; group columns before it are strata,
        one curve each; count columns deaths and censored), with a 95%
        interval from Greenwood's variance and the counts' noise:
        tre_client.kaplan_meier, as `tre query km`. Post-processing of the
        released table: no privacy budget. Raises ValueError for a table of
        another shape, saying what it should be."""
        return survival.kaplan_meier(self._call("result", query_id, {"format": "json"}), deaths, censored, frame)

    def result_csv(self, query_id):
        """The released table as the CSV file researchers download (values
        rounded to the precision the noise leaves)."""
        return self._call("result_csv", query_id, {"format": "csv"})

    # ---- reviewers ----

    def review_queue(self, rewritten_sql=False):
        """Submitted queries, oldest first, with their project's budget
        (reviewers); rewritten_sql=True adds each one's rewritten SQL (as
        get does)."""
        return self._all("review_queue", _include(rewritten_sql))

    def approve(self, query_id, comment=""):
        """Approves the query, reserving its cost in the project's budget
        (a reviewer who did not submit it)."""
        return self._call("approve", query_id, body={"comment": comment})

    def reject(self, query_id, reason):
        """Rejects the query, saying why (reviewers)."""
        return self._call("reject", query_id, body={"reason": reason})

    # ---- output checkers ----

    def output_queue(self):
        """Queries whose output awaits an output check (output checkers)."""
        return self._all("output_queue")

    def output(self, query_id):
        """The output as an output checker checks it (result with the full
        disclosure report, or the failure notice of a failed run), or, for
        a researcher once released, the released result. A dict as the
        broker sent it; tre_client.to_table(output["result"]) makes its
        table."""
        return self._call("output", query_id)

    def release(self, query_id, comment=""):
        """Releases the output to the researchers (an output checker who
        neither submitted nor approved the query)."""
        return self._call("release", query_id, body={"comment": comment})

    def withhold(self, query_id, reason):
        """Withholds the output, saying why (output checkers)."""
        return self._call("withhold", query_id, body={"reason": reason})


def _id(value):
    """value as a positive int: an id, or a query (a dict with its id)."""
    if isinstance(value, dict):
        value = value["id"]
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError("id {!r}: a positive integer".format(value))
    return value


def _include(rewritten_sql):
    """The include parameter asking for the rewritten SQL, or none."""
    return {"include": "rewritten_sql"} if rewritten_sql else None


def _query_body(project_id, sql, purpose, epsilon, dataset):
    return {"project_id": _id(project_id), "sql": sql, "purpose": purpose, "epsilon": epsilon, "dataset": dataset}


def _note(query_id, what, elapsed):
    print("query {}: {} ({:.0f} s)".format(query_id, what, elapsed), file=sys.stderr, flush=True)
