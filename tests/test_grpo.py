"""The GRPO module on the tiny model: a step runs and logs everything; the reference model is optional and never
checkpointed; and the loop learns: a simple reward rises over a short run (the sign and plumbing of the update)."""

import json

import pytest
import torch

from chexone.registry import REWARDS


def e_fraction(responses, samples, **_):
    """Test reward: the fraction of 'e' characters in the response (a random tiny policy can learn it fast)."""
    return [r.count("e") / max(1, len(r)) for r in responses]


if "test_e_fraction" not in REWARDS:
    REWARDS.register("test_e_fraction", e_fraction)


def grpo_overrides(out, **extra):
    base = {
        "model": "tiny", "data": "demo", "logger": "csv", "output_dir": str(out), "trainer.progress_bar": "false",
        "grpo.init_from": "''", "data.num_workers": "0", "grpo.num_generations": "4", "grpo.prompts_per_step": "2",
        "grpo.max_completion_length": "12", "data.tasks": "[close_vqa,phrase_grounding]",
        "grpo.rewards": "[{name: format},{name: vqa},{name: grounding_iou},{name: vqa_strict, weight: 0}]",
        "grpo.log_completions_every_n_steps": "1", "export_hf": "false", "trainer.checkpoint_every_n_steps": "2",
        # the whole demo training split as drawn, not the stage-2 demo's prompt pool in family turns
        "data.demo_train_split": "train", "grpo.balance_tasks": "false",
    }
    base.update({k: str(v) for k, v in extra.items()})
    return [f"{k}={v}" for k, v in base.items()]


