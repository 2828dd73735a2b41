"""tre_client against a running tre: broker, site agent and sandbox.

Runs when TRE_BROKER and the tokens of a researcher, a reviewer and an
output checker are set (TRE_TOKEN_RESEARCHER, TRE_TOKEN_REVIEWER,
TRE_TOKEN_OUTPUT_CHECKER: tre demo's tokens.env); cmd/tre's TestClients
starts `tre demo` and runs this suite against it. The researcher must be a
member of a project over the demo's synthetic data.
"""

import json
import os
import subprocess
import sys
import unittest

import tre_client

ROLES = ("researcher", "reviewer", "output_checker")
NEEDED = ["TRE_BROKER"] + ["TRE_TOKEN_" + r.upper() for r in ROLES]
SQL = "SELECT p.sex, count(*) AS n FROM patients p GROUP BY p.sex"
EPSILON = 0.1
# A survival table over every patient (docs/sql.md, Survival): years from
# registration to death, or censored at leaving the practice or the end of
# the extract, in public bands, so k = 1; large enough bands that none is
# suppressed on the demo's synthetic patients.
SURVIVAL_SQL = """SELECT
  CASE
    WHEN date_diff('year', p.registration_start, coalesce(p.date_of_death, p.registration_end, DATE '2024-01-01')) < 5 THEN '0-5'
    WHEN date_diff('year', p.registration_start, coalesce(p.date_of_death, p.registration_end, DATE '2024-01-01')) < 10 THEN '5-10'
    WHEN date_diff('year', p.registration_start, coalesce(p.date_of_death, p.registration_end, DATE '2024-01-01')) < 20 THEN '10-20'
    ELSE '20+'
  END AS years_band,
  count(*) FILTER (WHERE p.date_of_death IS NOT NULL) AS deaths,
  count(*) FILTER (WHERE p.date_of_death IS NULL) AS censored
FROM patients p
GROUP BY years_band"""


def have_pandas():
    try:
        import pandas  # noqa: F401
        return True
    except ImportError:
        return False


