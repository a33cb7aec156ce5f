"""``python -m chexone.evaluate``: the command line, the per-benchmark files, resuming, JSONL input, ``compare``."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from chexone.evaluate import main


def eval_args(out, tiny_dir, *extra):
    return ["recipe=eval_demo", "model=tiny", f"model.path={tiny_dir}", "data=demo", "logger=none",
            f"eval.out={out}", "eval.max_new_tokens=6", "eval.batch_size=4", "eval.bootstrap_resamples=50",
            "eval.consistency_samples=2",
            "eval.benchmarks.demo_vqa.limit=6", "eval.benchmarks.demo_open_vqa.limit=2",
            "eval.benchmarks.demo_generation.limit=2", "eval.benchmarks.demo_grounding.limit=3",
            "eval.benchmarks.demo_consistency.limit=2", *extra]


@pytest.fixture(scope="module")
def demo_eval(tmp_path_factory, tiny_dir, demo_shards):
    out = tmp_path_factory.mktemp("eval")
    assert main([*eval_args(out, tiny_dir), "logger=csv"]) == 0
    return out


def test_demo_eval_writes_every_benchmark(demo_eval):
    summary = json.loads((demo_eval / "results.json").read_text())
    assert set(summary) == {"demo_vqa", "demo_open_vqa", "demo_generation", "demo_grounding", "demo_consistency"}
    vqa = summary["demo_vqa"]
    assert vqa["n"] == 6 and sum(vqa["tasks"].values()) == 6
    lines = [json.loads(x) for x in (demo_eval / "demo_vqa" / "samples.jsonl").read_text().splitlines()]
    assert len(lines) == 6
    for rec in lines:
        assert {"id", "prompt", "output", "final", "parsed", "reference", "scores"} <= set(rec)
        assert rec["scores"]["accuracy"] in (0.0, 1.0)
    # the reported accuracy is the mean of the per-sample scores written next to it
    acc = vqa["rows"]["all"]["accuracy"]
    assert acc["value"] == pytest.approx(np.mean([r["scores"]["accuracy"] for r in lines]))
    assert acc["n"] == 6 and acc["ci_low"] <= acc["value"] <= acc["ci_high"]
    assert any(r.startswith("question_type=") for r in vqa["rows"])
    assert 0 < vqa["rows"]["all"]["majority_baseline"]["value"] <= 1
    assert set(summary["demo_generation"]["rows"]["all"]) == {"bleu2", "well_formed"}
    assert {"iou", "map"} <= set(summary["demo_grounding"]["rows"]["task=phrase_grounding"]) | set(
        summary["demo_grounding"]["rows"]["task=abnormality_grounding"])
    consistency = [json.loads(x) for x in (demo_eval / "demo_consistency" / "samples.jsonl").read_text().splitlines()]
    assert all(len(r["samples"]) == 2 for r in consistency)
    table = (demo_eval / "results.md").read_text()
    assert "| Demo close-ended VQA | 6 |" in table
    # values also go to the recipe's logger
    logged = (demo_eval / "csv" / "metrics.csv").read_text()
    assert "eval/demo_vqa/all/accuracy" in logged


def test_plots_are_images(demo_eval):
    for name in ("demo_vqa", "demo_grounding"):
        with Image.open(demo_eval / name / "plots" / "metrics.png") as im:
            assert im.width > 100 and im.height > 100
    with Image.open(demo_eval / "demo_grounding" / "plots" / "grounding.png") as im:
        assert im.width >= 256


def test_resume_answers_only_what_is_missing(demo_eval, tiny_dir, tmp_path, monkeypatch):
    from chexone.evaluation.predict import Predictor

    out = tmp_path / "eval"
    shutil.copytree(demo_eval, out)
    path = out / "demo_vqa" / "samples.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:3]) + "\n" + lines[3][:25])  # crashed while writing the 4th answer
    answered = []
    real = Predictor.predict

    def counting(self, samples, **kw):
        answered.extend(s.id for s in samples)
        return real(self, samples, **kw)

    monkeypatch.setattr(Predictor, "predict", counting)
    assert main(eval_args(out, tiny_dir)) == 0
    assert answered == [json.loads(x)["id"] for x in lines[3:]]
    assert len(path.read_text().splitlines()) == 6
    # other settings: refuse to mix answers
    with pytest.raises(SystemExit) as e:
        main(eval_args(out, tiny_dir, "eval.max_new_tokens=7"))
    assert e.value.code == 2


def test_benchmark_shorthand_and_typos(tmp_path, tiny_dir, capsys):
    from chexone.evaluate import _expand

    args = _expand(["recipe=eval_demo", "data=demo", "data.demo_vqa=/x/shards-{000..003}.tar", "data.max_length=9"])
    assert "eval.benchmarks.demo_vqa.path=/x/shards-{000..003}.tar" in args and "data.max_length=9" in args
    assert main(["recipe=eval_demo", "data=demo", "data.demo_vq=/x.tar"]) == 2
    err = capsys.readouterr().err
    assert "data.demo_vq" in err and "did you mean data.demo_vqa" in err


def test_help_lists_eval_keys(capsys):
    assert main(["recipe=eval_demo", "--help"]) == 0
    out = capsys.readouterr().out
    assert "eval.max_new_tokens" in out and "eval.benchmarks" in out


def test_no_benchmark_with_data_is_a_clear_error(tmp_path, tiny_dir, capsys):
    args = ["recipe=eval_vqa", f"model.path={tiny_dir}", "logger=none", f"eval.out={tmp_path}"]
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2
    assert "data.rexvqa=PATH" in capsys.readouterr().err


def test_jsonl_benchmark_in_both_record_formats(tmp_path, tiny_dir, demo_shards):
    img = tmp_path / "imgs" / "a.png"
    img.parent.mkdir()
    Image.new("L", (64, 64), 128).save(img)
    records = [
        {"id": "ours-1", "task": "close_vqa", "question": "Is there an effusion?", "options": ["yes", "no"],
         "answer": "A", "images": ["imgs/a.png"]},
        {"unique_id": "rel-1", "task_name": "Close-Ended VQA", "images": ["imgs/a.png"],
         "messages": [{"role": "user", "content": "<image>Is the heart enlarged?\n(A) yes\n(B) no"},
                      {"role": "assistant", "content": "(B) no"}]},
        {"id": "broken", "task": "close_vqa"},  # missing fields: skipped and counted
    ]
    path = tmp_path / "bench.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records))
    out = tmp_path / "out"
    args = ["recipe=eval_vqa", "model=tiny", f"model.path={tiny_dir}", "logger=none", f"eval.out={out}",
            f"data.rexvqa={path}", "eval.max_new_tokens=4", "eval.plots=false", "data.max_skip_fraction=0.5"]
    assert main(args) == 0
    lines = [json.loads(x) for x in (out / "rexvqa" / "samples.jsonl").read_text().splitlines()]
    assert [r["id"] for r in lines] == ["ours-1", "rel-1"]
    assert lines[1]["reference"] == "(B) no" and lines[1]["task"] == "close_vqa"


def write_run(root, bench, scores):
    d = root / bench
    d.mkdir(parents=True)
    with (d / "samples.jsonl").open("w") as f:
        for i, s in enumerate(scores):
            f.write(json.dumps({"id": f"q{i}", "scores": s}) + "\n")


def test_compare_uses_mcnemar_for_accuracy_and_paired_t_for_scores(tmp_path, capsys):
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    a_acc = rng.random(60) < 0.5
    b_acc = np.where(rng.random(60) < 0.3, ~a_acc, a_acc) | (rng.random(60) < 0.2)
    a_bleu, b_bleu = rng.random(60), rng.random(60) * 0.8 + 0.15
    write_run(tmp_path / "A", "vqa", [{"accuracy": float(x)} for x in a_acc])
    write_run(tmp_path / "B", "vqa", [{"accuracy": float(x)} for x in b_acc])
    write_run(tmp_path / "A", "gen", [{"bleu2": float(x)} for x in a_bleu])
    write_run(tmp_path / "B", "gen", [{"bleu2": float(x)} for x in b_bleu])
    from chexone.evaluation import compare

    rows, _ = compare.compare_runs(tmp_path / "A", tmp_path / "B")
    by = {(r.benchmark, r.metric): r for r in rows}
    acc = by[("vqa", "accuracy")]
    b = int(np.sum(a_acc & ~b_acc))
    c = int(np.sum(~a_acc & b_acc))
    assert acc.test.startswith("mcnemar")
    assert acc.pvalue == pytest.approx(scipy_stats.binomtest(min(b, c), b + c, 0.5).pvalue)
    assert acc.diff == pytest.approx(b_acc.mean() - a_acc.mean())
    bleu = by[("gen", "bleu2")]
    assert bleu.test.startswith("paired_t")
    assert bleu.pvalue == pytest.approx(scipy_stats.ttest_rel(b_bleu, a_bleu).pvalue)
    assert main(["compare", str(tmp_path / "A"), str(tmp_path / "B")]) == 0
    assert "| vqa | accuracy | 60 |" in capsys.readouterr().out
    # IoU is continuous even when every score happens to be 0 or 1: the class says so
    assert compare.choose_test("iou", np.array([0.0, 1.0]), np.array([1.0, 1.0])) == "paired_t"
    assert compare.choose_test("plugin_metric_x", np.array([0.0, 1.0]), np.array([1.0, 1.0])) == "mcnemar"


def test_compare_uses_wilcoxon_for_ordinal_metrics(tmp_path, monkeypatch):
    scipy_stats = pytest.importorskip("scipy.stats")
    import chexone.evaluation.compare as compare

    monkeypatch.setattr(compare, "declared_test", lambda name: "wilcoxon" if name == "rating" else None)
    a = [1, 2, 3, 4, 5, 2, 3, 4, 1, 2, 5, 4, 3, 2, 4, 3, 2, 5, 1, 3]
    b = [2, 2, 4, 5, 5, 3, 3, 5, 2, 1, 5, 5, 4, 3, 4, 4, 2, 5, 3, 4]
    write_run(tmp_path / "A", "read", [{"rating": float(x)} for x in a])
    write_run(tmp_path / "B", "read", [{"rating": float(x)} for x in b])
    rows, _ = compare.compare_runs(tmp_path / "A", tmp_path / "B")
    assert rows[0].test.startswith("wilcoxon")
    assert rows[0].pvalue == pytest.approx(scipy_stats.wilcoxon(b, a).pvalue)


def test_missing_metric_weights_stop_before_any_answer(tmp_path, tiny_dir, demo_shards, capsys, monkeypatch):
    """Offline without BERTScore weights (or without the package), the run stops in seconds naming the metric."""
    import chexone.model

    def no_model(*a, **k):
        raise AssertionError("the model must not be loaded before the metrics are checked")

    monkeypatch.setattr(chexone.model, "load_pretrained", no_model)
    args = ["recipe=eval_generation", "model=tiny", f"model.path={tiny_dir}", "logger=none", f"eval.out={tmp_path}",
            "data.rexgradient=demo:test"]
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "metric 'bertscore'" in err and "rexgradient" in err


def test_unknown_metric_name_is_rejected_with_suggestion(tmp_path, tiny_dir, demo_shards, capsys):
    args = ["recipe=eval_demo", "model=tiny", f"model.path={tiny_dir}", "data=demo", "logger=none",
            f"eval.out={tmp_path}", "eval.benchmarks.demo_vqa.metrics=[acuracy]"]
    with pytest.raises(SystemExit):
        main(args)
    assert "accuracy" in capsys.readouterr().err
