"""The dashboard against real tiny runs (seconds each): every name a stage-1 or stage-2 fit logs is in the metric
catalog; the per-task-family rewards are the means of the completions' own rewards; completion thumbnails show the
reference boxes where the answer puts them; a W&B run also writes csv/metrics.csv; report.html is written at the end
of fit and evaluate, and a report that cannot be written never fails the run."""

from __future__ import annotations

import csv
import json
from collections import defaultdict

import pytest
from PIL import Image

from conftest import tiny_demo_overrides

GRPO = {
    "model": "tiny", "data": "demo", "logger": "wandb", "trainer.progress_bar": "false", "grpo.init_from": "''",
    "data.num_workers": "0", "grpo.num_generations": "4", "grpo.prompts_per_step": "4", "grpo.micro_batch_prompts": "4",
    "grpo.max_completion_length": "12", "data.tasks": "[close_vqa,phrase_grounding]",
    "grpo.rewards": "[{name: format},{name: vqa},{name: grounding_iou}]", "grpo.log_completions_every_n_steps": "1",
    "export_hf": "false", "trainer.max_steps": "3",
}


@pytest.fixture(scope="module")
def grpo_run(tmp_path_factory, cache_dir, demo_shards, tiny_dir):
    """A 3-step GRPO run logging to W&B (offline), completions every step."""
    import wandb

    from chexone.config.load import load_config
    from chexone.training.run import run_fit

    out = tmp_path_factory.mktemp("dashboard-grpo")
    mp = pytest.MonkeyPatch()
    mp.setenv("WANDB_MODE", "offline")
    mp.delenv("WANDB_API_KEY", raising=False)
    try:
        summary = run_fit(load_config("stage2_grpo", [f"{k}={v}" for k, v in {**GRPO, "output_dir": out}.items()]))
    finally:
        wandb.finish()
        mp.undo()
    return out, summary


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory, cache_dir, demo_shards, tiny_dir):
    """A 2-step stage-1 run with validation at the end, logged to CSV."""
    from chexone.config.load import load_config
    from chexone.training.run import run_fit

    out = tmp_path_factory.mktemp("dashboard-sft")
    run_fit(load_config("stage1_sft", tiny_demo_overrides(out, **{"trainer.max_steps": 2, "logger": "csv"})))
    return out


