"""Low-variance filtering before stage 2 (docs/method.md §2): score K stochastic generations per sample with the task
rewards, keep the top fraction by reward variance within each task, write the kept samples as new shards.

Work is done shard by shard and each finished shard's scores are written atomically to ``<out>/scores/``, so an
interrupted run resumes without redoing finished shards.
"""

from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch

from chexone.data.collate import PromptCollator
from chexone.data.remote import redact, split_name
from chexone.data.sample import Sample
from chexone.model.processor import PromptEncoder
from chexone.progress import progress
from chexone.training.grpo_loss import combine_rewards
from chexone.training.reward_set import RewardSet
from chexone.training.rollout import SamplingSettings, make_engine

log = logging.getLogger(__name__)

FILTER_VERSION = "1"


@dataclass(frozen=True)
class ScoredSample:
    id: str
    task: str
    shard: str
    variance: float
    mean: float


def reward_variance(values: Iterable[float | None]) -> float:
    """Population variance of the applicable rewards (None ignored); 0 when fewer than two apply."""
    v = [x for x in values if x is not None]
    return float(np.var(v)) if len(v) > 1 else 0.0


def select_top_variance(scored: list[ScoredSample], fraction: float) -> tuple[set[str], dict[str, dict[str, Any]]]:
    """Ids of the top ``fraction`` (ceil, at least 1 per non-empty task) by variance within each task.

    Ties are broken by id so the selection is deterministic. Returns (kept ids, per-task summary).
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"filter.keep_fraction must be in (0, 1], got {fraction}")
    by_task: dict[str, list[ScoredSample]] = defaultdict(list)
    for s in scored:
        by_task[s.task].append(s)
    kept: set[str] = set()
    summary = {}
    for task, items in sorted(by_task.items()):
        ranked = sorted(items, key=lambda s: (-s.variance, s.id))
        n_keep = max(1, int(np.ceil(fraction * len(ranked))))
        chosen = ranked[:n_keep]
        kept.update(s.id for s in chosen)
        variances = np.array([s.variance for s in items])
        counts, edges = np.histogram(variances, bins=10)
        summary[task] = {
            "total": len(items), "kept": len(chosen), "threshold": chosen[-1].variance,
            "mean_variance": float(variances.mean()), "zero_variance": int((variances == 0).sum()),
            "histogram": {"counts": counts.tolist(), "edges": [float(e) for e in edges]},
        }
    return kept, summary


class VarianceScorer:
    """K stochastic generations per sample with the stage-1 model, scored by the recipe's rewards."""

    def __init__(self, model: torch.nn.Module, processor: Any, task_lookup: Callable, cfg: Any):
        f = cfg.filter
        self.model = model.eval()
        self.encoder = PromptEncoder(processor)
        from chexone.training.sft import prompt_style

        self.collate = PromptCollator(self.encoder, task_lookup, style=prompt_style(cfg.data), reasoning="always",
                                      max_prompt_length=cfg.data.max_length)
        self.engine = make_engine(cfg.grpo.engine, torch.Generator().manual_seed(cfg.trainer.seed))
        self.settings = SamplingSettings(num_generations=f.num_generations, max_new_tokens=f.max_completion_length,
                                         temperature=f.temperature, top_p=f.top_p, top_k=f.top_k,
                                         repetition_penalty=1.0, return_logps=False)  # only rewards are used
        self.rewards = RewardSet(list(cfg.grpo.rewards), cfg.data.boxed, cfg.grpo.reward_errors,
                                 task_names=list(cfg.data.tasks) or None, task_lookup=task_lookup)
        self.batch_prompts = f.batch_prompts

    def score(self, samples: list[Sample], shard: str) -> list[ScoredSample]:
        out = []
        K = self.settings.num_generations
        for i in range(0, len(samples), self.batch_prompts):
            batch = self.collate(samples[i : i + self.batch_prompts])
            if not batch["num_samples"]:
                continue
            roll = self.engine.generate(self.model, self.encoder, batch, self.settings)
            expanded = [s for s in batch["samples"] for _ in range(K)]
            scores = self.rewards.score(roll.texts, expanded, prompts=[t for t in batch["prompts"] for _ in range(K)],
                                        reasoning=[r for r in batch["reasoning"] for _ in range(K)])
            totals = combine_rewards(scores, self.rewards.weights)
            for p, s in enumerate(batch["samples"]):
                group = totals[p * K : (p + 1) * K]
                applicable = [x for x in group if x is not None]
                out.append(ScoredSample(s.id, s.task, redact(shard), reward_variance(group),
                                        float(np.mean(applicable)) if applicable else 0.0))
        return out


