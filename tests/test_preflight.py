"""Every name and value is checked before any model loads: exit 2, one line per problem, did-you-mean, no traceback,
nothing written; a sample whose task is unknown is skipped and counted like any other bad sample."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from chexone.data.sample import Sample
from conftest import tiny_demo_overrides

ROOT = Path(__file__).resolve().parents[1]


def run(module, args, tmp_path, cache_dir=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if cache_dir is not None:
        env["CHEXONE_CACHE"] = str(cache_dir)
    return subprocess.run([sys.executable, "-m", module, *args, f"output_dir={tmp_path / 'out'}"],
                          capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)


def problems(proc):
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    lines = [line.strip() for line in proc.stderr.splitlines()]
    listed = [line[2:] for line in lines if line.startswith("- ")]  # several problems: one "- " line each
    return listed or [line.removeprefix("error: ") for line in lines if line.startswith("error: ")]


@pytest.mark.slow
def test_fit_reports_every_bad_name_at_once_before_loading(tmp_path):
    proc = run("chexone.fit", ["recipe=stage1_sft", "model=tiny", "data=demo", "data.tasks=[close_vq,findings_generation]",
                               "trainer.val_metrics=[acuracy,bleu2]", "trainer.global_batch_size=6",
                               "data.micro_batch_size=4", f"data.val={tmp_path}/val-{{000..003}}.tar"], tmp_path)
    lines = problems(proc)
    assert len(lines) == 4
    assert any("'data.tasks': Unknown task \"close_vq\"" in x and 'Did you mean "close_vqa"' in x for x in lines)
    assert any("'trainer.val_metrics': Unknown metric \"acuracy\"" in x and '"accuracy"' in x for x in lines)
    assert any("'trainer.global_batch_size' (6) is not a multiple of 'data.micro_batch_size' (4)" in x for x in lines)
    assert any(x.startswith("'data.val[0].path': Shard pattern") and "do not exist" in x for x in lines)
    assert not (tmp_path / "out").exists()  # nothing was written: the model never loaded


@pytest.mark.slow
def test_grpo_reward_names_and_duplicates_and_shards(tmp_path):
    proc = run("chexone.fit", ["recipe=stage2_grpo", "model=tiny", "data=demo",
                               "grpo.rewards=[{name: format},{name: vqa},{name: vqa, weight: 0.5},{name: grounding_io}]",
                               f"data.train={tmp_path}/missing-*.tar"], tmp_path)
    lines = problems(proc)
    assert any("'grpo.rewards[3].name': Unknown reward \"grounding_io\"" in x and '"grounding_iou"' in x for x in lines)
    assert any("reward 'vqa' is listed 2 times (entries [1, 2])" in x for x in lines)
    assert any("'data.train[0].path'" in x and "matches no existing shard file" in x for x in lines)


@pytest.mark.parametrize("override, problem", [
    ("data.tasks=[close_vqa", "has an unclosed '['"),
    ("data.tasks=close_vqa]", "has an unmatched ']'"),
    ("grpo.rewards=[{name: format}", "has an unclosed '['"),
])
def test_malformed_list_overrides_are_rejected(override, problem):
    from chexone.config.load import ConfigError, load_config

    with pytest.raises(ConfigError) as err:
        load_config("stage1_sft", ["model=tiny", "data=demo", override])
    assert f"Malformed value for '{override.split('=')[0]}'" in str(err.value) and problem in str(err.value)
    # brace ranges in shard patterns and brackets inside quotes are fine
    cfg = load_config("stage1_sft", ["data.train=/d/train-{000..009}.tar", 'data.tasks=[close_vqa, "a]"]'])
    assert cfg.data.train[0].path == "/d/train-{000..009}.tar" and list(cfg.data.tasks) == ["close_vqa", "a]"]


@pytest.mark.slow
def test_filter_and_evaluate_check_task_names_first(tmp_path):
    lines = problems(run("chexone.filter", ["recipe=filter_low_variance", "model=tiny", "data=demo",
                                            "data.tasks=[phrase_grounding,view_clasification]"], tmp_path))
    assert len(lines) == 1 and "'data.tasks': Unknown task \"view_clasification\"" in lines[0]
    assert '"view_classification"' in lines[0]
    proc = run("chexone.evaluate", ["recipe=eval_demo", "model.path=tiny", "data=demo",
                                    "eval.benchmarks.demo_test.tasks=[close_vqa,findings_generaton]"], tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "'eval.benchmarks.demo_test.tasks': Unknown task \"findings_generaton\"" in proc.stderr
    assert '"findings_generation"' in proc.stderr


def _image():
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))


def test_sample_with_unknown_task_is_skipped_and_counted(tmp_path, caplog):
    from chexone.data.shards import build_eval_dataset
    from chexone.registry import TASKS
    from webdata.writer import ShardWriter

    with ShardWriter(tmp_path / "s", prefix="t", max_samples_per_shard=10) as w:
        for i in range(4):
            task = "close_vqa" if i != 2 else "support_devices"  # a plugin task that is not installed
            w.write(Sample(id=f"x{i}", task=task, question="Q?", answer="A", options=["Yes", "No"],
                           images=[_image()]))
    ds = build_eval_dataset(str(tmp_path / "s"), known_tasks=TASKS.names())
    assert [s.id for s in ds] == ["x0", "x1", "x3"]
    stats = ds.skip_stats()
    assert stats.by_reason == {"unknown_task": 1}
    assert any("x2" in r.getMessage() and "unknown_task" in r.getMessage() and "t-000000.tar" in r.getMessage()
               and "'support_devices' is not a registered task" in r.getMessage() for r in caplog.records)


def test_training_skips_unknown_task_samples_instead_of_crashing(tmp_path, cache_dir, tiny_dir):
    from chexone.config.load import load_config
    from chexone.training.run import run_fit
    from webdata.writer import ShardWriter

    with ShardWriter(tmp_path / "s", prefix="t", max_samples_per_shard=8) as w:
        for i in range(16):
            task = "no_such_task" if i % 8 == 3 else "close_vqa"
            w.write(Sample(id=f"x{i}", task=task, question="Is there an effusion?", answer="A",
                           options=["Yes", "No"], images=[_image()]))
    out = tmp_path / "run"
    summary = run_fit(load_config("stage1_sft", tiny_demo_overrides(out, **{
        "data": "custom", "data.train": str(tmp_path / "s"), "data.val": "[]", "trainer.max_steps": 3,
        "logger": "csv", "export_hf": "false", "data.max_skip_fraction": 0.5, "data.shuffle_buffer": 0})))
    assert summary["global_step"] == 3
    rows = [r for r in csv.DictReader((out / "csv" / "metrics.csv").open()) if r.get("data/skipped/unknown_task")]
    assert rows and float(rows[-1]["data/skipped/unknown_task"]) >= 1
