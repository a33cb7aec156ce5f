"""The stage-1 user story end to end on the tiny model: CLI run, outputs, resume, HF export reload."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import tiny_demo_overrides

ROOT = Path(__file__).resolve().parents[1]


def run_cli(args, env_extra=None, timeout=300):
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "chexone.fit", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=ROOT)


@pytest.mark.slow
def test_cli_demo_run_writes_config_checkpoint_and_hf_model(tmp_path, cache_dir, demo_shards, tiny_dir):
    out = tmp_path / "run"
    proc = run_cli(["recipe=stage1_sft", *tiny_demo_overrides(out, **{"trainer.max_steps": 3, "logger": "csv"})],
                   env_extra={"CHEXONE_CACHE": str(cache_dir)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "attention: sdpa" in proc.stdout and "global batch 2" in proc.stdout
    assert (out / "config.yaml").exists() and (out / "checkpoints" / "last.ckpt").exists()
    from chexone.config.load import load_config

    cfg = load_config(str(out / "config.yaml"))  # the resolved config reloads as a recipe
    assert cfg.trainer.max_steps == 3 and cfg.model.path == "tiny"
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 3
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(out / "hf")
    sd = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()}
    name = "lm_head.weight" if "lm_head.weight" in sd else next(iter(sd))
    assert torch.allclose(model.state_dict()[name], sd[name])
    metrics = (out / "csv" / "metrics.csv").read_text()
    assert "train/loss" in metrics and "train/tokens_per_s" in metrics and "val/loss" in metrics


def test_resume_continues_step_count_and_schedule(tmp_path, cache_dir, demo_shards, tiny_dir):
    from chexone.config.load import load_config
    from chexone.training.run import run_fit

    out = tmp_path / "resume"
    common = {"trainer.checkpoint_every_n_steps": 2, "export_hf": "false", "data.val": "[]",
              "optim.warmup_ratio": 0.0, "optim.scheduler": "linear"}
    first = run_fit(load_config("stage1_sft", tiny_demo_overrides(out, **common, **{"trainer.max_steps": 4})))
    assert first["global_step"] == 4
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["lr_schedulers"][0]["last_epoch"] == 4
    # Resume with a longer horizon: the step count continues from 4, not from 0.
    second = run_fit(load_config("stage1_sft", tiny_demo_overrides(
        out, **common, **{"trainer.max_steps": 6, "trainer.ckpt_path": "last"})))
    assert second["global_step"] == 6
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 6
    assert ckpt["lr_schedulers"][0]["last_epoch"] == 6
    assert (out / "checkpoints" / "step-000002.ckpt").exists() and (out / "checkpoints" / "step-000004.ckpt").exists()


@pytest.mark.slow
def test_missing_train_data_and_typo_are_clean_errors(tmp_path):
    proc = run_cli(["recipe=stage1_sft", "model=tiny"])
    assert proc.returncode == 2 and "data.train" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli(["recipe=stage1_sft", "model=tiny", "data=demo", "trainer.max_step=5"])
    assert proc.returncode == 2 and "did you mean 'trainer.max_steps'" in proc.stderr


@pytest.mark.slow
def test_offline_real_model_fails_fast_with_advice(tmp_path, cache_dir):
    proc = run_cli(["recipe=stage1_sft", "data=demo", f"output_dir={tmp_path}", "logger=none",
                    "model.path=Qwen/Qwen2.5-VL-3B-Instruct"], env_extra={"HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2
    assert "model=tiny" in proc.stderr and "Traceback" not in proc.stderr


def test_logger_choices(tmp_path, monkeypatch):
    from lightning.pytorch.loggers import CSVLogger, WandbLogger
    from omegaconf import OmegaConf

    from chexone.config.schema import RecipeConfig
    from chexone.training.run import build_logger

    cfg = OmegaConf.structured(RecipeConfig)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    cfg.logger = "wandb"
    logger = build_logger(cfg, tmp_path)
    assert isinstance(logger, WandbLogger) and logger._offline  # no API key -> offline, never an error
    cfg.logger = "csv"
    assert isinstance(build_logger(cfg, tmp_path), CSVLogger)
    cfg.logger = "none"
    assert build_logger(cfg, tmp_path) is False
    cfg.logger = "wandb"
    cfg.wandb.mode = "disabled"
    assert build_logger(cfg, tmp_path) is False


@pytest.mark.slow
def test_cli_output_for_a_newcomer(tmp_path, cache_dir, tiny_dir):
    """Off a terminal: the demo data generation says what it does, progress is one line per update, no advertising
    or deprecation noise, and the run ends with where everything is and the next command."""
    out = tmp_path / "run"
    proc = run_cli(["recipe=stage1_sft", *tiny_demo_overrides(out, **{
        "trainer.max_steps": 3, "trainer.progress_bar": "true", "logger": "wandb", "trainer.val_samples": 2,
        "data.demo_dir": str(tmp_path / "demo")})],
        env_extra={"CHEXONE_CACHE": str(cache_dir), "CHEXONE_PROGRESS_INTERVAL": "0"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    err, stdout = proc.stderr, proc.stdout
    assert "\r" not in err and "\r" not in stdout
    assert "data=demo: generating the demo data once" in err and "demo train: 2000/2000 samples (100%)" in err
    assert "train: 1/3 steps (33%)" in err and "train: 3/3 steps (100%)" in err
    assert "Tip" not in err + stdout and "anonymous" not in err + stdout
    assert "done: sft run, 3 optimizer steps in" in stdout
    assert f"model       {out / 'hf'}" in stdout and "(resume: trainer.ckpt_path=last)" in stdout
    assert f"python -m chexone.evaluate recipe=eval_demo model.path={out / 'hf'} data=demo" in stdout
    assert "python -m chexone.fit recipe=stage2_grpo model=tiny data=demo" in stdout
