"""Nothing non-finite reaches the weights (fault injection): NaN/inf/non-numeric/wrong-length rewards are reward
errors; NaN/inf losses and gradients skip the optimizer step (weights and AdamW state untouched) and stop the run
after too many in a row; non-finite weights are never written to a checkpoint or export; NaN/inf config values are
rejected before anything loads."""

import copy
import csv
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from chexone.data.sample import Sample
from chexone.registry import REWARDS
from chexone.training.guards import NonFiniteError, StepGuard
from chexone.training.reward_set import RewardError, RewardSet
from conftest import tiny_demo_overrides

ROOT = Path(__file__).resolve().parents[1]


def _register(name, fn):
    if name not in REWARDS:
        REWARDS.register(name, fn)


_register("test_nan_second", lambda responses, samples, **_: [float("nan") if i == 1 else 0.5
                                                               for i in range(len(responses))])
_register("test_inf_all", lambda responses, samples, **_: [math.inf] * len(responses))
_register("test_text_value", lambda responses, samples, **_: ["high"] * len(responses))
_register("test_short", lambda responses, samples, **_: [1.0] * (len(responses) - 1))
_register("test_scalars", lambda responses, samples, **_: [np.float32(0.25), torch.tensor(0.5), None, 1][:len(responses)])


def _samples(n):
    return [Sample(id=f"s{i}", task="close_vqa", question="q?", answer="A", options=["Yes", "No"]) for i in range(n)]


def _set(name, on_error):
    return RewardSet([SimpleNamespace(name=name, weight=1.0, kwargs={})], "last", on_error)


@pytest.mark.parametrize("name, cause, zeros", [
    ("test_nan_second", "returned nan", 1),
    ("test_inf_all", "returned inf", 4),
    ("test_text_value", "returned 'high' (str), not a number", 4),
    ("test_short", "returned 3 values for 4 completions", 4),
])
def test_bad_reward_values_are_reward_errors(name, cause, zeros):
    texts = ["a \\boxed{A}", "b \\boxed{B}", "c", "d"]
    with pytest.raises(RewardError) as err:
        _set(name, "fail").score(texts, _samples(4))
    message = str(err.value)
    assert f"reward {name!r}" in message and cause in message and "grpo.reward_errors=zero" in message
    if name != "test_short":  # a per-value problem names its sample and completion
        bad = 1 if name == "test_nan_second" else 0
        assert f"sample 's{bad}'" in message and repr(texts[bad]) in message
    rs = _set(name, "zero")
    values = rs.score(texts, _samples(4))[name]
    assert all(isinstance(v, float) and math.isfinite(v) for v in values)
    assert values.count(0.0) == zeros and rs.errors[name] == zeros


def test_numeric_scalars_and_none_are_accepted():
    values = _set("test_scalars", "fail").score(["a", "b", "c", "d"], _samples(4))["test_scalars"]
    assert values == [0.25, 0.5, None, 1.0]


# ------------------------------------------------------------------------------------------------ the step guard


def test_step_guard_skips_nan_gradients_and_leaves_adamw_untouched():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(2, 4)).sum().backward()
    guard = StepGuard(max_consecutive=2)
    ok, norm = guard.check(list(model.parameters()), loss=1.0, step=0)
    assert ok and math.isfinite(norm) and norm > 0
    opt.step()
    weights, state = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    opt.zero_grad()
    (model(torch.randn(2, 4)).sum() * float("nan")).backward()
    ok, norm = guard.check(list(model.parameters()), loss=float("nan"), step=1)
    assert not ok and math.isnan(norm) and all(p.grad is None for p in model.parameters())
    opt.step()  # what the training loop does next: a no-op for parameters without gradients
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    after = opt.state_dict()["state"]
    assert all(torch.equal(state["state"][i]["exp_avg"], after[i]["exp_avg"]) and
               int(state["state"][i]["step"]) == int(after[i]["step"]) for i in after)
    # a finite loss with an infinite gradient is skipped too; the second skip in a row stops the run
    model.weight.grad = torch.full_like(model.weight, math.inf)
    with pytest.raises(NonFiniteError, match="2 optimizer steps in a row were skipped"):
        guard.check(list(model.parameters()), loss=0.5, step=2)
    assert guard.skipped == 2


