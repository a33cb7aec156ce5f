"""Reader-study statistics against independent values (textbook and published examples, hand computations), and the
export: CSVs de-blinded and verbatim, summary.json / summary.md numbers worked out by hand, plots."""

from __future__ import annotations

import csv
import json
import math

import pytest

from chexone.reader_study import stats
from chexone.reader_study.__main__ import main
from chexone.reader_study.app import ReaderStudyApp
from chexone.reader_study.plan import reader_plan
from chexone.reader_study.store import Store
from chexone.reader_study.study import load_study
from reader_study_kit import make_study

pytest.importorskip("sklearn", reason="the reader-study extra (scikit-learn) is not installed")
pytest.importorskip("pingouin", reason="the reader-study extra (pingouin) is not installed")

# Shrout & Fleiss (1979), Table 2: 6 targets rated by 4 judges.
SHROUT_FLEISS = [[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]]


def test_describe_by_hand():
    d = stats.describe([4, 1, 3, 2])
    assert (d["n"], d["mean"], d["median"], d["q1"], d["q3"], d["iqr"]) == (4, 2.5, 2.5, 1.75, 3.25, 1.5)
    assert d["sd"] == pytest.approx(math.sqrt(5 / 3))
    assert stats.describe([])["mean"] is None and stats.describe([None, 7])["n"] == 1


@pytest.mark.parametrize("k, n, lo, hi", [(81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611),
                                          (1, 29, 0.0061, 0.1718)])
def test_wilson_interval_matches_newcombe_1998(k, n, lo, hi):
    """Newcombe (1998), Statistics in Medicine 17:857, Table II, method 3 (score interval without correction)."""
    got = stats.wilson_ci(k, n)
    assert got[0] == pytest.approx(lo, abs=5e-5) and got[1] == pytest.approx(hi, abs=5e-5)
    assert stats.wilson_ci(0, 0) == (None, None)


def test_cohen_kappa_by_hand():
    # 2x2 table [[4, 1], [2, 3]]: p_o = 0.7, p_e = 0.5*0.6 + 0.5*0.4 = 0.5, kappa = 0.4
    a = ["y"] * 5 + ["n"] * 5
    b = ["y"] * 4 + ["n"] + ["y"] * 2 + ["n"] * 3
    assert stats.cohen_kappa(a, b)[0] == pytest.approx(0.4)
    # three categories: p_o = 4/6, p_e = (3*3 + 2*2 + 1*1)/36 = 14/36, kappa = (10/36)/(22/36) = 5/11
    a = ["model", "model", "reference", "equal", "model", "reference"]
    b = ["model", "reference", "reference", "equal", "model", "model"]
    assert stats.cohen_kappa(a, b)[0] == pytest.approx(5 / 11)
    assert stats.percent_agreement(a, b) == pytest.approx(4 / 6)


def test_weighted_kappa_by_hand():
    a, b = [1, 2, 3, 1], [1, 2, 2, 1]
    # quadratic weights (i-j)^2: observed mean 1/4, expected 1.0 (from the marginals) -> 1 - 0.25 = 0.75
    assert stats.cohen_kappa(a, b, labels=[1, 2, 3, 4, 5], weights="quadratic")[0] == pytest.approx(0.75)
    # linear weights |i-j|: observed 1/4, expected 0.75 -> 1 - 1/3
    assert stats.cohen_kappa(a, b, labels=[1, 2, 3, 4, 5], weights="linear")[0] == pytest.approx(2 / 3)


def test_kappa_undefined_cases_say_why():
    assert stats.cohen_kappa(["a", "a"], ["a", "a"]) == (None, "undefined: both readers gave the same single answer "
                                                              "to every item")
    assert stats.cohen_kappa(["a"], ["b"])[0] is None


def test_icc_matches_shrout_and_fleiss_1979():
    """The published values: ICC(1,1) = .17, ICC(2,1) = .29, ICC(3,1) = .71."""
    out, note = stats.icc(SHROUT_FLEISS)
    assert note == ""
    assert out["ICC(1,1)"]["value"] == pytest.approx(0.17, abs=0.005)
    assert out["ICC(2,1)"]["value"] == pytest.approx(0.29, abs=0.005)
    assert out["ICC(3,1)"]["value"] == pytest.approx(0.71, abs=0.005)
    assert out["ICC(2,1)"]["ci_low"] < 0.29 < out["ICC(2,1)"]["ci_high"]
    assert stats.icc([[1, 1], [1, 1], [1, 1]]) == (None, "undefined: every rating is the same")
    assert stats.icc([[1, 2]])[0] is None


# ---------------------------------------------------------------------------------------------------- export


