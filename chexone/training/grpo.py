"""Stage 2: GRPO with CheXOne's rewards, as a LightningModule with a custom (manual-optimisation) step.

One training step = one generation batch: sample G completions per prompt, score them with the registered rewards,
compute group-normalised advantages, then take ``grpo.num_iterations`` optimizer steps over the batch in micro-batches
of whole prompt groups. Each prompt's image is encoded once per pass and shared by its G completions.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from chexone.data.collate import PromptCollator
from chexone.data.sample import Sample
from chexone.model.processor import PromptEncoder
from chexone.tasks.base import Task
from chexone.training.core import ChexoneModule, is_fsdp2, token_logps
from chexone.training.grpo_loss import combine_rewards, group_advantages, grpo_loss, zero_std_groups
from chexone.training.reward_set import RewardError, RewardSet
from chexone.training.rollout import (
    Rollouts,
    SamplingSettings,
    build_policy_batch,
    make_engine,
    shared_image_features,
)
from chexone.training.sft import prompt_style

log = logging.getLogger(__name__)


class StepTimer:
    """Wall-clock split of a step (generation, log-prob passes, policy forward/backward, rewards)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - t0


class GRPOModule(ChexoneModule):
    """Group Relative Policy Optimisation on Qwen2.5-VL (docs/method.md §2)."""

    def __init__(self, cfg: Any, loaded: Any, task_lookup: Callable[[str], Task], ref_model: nn.Module | None = None,
                 refill: Callable[[int], list[Sample]] | None = None):
        super().__init__(cfg, loaded)
        self.automatic_optimization = False
        g = cfg.grpo
        if g.beta > 0 and ref_model is None:
            raise ValueError("grpo.beta > 0 needs a reference model")
        self.task_lookup = task_lookup
        self.encoder = PromptEncoder(self.processor)
        self.style = prompt_style(cfg.data)
        self.prompt_collate = PromptCollator(self.encoder, task_lookup, style=self.style,
                                             reasoning=cfg.data.reasoning, max_prompt_length=cfg.data.max_length)
        # A list keeps the frozen reference out of state_dict/checkpoints: it is never saved twice.
        self._ref = [ref_model.eval().requires_grad_(False)] if ref_model is not None else []
        self.rewards = RewardSet(list(g.rewards), cfg.data.boxed, g.reward_errors,
                                 task_names=list(cfg.data.tasks) or None, task_lookup=task_lookup)
        self.generator = torch.Generator().manual_seed(cfg.trainer.seed)
        self.engine = make_engine(g.engine, self.generator)
        self.sampling = SamplingSettings(num_generations=g.num_generations, max_new_tokens=g.max_completion_length,
                                         temperature=g.temperature, top_p=g.top_p, top_k=g.top_k,
                                         repetition_penalty=g.repetition_penalty)
        self.refill = refill
        self.completions_path = Path(cfg.output_dir) / "completions.jsonl"
        self.history: list[dict[str, float]] = []

    @property
    def ref_model(self) -> nn.Module | None:
        return self._ref[0] if self._ref else None

    def on_fit_start(self) -> None:
        if self._ref:
            self._ref[0].to(self.device)
        if self.generator.device != self.device and self.device.type == "cuda":
            self.generator = torch.Generator(device=self.device).manual_seed(self.cfg.trainer.seed + self.global_rank)
            self.engine = make_engine(self.cfg.grpo.engine, self.generator)

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    # ------------------------------------------------------------------ rollouts + rewards
    def _rollout(self, samples: list[Sample], timer: StepTimer) -> dict[str, Any]:
        G = self.sampling.num_generations
        prompts = self._to_device(self.prompt_collate(samples))
        if not prompts["num_samples"]:
            return {"prompts": prompts, "groups": 0}
        with timer("generation"):
            roll = self.engine.generate(self.model, self.encoder, prompts, self.sampling)
        expanded = [s for s in prompts["samples"] for _ in range(G)]
        with timer("rewards"):
            per_reward = self.rewards.score(roll.texts, expanded,
                                            prompts=[t for t in prompts["prompts"] for _ in range(G)],
                                            reasoning=[r for r in prompts["reasoning"] for _ in range(G)],
                                            step=self.global_step)
        totals = combine_rewards(per_reward, self.rewards.weights)
        return {"prompts": prompts, "rollouts": roll, "per_reward": per_reward, "totals": totals,
                "groups": prompts["num_samples"], "samples": expanded}

    def _select_groups(self, first: dict[str, Any], timer: StepTimer) -> tuple[list[dict[str, Any]], int]:
        """Dynamic sampling: keep groups whose rewards differ; refill from extra prompts, bounded by rounds."""
        g = self.cfg.grpo
        if not g.dynamic_sampling:
            return [first], 0
        G = self.sampling.num_generations
        kept = [first]
        dropped = sum(zero_std_groups(first["totals"], G)) if first["groups"] else 0
        rounds = 0
        while dropped and self.refill is not None and rounds < g.max_resample_rounds:
            rounds += 1
            extra = self._rollout(self.refill(dropped), timer)
            if extra["groups"]:
                kept.append(extra)
                informative = sum(not z for z in zero_std_groups(extra["totals"], G))
                dropped = max(0, dropped - informative)
        return kept, rounds

    # ------------------------------------------------------------------ the step
    def training_step(self, samples: list[Sample], batch_idx: int) -> None:
        g = self.cfg.grpo
        G = self.sampling.num_generations
        timer = StepTimer()
        t_step = time.perf_counter()
        parts, rounds = self._select_groups(self._rollout(samples, timer), timer)
        groups = self._flatten_groups(parts)
        if not groups:
            log.warning("step %d: no usable prompt in this generation batch; skipped", self.global_step)
            return None
        if g.dynamic_sampling:
            informative = [grp for grp in groups if not zero_std_groups(grp["totals"], G)[0]]
            groups = (informative or groups)[: self.cfg.grpo.prompts_per_step]
        totals = [r for grp in groups for r in grp["totals"]]
        advantages, adv_stats = group_advantages(totals, G, scale=g.scale_rewards)
        for i, grp in enumerate(groups):
            grp["advantages"] = advantages[i * G : (i + 1) * G].to(self.device)
            mask = grp["completion_mask"].clone()
            if g.mask_truncated_completions:
                mask[grp["truncated"]] = 0
            grp["loss_mask"] = mask
        micro = [groups[i : i + g.micro_batch_prompts] for i in range(0, len(groups), g.micro_batch_prompts)]
        n_tokens = sum(float(grp["loss_mask"].sum()) for grp in groups)
        num_items = self._global_mean(n_tokens)

        # old (sampling-policy) and reference log-probs, once per generation batch
        need_old = self._needs_old_logps()
        with timer("logps"), torch.no_grad():
            for mb in micro:
                if need_old:
                    batch, predict, _ = self._policy_batch(mb, self.model)
                    self._split_into(mb, "old_logps", token_logps(self.model, batch, predict, g.temperature))
                if self.ref_model is not None:
                    rbatch, rpredict, _ = self._policy_batch(mb, self.ref_model)
                    self._split_into(mb, "ref_logps", token_logps(self.ref_model, rbatch, rpredict, g.temperature))

        opt = self.optimizers()
        sched = self.lr_schedulers()
        stats: dict[str, list[float]] = defaultdict(list)
        for _ in range(g.num_iterations):
            opt.zero_grad()
            for mb in micro:
                with timer("policy"):
                    batch, predict, width = self._policy_batch(mb, self.model, grad=True)
                    lp, ent = token_logps(self.model, batch, predict, g.temperature, with_entropy=True)
                    lp, ent = lp[:, -width:], ent[:, -width:]
                    mask = _cat(mb, "loss_mask", width, 0)
                    old = _cat(mb, "old_logps", width, 0.0) if "old_logps" in mb[0] else lp.detach()
                    ref = _cat(mb, "ref_logps", width, 0.0) if "ref_logps" in mb[0] else None
                    adv = torch.cat([grp["advantages"] for grp in mb])
                    out = grpo_loss(lp, old, adv, mask, ref_logps=ref, beta=g.beta, epsilon_low=g.epsilon_low,
                                    epsilon_high=g.epsilon_high, loss_type=g.loss_type,
                                    max_completion_length=g.max_completion_length, num_items_in_batch=num_items)
                    weight = 1.0 if g.loss_type == "dapo" else len(mb) / len(groups)
                    self.manual_backward(out.loss * weight)
                    self.add_to_step_loss(out.loss * weight)
                    self.throughput.add(int(batch["attention_mask"].sum()), int(batch["attention_mask"].shape[0]))
                stats["loss"].append(float(out.loss.detach()) * weight)
                stats["kl"].append(out.kl)
                stats["clip_low"].append(out.clip_low)
                stats["clip_high"].append(out.clip_high)
                stats["entropy"].append(float((ent * mask).sum() / mask.sum().clamp(min=1)))
            if self.guard_step(opt) and self.cfg.optim.max_grad_norm:
                self.clip_gradients(opt, gradient_clip_val=self.cfg.optim.max_grad_norm, gradient_clip_algorithm="norm")
            opt.step()  # after a skipped step the gradients are cleared: weights and AdamW state stay as they were
            sched.step()

        timer.seconds["step"] = time.perf_counter() - t_step
        self._log_step(groups, advantages, adv_stats, stats, timer, rounds, opt)
        return None

    def _needs_old_logps(self) -> bool:
        """A separate old-policy pass is needed only when the weights change between generation and a loss: with one
        iteration, every micro-batch's loss is taken before the single optimizer step, so the policy pass's own
        detached log-probs are the old ones (ratio 1) and the extra pass (12-13% of a step) would only repeat them."""
        return self.cfg.grpo.num_iterations > 1

    def _flatten_groups(self, parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Split rollouts into per-prompt groups carrying their prompt tensors, completions and rewards."""
        G = self.sampling.num_generations
        groups = []
        for part in parts:
            if not part["groups"]:
                continue
            prompts, roll = part["prompts"], part["rollouts"]
            pixel_chunks, grid_chunks = _image_chunks(prompts)
            for p in range(part["groups"]):
                rows = slice(p * G, (p + 1) * G)
                single = {
                    "input_ids": prompts["input_ids"][p : p + 1],
                    "attention_mask": prompts["attention_mask"][p : p + 1],
                    "mm_token_type_ids": prompts["mm_token_type_ids"][p : p + 1],
                    "num_images": [prompts["num_images"][p]],
                }
                if pixel_chunks is not None and prompts["num_images"][p]:
                    single["pixel_values"], single["image_grid_thw"] = pixel_chunks[p], grid_chunks[p]
                groups.append({
                    "prompt": single,
                    "sample": prompts["samples"][p],
                    "completion_ids": roll.completion_ids[rows],
                    "completion_mask": roll.completion_mask[rows],
                    "truncated": roll.truncated[rows],
                    "texts": roll.texts[rows],
                    "totals": part["totals"][rows],
                    "per_reward": {k: v[rows] for k, v in part["per_reward"].items()},
                })
        return groups

    def _policy_batch(self, mb: list[dict[str, Any]], model: nn.Module, grad: bool = False):
        """Teacher-forcing batch for a micro-batch of groups; images encoded once per prompt with ``model``."""
        G = self.sampling.num_generations
        width = max(grp["completion_ids"].shape[1] for grp in mb)
        prompts = _stack_prompts([grp["prompt"] for grp in mb], self.encoder.pad_token_id)
        ids = torch.cat([_pad_right(grp["completion_ids"], width, self.encoder.pad_token_id) for grp in mb])
        mask = torch.cat([_pad_right(grp["completion_mask"], width, 0) for grp in mb])
        with torch.set_grad_enabled(grad):  # FSDP2 encodes pixels inside its root forward instead
            feats = None if is_fsdp2(model) else shared_image_features(model, prompts)
        batch, predict = build_policy_batch(prompts, ids, mask, G, feats)
        return batch, predict, width

    @staticmethod
    def _split_into(mb: list[dict[str, Any]], key: str, values: torch.Tensor) -> None:
        width = max(grp["completion_ids"].shape[1] for grp in mb)
        values = values[:, -width:]
        G = mb[0]["completion_ids"].shape[0]
        for i, grp in enumerate(mb):
            grp[key] = values[i * G : (i + 1) * G, : grp["completion_ids"].shape[1]]
        # groups narrower than the micro-batch were right-padded: keep only their own columns (done above)

    def _global_mean(self, value: float) -> float:
        """Token count normaliser for ``dapo``: tokens of the whole generation batch over ranks / world size."""
        world = self.trainer.world_size if self._trainer is not None else 1
        if world == 1:
            return max(value, 1.0)
        t = torch.tensor([value], device=self.device)
        t = self.trainer.strategy.reduce(t, reduce_op="sum")
        return max(float(t) / world, 1.0)

    # ------------------------------------------------------------------ logging
    def _log_step(self, groups, advantages, adv_stats, stats, timer: StepTimer, rounds: int, opt) -> None:
        metrics: dict[str, float] = {}
        totals = [r for grp in groups for r in grp["totals"] if r is not None]
        t = torch.tensor(totals) if totals else torch.zeros(1)
        metrics["reward/total_mean"] = float(t.mean())
        metrics["reward/total_std"] = float(t.std()) if t.numel() > 1 else 0.0
        for name in self.rewards.weights:
            vals = [v for grp in groups for v in grp["per_reward"][name] if v is not None]
            if vals:
                v = torch.tensor(vals)
                metrics[f"reward/{name}_mean"] = float(v.mean())
                metrics[f"reward/{name}_std"] = float(v.std()) if v.numel() > 1 else 0.0
        metrics["frac_reward_zero_std"] = adv_stats["frac_reward_zero_std"]
        lengths = torch.cat([grp["completion_mask"].sum(1) for grp in groups]).float()
        truncated = torch.cat([grp["truncated"] for grp in groups]).float()
        metrics.update({
            "completion/length_mean": float(lengths.mean()), "completion/length_max": float(lengths.max()),
            "completion/truncated_frac": float(truncated.mean()),
            "advantage/mean": float(advantages.mean()), "advantage/std": float(advantages.std()),
            "advantage/abs_max": float(advantages.abs().max()),
            "loss": sum(stats["loss"]), "kl": _mean(stats["kl"]), "clip/low_frac": _mean(stats["clip_low"]),
            "clip/high_frac": _mean(stats["clip_high"]), "entropy": _mean(stats["entropy"]),
            "lr": opt.param_groups[0]["lr"], "dynamic_sampling/rounds": float(rounds),
        })
        for name, count in self.rewards.errors.items():
            metrics[f"reward_errors/{name}"] = float(count)
        for name, seconds in timer.seconds.items():
            metrics[f"time/{name}"] = seconds
        self.log_dict({f"train/{k}": v for k, v in metrics.items()}, batch_size=len(groups))
        self.log("train/reward", metrics["reward/total_mean"], prog_bar=True, logger=False, batch_size=len(groups))
        self.history.append({"step": float(self.global_step), **metrics})
        every = self.cfg.grpo.log_completions_every_n_steps
        if every and (self.global_step - 1) % every == 0 and self.trainer.is_global_zero:
            self._write_completions(groups)

    def _write_completions(self, groups: list[dict[str, Any]]) -> None:
        rows = []
        for grp in groups:
            s = grp["sample"]
            for i, text in enumerate(grp["texts"]):
                rows.append({"step": self.global_step, "id": s.id, "task": s.task, "question": s.question,
                             "answer": s.answer, "completion": text, "total_reward": grp["totals"][i],
                             "rewards": {k: v[i] for k, v in grp["per_reward"].items()},
                             "advantage": float(grp["advantages"][i])})
        self.completions_path.parent.mkdir(parents=True, exist_ok=True)
        with self.completions_path.open("a", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        logger = self.logger
        from lightning.pytorch.loggers import WandbLogger

        if isinstance(logger, WandbLogger):
            import wandb

            table = wandb.Table(columns=["step", "id", "task", "image", "question", "completion", "total_reward"])
            for grp in groups:
                s = grp["sample"]
                image = wandb.Image(s.images[0].copy().resize((96, 96))) if s.images else None
                for i, text in enumerate(grp["texts"]):
                    table.add_data(self.global_step, s.id, s.task, image, s.question, text, grp["totals"][i])
            logger.experiment.log({"completions": table})


def _cat(mb: list[dict[str, Any]], key: str, width: int, value: float) -> torch.Tensor:
    """Concatenate a per-group [G, L_i] tensor over a micro-batch, right-padded to ``width``."""
    return torch.cat([_pad_right(grp[key], width, value) for grp in mb])


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _pad_right(t: torch.Tensor, width: int, value: int) -> torch.Tensor:
    if t.shape[1] == width:
        return t
    pad = torch.full((t.shape[0], width - t.shape[1]), value, dtype=t.dtype, device=t.device)
    return torch.cat([t, pad], dim=1)


def _image_chunks(prompts: dict[str, Any]):
    if prompts.get("pixel_values") is None:
        return None, None
    grids, pixels, start, pstart = prompts["image_grid_thw"], prompts["pixel_values"], 0, 0
    pix, grd = [], []
    for n in prompts["num_images"]:
        g = grids[start : start + n]
        size = int(g.prod(-1).sum()) if n else 0
        pix.append(pixels[pstart : pstart + size])
        grd.append(g)
        start += n
        pstart += size
    return pix, grd


def _stack_prompts(prompts: list[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """Left-pad and stack single-prompt tensors into one prompt batch."""
    width = max(p["input_ids"].shape[1] for p in prompts)

    def left(t: torch.Tensor, value: int) -> torch.Tensor:
        if t.shape[1] == width:
            return t
        pad = torch.full((t.shape[0], width - t.shape[1]), value, dtype=t.dtype, device=t.device)
        return torch.cat([pad, t], dim=1)

    out: dict[str, Any] = {
        "input_ids": torch.cat([left(p["input_ids"], pad_id) for p in prompts]),
        "attention_mask": torch.cat([left(p["attention_mask"], 0) for p in prompts]),
        "mm_token_type_ids": torch.cat([left(p["mm_token_type_ids"], 0) for p in prompts]),
        "num_images": [p["num_images"][0] for p in prompts],
    }
    pix = [p["pixel_values"] for p in prompts if "pixel_values" in p]
    if pix:
        out["pixel_values"] = torch.cat(pix)
        out["image_grid_thw"] = torch.cat([p["image_grid_thw"] for p in prompts if "image_grid_thw" in p])
    return out


__all__ = ["GRPOModule", "RewardError", "RewardSet", "Rollouts"]