# ------------------------------------------------------------------------------------------------ end to end (SFT)


def _nan_loss_on(monkeypatch, calls):
    """Make the SFT training loss (packed or not) NaN on the given (1-based) training-step calls."""
    import chexone.training.sft as sft

    real, seen = sft.SFTModule.loss, {"n": 0}

    def loss(self, batch):
        value, n = real(self, batch)
        seen["n"] += 1
        if seen["n"] in calls:
            value = value * float("nan")
        return value, n

    monkeypatch.setattr(sft.SFTModule, "loss", loss)


def _sd(path):
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def test_nan_loss_step_is_skipped_and_the_run_continues(tmp_path, cache_dir, demo_shards, tiny_dir, monkeypatch):
    from chexone.config.load import load_config
    from chexone.training.run import run_fit

    _nan_loss_on(monkeypatch, {2})
    out = tmp_path / "run"
    summary = run_fit(load_config("stage1_sft", tiny_demo_overrides(out, **{
        "trainer.max_steps": 3, "trainer.checkpoint_every_n_steps": 1, "data.val": "[]", "logger": "csv",
        "optim.lr": 1e-3})))
    assert summary["global_step"] == 3
    ckpts = out / "checkpoints"
    one, two, three = (_sd(ckpts / f"step-{i:06d}.ckpt") for i in (1, 2, 3))
    assert all(torch.equal(one[k], two[k]) for k in one)  # the NaN step left the weights exactly as they were
    assert not all(torch.equal(two[k], three[k]) for k in two)  # the next step trained again
    assert all(torch.isfinite(v).all() for v in three.values())
    rows = list(csv.DictReader((out / "csv" / "metrics.csv").open()))
    skipped = [float(r["train/skipped_steps"]) for r in rows if r.get("train/skipped_steps")]
    assert max(skipped) == 1.0
    norms = [r["train/grad_norm"] for r in rows if r.get("train/grad_norm")]
    assert any(n == "nan" for n in norms) and any(n not in ("nan", "inf") for n in norms)


def test_persistent_nan_stops_the_run_with_a_good_checkpoint(tmp_path, cache_dir, demo_shards, tiny_dir,
                                                              monkeypatch):
    from chexone.config.load import load_config
    from chexone.training.run import run_fit

    _nan_loss_on(monkeypatch, set(range(3, 100)))
    out = tmp_path / "run"
    with pytest.raises(NonFiniteError, match="2 optimizer steps in a row"):
        run_fit(load_config("stage1_sft", tiny_demo_overrides(out, **{
            "trainer.max_steps": 10, "trainer.checkpoint_every_n_steps": 1, "data.val": "[]",
            "trainer.max_consecutive_skipped_steps": 2})))
    last = _sd(out / "checkpoints" / "last.ckpt")
    assert all(torch.isfinite(v).all() for v in last.values())
    assert all(torch.equal(last[k], v) for k, v in _sd(out / "checkpoints" / "step-000002.ckpt").items())
    assert not (out / "hf").exists()


class _PoisonWeights(Callback):
    """Write NaN into one weight after optimizer step ``at`` (as a broken optimizer or a bit flip would)."""

    def __init__(self, at):
        self.at = at

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step == self.at:
            with torch.no_grad():
                next(module.model.parameters()).view(-1)[0] = float("nan")


def test_nonfinite_weights_are_never_checkpointed_or_exported(tmp_path, cache_dir, demo_shards, tiny_dir):
    from chexone.config.load import load_config
    from chexone.training.run import run_fit

    out = tmp_path / "run"
    with pytest.raises(NonFiniteError, match="refusing to write a checkpoint at step 2"):
        run_fit(load_config("stage1_sft", tiny_demo_overrides(out, **{
            "trainer.max_steps": 3, "trainer.checkpoint_every_n_steps": 1, "data.val": "[]"})),
                callbacks=[_PoisonWeights(at=2)])
    ckpts = out / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir() if p.suffix == ".ckpt") == ["last.ckpt", "step-000001.ckpt"]
    assert torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 1
    assert not (out / "hf").exists()