def _choice(pref: str, model_first: bool) -> str:
    """The blinded button a reader presses to prefer ``pref`` (worked out here, independently of the app)."""
    if pref == "equal":
        return "equal"
    return "1" if (pref == "model") == model_first else "2"


@pytest.fixture()
def filled(tmp_path):
    path = make_study(tmp_path, n_draft=2, n_pairwise=3, n_rating=3, readers=["r1", "r2"])
    study = load_study(path)
    store = Store(tmp_path / "answers.db", study.name)
    app = ReaderStudyApp(study, store)
    plans = {r: {a.item_id: a for a in store.ensure_plan(r, reader_plan(study, r))} for r in ("r1", "r2")}

    def sign(reader, item_id, form, shown, signed, active=None):
        store.mark_shown(reader, item_id, now=shown)
        payload, errors = app._payload(study.item(item_id), plans[reader][item_id], form)
        assert not errors
        store.save_answer(reader, item_id, study.item(item_id).type, payload, active_seconds=active, now=signed)

    draft1 = study.model_text(study.item("d1"))[1]
    sign("r1", "d1", {"report": draft1}, 1000.0, 1030.0, 25.0)                      # 30 s, unchanged
    sign("r1", "d2", {"report": "Rewritten, \"quoted\", with a comma\nand a line."}, 1100.0, 1160.0)  # 60 s
    sign("r2", "d1", {"report": draft1 + " Added."}, 1000.0, 1050.0)                # 50 s; r2 never signs d2
    prefs = {"r1": ["model", "reference", "equal"], "r2": ["model", "model", "equal"]}
    for r in ("r1", "r2"):
        for i, pref in enumerate(prefs[r], 1):
            sign(r, f"p{i}", {"choice": _choice(pref, plans[r][f"p{i}"].model_first), "reason": f"{r} p{i} why"},
                 2000.0, 2010.0 + i)
    ratings = {"r1": [5, 4, 2], "r2": [4, 4, 1]}  # correctness; completeness and usefulness fixed at 3 and 4
    for r in ("r1", "r2"):
        for i, v in enumerate(ratings[r], 1):
            sign(r, f"q{i}", {"rate_correctness": str(v), "rate_completeness": "3", "rate_clinical_usefulness": "4",
                              "comment": f"{r} q{i} <note>"}, 3000.0, 3020.0)
    store.log_event("resubmit_refused", "r1", "d1", {"payload": {}})
    store.close()
    return {"study": path, "db": tmp_path / "answers.db", "plans": plans, "out": tmp_path / "export",
            "draft1": draft1}


def _csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_export_csvs_are_deblinded_and_verbatim(filled, capsys):
    assert main(["export", "--study", str(filled["study"]), "--db", f"sqlite:///{filled['db']}",
                 "--out", str(filled["out"])]) == 0
    assert "summary.json" in capsys.readouterr().out
    out = filled["out"]
    drafts = {(r["reader_id"], r["item_id"]): r for r in _csv(out / "draft_edit.csv")}
    assert len(drafts) == 4  # every reader x item, pending ones included
    assert drafts[("r1", "d1")]["final_report"] == filled["draft1"] and drafts[("r1", "d1")]["edited"] == "false"
    assert drafts[("r1", "d2")]["final_report"] == "Rewritten, \"quoted\", with a comma\nand a line."
    assert drafts[("r1", "d1")]["seconds_to_sign"] == "30.0" and drafts[("r1", "d1")]["active_seconds"] == "25.0"
    assert drafts[("r1", "d1")]["first_shown_at"] == "1970-01-01T00:16:40.000+00:00"
    assert drafts[("r2", "d1")]["char_edit_distance"] == str(len(" Added."))
    assert drafts[("r2", "d2")]["status"] == "pending" and drafts[("r2", "d2")]["final_report"] == ""
    pairs = {(r["reader_id"], r["item_id"]): r for r in _csv(out / "pairwise.csv")}
    for r in ("r1", "r2"):
        for i, pref in enumerate({"r1": ["model", "reference", "equal"], "r2": ["model", "model", "equal"]}[r], 1):
            row = pairs[(r, f"p{i}")]
            model_first = filled["plans"][r][f"p{i}"].model_first
            assert row["model_position"] == ("1" if model_first else "2")
            assert row["report1_source"] == ("model" if model_first else "radiologist")
            assert row["choice"] == _choice(pref, model_first)
            assert row["preferred_report"] == pref
            assert row["preferred"] == {"model": "model", "reference": "radiologist", "equal": "equal"}[pref]
            assert row["reason"] == f"{r} p{i} why"
            assert row["reference_report"] == f"Radiologist report {i}: normal chest."
            assert row["model_report"] == f"Draft findings {i}: small effusion."
    rows = {(r["reader_id"], r["item_id"]): r for r in _csv(out / "reasoning_rating.csv")}
    assert rows[("r2", "q3")]["correctness"] == "1" and rows[("r2", "q3")]["comment"] == "r2 q3 <note>"
    assert rows[("r1", "q1")]["reasoning"] == "Step 1 for q1.\nStep 2 <b>bold</b>."
    assert list(rows[("r1", "q1")])[-4:] == ["correctness", "completeness", "clinical_usefulness", "comment"]


