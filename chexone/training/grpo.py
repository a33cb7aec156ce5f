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
from chexone.model import transformers_compat as compat
from chexone.model.processor import PromptEncoder
from chexone.tasks.base import Task
from chexone.training.core import ChexoneModule, is_fsdp2, token_logps
from chexone.training.fsdp import direct_submodule_calls
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
from chexone.training.shared_prefix import shared_prefix_logps, supports_shared_prefix

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
                                         repetition_penalty=g.repetition_penalty, return_logps=False)
        self.refill = refill
        self.completions_path = Path(cfg.output_dir) / "completions.jsonl"
        self.history: list[dict[str, float]] = []
        self._share_prompt_warned: set[int] = set()
        self._tower_reuse: dict[str, bool] | None = None  # decided on first use (weights on their device by then)

    @property
    def ref_model(self) -> nn.Module | None:
        return self._ref[0] if self._ref else None

    def on_fit_start(self) -> None:
        if self._ref:
            self._ref[0].to(self.device)
        if self.generator.device != self.device and self.device.type == "cuda":
            self.generator = torch.Generator(device=self.device).manual_seed(self.cfg.trainer.seed + self.global_rank)
            self.engine = make_engine(self.cfg.grpo.engine, self.generator)

    def on_fit_end(self) -> None:
        self.rewards.close()  # the background reward worker (deferred scoring)

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    # ------------------------------------------------------------------ rollouts + rewards
    def _rollout(self, samples: list[Sample], timer: StepTimer, defer_rewards: bool = False) -> dict[str, Any]:
        """Generate G completions per prompt and score them. With ``defer_rewards`` the scoring runs on the reward
        worker (``RewardSet.score_async``) while the step goes on with work that needs no reward (the old/reference
        log-probs, the first policy forward); ``_await_rewards`` collects it, with the same values."""
        G = self.sampling.num_generations
        prompts = self._to_device(self.prompt_collate(samples))
        if not prompts["num_samples"]:
            return {"prompts": prompts, "groups": 0}
        with timer("generation"), direct_submodule_calls(self.model):
            roll = self.engine.generate(self.model, self.encoder, prompts, self.sampling)
        expanded = [s for s in prompts["samples"] for _ in range(G)]
        context = dict(prompts=[t for t in prompts["prompts"] for _ in range(G)],
                       reasoning=[r for r in prompts["reasoning"] for _ in range(G)], step=self.global_step)
        part = {"prompts": prompts, "rollouts": roll, "groups": prompts["num_samples"], "samples": expanded}
        if defer_rewards:
            part["pending"] = self.rewards.score_async(roll.texts, expanded, **context)
            return part
        with timer("rewards"):
            part["per_reward"] = self.rewards.score(roll.texts, expanded, **context)
        part["totals"] = combine_rewards(part["per_reward"], self.rewards.weights)
        return part

    def _await_rewards(self, parts: list[dict[str, Any]], groups: list[dict[str, Any]], timer: StepTimer) -> None:
        """Wait for deferred reward scoring and hand each group its rows (what ``_flatten_groups`` does at once when
        the rewards were scored synchronously)."""
        G = self.sampling.num_generations
        for part in parts:
            future = part.pop("pending", None)
            if future is None:
                continue
            with timer("rewards"):  # only the time the step waited: the scoring itself overlapped other work
                part["per_reward"] = future.result()  # a RewardError under reward_errors=fail surfaces here
            part["totals"] = combine_rewards(part["per_reward"], self.rewards.weights)
            for grp in groups:
                if grp["part"] is part:
                    rows = slice(grp["index"] * G, (grp["index"] + 1) * G)
                    grp["totals"] = part["totals"][rows]
                    grp["per_reward"] = {k: v[rows] for k, v in part["per_reward"].items()}

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
        # Without dynamic sampling nothing has to wait for the rewards before the loss: they are scored in the
        # background meanwhile (dynamic sampling needs them at once, to decide which prompts to replace).
        defer = not g.dynamic_sampling
        parts, rounds = self._select_groups(self._rollout(samples, timer, defer_rewards=defer), timer)
        groups = self._flatten_groups(parts)
        if not groups:
            for part in parts:  # collect (and so check) any deferred scoring before moving on
                self._await_rewards([part], [], timer)
            log.warning("step %d: no usable prompt in this generation batch; skipped", self.global_step)
            return None
        if g.dynamic_sampling:
            informative = [grp for grp in groups if not zero_std_groups(grp["totals"], G)[0]]
            groups = (informative or groups)[: self.cfg.grpo.prompts_per_step]
        for grp in groups:
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
                    self._split_into(mb, "old_logps", self._completion_logps(mb, self.model))
                if self.ref_model is not None:
                    self._split_into(mb, "ref_logps", self._completion_logps(mb, self.ref_model))

        advantages = adv_stats = None
        opt = self.optimizers()
        sched = self.lr_schedulers()
        stats: dict[str, list[float]] = defaultdict(list)
        for _ in range(g.num_iterations):
            opt.zero_grad()
            for mb in micro:
                with timer("policy"):
                    lp, ent = self._completion_logps(mb, self.model, grad=True, with_entropy=True)
                    if advantages is None:  # first needed here: the rewards had the passes above to finish
                        self._await_rewards(parts, groups, timer)
                        advantages, adv_stats = self._advantages(groups)
                    width = lp.shape[1]
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
                    self.throughput.add(*_sequence_tokens(mb))
                stats["loss"].append(float(out.loss.detach()) * weight)
                stats["kl"].append(out.kl)
                stats["clip_low"].append(out.clip_low)
                stats["clip_high"].append(out.clip_high)
                stats["entropy"].append(float((ent * mask).sum() / mask.sum().clamp(min=1)))
            if self.guard_step(opt) and self.cfg.optim.max_grad_norm:
                self.clip_gradient_norm(opt, self.cfg.optim.max_grad_norm)
            opt.step()  # after a skipped step the gradients are cleared: weights and AdamW state stay as they were
            sched.step()

        timer.seconds["step"] = time.perf_counter() - t_step
        self._log_step(groups, advantages, adv_stats, stats, timer, rounds, opt)
        return None

    def _advantages(self, groups: list[dict[str, Any]]) -> tuple[torch.Tensor, dict[str, float]]:
        """Group-normalised advantages of the kept groups (each group gets its G rows)."""
        G = self.sampling.num_generations
        totals = [r for grp in groups for r in grp["totals"]]
        advantages, adv_stats = group_advantages(totals, G, scale=self.cfg.grpo.scale_rewards)
        for i, grp in enumerate(groups):
            grp["advantages"] = advantages[i * G : (i + 1) * G].to(self.device)
        return advantages, adv_stats

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
                    "part": part,  # where a deferred score comes from (``_await_rewards``)
                    "index": p,
                })
                if "totals" in part:
                    groups[-1]["totals"] = part["totals"][rows]
                    groups[-1]["per_reward"] = {k: v[rows] for k, v in part["per_reward"].items()}
        return groups

    def _completion_logps(self, mb: list[dict[str, Any]], model: nn.Module, grad: bool = False,
                          with_entropy: bool = False):
        """Log-probs [rows, width] of a micro-batch's completion tokens under ``model`` (and their entropy), each
        image encoded once per prompt. With ``grpo.share_prompt`` each prompt is also computed once per group
        (``shared_prefix``); otherwise it is repeated for each of its G completions."""
        G, temperature = self.sampling.num_generations, self.cfg.grpo.temperature
        width = max(grp["completion_ids"].shape[1] for grp in mb)
        prompts = _stack_prompts([grp["prompt"] for grp in mb], self.encoder.pad_token_id)
        ids = torch.cat([_pad_right(grp["completion_ids"], width, self.encoder.pad_token_id) for grp in mb])
        mask = torch.cat([_pad_right(grp["completion_mask"], width, 0) for grp in mb])
        with torch.set_grad_enabled(grad):
            feats = None if is_fsdp2(model) else self._image_features(mb, model, prompts)  # FSDP2: in its root forward
            if self._share_prompt(model):
                return shared_prefix_logps(model, prompts, ids, mask, G, feats, temperature, with_entropy)
            batch, predict = build_policy_batch(prompts, ids, mask, G, feats)
            out = token_logps(model, batch, predict, temperature, with_entropy=with_entropy)
        if with_entropy:
            return out[0][:, -width:], out[1][:, -width:]
        return out[:, -width:]

    def _image_features(self, mb: list[dict[str, Any]], model: nn.Module, prompts: dict[str, Any]):
        """Per-image features of a micro-batch's prompts under ``model``, each image encoded once per pass. With a
        frozen vision tower (stage 2's default) the tower's output is the same in every pass of the step (old,
        reference, each iteration's policy pass): it is computed once per prompt and only the merger runs again."""
        if prompts.get("pixel_values") is None:
            return None
        if not self._tower_states_reusable(model):
            return shared_image_features(model, prompts)
        feats: list[torch.Tensor] = []
        for grp in mb:
            prompt = grp["prompt"]
            if prompt.get("pixel_values") is None:
                continue
            if "tower_states" not in grp:
                grp["tower_states"] = compat.vision_tower_states(self.model, prompt["pixel_values"],
                                                                 prompt["image_grid_thw"])
            feats.extend(compat.merge_vision_states(model, *grp["tower_states"], prompt["image_grid_thw"]))
        return feats

    def _tower_states_reusable(self, model: nn.Module) -> bool:
        """The policy's vision blocks are frozen, and ``model`` (the policy or the reference) has the same blocks."""
        if self._tower_reuse is None:
            blocks = [(n, p) for n, p in self.model.model.visual.named_parameters() if not n.startswith("merger.")]
            frozen = bool(blocks) and not any(p.requires_grad for _, p in blocks)
            same_as_ref = False
            if frozen and self.ref_model is not None:
                ref = dict(self.ref_model.model.visual.named_parameters())
                same_as_ref = all(n in ref and ref[n].shape == p.shape and torch.equal(ref[n].to(p.device), p)
                                  for n, p in blocks)
            self._tower_reuse = {"policy": frozen, "ref": same_as_ref}
        return self._tower_reuse["policy" if model is self.model else "ref"]

    def _share_prompt(self, model: nn.Module) -> bool:
        """Whether ``model``'s passes compute each prompt once (``grpo.share_prompt``, when the model supports it);
        the first time a model cannot, the reason is logged."""
        if not self.cfg.grpo.share_prompt:
            return False
        ok, why = supports_shared_prefix(model)
        if not ok and id(model) not in self._share_prompt_warned:
            self._share_prompt_warned.add(id(model))
            log.info("grpo.share_prompt: repeating each prompt per completion instead: %s", why)
        return ok

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
        # per task family (docs/logging.md): a family's curve is logged in the steps that sampled its prompts
        by_family: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for grp in groups:
            by_family[self.task_lookup(grp["sample"].task).family].append(grp)
        for family, members in sorted(by_family.items()):
            fam_totals = [r for grp in members for r in grp["totals"] if r is not None]
            if fam_totals:
                metrics[f"reward/{family}/total_mean"] = sum(fam_totals) / len(fam_totals)
            for name in self.rewards.weights:
                vals = [v for grp in members for v in grp["per_reward"][name] if v is not None]
                if vals:
                    metrics[f"reward/{family}/{name}_mean"] = sum(vals) / len(vals)
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
        if self.log_now:  # Lightning bookkeeping per value: only on steps whose metrics are written
            self.log_dict({f"train/{k}": v for k, v in metrics.items()}, batch_size=len(groups))
        self.log("train/reward", metrics["reward/total_mean"], prog_bar=True, logger=False, batch_size=len(groups))
        self.history.append({"step": float(self.global_step), **metrics})
        every = self.cfg.grpo.log_completions_every_n_steps
        if every and (self.global_step - 1) % every == 0 and self.trainer.is_global_zero:
            self._write_completions(groups)

    def _write_completions(self, groups: list[dict[str, Any]]) -> None:
        """Append the step's completions to completions.jsonl, each row naming a thumbnail of its first image (one per
        prompt; one per completion for grounding, with the reference boxes green and the predicted ones red) under
        completions/step-NNNNNN/, and log them as a W&B table with the same thumbnails."""
        from chexone.dashboard.thumbnails import completion_thumbnail, predicted_answer, save_png, thumbnail_path

        rows, thumbs = [], []
        for p, grp in enumerate(groups):
            s = grp["sample"]
            grounding = self.task_lookup(s.task).family == "grounding"
            shared = None
            if s.images and not grounding:
                shared = (thumbnail_path(self.global_step, p), completion_thumbnail(s.images[0]))
            for i, text in enumerate(grp["texts"]):
                thumb = shared
                if s.images and grounding:
                    thumb = (thumbnail_path(self.global_step, p, i),
                             completion_thumbnail(s.images[0], reference=s.answer,
                                                  prediction=predicted_answer(text, self.style.boxed)))
                thumbs.append(thumb)
                rows.append({"step": self.global_step, "id": s.id, "task": s.task, "question": s.question,
                             "answer": s.answer, "completion": text, "total_reward": grp["totals"][i],
                             "rewards": {k: v[i] for k, v in grp["per_reward"].items()},
                             "advantage": float(grp["advantages"][i]), "image": thumb[0] if thumb else None})
        self.completions_path.parent.mkdir(parents=True, exist_ok=True)
        unique = {t[0]: t[1] for t in thumbs if t}
        for rel, image in unique.items():
            save_png(image, self.completions_path.parent / rel)
        with self.completions_path.open("a", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        logger = self.logger
        from lightning.pytorch.loggers import WandbLogger

        if isinstance(logger, WandbLogger):
            import wandb

            images = {rel: wandb.Image(image) for rel, image in unique.items()}  # a prompt's image stored once
            table = wandb.Table(columns=["step", "id", "task", "image", "question", "completion", "total_reward"])
            for row in rows:
                table.add_data(row["step"], row["id"], row["task"], images.get(row["image"]), row["question"],
                               row["completion"], row["total_reward"])
            logger.experiment.log({"completions": table})


def _sequence_tokens(mb: list[dict[str, Any]]) -> tuple[int, int]:
    """(tokens, sequences) a micro-batch trains on, counting each completion with its prompt (the same count whichever
    way the pass computes the prompts, so throughput stays comparable)."""
    tokens = sum(int(grp["prompt"]["attention_mask"].sum()) * grp["completion_mask"].shape[0]
                 + int(grp["completion_mask"].sum()) for grp in mb)
    return tokens, sum(grp["completion_mask"].shape[0] for grp in mb)


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