def test_export_refuses_nonfinite_weights(tmp_path, cache_dir, tiny_dir):
    from chexone.config.load import load_config
    from chexone.model import load_pretrained
    from chexone.tasks import get_task
    from chexone.training.sft import SFTModule

    cfg = load_config("stage1_sft", tiny_demo_overrides(tmp_path / "x"))
    module = SFTModule(cfg, load_pretrained(cfg.model, device_type="cpu"), get_task)
    with torch.no_grad():
        module.model.lm_head.weight[0, 0] = float("inf")
    with pytest.raises(NonFiniteError, match="refusing to write the Hugging Face export"):
        module.export_hf(tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


# ------------------------------------------------------------------------------------------------ config


@pytest.mark.slow
def test_nonfinite_config_values_are_rejected_before_loading(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "chexone.fit", "recipe=stage1_sft", "model=tiny", "data=demo", "optim.lr=.inf",
         "optim.betas=[.nan,0.9]", "optim.max_grad_norm=inf", "grpo.rewards=[{name: format, weight: .nan}]",
         f"output_dir={tmp_path / 'never'}"],
        capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    for key, value in (("optim.lr", "inf"), ("optim.betas", "nan"), ("optim.max_grad_norm", "inf"),
                       ("grpo.rewards[0].weight", "nan")):
        assert f"Invalid value for '{key}': must be a finite number, got {value}" in proc.stderr
    assert not (tmp_path / "never").exists()


# ------------------------------------------------------------------------------------------------ GRPO end to end


def test_grpo_nan_reward_fails_or_scores_zero_and_weights_stay_finite(tmp_path, cache_dir, demo_shards, tiny_dir):
    from chexone.config.load import load_config
    from chexone.training.run import run_fit
    from test_grpo import grpo_overrides

    bad = {"grpo.rewards": "[{name: format}, {name: test_nan_second}]", "data.tasks": "[close_vqa]",
           "trainer.max_steps": 2, "grpo.beta": 0, "logger": "csv"}
    with pytest.raises(RewardError, match=r"reward 'test_nan_second' failed on sample .* returned nan"):
        run_fit(load_config("stage2_grpo", grpo_overrides(tmp_path / "a", **bad)))
    out = tmp_path / "b"
    summary = run_fit(load_config("stage2_grpo", grpo_overrides(out, **{**bad, "grpo.reward_errors": "zero"})))
    assert summary["global_step"] == 2
    assert summary["metrics"]["train/reward_errors/test_nan_second"] == 2.0  # one NaN per batch, two batches
    assert all(torch.isfinite(v).all() for v in _sd(out / "checkpoints" / "last.ckpt").values())


@pytest.mark.slow
def test_cli_stops_with_one_clear_line_when_training_goes_non_finite(tmp_path, cache_dir, demo_shards, tiny_dir):
    script = tmp_path / "run.py"
    script.write_text(
        "import sys\n"
        "import chexone.training.sft as sft\n"
        "real = sft.SFTModule.loss\n"
        "sft.SFTModule.loss = lambda self, batch: (real(self, batch)[0] * float('nan'), 1)\n"
        "from chexone.fit import main\n"
        "sys.exit(main(sys.argv[1:]))\n")
    args = ["recipe=stage1_sft", *tiny_demo_overrides(tmp_path / "out", **{
        "trainer.max_steps": 5, "data.val": "[]", "trainer.max_consecutive_skipped_steps": 2})]
    proc = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=300,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT),
                                         "CHEXONE_CACHE": str(cache_dir)})
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "error: 2 optimizer steps in a row were skipped" in proc.stderr and "Traceback" not in proc.stderr
