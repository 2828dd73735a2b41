"""tre_client.kaplan_meier against the numbers of the Go implementation
(api.KaplanMeier, `tre query km`): the same table gives the same curve."""

import unittest

import tre_client


def table(cells, half):
    rows = []
    for band, d, c in cells:
        row = [{"key": band}]
        for v in (d, c):
            cell = {"value": v}
            if half:
                cell["ci_low"], cell["ci_high"] = v - half, v + half
            row.append(cell)
        rows.append(row)
    return {"columns": [{"name": "years_band", "kind": "group"}, {"name": "deaths", "kind": "count"},
                        {"name": "censored", "kind": "count"}], "rows": rows}


class KaplanMeier(unittest.TestCase):
    def test_curve(self):
        km = tre_client.kaplan_meier(table([("0-1", 10, 20), ("1-2", 30, 40)], 6), frame=False)
        self.assertEqual([r["band"] for r in km], ["0-1", "1-2"])
        self.assertEqual([r["at_risk"] for r in km], [100, 70])
        # tre query km prints 0.888 [0.799, 0.978] and 0.255 [0.114, 0.397]
        # for this table (cli TestClientExitCodes).
        got = [(round(r["survival"], 3), round(r["ci_low"], 3), round(r["ci_high"], 3)) for r in km]
        self.assertEqual(got, [(0.888, 0.799, 0.978), (0.255, 0.114, 0.397)])

    def test_exact_counts_greenwood(self):
        km = tre_client.kaplan_meier(table([("0-1", 10, 20), ("1-2", 30, 40), ("2-5", 5, 0)], 0), frame=False)
        # api TestKaplanMeier: S = 0.8943228770474403, near the actuarial
        # 1 - 10/95; Greenwood's term with n' = d/q.
        s1 = 0.8943228770474403
        self.assertAlmostEqual(km[0]["survival"], s1)
        eff = 10 / (1 - s1)
        self.assertAlmostEqual((km[0]["ci_high"] - km[0]["ci_low"]) / 2, 1.959963984540054 * s1 * (10 / (eff * (eff - 10))) ** 0.5)
        self.assertLess(km[1]["survival"], s1 * (1 - 30 / 55))
        self.assertEqual(km[2]["survival"], 0)

    def test_refusals(self):
        with self.assertRaisesRegex(ValueError, "count columns 'died' and 'censored'.*deaths \\(count\\)"):
            tre_client.kaplan_meier(table([("0-1", 1, 2)], 0), deaths="died", frame=False)
        t = table([("0-1", 1, 2)], 0)
        t["rows"][0][1] = {"suppressed": True}
        with self.assertRaisesRegex(ValueError, "band '0-1': deaths is suppressed"):
            tre_client.kaplan_meier(t, frame=False)

    def test_strata(self):
        # The bands are the last group column; sex before it gives one
        # curve per sex, each the curve of its rows alone (cli
        # TestClientExitCodes "km by sex": the female curve starts 0.888).
        female = table([("0-1", 10, 20), ("1-2", 30, 40)], 6)
        male = table([("0-1", 10, 20), ("1-2", 5, 5)], 6)
        both = {"columns": [{"name": "sex", "kind": "group"}] + female["columns"], "rows": []}
        for f, m in zip(female["rows"], male["rows"]):
            both["rows"] += [[{"key": "female"}] + f, [{"key": "male"}] + m]
        km = tre_client.kaplan_meier(both, frame=False)
        self.assertEqual(km.columns, ["stratum"] + list(tre_client.survival.KM_COLUMNS))
        self.assertEqual([(r["stratum"], r["band"]) for r in km],
                         [("sex=female", "0-1"), ("sex=female", "1-2"), ("sex=male", "0-1"), ("sex=male", "1-2")])
        alone = tre_client.kaplan_meier(male, frame=False)
        for got, want in zip(km[2:], alone):
            self.assertEqual({k: v for k, v in got.items() if k != "stratum"}, dict(want))
        self.assertEqual(round(km[0]["survival"], 3), 0.888)
        both["rows"][3][2] = {"suppressed": True}
        with self.assertRaisesRegex(ValueError, "stratum sex=male: band '1-2': deaths is suppressed"):
            tre_client.kaplan_meier(both, frame=False)


if __name__ == "__main__":
    unittest.main()
