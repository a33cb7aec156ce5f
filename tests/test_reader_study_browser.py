"""The reader study in a real headless Chromium (Playwright): the real server process, a reader who logs in, edits
and signs a draft, compares two blinded reports and rates reasoning; then ``export``, whose CSVs must hold exactly
what was typed. An unknown reader gets the error page. Screenshots of every screen go to $CHEXONE_SCREENSHOTS (the
docs' images/reader_study/ are made this way) or the test's temporary directory."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from browser_kit import CHROMIUM, needs_chromium, screenshot_dir
from reader_study_kit import REPO, MODEL_NAME, ServerProcess, draft_record, make_study


DRAFT = ("FINDINGS: PA view of the chest. The heart size is normal. The lungs are clear. No pleural effusion. "
         "No pneumothorax.\nIMPRESSION: No acute cardiopulmonary abnormality.")
MODEL_REPORT = ("FINDINGS: Small right pleural effusion with blunting of the costophrenic angle. Heart size normal."
                "\nIMPRESSION: Small right pleural effusion.")
REFERENCE = "FINDINGS: Trace right effusion. Normal heart and mediastinum.\nIMPRESSION: Trace right pleural effusion."
REASONING = ("**Thinking Process:**\n1. Frontal chest radiograph.\n2. The right costophrenic angle is blunted by a "
             "meniscus.\n3. The left costophrenic angle is sharp.")
ANSWER = "Yes, a small right pleural effusion."
# what the reader types: several lines, markup-like text, quotes, commas, non-ASCII
FINAL = ("FINDINGS: PA view. Mild cardiomegaly <CTR ~0.55> & no effusion.\n"
         "IMPRESSION: \"Cardiomegaly\", otherwise normal; follow-up in 6–8 weeks.")
REASON = "Report 2 misses the effusion size; report 1 is <clearer>, \"concise\" & correct."
COMMENT = "Reasoning is sound,\nbut the size is overstated (trace, not small)."


def _study(root: Path) -> Path:
    path = make_study(root, n_draft=1, n_pairwise=1, n_rating=1, image_size=320,
                      readers=[{"id": "alice", "name": "Dr. A"}, {"id": "bob", "password": "not-used-here"}])
    data = yaml.safe_load(path.read_text())
    data["study"] = "CXR reader study (demo)"
    data["description"] = "Edit draft reports, compare reports and rate reasoning. Synthetic images, no patient data."
    data["items"][1]["reference_report"] = REFERENCE
    data["items"][2]["question"] = "Is there a pleural effusion? If so, where and how large?"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    records = [draft_record("d1", DRAFT), draft_record("p1", MODEL_REPORT), draft_record("q1", ANSWER, REASONING)]
    (root / "drafts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _rows(path: Path) -> dict[tuple[str, str], dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return {(r["reader_id"], r["item_id"]): r for r in csv.DictReader(f)}


@needs_chromium
@pytest.mark.slow
def test_a_reader_works_through_the_study_in_a_real_browser(tmp_path):
    from playwright.sync_api import expect, sync_playwright

    shots = screenshot_dir(tmp_path)
    study = _study(tmp_path / "study")
    db = tmp_path / "answers.sqlite3"
    seen_types = []
    with ServerProcess(study, db) as server, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 700})

            def shot(name: str, full_page: bool = False) -> None:
                page.evaluate("window.scrollTo(0, 0)")
                page.screenshot(path=str(shots / f"{name}.png"), full_page=full_page)

            page.goto(server.url + "/")
            expect(page.get_by_role("heading", name="Log in")).to_be_visible()
            shot("01-login")

            # an unknown reader: the error page, a 4xx, nothing stored
            page.fill("#reader_id", "mallory")
            with page.expect_response(lambda r: r.url.endswith("/login") and r.request.method == "POST") as resp:
                page.click("button[type=submit]")
            assert resp.value.status == 403
            expect(page.locator("#login-error")).to_contain_text("Unknown reader ID")
            shot("02-unknown-reader")

            page.fill("#reader_id", "alice")
            page.click("button[type=submit]")
            for n in range(3):
                expect(page.locator("#progress-text")).to_have_text(f"Item {n + 1} of 3")
                html = page.content()
                assert MODEL_NAME not in html and "model" not in html.lower()  # blinded
                if page.locator("textarea#report").count():
                    seen_types.append("draft_edit")
                    assert page.input_value("#report") == DRAFT  # the draft, verbatim
                    page.fill("#report", FINAL)
                    shot("03-draft-edit")
                elif page.locator("input[name=choice]").count():
                    seen_types.append("pairwise")
                    texts = [page.inner_text("#report-1"), page.inner_text("#report-2")]
                    assert sorted(texts) == sorted([MODEL_REPORT, REFERENCE])
                    page.check("#choice-1")
                    page.fill("#reason", REASON)
                    shot("04-pairwise")
                    model_position_seen = 1 if texts[0] == MODEL_REPORT else 2
                else:
                    seen_types.append("reasoning_rating")
                    assert page.inner_text("#reasoning") == REASONING and page.inner_text("#answer") == ANSWER
                    page.check("#rate-correctness-4")
                    page.check("#rate-completeness-3")
                    page.check("#rate-clinical_usefulness-5")
                    page.fill("#comment", COMMENT)
                    shot("05-reasoning-rating", full_page=True)
                page.click("#sign")
            expect(page.locator("#done-message")).to_contain_text("You have signed all 3 items")
            shot("06-done")
        finally:
            browser.close()
    assert sorted(seen_types) == ["draft_edit", "pairwise", "reasoning_rating"]

    out = tmp_path / "export"
    proc = subprocess.run([sys.executable, "-m", "chexone.reader_study", "export", "--study", str(study), "--db",
                           str(db), "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    draft = _rows(out / "draft_edit.csv")
    assert set(draft) == {("alice", "d1"), ("bob", "d1")}
    assert draft[("alice", "d1")]["final_report"] == FINAL and draft[("alice", "d1")]["draft"] == DRAFT
    assert draft[("alice", "d1")]["edited"] == "true" and draft[("bob", "d1")]["status"] == "pending"
    assert float(draft[("alice", "d1")]["seconds_to_sign"]) > 0
    pair = _rows(out / "pairwise.csv")[("alice", "p1")]
    assert pair["reason"] == REASON and pair["choice"] == "1"
    assert pair["model_position"] == str(model_position_seen)
    assert pair["preferred_report"] == ("model" if model_position_seen == 1 else "reference")
    rating = _rows(out / "reasoning_rating.csv")[("alice", "q1")]
    assert (rating["correctness"], rating["completeness"], rating["clinical_usefulness"]) == ("4", "3", "5")
    assert rating["comment"] == COMMENT
    for name in ("01-login", "02-unknown-reader", "03-draft-edit", "04-pairwise", "05-reasoning-rating", "06-done"):
        assert (shots / f"{name}.png").read_bytes().startswith(b"\x89PNG"), name