def test_export_summary_numbers_by_hand(filled):
    assert main(["export", "--study", str(filled["study"]), "--db", str(filled["db"]), "--out",
                 str(filled["out"])]) == 0
    s = json.loads((filled["out"] / "summary.json").read_text())
    t = s["time_to_sign"]["draft_edit"]["overall"]  # 30, 60, 50 s
    assert t["n"] == 3 and t["mean"] == pytest.approx(140 / 3) and t["median"] == 50
    assert (t["q1"], t["q3"], t["iqr"]) == (40, 55, 15)
    assert s["time_to_sign"]["draft_edit"]["by_reader"]["r1"]["mean"] == 45
    e = s["draft_edit"]["overall"]
    assert (e["n"], e["edited"], e["edit_rate"]) == (3, 2, pytest.approx(2 / 3))
    p = s["pairwise"]["overall"]
    assert (p["model"]["k"], p["model"]["n"], p["reference"]["k"], p["equal"]["k"]) == (3, 6, 1, 2)
    # Wilson for 3/6 by hand: centre 0.5, half-width 1.96 * sqrt(0.25/6 + 3.8415/144) / (1 + 3.8415/6) = 0.3124
    assert p["model"]["ci_low"] == pytest.approx(0.1876, abs=1e-4)
    assert p["model"]["ci_high"] == pytest.approx(0.8124, abs=1e-4)
    assert s["pairwise"]["by_reader"]["r2"]["model"]["p"] == pytest.approx(2 / 3)
    # r1 = [m, r, e], r2 = [m, m, e]: p_o = 2/3, p_e = (1*2 + 1*0 + 1*1)/9 = 1/3, kappa = 0.5
    agree = s["pairwise"]["agreement"][0]
    assert (agree["reader_a"], agree["reader_b"], agree["n"]) == ("r1", "r2", 3)
    assert agree["kappa"] == pytest.approx(0.5) and agree["percent_agreement"] == pytest.approx(2 / 3)
    c = s["reasoning_rating"]["correctness"]
    assert c["overall"]["mean"] == pytest.approx(20 / 6) and c["distribution"] == {"1": 1, "2": 1, "3": 0, "4": 3,
                                                                                  "5": 1}
    # quadratic weighted kappa of [5,4,2] vs [4,4,1]: observed 2/3, expected 4 -> 1 - 1/6
    assert c["weighted_kappa"][0]["weighted_kappa"] == pytest.approx(5 / 6)
    # ICC from the two-way ANOVA of [[5,4],[4,4],[2,1]] by hand: MSR 31/6, MSW 1/3, MSC 2/3, MSE 1/6
    assert c["icc"]["ICC(1,1)"]["value"] == pytest.approx((31 / 6 - 1 / 3) / (31 / 6 + 1 / 3))
    assert c["icc"]["ICC(3,1)"]["value"] == pytest.approx((31 / 6 - 1 / 6) / (31 / 6 + 1 / 6))
    assert c["icc"]["ICC(2,1)"]["value"] == pytest.approx(5 / (31 / 6 + 1 / 6 + 2 * (2 / 3 - 1 / 6) / 3))
    flat = s["reasoning_rating"]["completeness"]  # every rating 3: no agreement statistic is defined
    assert flat["icc"] is None and "every rating is the same" in flat["icc_note"]
    assert flat["weighted_kappa"][0]["weighted_kappa"] is None
    assert s["refused_resubmissions"] == 1 and s["completion"]["r2"] == {"signed": 7, "total": 8}
    md = (filled["out"] / "summary.md").read_text()
    assert "| draft edit | all | 3 | 46.7 | 50.0 | 15.0 (40.0–55.0) |" in md
    assert "50.0% (3/6; 95% CI 18.8–81.2%)" in md and "| r1 vs r2 | 3 | 66.7 | 0.50 |" in md
    for name in ("time_to_sign.png", "preferences.png", "likert.png"):
        assert (filled["out"] / "plots" / name).read_bytes().startswith(b"\x89PNG")


def test_export_errors(tmp_path, capsys):
    path = make_study(tmp_path)
    assert main(["export", "--study", str(path), "--db", str(tmp_path / "none.db"), "--out", str(tmp_path / "o")]) == 2
    assert "no such database" in capsys.readouterr().err