def _csv_rows(out):
    with open(out / "csv" / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_every_name_a_fit_logs_is_in_the_catalog(grpo_run, sft_run):
    from chexone.dashboard.catalog import lookup

    for out in (grpo_run[0], sft_run):
        header = list(_csv_rows(out)[0])
        missing = [name for name in header if lookup(name) is None]
        assert not missing, (f"{out} logs names that chexone/dashboard/catalog.py lacks: {missing}; add them there "
                             "and run `python -m chexone.dashboard docs`")
    grpo_header = set(_csv_rows(grpo_run[0])[0])
    assert {"train/reward/multiple_choice/total_mean", "train/reward/grounding/total_mean",
            "train/reward/grounding/grounding_iou_mean", "train/time/generation"} <= grpo_header
    assert {"val/loss", "val/well_formed", "train/loss"} <= set(_csv_rows(sft_run)[0])


def test_family_rewards_are_the_means_of_the_completions_rewards(grpo_run):
    from chexone.tasks import get_task

    out, _ = grpo_run
    completions = [json.loads(line) for line in (out / "completions.jsonl").read_text().splitlines()]
    by_step = defaultdict(list)
    for row in completions:
        by_step[row["step"]].append(row)
    logged = sorted((float(r["step"]), r) for r in _csv_rows(out) if r.get("train/reward/total_mean"))
    assert len(logged) == len(by_step) == 3  # one CSV row and one completions batch per step, in the same order
    checked = 0
    for (_, csv_row), step in zip(logged, sorted(by_step)):
        families = defaultdict(list)
        for row in by_step[step]:
            families[get_task(row["task"]).family].append(row)
        for family, rows in families.items():
            totals = [r["total_reward"] for r in rows if r["total_reward"] is not None]
            assert float(csv_row[f"train/reward/{family}/total_mean"]) == pytest.approx(sum(totals) / len(totals))
            for reward in ("format", "vqa", "grounding_iou"):
                values = [r["rewards"][reward] for r in rows if r["rewards"][reward] is not None]
                cell = csv_row.get(f"train/reward/{family}/{reward}_mean", "")
                if values:
                    assert float(cell) == pytest.approx(sum(values) / len(values)), (family, reward)
                    checked += 1
                else:
                    assert cell == ""  # not logged for a family the reward does not score
        for family in ("multiple_choice", "grounding"):
            if family not in families:
                assert csv_row.get(f"train/reward/{family}/total_mean", "") == ""
    assert checked >= 6


def test_completion_thumbnails_show_the_reference_boxes(grpo_run):
    from chexone.dashboard.thumbnails import THUMB_SIDE, TRUE_COLOUR
    from chexone.tasks.answers import parse_boxes

    out, _ = grpo_run
    rows = [json.loads(line) for line in (out / "completions.jsonl").read_text().splitlines()]
    grounding = [r for r in rows if r["task"] == "phrase_grounding"]
    assert grounding and len(grounding) < len(rows)
    for row in rows:
        with Image.open(out / row["image"]) as im:
            assert max(im.size) == THUMB_SIDE
    # one thumbnail per grounding completion; the reference box's left edge is green where its grid says
    assert len({r["image"] for r in grounding}) == len(grounding)
    for row in grounding:
        boxes = parse_boxes(row["answer"])
        if not boxes:
            continue  # a "No ... detected." reference
        with Image.open(out / row["image"]) as im:
            im = im.convert("RGB")
            box = boxes[0]
            x = int(box.x1 * im.width / 100)
            ys = range(int(box.y1 * im.height / 100) + 1, max(int(box.y2 * im.height / 100) - 1,
                                                               int(box.y1 * im.height / 100) + 2))
            assert any(im.getpixel((x, y)) == TRUE_COLOUR for y in ys), row["image"]
    # close_vqa completions of one prompt share one thumbnail
    vqa = [r for r in rows if r["task"] == "close_vqa"]
    assert len({r["image"] for r in vqa}) == len(vqa) // 4


def test_a_wandb_fit_also_writes_csv_and_ends_with_the_report(grpo_run):
    out, summary = grpo_run
    assert list((out / "wandb").glob("offline-run-*")), "the run logged to W&B (offline)"
    assert (out / "csv" / "metrics.csv").is_file()
    assert summary["report"] == str(out / "report.html")
    page = (out / "report.html").read_text()
    assert 'data-panel="Total reward per task family"' in page and 'id="reward-trend"' in page
    assert page.count('class="thumb"') >= 2 and "src=\"data:image/png;base64," in page
    assert (out / "report" / "rewards-total-reward-per-task-family.png").is_file()


def test_sft_report_shows_validation(sft_run):
    page = (sft_run / "report.html").read_text()
    assert '<section id="validation">' in page and "<code>val/loss</code>" in page
    assert 'data-panel="Loss"' in page  # train/loss over the 2 steps


def test_a_report_that_fails_or_is_switched_off_never_fails_the_fit(tmp_path, cache_dir, demo_shards, tiny_dir,
                                                                    monkeypatch):
    import chexone.dashboard.report as report
    from chexone.config.load import load_config
    from chexone.training.run import run_fit

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(report, "build_report", broken)
    overrides = {"trainer.max_steps": 1, "data.val": "[]"}
    with pytest.warns(RuntimeWarning, match="could not write the run report.*disk full"):
        summary = run_fit(load_config("stage1_sft", tiny_demo_overrides(tmp_path / "a", **overrides)))
    assert summary["global_step"] == 1 and summary["report"] is None
    monkeypatch.undo()
    summary = run_fit(load_config("stage1_sft", tiny_demo_overrides(tmp_path / "b", **overrides,
                                                                    write_report="false")))
    assert "report" not in summary and not (tmp_path / "b" / "report.html").exists()


def test_evaluate_ends_with_the_report(tmp_path, tiny_dir, demo_shards, capsys):
    from chexone.evaluate import main

    out = tmp_path / "eval"
    args = ["recipe=eval_demo", "model=tiny", f"model.path={tiny_dir}", "data=demo", "logger=none", f"eval.out={out}",
            "eval.max_new_tokens=6", "eval.batch_size=4", "eval.bootstrap_resamples=50",
            "eval.benchmarks.demo_vqa.limit=4", "eval.benchmarks.demo_grounding.limit=2",
            "eval.benchmarks.demo_open_vqa.path=''", "eval.benchmarks.demo_generation.path=''",
            "eval.benchmarks.demo_consistency.path=''"]
    assert main(args) == 0
    assert f"evaluate: report in {out / 'report.html'}" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    page = (out / "report.html").read_text()
    assert '<section id="evaluation">' in page
    acc = results["demo_vqa"]["rows"]["all"]["accuracy"]
    assert f"{acc['value']:.3f} [{acc['ci_low']:.3f}, {acc['ci_high']:.3f}]" in page
    assert 'alt="demo_grounding grounding"' in page  # the grounding overlay, embedded
