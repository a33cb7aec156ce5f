"""The example plugin as its own CI would test it: installed (``pip install -e .``), by registered names, with
chexone's conformance kit, plus its recipe and shard source end to end."""

from __future__ import annotations

import json

import pytest

from chexone.registry import list_plugins
from chexone.testing import (assert_metric_conforms, assert_reward_conforms, assert_task_conforms, foreign_samples,
                             make_sample, samples_for, tiny_image)

NAMES = {("task", "example_yes_no"), ("reward", "example_length_penalty"), ("metric", "example_answer_length")}


def test_names_are_installed_loaded_and_declare_api_1():
    rows = {(r.kind, r.name): r for r in list_plugins(load=True, include_builtins=False)}
    for key in NAMES:
        assert key in rows, f"{key} not registered: pip install -e . first"
        row = rows[key]
        assert row.distribution == "chexone-example-plugin"
        assert row.status == "ok", row.status
        assert row.api == "1"


def test_task_conforms():
    assert_task_conforms("example_yes_no")


def test_reward_conforms():
    assert_reward_conforms("example_length_penalty")


def test_metric_conforms():
    assert_metric_conforms("example_answer_length")


def test_task_accepts_words_or_letters_and_renders_fixed_options():
    from chexone_example_plugin.tasks import YesNoTask

    task = YesNoTask()
    for answer, shown in (("yes", "(A) Yes"), ("No.", "(B) No"), ("A", "(A) Yes"), ("B", "(B) No")):
        sample = make_sample("example_yes_no", answer=answer, question="Is there an effusion?")
        assert task.answer_text(sample) == shown
        assert task.question_text(sample) == "Is there an effusion?\n(A) Yes\n(B) No"


def test_reward_values_by_hand():
    from chexone_example_plugin.rewards import length_penalty

    own = samples_for("example_yes_no", 3)
    other = foreign_samples(["example_yes_no"], n=1)[:1]
    responses = ["a b c d", "w " * 6, "w " * 8, "anything"]
    values = length_penalty(responses, own + other, max_words=4)
    assert values == [0.0, pytest.approx(-0.5), pytest.approx(-1.0), None]  # 6 words: (6-4)/4; 8: capped at -1


def test_metric_mean_words_by_hand():
    from chexone_example_plugin.metrics import AnswerLength

    m = AnswerLength()
    m.update(["(A) Yes", "(B) No because"], ["A", "B"])
    m.update(["B"], ["B"])
    assert float(m.compute()) == pytest.approx((2 + 3 + 1) / 3)


def test_recipe_resolves_by_name():
    from chexone.config.load import load_config

    cfg = load_config("eval_example_yes_no", ["model.path=some/model"])
    assert list(cfg.eval.benchmarks.yes_no.tasks) == ["example_yes_no"]


def test_source_builds_shards_and_counts_bad_rows(tmp_path):
    from chexone.data.shards import build_eval_dataset
    from webdata import build

    data = tmp_path / "data"
    data.mkdir()
    tiny_image(0).save(data / "a.png")
    (data / "q.csv").write_text("image,question,answer\na.png,Pleural effusion?,Yes\na.png,Pneumothorax?,maybe\n"
                                "missing.png,Cardiomegaly?,no\n")
    out = tmp_path / "shards"
    assert build.main(["example-yes-no-csv", "--input", str(data / "q.csv"), "--out", str(out), "--no-progress",
                       "--workers", "1"]) == 0
    (sample,) = build_eval_dataset(str(out), max_skip_fraction=0.0)
    assert (sample.task, sample.question, sample.answer) == ("example_yes_no", "Pleural effusion?", "A")
    skipped = json.loads((out / "manifest.json").read_text())["skipped"]
    assert skipped == {"not_yes_no": 1, "missing_image": 1}