def _scores_path(out: Path, shard: str) -> Path:
    """Where a shard's scores go: named after the shard's file name (for a URL, its last path segment, so no query
    string holding a token ends up in a file name)."""
    return out / "scores" / (split_name(shard)[1] + ".jsonl")


def score_shards(shards: list[str], scorer: Any, out: Path, *, task_filter: list[str] | None = None) -> list[ScoredSample]:
    """Score every shard not scored yet (resumable), then return all scores."""
    from chexone.data.shards import build_eval_dataset
    from chexone.registry import TASKS

    (out / "scores").mkdir(parents=True, exist_ok=True)
    todo = [s for s in shards if not _scores_path(out, s).exists()]
    if len(todo) < len(shards):
        print(f"filter: resuming, {len(shards) - len(todo)} of {len(shards)} shards already scored", flush=True)
    for shard in progress(todo, desc="filter: scoring shards", unit="shards"):
        samples = list(build_eval_dataset(shard, task_filter=task_filter, known_tasks=TASKS.names()))
        scored = scorer.score(samples, shard)
        path = _scores_path(out, shard)
        tmp = path.with_suffix(".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            for s in scored:
                f.write(json.dumps(s.__dict__) + "\n")
        os.replace(tmp, path)  # a shard counts as done only once its scores are complete
    result = []
    for shard in shards:
        with _scores_path(out, shard).open(encoding="utf-8") as f:
            result.extend(ScoredSample(**json.loads(line)) for line in f if line.strip())
    return result


def write_selected(shards: list[str], kept: set[str], out: Path, arguments: dict[str, Any]) -> dict[str, Any]:
    """Copy the kept samples into ``<out>/shards/`` (with sizes.json and manifest.json)."""
    from chexone.data.shards import build_eval_dataset
    from webdata.writer import ShardWriter

    with ShardWriter(out / "shards", prefix="filtered", builder="chexone.filter", builder_version=FILTER_VERSION,
                     arguments=arguments, overwrite=True) as writer:
        for shard in shards:
            for sample in build_eval_dataset(shard):
                if sample.id in kept:
                    writer.write(sample)
    return writer.close()  # idempotent: returns the manifest written on exit


def render_report(summary: dict[str, dict[str, Any]], fraction: float, num_generations: int) -> str:
    lines = ["# Low-variance filter report", "",
             f"Top {fraction:.0%} of samples by reward variance over {num_generations} generations, within each task.",
             "", "| task | kept | total | variance threshold | mean variance | zero-variance samples |",
             "|---|---|---|---|---|---|"]
    for task, s in summary.items():
        lines.append(f"| {task} | {s['kept']} | {s['total']} | {s['threshold']:.4f} | {s['mean_variance']:.4f} | "
                     f"{s['zero_variance']} |")
    lines += ["", "## Variance histograms", ""]
    for task, s in summary.items():
        counts, edges = s["histogram"]["counts"], s["histogram"]["edges"]
        top = max(counts) or 1
        lines += [f"### {task}", "```"]
        for c, lo, hi in zip(counts, edges[:-1], edges[1:]):
            lines.append(f"[{lo:.3f}, {hi:.3f}) {'#' * int(round(30 * c / top)):<30} {c}")
        lines += ["```", ""]
    return "\n".join(lines)