def test_grpo_steps_log_and_checkpoint_without_reference(tmp_path, cache_dir, demo_shards, tiny_dir):
    from chexone.config.load import load_config
    from chexone.training.run import run_fit

    out = tmp_path / "grpo"
    summary = run_fit(load_config("stage2_grpo", grpo_overrides(out, **{"trainer.max_steps": 2,
                                                                        "grpo.beta": 0.04})))
    assert summary["global_step"] == 2
    metrics = (out / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    for key in ("train/reward/total_mean", "train/reward/format_mean", "train/frac_reward_zero_std", "train/kl",
                "train/clip/low_frac", "train/clip/high_frac", "train/completion/length_mean",
                "train/completion/truncated_frac", "train/entropy", "train/advantage/std", "train/lr",
                "train/time/generation", "train/time/logps", "train/time/policy", "train/time/rewards"):
        assert key in metrics, key
    rows = [json.loads(line) for line in (out / "completions.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 2 * 4  # steps x prompts x generations
    assert {"completion", "rewards", "advantage", "total_reward"} <= set(rows[0])
    assert "vqa_strict" in rows[0]["rewards"]  # weight-0 reward is logged
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    # the frozen reference model is not saved: only the policy's tensors are in the checkpoint
    n_policy = len([k for k in ckpt["state_dict"]])
    from transformers import AutoModelForImageTextToText

    assert n_policy == len(AutoModelForImageTextToText.from_pretrained(tiny_dir).state_dict())


def test_beta_zero_loads_no_reference_model(tmp_path, cache_dir, demo_shards, tiny_dir, monkeypatch):
    from chexone.config.load import load_config
    from chexone.model import LoadedModel
    import chexone.model as model_mod
    from chexone.training import run as run_mod

    loads = []
    real = model_mod.load_pretrained

    def counting(*args, **kwargs):
        loads.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(model_mod, "load_pretrained", counting)
    cfg = load_config("stage2_grpo", grpo_overrides(tmp_path, **{"grpo.beta": 0}))
    run_mod.resolve_data(cfg)
    loaded = counting(cfg.model, device_type="cpu")
    from chexone.tasks import get_task

    module, _, desc = run_mod._build_grpo(cfg, loaded, "cpu", get_task)
    assert module.ref_model is None and len(loads) == 1 and "reference model: none" in desc
    assert isinstance(loaded, LoadedModel)


@pytest.mark.timeout(600)
def test_grpo_learns_a_simple_reward(tmp_path, cache_dir, demo_shards, tiny_dir):
    from chexone.config.load import load_config
    from chexone.training.run import run_fit

    cfg = load_config("stage2_grpo", grpo_overrides(tmp_path, **{
        "trainer.max_steps": 20, "grpo.rewards": "[{name: test_e_fraction}]", "grpo.beta": 0,
        "optim.lr": 0.01, "grpo.num_generations": 6, "grpo.max_completion_length": 8, "logger": "none",
        "trainer.checkpoint_every_n_steps": 100, "grpo.log_completions_every_n_steps": 0}))
    summary = run_fit(cfg)
    trend = summary["reward_trend"]["reward/total_mean"]
    assert trend["last"] > trend["first"] + 0.05, trend


def constant_reward(responses, samples, **_):
    return [1.0] * len(responses)


def flaky_reward(responses, samples, **_):
    if any(s.task == "phrase_grounding" for s in samples):
        raise RuntimeError("boom")
    return [0.5] * len(responses)


for _name, _fn in (("test_constant", constant_reward), ("test_flaky", flaky_reward)):
    if _name not in REWARDS:
        REWARDS.register(_name, _fn)


def test_resume_mu_iterations_dynamic_sampling_and_truncation_mask(tmp_path, cache_dir, demo_shards, tiny_dir):
    import csv

    from chexone.config.load import load_config
    from chexone.training.run import run_fit

    out = tmp_path / "g"
    common = {"grpo.num_iterations": 2, "grpo.dynamic_sampling": "true", "grpo.max_resample_rounds": 2,
              "grpo.rewards": "[{name: test_constant}]", "grpo.mask_truncated_completions": "true",
              "grpo.beta": 0, "trainer.checkpoint_every_n_steps": 2, "grpo.micro_batch_prompts": 1}
    first = run_fit(load_config("stage2_grpo", grpo_overrides(out, **common, **{"trainer.max_steps": 2})))
    # mu = 2: one generation batch gives two optimizer steps
    assert first["global_step"] == 2
    rows = [r for r in csv.DictReader((out / "csv" / "metrics.csv").open()) if r.get("train/dynamic_sampling/rounds")]
    assert len(rows) == 1
    # every group has zero reward variance -> the refill ran its full bounded number of rounds
    assert float(rows[0]["train/dynamic_sampling/rounds"]) == 2
    assert float(rows[0]["train/frac_reward_zero_std"]) == 1.0
    # all completions hit the 12-token limit here, so with the truncation mask nothing is learned: loss 0
    if float(rows[0]["train/completion/truncated_frac"]) == 1.0:
        assert float(rows[0]["train/loss"]) == 0.0
    second = run_fit(load_config("stage2_grpo", grpo_overrides(
        out, **common, **{"trainer.max_steps": 4, "trainer.ckpt_path": "last"})))
    assert second["global_step"] == 4  # resumed from step 2, not from 0


def test_reward_errors_name_the_reward_and_sample_or_score_zero(tmp_path, cache_dir, demo_shards, tiny_dir):
    from chexone.config.load import load_config
    from chexone.training.grpo import RewardError
    from chexone.training.run import run_fit

    bad = {"grpo.rewards": "[{name: test_flaky}]", "data.tasks": "[phrase_grounding]", "trainer.max_steps": 1,
           "grpo.beta": 0, "logger": "none"}
    with pytest.raises(RewardError, match=r"reward 'test_flaky' failed on sample 'demo-train-\d+' \(task "
                                          r"phrase_grounding\) with completion"):
        run_fit(load_config("stage2_grpo", grpo_overrides(tmp_path / "a", **bad)))
    summary = run_fit(load_config("stage2_grpo", grpo_overrides(tmp_path / "b", **{**bad, "logger": "csv",
                                                                                  "grpo.reward_errors": "zero"})))
    assert summary["metrics"]["train/reward_errors/test_flaky"] == 8.0  # 2 prompts x 4 completions scored 0


def test_one_iteration_skips_the_old_logprob_pass_with_the_same_update(tmp_path, cache_dir, demo_shards, tiny_dir,
                                                                         monkeypatch):
    """num_iterations=1 with several micro-batches: the weights after a step equal those of a run that also computes
    the old log-probs in a separate pass (the weights cannot change between generation and the loss)."""
    from chexone.config.load import load_config
    from chexone.training import grpo as grpo_mod
    from chexone.training.run import run_fit

    def final_weights(out, force_old):
        calls = []
        original = grpo_mod.GRPOModule._needs_old_logps
        monkeypatch.setattr(grpo_mod.GRPOModule, "_needs_old_logps",
                            lambda self: calls.append(1) or (True if force_old else original(self)))
        run_fit(load_config("stage2_grpo", grpo_overrides(out, **{
            "trainer.max_steps": 1, "grpo.beta": 0, "grpo.num_iterations": 1, "grpo.micro_batch_prompts": 1,
            "grpo.dynamic_sampling": "false", "logger": "none", "trainer.checkpoint_every_n_steps": 1,
            "grpo.rewards": "[{name: test_e_fraction}]", "optim.lr": 1e-3, "grpo.max_completion_length": 16})))
        assert calls
        ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
        return ckpt["state_dict"]

    skipped = final_weights(tmp_path / "a", force_old=False)
    forced = final_weights(tmp_path / "b", force_old=True)
    initial = __import__("transformers").AutoModelForImageTextToText.from_pretrained(tiny_dir).state_dict()
    moved = 0
    for name, value in skipped.items():
        assert torch.allclose(value, forced[name], atol=1e-6, rtol=1e-5), name
        key = name.split("model.", 1)[1] if name.startswith("model.") else name
        if key in initial and not torch.equal(initial[key], value):
            moved += 1
    assert moved > 0  # the step did update the weights: the comparison is not vacuous


def test_prompt_computed_once_per_group_gives_the_same_update(tmp_path, cache_dir, demo_shards, tiny_dir,
                                                             monkeypatch):
    """grpo.share_prompt (each prompt computed once, its G completions attending to it) against the per-completion
    passes: with a reference model (beta > 0), two iterations (old log-probs) and two micro-batches, the weights after
    a step agree."""
    from chexone.config.load import load_config
    from chexone.training import grpo as grpo_mod
    from chexone.training.run import run_fit

    calls = []
    real = grpo_mod.shared_prefix_logps
    monkeypatch.setattr(grpo_mod, "shared_prefix_logps", lambda *a, **k: calls.append(1) or real(*a, **k))

    def final_weights(out, share):
        calls.clear()
        run_fit(load_config("stage2_grpo", grpo_overrides(out, **{
            "trainer.max_steps": 1, "grpo.beta": 0.04, "grpo.num_iterations": 2, "grpo.micro_batch_prompts": 1,
            "grpo.share_prompt": share, "grpo.dynamic_sampling": "false", "logger": "none",
            "trainer.checkpoint_every_n_steps": 1, "grpo.rewards": "[{name: test_e_fraction}]", "optim.lr": 1e-3,
            "grpo.max_completion_length": 16})))
        # per micro-batch: old + reference log-probs, then the policy pass of each of the two iterations
        assert len(calls) == (2 * 4 if share == "true" else 0)
        ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
        return ckpt["state_dict"]

    shared = final_weights(tmp_path / "a", "true")
    repeated = final_weights(tmp_path / "b", "false")
    initial = __import__("transformers").AutoModelForImageTextToText.from_pretrained(tiny_dir).state_dict()
    moved = 0
    for name, value in shared.items():
        assert torch.allclose(value, repeated[name], atol=1e-5, rtol=1e-4), name
        key = name.split("model.", 1)[1] if name.startswith("model.") else name
        if key in initial and not torch.equal(initial[key], value):
            moved += 1
    assert moved > 0


def test_frozen_vision_tower_runs_once_per_prompt_with_the_same_update(tmp_path, cache_dir, demo_shards, tiny_dir,
                                                                      monkeypatch):
    """Stage 2 freezes the vision blocks: their output is computed once per prompt per step and only the merger runs
    again in the old / reference / policy passes. The weights after a step equal those of encoding every image in
    every pass (beta > 0 and two iterations: four passes per prompt)."""
    from chexone.config.load import load_config
    from chexone.model import transformers_compat as compat
    from chexone.training import grpo as grpo_mod
    from chexone.training.run import run_fit

    tower_runs = []
    real = compat.vision_tower_states
    monkeypatch.setattr(compat, "vision_tower_states", lambda *a, **k: tower_runs.append(1) or real(*a, **k))
    original = grpo_mod.GRPOModule._tower_states_reusable

    def final_weights(out, reuse):
        tower_runs.clear()
        monkeypatch.setattr(grpo_mod.GRPOModule, "_tower_states_reusable",
                            lambda self, model: original(self, model) if reuse else False)
        run_fit(load_config("stage2_grpo", grpo_overrides(out, **{
            "trainer.max_steps": 1, "grpo.beta": 0.04, "grpo.num_iterations": 2, "grpo.micro_batch_prompts": 1,
            "grpo.dynamic_sampling": "false", "logger": "none", "trainer.checkpoint_every_n_steps": 1,
            "grpo.rewards": "[{name: test_e_fraction}]", "optim.lr": 1e-3, "grpo.max_completion_length": 16})))
        assert len(tower_runs) == (2 if reuse else 0)  # once per prompt (2 prompts), however many passes
        ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
        return ckpt["state_dict"]

    reused = final_weights(tmp_path / "a", True)
    encoded = final_weights(tmp_path / "b", False)
    merger_moved = False
    initial = __import__("transformers").AutoModelForImageTextToText.from_pretrained(tiny_dir).state_dict()
    for name, value in reused.items():
        assert torch.allclose(value, encoded[name], atol=1e-5, rtol=1e-4), name
        key = name.split("model.", 1)[1]
        if "visual.merger" in name and not torch.equal(initial[key], value):
            merger_moved = True
    assert merger_moved  # the merger is trained through the re-merged features


def test_rewards_scored_in_the_background_while_the_reference_pass_runs(tmp_path, cache_dir, demo_shards, tiny_dir,
                                                                        monkeypatch):
    """Without dynamic sampling the rewards are scored on the reward worker while the reference log-probs are
    computed: a reward that only returns once that pass has started proves the overlap (no timing involved); the
    weights after a step equal those of scoring synchronously."""
    import threading

    from chexone.config.load import load_config
    from chexone.training import grpo as grpo_mod
    from chexone.training.run import run_fit

    ref_pass_started = threading.Event()
    waited = []

    def patient_reward(responses, samples, **_):
        waited.append(ref_pass_started.wait(timeout=60))  # blocks the reward worker, never the training thread
        return [r.count("e") / max(1, len(r)) for r in responses]

    if "test_patient" not in REWARDS:
        REWARDS.register("test_patient", patient_reward)
    real_logps = grpo_mod.GRPOModule._completion_logps

    def logps(self, mb, model, grad=False, with_entropy=False):
        if model is self.ref_model:
            ref_pass_started.set()
        return real_logps(self, mb, model, grad, with_entropy)

    monkeypatch.setattr(grpo_mod.GRPOModule, "_completion_logps", logps)
    real_rollout = grpo_mod.GRPOModule._rollout

    def final_weights(out, background):
        ref_pass_started.clear()
        monkeypatch.setattr(grpo_mod.GRPOModule, "_rollout", lambda self, samples, timer, defer_rewards=False:
                            real_rollout(self, samples, timer, defer_rewards and background))
        if not background:  # synchronous scoring would wait for a pass that comes after it: let it through
            ref_pass_started.set()
        run_fit(load_config("stage2_grpo", grpo_overrides(out, **{
            "trainer.max_steps": 1, "grpo.beta": 0.04, "grpo.dynamic_sampling": "false", "logger": "none",
            "trainer.checkpoint_every_n_steps": 1, "grpo.rewards": "[{name: test_patient}]", "optim.lr": 1e-3,
            "grpo.max_completion_length": 16})))
        return torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]

    background = final_weights(tmp_path / "a", True)
    assert waited == [True]  # the reward saw the reference pass start before it returned
    synchronous = final_weights(tmp_path / "b", False)
    for name, value in background.items():
        assert torch.equal(value, synchronous[name]), name
