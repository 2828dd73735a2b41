"""Unit tests of tre_client around the broker: configuration, the HTTP
layer against a stand-in server (errors, redirects, bodies), and tables
with and without pandas. The real broker is in test_live.py."""

import http.server
import io
import json
import os
import sys
import tempfile
import threading
import unittest
from unittest import mock

import tre_client
from tre_client import config, table


class Resolve(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp()
        os.makedirs(os.path.join(self.dir, "tre-demo"))
        self.demo = os.path.join(self.dir, "tre-demo", "tokens.env")

    def write(self, path, text):
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def test_order(self):
        self.write(self.demo, "TRE_BROKER=http://127.0.0.1:9/\nTRE_TOKEN_RESEARCHER=demo-r\nTRE_TOKEN_REVIEWER=demo-v\n")
        bare = self.write(os.path.join(self.dir, "tok"), "file-token\n")
        envfile = self.write(os.path.join(self.dir, "t.env"), "export TRE_BROKER='https://b.example'\nTRE_TOKEN=file-any\n")
        env = {"TRE_TOKEN_RESEARCHER": "env-r", "TRE_TOKEN": "env-any", "TRE_BROKER": "https://env.example"}
        tests = [
            # name, base_url, token, role, token_file, environ, want
            ("argument wins", None, "arg", "researcher", bare, env, ("https://env.example", "arg")),
            ("token file over environment", None, None, "researcher", bare, env, ("https://env.example", "file-token")),
            ("tokens.env as token file", None, None, "reviewer", envfile, {}, ("https://b.example", "file-any")),
            ("role variable", None, None, "researcher", None, env, ("https://env.example", "env-r")),
            ("TRE_TOKEN for another role", None, None, "reviewer", None, env, ("https://env.example", "env-any")),
            ("demo file", None, None, "reviewer", None, {}, ("http://127.0.0.1:9", "demo-v")),
            ("demo file, environment's broker", None, None, "researcher", None, {"TRE_BROKER": "http://x:1"}, ("http://x:1", "demo-r")),
            ("base_url argument", "http://arg:2/", "t", "admin", None, env, ("http://arg:2", "t")),
        ]
        for name, base, tok, role, tf, environ, want in tests:
            with self.subTest(name):
                self.assertEqual(config.resolve(base, tok, role, tf, environ, self.dir), want)

    def test_default_broker(self):
        self.assertEqual(config.resolve(None, "t", "researcher", None, {}, self.dir), (config.DEFAULT_BROKER, "t"))

    def test_errors(self):
        with self.assertRaisesRegex(tre_client.TreError, "no token: .*TRE_TOKEN_OUTPUT_CHECKER or TRE_TOKEN"):
            config.resolve(None, None, "output_checker", None, {}, self.dir)
        self.write(self.demo, "TRE_TOKEN_RESEARCHER=demo-r\n")
        with self.assertRaisesRegex(tre_client.TreError, "no token"):
            config.resolve(None, None, "admin", None, {}, self.dir)
        with self.assertRaisesRegex(tre_client.TreError, "read token file"):
            config.resolve(None, None, "admin", os.path.join(self.dir, "missing"), {}, self.dir)
        envfile = self.write(os.path.join(self.dir, "t.env"), "TRE_TOKEN_ADMIN=a\n")
        with self.assertRaisesRegex(tre_client.TreError, "sets neither TRE_TOKEN_REVIEWER nor TRE_TOKEN"):
            config.resolve(None, None, "reviewer", envfile, {}, self.dir)
        with self.assertRaisesRegex(ValueError, "role 'nurse'"):
            config.resolve(None, "t", "nurse", None, {}, self.dir)
        with self.assertRaisesRegex(ValueError, "http:// or https://"):
            config.resolve("127.0.0.1:8080", "t", "researcher", None, {}, self.dir)


class Broker(http.server.ThreadingHTTPServer):
    """A stand-in for the broker: answers each (method, path) from a table
    of canned (status, headers, body) and keeps the requests."""

    def __init__(self, routes):
        super().__init__(("127.0.0.1", 0), Handler)
        self.routes, self.requests = routes, []
        self.url = "http://127.0.0.1:{}".format(self.server_address[1])
        threading.Thread(target=self.serve_forever, daemon=True).start()


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def answer(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        self.server.requests.append((self.command, self.path, dict(self.headers), body))
        status, headers, out = self.server.routes.get((self.command, self.path), (404, {}, {"error": {"code": "not_found", "message": "no route"}}))
        data = out.encode() if isinstance(out, str) else json.dumps(out).encode()
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = answer


def error(code, message):
    return {"error": {"code": code, "message": message}}


class HTTP(unittest.TestCase):
    def broker(self, routes):
        b = Broker(routes)
        self.addCleanup(b.server_close)
        self.addCleanup(b.shutdown)
        return b

    def test_errors_carry_code_and_message(self):
        refusal = "refused: function read_csv at position 14 is not allowed: only catalog tables may be read"
        b = self.broker({
            ("POST", "/api/v1/queries"): (422, {}, error("refused", refusal)),
            ("POST", "/api/v1/queries/dry-run"): (429, {"Retry-After": "3"}, error("rate_limited", "one at a time")),
            ("GET", "/api/v1/queries/5"): (502, {}, "<html>bad gateway</html>"),
            ("POST", "/api/v1/queries/5/approve"): (409, {}, error("budget", "would overspend")),
            ("GET", "/api/v1/queries/6"): (418, {}, error("teapot", "a code the client does not know")),
        })
        c = tre_client.Client(b.url, "tok")
        with self.assertRaises(tre_client.RefusedError) as cm:
            c.submit(1, "SELECT * FROM read_csv('x')", purpose="p")
        e = cm.exception
        self.assertEqual((e.status, e.code, e.message), (422, "refused", refusal))
        self.assertIn("read_csv at position 14", str(e))
        with self.assertRaises(tre_client.RateLimitedError) as cm:
            c.dry_run(1, "SELECT 1")
        self.assertEqual(cm.exception.retry_after, 3)
        with self.assertRaises(tre_client.APIError) as cm:
            c.get(5)
        self.assertEqual((cm.exception.status, cm.exception.code), (502, None))
        self.assertNotIn("html", str(cm.exception))
        with self.assertRaises(tre_client.BudgetError):
            c.approve(5, comment="ok")
        with self.assertRaises(tre_client.APIError) as cm:
            c.get(6)
        self.assertIs(type(cm.exception), tre_client.APIError)
        self.assertEqual(cm.exception.code, "teapot")

    def test_requests(self):
        q = {"id": 9, "status": "submitted", "history": []}
        b = self.broker({
            ("POST", "/api/v1/queries"): (201, {}, q),
            ("POST", "/api/v1/queries/9/cancel"): (200, {}, dict(q, status="cancelled")),
            ("GET", "/api/v1/queries?status=released&limit=500&offset=0"): (200, {}, {"items": [q, q], "total": 3, "limit": 500, "offset": 0}),
            ("GET", "/api/v1/queries?status=released&limit=500&offset=2"): (200, {}, {"items": [q], "total": 3, "limit": 500, "offset": 2}),
            ("GET", "/api/v1/queries/9/result?format=csv"): (200, {"Content-Type": "text/csv"}, "sex,n\r\n"),
            ("GET", "/api/v1/queries/9"): (200, {}, q),
            ("GET", "/api/v1/queries/9?include=rewritten_sql"): (200, {}, dict(q, rewritten_sql="SELECT 2")),
        })
        c = tre_client.Client(b.url + "/", "tok")
        self.assertEqual(c.submit(1, "SELECT 1", purpose="why", epsilon=0.5)["id"], 9)
        self.assertEqual(c.cancel(q)["status"], "cancelled")  # a query dict as its id
        self.assertEqual(len(c.queries(status="released")), 3)  # every page
        self.assertEqual(c.result_csv(9), "sex,n\r\n")
        self.assertNotIn("rewritten_sql", c.get(9))
        self.assertEqual(c.get(9, rewritten_sql=True)["rewritten_sql"], "SELECT 2")
        method, path, headers, body = b.requests[0]
        self.assertEqual(json.loads(body), {"project_id": 1, "sql": "SELECT 1", "purpose": "why", "epsilon": 0.5})
        self.assertEqual(headers["Content-Type"], "application/json")
        self.assertEqual(headers["Authorization"], "Bearer tok")
        self.assertEqual(b.requests[1][3], b"")  # cancel sends no body
        self.assertEqual(b.requests[4][2]["Accept"], "text/csv")
        for bad in (0, -1, "7", True, 1.5):
            with self.subTest(id=bad), self.assertRaises(ValueError):
                c.get(bad)
        with self.assertRaisesRegex(ValueError, "status 'done'"):
            c.queries(status="done")

    def test_redirect_is_refused_without_the_token(self):
        other = self.broker({})
        b = self.broker({("GET", "/api/v1/queries/1"): (302, {"Location": other.url + "/api/v1/queries/1"}, "")})
        with self.assertRaisesRegex(tre_client.APIError, "redirect to " + other.url):
            tre_client.Client(b.url, "secret").get(1)
        self.assertEqual(other.requests, [])

    def test_unreachable(self):
        b = self.broker({})
        url = b.url
        b.shutdown()
        b.server_close()
        with self.assertRaisesRegex(tre_client.BrokerUnreachable, "cannot reach the broker at " + url):
            tre_client.Client(url, "t", timeout=5).datasets()

    def test_wait(self):
        statuses = iter(["approved", "running", "running", "awaiting_output_check"])

        class Seq(Handler):
            def answer(self):
                self.server.routes[("GET", "/api/v1/queries/4")] = (200, {}, {"id": 4, "status": next(statuses)})
                Handler.answer(self)
            do_GET = answer

        b = Broker({})
        b.RequestHandlerClass = Seq
        self.addCleanup(b.server_close)
        self.addCleanup(b.shutdown)
        c = tre_client.Client(b.url, "t")
        seen = []
        q = c.wait(4, timeout=30, poll=0.01, progress=lambda q: seen.append(q["status"]))
        self.assertEqual(q["status"], "awaiting_output_check")
        self.assertEqual(seen, ["approved", "running", "awaiting_output_check"])

    def test_wait_progress_and_timeout(self):
        b = self.broker({("GET", "/api/v1/queries/4"): (200, {}, {"id": 4, "status": "submitted"})})
        c = tre_client.Client(b.url, "t")
        err = io.StringIO()
        with mock.patch.object(sys, "stderr", err):
            self.assertEqual(c.wait(4, timeout=30)["status"], "submitted")  # awaits a person: at once
            with self.assertRaises(tre_client.WaitTimeout) as cm:
                c.wait(4, timeout=0.05, final=True, poll=0.01)
        self.assertIsInstance(cm.exception, TimeoutError)
        self.assertEqual(cm.exception.query["status"], "submitted")
        self.assertIn("query 4: submitted, waiting for a reviewer", err.getvalue())


RESULT = {
    "query_id": 3,
    "released_at": "2026-01-01T00:00:00Z",
    "columns": [{"name": "region", "kind": "group"}, {"name": "n", "kind": "count"}, {"name": "bmi", "kind": "mean"}],
    "rows": [
        [{"key": "London"}, {"value": 120, "ci_low": 100.5, "ci_high": 139.5, "rounded": True}, {"value": 27.52, "ci_low": 16.45, "ci_high": 38.59}],
        [{"null": True}, {"suppressed": True}, {"value": 30.0, "ci_low": 20.0, "ci_high": 40.0}],
        [{"key": "North East"}, {"suppressed": True, "secondary": True}, {"suppressed": True}],
    ],
    "report": {"epsilon": 0.5, "delta": 0, "threshold": 10},
}
COLUMNS = ["region", "n", "n_ci_low", "n_ci_high", "n_flag", "bmi", "bmi_ci_low", "bmi_ci_high", "bmi_flag"]


def have_pandas():
    try:
        import pandas  # noqa: F401
        return True
    except ImportError:
        return False


class Table(unittest.TestCase):
    def test_rows(self):
        rows = tre_client.to_table(RESULT, frame=False)
        self.assertIsInstance(rows, tre_client.Rows)
        self.assertEqual(rows.columns, COLUMNS)
        self.assertEqual(rows[0], {"region": "London", "n": 120, "n_ci_low": 100.5, "n_ci_high": 139.5, "n_flag": "",
                                   "bmi": 27.52, "bmi_ci_low": 16.45, "bmi_ci_high": 38.59, "bmi_flag": ""})
        self.assertEqual((rows[1]["region"], rows[1]["n"], rows[1]["n_ci_low"], rows[1]["n_flag"]), (None, None, None, "suppressed"))
        self.assertEqual((rows[2]["n_flag"], rows[2]["bmi_flag"], rows[2]["bmi"]), ("secondary_suppressed", "suppressed", None))
        self.assertEqual(rows.attrs, {"query_id": 3, "released_at": "2026-01-01T00:00:00Z", "report": RESULT["report"]})
        text = repr(rows).splitlines()
        self.assertEqual(text[0].split(), COLUMNS)
        self.assertEqual(text[1].split(), ["London", "120", "100.5", "139.5", "27.52", "16.45", "38.59"])

    def test_federated_dry_run(self):
        # A dry run over a dataset several sites hold says it is one site's
        # answer, with the federated query's sites and costs.
        fed = {"sites": 3, "disjoint_populations": False, "site_cost": {"epsilon": 1}, "project_cost": {"epsilon": 3}}
        dry = dict(RESULT, synthetic=True, run="synthetic_single_site", federation=fed, dataset="gp")
        del dry["query_id"], dry["released_at"]
        rows = tre_client.to_table(dry, frame=False)
        self.assertEqual((rows.attrs["synthetic"], rows.attrs["run"], rows.attrs["federation"]), (True, "synthetic_single_site", fed))

    def test_empty(self):
        rows = tre_client.to_table({"columns": None, "rows": None, "report": {}}, frame=False)
        self.assertEqual((list(rows), rows.columns), ([], []))

    def test_without_pandas(self):
        with mock.patch.dict(sys.modules, {"pandas": None}):  # import pandas fails
            self.assertIsInstance(tre_client.to_table(RESULT), tre_client.Rows)
            with self.assertRaisesRegex(ImportError, "frame=True needs pandas"):
                tre_client.to_table(RESULT, frame=True)

    @unittest.skipUnless(have_pandas(), "pandas is not installed (Debian: python3-pandas)")
    def test_pandas(self):
        import pandas as pd
        df = tre_client.to_table(RESULT)
        self.assertIsInstance(df, pd.DataFrame)
        self.assertEqual(list(df.columns), COLUMNS)
        for c in ("n", "n_ci_low", "n_ci_high", "bmi", "bmi_ci_low", "bmi_ci_high"):
            self.assertEqual(df[c].dtype, "float64", c)
        self.assertEqual(df["n"].isna().tolist(), [False, True, True])
        self.assertEqual(df["n_flag"].tolist(), ["", "suppressed", "secondary_suppressed"])
        self.assertIsNone(df["region"][1])
        self.assertEqual(df.attrs["report"], RESULT["report"])
        # An all-suppressed column is still numeric.
        all_sup = dict(RESULT, rows=[RESULT["rows"][2]])
        self.assertEqual(tre_client.to_table(all_sup)["n"].dtype, "float64")
        self.assertIsInstance(tre_client.to_table(RESULT, frame=False), tre_client.Rows)


class Import(unittest.TestCase):
    def test_flag(self):
        self.assertEqual([table.flag(c) for c in ({}, {"suppressed": True}, {"suppressed": True, "secondary": True})],
                         ["", "suppressed", "secondary_suppressed"])

    def test_no_third_party_imports(self):
        # The package imports the standard library only (pandas lazily).
        pkg = os.path.dirname(tre_client.__file__)
        std = set(sys.stdlib_module_names) if hasattr(sys, "stdlib_module_names") else None
        if std is None:
            self.skipTest("needs Python 3.10+ for sys.stdlib_module_names")
        import ast
        for fn in os.listdir(pkg):
            if fn.endswith(".py"):
                with open(os.path.join(pkg, fn), encoding="utf-8") as f:
                    for node in ast.walk(ast.parse(f.read())):
                        if isinstance(node, ast.Import):
                            names = [a.name for a in node.names]
                        elif isinstance(node, ast.ImportFrom) and node.level == 0:
                            names = [node.module]
                        else:
                            continue
                        for n in names:
                            self.assertIn(n.split(".")[0], std, "{} imports {}".format(fn, n))


BUILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "_build")


@unittest.skipUnless(os.path.isfile(os.path.join(BUILD, "backend.py")), "the build backend is in the source tree only")
class Backend(unittest.TestCase):
    """The stdlib build backend that lets pip install the client offline."""

    def setUp(self):
        sys.path.insert(0, BUILD)
        self.addCleanup(sys.path.remove, BUILD)
        import backend
        self.backend = backend
        self.out = tempfile.mkdtemp()

    def test_wheel(self):
        import base64, hashlib, zipfile
        name = self.backend.build_wheel(self.out)
        self.assertEqual(name, "tre_client-{}-py3-none-any.whl".format(tre_client.__version__))
        with zipfile.ZipFile(os.path.join(self.out, name)) as zf:
            names = set(zf.namelist())
            info = "tre_client-{}.dist-info/".format(tre_client.__version__)
            for want in ("tre_client/__init__.py", "tre_client/client.py", "tre_client/wire.py", info + "METADATA", info + "WHEEL", info + "RECORD"):
                self.assertIn(want, names)
            self.assertFalse([n for n in names if "__pycache__" in n or n.startswith("tests/")])
            record = zf.read(info + "RECORD").decode().splitlines()
            self.assertEqual(len(record), len(names))
            for line in record:
                path, digest, size = line.rsplit(",", 2)
                if path == info + "RECORD":
                    continue
                data = zf.read(path)
                self.assertEqual(digest, "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode())
                self.assertEqual(int(size), len(data))
            meta = zf.read(info + "METADATA").decode()
        self.assertIn("Name: tre_client\nVersion: " + tre_client.__version__, meta)
        self.assertEqual(self.backend.get_requires_for_build_wheel(), [])

    def test_sdist(self):
        import tarfile
        name = self.backend.build_sdist(self.out)
        with tarfile.open(os.path.join(self.out, name)) as tf:
            names = set(tf.getnames())
        base = name[:-len(".tar.gz")]
        for want in ("PKG-INFO", "pyproject.toml", "_build/backend.py", "tre_client/client.py", "tests/test_live.py"):
            self.assertIn(base + "/" + want, names)


if __name__ == "__main__":
    unittest.main()