@unittest.skipUnless(all(os.environ.get(v) for v in NEEDED), "needs a running tre: set " + ", ".join(NEEDED))
class Live(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.alice = tre_client.Client()
        cls.bob = tre_client.Client(role="reviewer")
        cls.carol = tre_client.Client(role="output_checker")
        cls.project = cls.alice.projects()[0]["id"]

    def submit(self, purpose):
        q = self.alice.submit(self.project, SQL, purpose=purpose, epsilon=EPSILON)
        self.assertEqual(q["status"], "submitted")
        return q

    def run_at_site(self, q):
        """Approves q and waits for the site to run it."""
        self.bob.approve(q, comment="ok")
        seen = []
        q = self.bob.wait(q, timeout=180, progress=lambda q: seen.append(q["status"]))
        self.assertEqual(q["status"], "awaiting_output_check", seen)
        self.assertEqual(seen[-1], "awaiting_output_check")
        return q

    def test_find_check_and_dry_run(self):
        names = [c["dataset"] for c in self.alice.datasets()]
        self.assertTrue(names)
        tables = [t["name"] for t in self.alice.datasets()[0]["tables"]]
        self.assertIn("patients", tables)
        plan = self.alice.check(self.project, SQL, epsilon=EPSILON)
        self.assertEqual(plan["cost"]["epsilon"], EPSILON)
        self.assertIn(plan["dataset"], names)
        self.assertEqual([a["column"] for a in plan["accuracy"]], ["n"])
        dry = self.alice.dry_run(self.project, SQL, frame=False)
        self.assertTrue(dry.attrs["synthetic"])
        self.assertEqual(dry.columns, ["sex", "n", "n_ci_low", "n_ci_high", "n_flag"])
        self.assertEqual(sorted(r["sex"] for r in dry), ["female", "male", "unknown"])

    def test_refused_query(self):
        for sql, construct in [
            ("SELECT * FROM read_csv('/etc/passwd')", "function read_csv at position 14"),
            ("SELECT p.sexx, count(*) AS n FROM patients p GROUP BY p.sex", "unknown column p.sexx at position 7"),
        ]:
            for call in (self.alice.check, lambda p, s: self.alice.submit(p, s, purpose="refused")):
                with self.subTest(sql=sql), self.assertRaises(tre_client.RefusedError) as cm:
                    call(self.project, sql)
                e = cm.exception
                self.assertEqual((e.status, e.code), (422, "refused"))
                self.assertIn(construct, e.message)

    def test_released_and_read_back(self):
        with self.assertRaises(tre_client.InvalidError) as cm:
            self.alice.submit(self.project, SQL, purpose="")
        self.assertEqual(cm.exception.code, "invalid")
        q = self.submit("client test: released")
        self.assertIn(q["id"], [x["id"] for x in self.bob.review_queue()])
        self.run_at_site(q)
        self.assertIn(q["id"], [x["id"] for x in self.carol.output_queue()])
        out = self.carol.output(q)
        self.assertIn("report", out["result"])
        with self.assertRaises(tre_client.ForbiddenError):
            self.alice.result(q)  # not released yet
        self.carol.release(q, comment="safe")
        q = self.alice.wait(q, timeout=180, final=True, progress=False)
        self.assertEqual(q["status"], "released")
        self.assertEqual(self.alice.status(q), "released")
        self.assertEqual(self.alice.history(q)[-1]["to"], "released")
        self.assertIn(q["id"], [x["id"] for x in self.alice.queries(status="released")])

        df = self.alice.result(q)
        if have_pandas():
            import pandas as pd
            self.assertIsInstance(df, pd.DataFrame)
            rows = df.to_dict("records")
        else:
            self.assertIsInstance(df, tre_client.Rows)
            rows = list(df)
        self.assertEqual(list(df.columns), ["sex", "n", "n_ci_low", "n_ci_high", "n_flag"])
        self.assertEqual(sorted(r["sex"] for r in rows), ["female", "male", "unknown"])
        for r in rows:
            if r["n_flag"] == "":
                self.assertLessEqual(r["n_ci_low"], r["n"])
                self.assertLessEqual(r["n"], r["n_ci_high"])
            else:
                self.assertIn(r["n_flag"], ("suppressed", "secondary_suppressed"))
        self.assertEqual(df.attrs["query_id"], q["id"])
        self.assertEqual(df.attrs["report"]["epsilon"], EPSILON)
        self.assertNotIn("rows_dropped_by_bounding", df.attrs["report"])  # the researcher's part only
        plain = self.alice.result(q, frame=False)
        self.assertIsInstance(plain, tre_client.Rows)
        self.assertEqual(len(plain), 3)
        self.assertTrue(self.alice.result_csv(q).startswith("sex,n,n_ci_low,n_ci_high,n_flag"))

    # A survival table released end to end, and its Kaplan-Meier curve from
    # Client.km: a survival curve, and the one `tre query km --json` computes
    # from the same released table (TRE_CLI is the tre binary; e2e/clients
    # TestClients sets it). No docstring: unittest -v would print it in
    # place of the "... ok" TestClients looks for.
    def test_survival_km(self):
        q = self.alice.submit(self.project, SURVIVAL_SQL, purpose="client test: survival", epsilon=0.5)
        self.run_at_site(q)
        self.carol.release(q, comment="safe")
        q = self.alice.wait(q, timeout=180, final=True, progress=False)
        self.assertEqual(q["status"], "released")
        km = list(self.alice.km(q, frame=False))
        self.assertEqual([r["band"] for r in km], ["0-5", "5-10", "10-20", "20+"])
        prev = 1.0
        for r in km:
            self.assertLessEqual(r["survival"], prev, r)
            self.assertTrue(0 <= r["ci_low"] <= r["survival"] <= r["ci_high"] <= 1, r)
            prev = r["survival"]
        self.assertLess(km[0]["survival"], 1)
        if have_pandas():
            df = self.alice.km(q)
            self.assertEqual(list(df.columns), list(tre_client.survival.KM_COLUMNS))
            self.assertEqual(list(df["survival"]), [r["survival"] for r in km])
        cli = os.environ.get("TRE_CLI")
        if not cli:
            self.skipTest("set TRE_CLI to the tre binary to compare with tre query km")
        out = subprocess.run([cli, "query", "km", str(q["id"]), "--json"], capture_output=True, text=True, timeout=120)
        self.assertEqual(out.returncode, 0, out.stderr)
        want = json.loads(out.stdout)
        self.assertEqual([w["band"] for w in want], [r["band"] for r in km])
        for r, w in zip(km, want):
            for k in ("at_risk", "deaths", "censored", "survival", "ci_low", "ci_high"):
                self.assertAlmostEqual(r[k], w[k], places=9, msg="band {} {}".format(r["band"], k))

    def test_rejected_and_withheld(self):
        q = self.submit("client test: rejected")
        self.bob.reject(q, reason="out of scope")
        self.assertEqual(self.alice.wait(q, timeout=180, final=True, progress=False)["status"], "rejected")
        q = self.submit("client test: withheld")
        self.run_at_site(q)
        self.carol.withhold(q, reason="too detailed")
        self.assertEqual(self.alice.wait(q, timeout=180, final=True, progress=False)["status"], "withheld")
        with self.assertRaises(tre_client.APIError):
            self.alice.result(q)

    def test_wait_times_out(self):
        q = self.submit("client test: nobody reviews it")
        self.assertEqual(self.alice.wait(q, timeout=60, progress=False)["status"], "submitted")  # awaits a person
        with self.assertRaises(tre_client.WaitTimeout) as cm:
            self.alice.wait(q, timeout=2, final=True, poll=0.5, progress=False)
        self.assertEqual(cm.exception.query["status"], "submitted")
        self.assertEqual(self.alice.cancel(q)["status"], "cancelled")

    def test_errors(self):
        with self.assertRaises(tre_client.NotFoundError) as cm:
            self.alice.get(10 ** 9)
        self.assertEqual(cm.exception.code, "not_found")
        q = self.submit("client test: separation of duties")
        with self.assertRaises(tre_client.ForbiddenError) as cm:
            self.alice.approve(q, comment="my own")
        self.assertEqual(cm.exception.status, 403)
        self.alice.cancel(q)
        with self.assertRaises(tre_client.UnauthorizedError):
            tre_client.Client(token="not-a-token").datasets()


if __name__ == "__main__":
    unittest.main(argv=sys.argv)
