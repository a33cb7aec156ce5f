"""The whole path: a stage-1 export served by ``python -m chexone.serve`` writes the drafts of a reader study
(``python -m chexone.reader_study drafts``), readers see them in the app, and the export holds exactly the model's
drafts and what the readers signed."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
import torch

from reader_study_kit import Client, ServerProcess, answer_fields, current_item, make_study
from test_serve import start_server


@pytest.fixture(scope="module")
def talkative_export(sft_export, tmp_path_factory):
    """The stage-1 demo export with its weights jittered and saved again: a 2-step model answers only newlines,
    which the drafts command rightly refuses as empty."""
    from chexone.inference import InferenceModel

    model = InferenceModel.load(str(sft_export), device="cpu")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)
    target = tmp_path_factory.mktemp("talkative")
    model.model.save_pretrained(target)
    model.processor.save_pretrained(target)
    return target


@pytest.mark.slow
def test_model_drafts_reach_the_readers_and_the_export(talkative_export, tmp_path):
    study = make_study(tmp_path / "study", n_draft=2, n_pairwise=1, n_rating=1, drafts=False, readers=["r1"],
                       image_size=56)
    proc, base, lines = start_server("--model", str(talkative_export), "--name", "cxr-model")
    try:
        run = subprocess.run([sys.executable, "-m", "chexone.reader_study", "drafts", "--study", str(study),
                              "--server", f"{base}/v1", "--max-tokens", "24"],
                             capture_output=True, text=True, timeout=300)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert run.returncode == 0, run.stderr
    drafts = {d["id"]: d for d in map(json.loads, (study.parent / "drafts.jsonl").read_text().splitlines())}
    assert set(drafts) == {"d1", "d2", "p1", "q1"}
    assert all(d["model"] == "cxr-model" and d["raw"].strip() for d in drafts.values())
    assert sum("POST /v1/chat/completions 200" in line for line in lines) == 4

    db = tmp_path / "answers.sqlite3"
    entered = {}
    with ServerProcess(study, db) as app:
        client = Client(app.url)
        status, page = client.login("r1")
        assert status == 200
        n = 0
        while (item := current_item(page)) is not None:
            if item.startswith("d"):
                # the reader sees the model's draft (HTML-escaped) in the editor
                import html

                assert html.escape(drafts[item]["answer"], quote=False).strip()[:20] in page
            fields = answer_fields(page, n)
            entered[item] = fields
            status, page, _ = client.submit(item, fields, follow=True)
            assert status == 200
            n += 1
    assert set(entered) == {"d1", "d2", "p1", "q1"}

    out = tmp_path / "export"
    exp = subprocess.run([sys.executable, "-m", "chexone.reader_study", "export", "--study", str(study), "--db",
                          str(db), "--out", str(out), "--no-plots"], capture_output=True, text=True, timeout=120)
    assert exp.returncode == 0, exp.stderr
    with open(out / "draft_edit.csv", encoding="utf-8") as f:
        rows = {r["item_id"]: r for r in csv.DictReader(f)}
    for item in ("d1", "d2"):
        assert rows[item]["draft"] == drafts[item]["answer"]  # the model's draft, from the server
        assert rows[item]["final_report"] == entered[item]["report"]  # what the reader signed, verbatim
    with open(out / "pairwise.csv", encoding="utf-8") as f:
        [pair] = list(csv.DictReader(f))
    assert pair["model_report"] == drafts["p1"]["answer"] and pair["reason"] == entered["p1"]["reason"]
