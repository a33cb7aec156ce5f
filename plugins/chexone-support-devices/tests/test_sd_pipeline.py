"""The task in chexone's real pipeline, on the plugin's generated shards and chexone's tiny model (CPU, seconds):
SFT with validation by the plugin's metric, GRPO scored by the plugin's reward, and ``python -m chexone.evaluate``
with the plugin's recipe and metric."""

from __future__ import annotations

import csv
import json

import pytest

from chexone_support_devices.labels import parse_devices, weighted_f1


def common(out, **extra):
    """Overrides for a seconds-long tiny-model run on the plugin's shards (only its task)."""
    base = {
        "model": "tiny", "data": "custom", "logger": "none", "output_dir": str(out), "trainer.progress_bar": "false",
        "data.num_workers": "0", "data.tasks": "[lines_tubes]",
    }
    base.update({k: str(v) for k, v in extra.items()})
    return [f"{k}={v}" for k, v in base.items()]


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory, chexone_cache, shards):
    """Three SFT steps on the demo train shards, validated on the test shards with the plugin's metric."""
    from chexone.config.load import load_config
    from chexone.training.run import run_fit

    out = tmp_path_factory.mktemp("sft")
    cfg = load_config("stage1_sft", common(out, **{
        "data.train": shards["train"], "data.val": shards["test"], "trainer.max_steps": 3, "logger": "csv",
        "data.micro_batch_size": 2, "trainer.global_batch_size": 2, "trainer.val_every_n_steps": 0,
        "trainer.val_samples": 4, "trainer.val_max_new_tokens": 8,
        "trainer.val_metrics": "[accuracy,lines_tubes_f1]"}))
    summary = run_fit(cfg)
    return out, summary


def test_sft_trains_on_the_plugin_task_and_validates_with_its_metric(sft_run):
    out, summary = sft_run
    assert summary["global_step"] == 3
    assert (out / "hf" / "config.json").exists()
    header = (out / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    for key in ("train/loss", "val/loss", "val/lines_tubes_f1", "val/accuracy"):
        assert key in header, (key, header)


def test_grpo_steps_use_the_reward_the_task_declares(tmp_path, chexone_cache, shards, capsys):
    from chexone.config.load import load_config
    from chexone.training.run import run_fit

    out = tmp_path / "grpo"
    cfg = load_config("stage2_grpo", common(out, **{
        "data.train": shards["train"], "grpo.init_from": "''", "grpo.num_generations": 4,
        "grpo.prompts_per_step": 2, "grpo.max_completion_length": 12, "grpo.beta": 0, "trainer.max_steps": 2,
        "grpo.rewards": "[{name: format}]", "grpo.log_completions_every_n_steps": 1, "export_hf": "false",
        "trainer.checkpoint_every_n_steps": 2}))
    summary = run_fit(cfg)
    assert summary["global_step"] == 2
    printed = capsys.readouterr().out
    assert "lines_tubes_reward (weight 1; lines_tubes; declared by task lines_tubes" in printed, printed
    rows = [json.loads(line) for line in (out / "completions.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 2 * 4  # steps x prompts x generations
    for row in rows:
        assert set(row["rewards"]) == {"format", "lines_tubes_reward"}  # not the built-in vqa
        value = row["rewards"]["lines_tubes_reward"]
        assert isinstance(value, float) and 0.0 <= value <= 1.0


def test_evaluate_with_the_plugin_recipe_and_metric(tmp_path, sft_run, shards, capsys):
    from chexone.evaluate import main

    sft_out, _ = sft_run
    out = tmp_path / "eval"
    rc = main(["recipe=eval_lines_tubes", f"model.path={sft_out / 'hf'}", f"data.lines_tubes={shards['test']}",
               "logger=none", f"eval.out={out}", "eval.max_new_tokens=16", "eval.bootstrap_resamples=50"])
    assert rc == 0, capsys.readouterr().err[-3000:]
    result = json.loads((out / "lines_tubes" / "results.json").read_text())
    row = result["rows"]["all"]
    assert row["lines_tubes_f1"]["n"] == 12 and row["accuracy"]["n"] == 12
    # the reported value is the mean of the per-sample F1 of the final answers against the references
    records = [json.loads(line) for line in (out / "lines_tubes" / "samples.jsonl").read_text().splitlines()]
    assert len(records) == 12
    expected = []
    for r in records:
        truth = parse_devices(r["reference"])
        expected.append(weighted_f1(parse_devices(r["final"]), truth))
        assert r["scores"]["lines_tubes_f1"] == pytest.approx(expected[-1])
    assert row["lines_tubes_f1"]["value"] == pytest.approx(sum(expected) / len(expected))
    # compute()'s full output (per-device F1, macro/micro F1) is kept under details
    details = result["details"]["lines_tubes"]["lines_tubes_f1"]
    assert {"sample_f1", "macro_f1", "micro_f1", "f1_ett_malpositioned", "f1_pacemaker", "n"} <= set(details)
    assert details["sample_f1"] == pytest.approx(row["lines_tubes_f1"]["value"])
    assert "lines_tubes_f1" in (out / "lines_tubes" / "results.md").read_text()


def test_csv_metrics_file_is_readable(sft_run):
    out, _ = sft_run
    with open(out / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    vals = [float(r["val/lines_tubes_f1"]) for r in rows if r.get("val/lines_tubes_f1")]
    assert vals and all(0.0 <= v <= 1.0 for v in vals)
