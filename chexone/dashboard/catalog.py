"""The one list of every metric name a run logs: its section, meaning and unit, and the panels that show it.

The W&B workspace (``chexone.dashboard.workspace``), the offline HTML report (``chexone.dashboard.report``) and the
table in docs/logging.md (``python -m chexone.dashboard docs``) are all built from this module, and a test runs tiny
SFT and GRPO fits and fails when they log a name that no entry here matches. A new ``self.log`` key therefore needs an
entry here first.

Names are literal or patterns: ``{placeholder}`` stands for one path segment (no ``/``), e.g.
``train/reward/{reward}_mean`` matches ``train/reward/vqa_mean``. When several entries match a name, the most
specific (most literal characters) owns it, so ``train/reward/total_mean`` is not also "one reward's mean".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

#: EMA weight of the smoothed curves, the same in the report and the W&B panels (TensorBoard/W&B "exponential"
#: smoothing): ``s_t = w * s_{t-1} + (1 - w) * x_t``, debiased by ``1 - w**t`` so early points are not pulled to 0.
#: 0.8 averages over roughly the last 5 logged steps: GRPO rewards of one step are noisy (few prompts per step).
SMOOTHING = 0.8

#: The x-axis the panels plot against: Lightning's WandbLogger logs it with every row (the CSV has ``step``).
WANDB_STEP = "trainer/global_step"


@dataclass(frozen=True)
class Section:
    key: str
    title: str
    description: str
    #: shown in the W&B workspace (evaluation results are single values, shown by the report's tables)
    in_wandb: bool = True


SECTIONS: tuple[Section, ...] = (
    Section("rewards", "Rewards", "GRPO rewards: the total, each reward, and both per task family."),
    Section("policy", "Policy health", "Is the update sane: KL to the reference, clipping, entropy, advantages, "
            "groups without signal, truncation."),
    Section("lengths", "Lengths", "How long the sampled completions (GRPO) and trained answers (SFT) are."),
    Section("speed", "Step time and throughput", "Where a step's wall-clock time goes, and tokens/samples per "
            "second."),
    Section("optimisation", "Loss and optimisation", "Loss, gradient norm, learning rate, skipped non-finite steps."),
    Section("data", "Data", "Samples read, yielded, filtered and skipped (by reason) by the training stream."),
    Section("validation", "Validation", "Held-out metrics during stage 1, per task, with the majority-class "
            "baselines they must beat."),
    Section("completions", "Completions", "Sampled GRPO completions with their rewards, and stage-1 sample previews, "
            "with image thumbnails (grounding boxes drawn: reference green, prediction red)."),
    Section("evaluation", "Evaluation", "python -m chexone.evaluate: each benchmark's metrics (value, bootstrap CI, "
            "n) per row.", in_wandb=False),
    Section("axes", "Axes", "Step counters every row carries.", in_wandb=False),
)


@dataclass(frozen=True)
class Metric:
    name: str
    section: str
    description: str
    unit: str = ""
    #: which runs log it: sft | grpo | fit (both stages) | evaluate
    stage: str = "fit"
    #: scalar | table (a W&B table) | image (a W&B image) | axis
    kind: str = "scalar"

    @property
    def is_pattern(self) -> bool:
        return "{" in self.name

    @property
    def placeholders(self) -> list[str]:
        return re.findall(r"\{(\w+)\}", self.name)


METRICS: tuple[Metric, ...] = (
    # --- axes
    Metric("step", "axes", "Optimizer step of the row (the CSV's x-axis).", "steps", "fit", "axis"),
    Metric("epoch", "axes", "Pass over the training stream (samples_per_epoch).", "epochs", "fit", "axis"),
    Metric(WANDB_STEP, "axes", "Optimizer step as W&B records it (the workspace's x-axis).", "steps", "fit", "axis"),
    # --- rewards
    Metric("train/reward/total_mean", "rewards", "Mean total (weighted sum) reward over the step's completions.",
           "reward", "grpo"),
    Metric("train/reward/total_std", "rewards", "Standard deviation of the total reward over the step's completions.",
           "reward", "grpo"),
    Metric("train/reward/{reward}_mean", "rewards", "Mean of one reward over the completions it scores (weight-0 "
           "rewards too).", "reward", "grpo"),
    Metric("train/reward/{reward}_std", "rewards", "Standard deviation of one reward over the completions it scores.",
           "reward", "grpo"),
    Metric("train/reward/{family}/total_mean", "rewards", "Mean total reward over the completions of one task "
           "family's prompts (multiple_choice, open_vqa, report, grounding, ...); logged in steps that have such "
           "prompts.", "reward", "grpo"),
    Metric("train/reward/{family}/{reward}_mean", "rewards", "Mean of one reward over one task family's completions "
           "it scores.", "reward", "grpo"),
    Metric("train/reward_errors/{reward}", "rewards", "Completions a reward failed on so far, scored 0 "
           "(grpo.reward_errors=zero).", "count", "grpo"),
    # --- policy health
    Metric("train/kl", "policy", "Mean per-token k3 KL estimate to the frozen reference model (0 when grpo.beta=0).",
           "nats", "grpo"),
    Metric("train/clip/low_frac", "policy", "Fraction of completion tokens whose ratio was clipped at "
           "1 - epsilon_low (negative advantages).", "fraction", "grpo"),
    Metric("train/clip/high_frac", "policy", "Fraction of completion tokens whose ratio was clipped at "
           "1 + epsilon_high (positive advantages).", "fraction", "grpo"),
    Metric("train/entropy", "policy", "Mean per-token entropy of the policy on its completions.", "nats", "grpo"),
    Metric("train/advantage/mean", "policy", "Mean advantage of the step's completions.", "advantage", "grpo"),
    Metric("train/advantage/std", "policy", "Standard deviation of the advantages.", "advantage", "grpo"),
    Metric("train/advantage/abs_max", "policy", "Largest absolute advantage.", "advantage", "grpo"),
    Metric("train/frac_reward_zero_std", "policy", "Fraction of prompt groups whose G rewards are all equal (no "
           "learning signal).", "fraction", "grpo"),
    Metric("train/completion/truncated_frac", "policy", "Fraction of completions that hit "
           "grpo.max_completion_length.", "fraction", "grpo"),
    Metric("train/dynamic_sampling/rounds", "policy", "Extra generation rounds dynamic sampling needed this step.",
           "rounds", "grpo"),
    # --- lengths
    Metric("train/completion/length_mean", "lengths", "Mean completion length.", "tokens", "grpo"),
    Metric("train/completion/length_max", "lengths", "Longest completion of the step.", "tokens", "grpo"),
    Metric("train/answer_tokens", "lengths", "Answer (loss) tokens trained on in the step.", "tokens", "sft"),
    # --- speed
    Metric("train/time/generation", "speed", "Seconds of the step spent sampling completions.", "s", "grpo"),
    Metric("train/time/rewards", "speed", "Seconds the step waited for reward scoring (with dynamic sampling all of it; otherwise what the background "
           "scoring did not overlap with the log-prob passes).", "s", "grpo"),
    Metric("train/time/logps", "speed", "Seconds spent on old-policy and reference log-prob passes.", "s", "grpo"),
    Metric("train/time/policy", "speed", "Seconds spent in policy forward/backward passes.", "s", "grpo"),
    Metric("train/time/step", "speed", "Wall-clock seconds of the whole step.", "s", "grpo"),
    Metric("train/tokens_per_s", "speed", "Tokens (prompt + answer/completion) through forward/backward per second "
           "since the last log.", "tokens/s"),
    Metric("train/samples_per_s", "speed", "Sequences through forward/backward per second since the last log.",
           "samples/s"),
    # --- optimisation
    Metric("train/loss", "optimisation", "SFT: mean cross-entropy on answer tokens. GRPO: the policy loss of the "
           "step.", "loss"),
    Metric("train/grad_norm", "optimisation", "L2 norm of the gradients before clipping.", "norm"),
    Metric("train/lr", "optimisation", "Learning rate.", "lr"),
    Metric("train/skipped_steps", "optimisation", "Optimizer steps skipped so far because the loss or the gradients "
           "were NaN/inf.", "count"),
    # --- data
    Metric("data/read", "data", "Samples read from the shards so far (this rank, all workers).", "samples"),
    Metric("data/yielded", "data", "Samples passed on to training.", "samples"),
    Metric("data/filtered", "data", "Samples dropped by the data.tasks filter.", "samples"),
    Metric("data/skipped", "data", "Samples skipped as unusable (all reasons).", "samples"),
    Metric("data/skip_fraction", "data", "skipped / (read - filtered); the run stops above data.max_skip_fraction.",
           "fraction"),
    Metric("data/skipped/{reason}", "data", "Samples skipped for one reason (bad_json, missing_image, "
           "unknown_task, truncated_tar, ...).", "samples"),
    Metric("data/ignored/{member}", "data", "Shard members of an unknown kind that were ignored.", "members"),
    Metric("train/skipped_too_long", "data", "Samples of the step dropped for exceeding data.max_length.", "samples",
           "sft"),
    Metric("train/skipped_invalid", "data", "Samples of the step its task refused to render.", "samples", "sft"),
    # --- validation
    Metric("val/loss", "validation", "Held-out cross-entropy on answer tokens.", "loss", "sft"),
    Metric("val/well_formed", "validation", "Fraction of held-out answers with the shape the task asks for.",
           "fraction", "sft"),
    Metric("val/{metric}", "validation", "A validation metric over every held-out sample it applies to "
           "(trainer.val_metrics: accuracy, exact_match, iou, bleu2, ...).", "metric", "sft"),
    Metric("val/{metric}/{task}", "validation", "A validation metric on one task's held-out samples.", "metric",
           "sft"),
    Metric("val/majority_baseline_{family}", "validation", "Accuracy of always answering the most frequent answer "
           "of the family's held-out samples: the bar val/accuracy must clear.", "fraction", "sft"),
    # --- completions
    Metric("completions", "completions", "W&B table of sampled completions (step, id, task, image thumbnail with "
           "boxes, question, completion, total reward) every grpo.log_completions_every_n_steps.", "", "grpo",
           "table"),
    Metric("samples/preview", "completions", "W&B table of wandb.log_samples training samples (image, prompt, "
           "target) at the start of stage 1.", "", "sft", "table"),
    # --- evaluation
    Metric("eval/{benchmark}/{row}/{metric}", "evaluation", "A benchmark's metric on one row: all, task=<task> or "
           "<group_by>=<value> (the CI is in results.json).", "metric", "evaluate"),
    Metric("eval/{benchmark}/{plot}", "evaluation", "A benchmark's plot as a W&B image: metrics (bars with CI "
           "whiskers), grounding (boxes drawn).", "", "evaluate", "image"),
)


@dataclass(frozen=True)
class Panel:
    section: str
    title: str
    #: catalog names (literal or pattern) the panel plots; a pattern brings every logged name it owns
    metrics: tuple[str, ...]
    #: line | stacked (a stacked area of parts of a whole) | table (a W&B table)
    kind: str = "line"


PANELS: tuple[Panel, ...] = (
    Panel("rewards", "Total reward", ("train/reward/total_mean",)),
    Panel("rewards", "Total reward per task family", ("train/reward/{family}/total_mean",)),
    Panel("rewards", "Each reward (mean)", ("train/reward/{reward}_mean",)),
    Panel("rewards", "Each reward per task family", ("train/reward/{family}/{reward}_mean",)),
    Panel("rewards", "Reward spread (std)", ("train/reward/total_std", "train/reward/{reward}_std")),
    Panel("rewards", "Reward errors", ("train/reward_errors/{reward}",)),
    Panel("policy", "KL to the reference", ("train/kl",)),
    Panel("policy", "Clipped token fraction", ("train/clip/low_frac", "train/clip/high_frac")),
    Panel("policy", "Entropy", ("train/entropy",)),
    Panel("policy", "Advantages", ("train/advantage/mean", "train/advantage/std", "train/advantage/abs_max")),
    Panel("policy", "Groups without reward spread", ("train/frac_reward_zero_std",)),
    Panel("policy", "Truncated completions", ("train/completion/truncated_frac",)),
    Panel("policy", "Dynamic sampling rounds", ("train/dynamic_sampling/rounds",)),
    Panel("lengths", "Completion length", ("train/completion/length_mean", "train/completion/length_max")),
    Panel("lengths", "Answer tokens per step", ("train/answer_tokens",)),
    Panel("speed", "Step time split", ("train/time/generation", "train/time/rewards", "train/time/logps",
                                       "train/time/policy"), "stacked"),
    Panel("speed", "Step time", ("train/time/step",)),
    Panel("speed", "Tokens per second", ("train/tokens_per_s",)),
    Panel("speed", "Samples per second", ("train/samples_per_s",)),
    Panel("optimisation", "Loss", ("train/loss",)),
    Panel("optimisation", "Gradient norm", ("train/grad_norm",)),
    Panel("optimisation", "Learning rate", ("train/lr",)),
    Panel("optimisation", "Skipped non-finite steps", ("train/skipped_steps",)),
    Panel("data", "Samples read", ("data/read", "data/yielded", "data/filtered", "data/skipped")),
    Panel("data", "Skipped by reason", ("data/skipped/{reason}", "data/ignored/{member}")),
    Panel("data", "Skip fraction", ("data/skip_fraction",)),
    Panel("data", "Dropped in the collator", ("train/skipped_too_long", "train/skipped_invalid")),
    Panel("validation", "Validation loss", ("val/loss",)),
    Panel("validation", "Validation metrics and majority baselines",
          ("val/{metric}", "val/well_formed", "val/majority_baseline_{family}")),
    Panel("validation", "Validation per task", ("val/{metric}/{task}",)),
    Panel("completions", "Sampled completions", ("completions",), "table"),
    Panel("completions", "Training sample previews", ("samples/preview",), "table"),
    Panel("evaluation", "Benchmark metrics", ("eval/{benchmark}/{row}/{metric}",), "table"),
)

#: Values that stand in for each placeholder in examples and regex checks.
EXAMPLE_VALUES = {"reward": "vqa", "family": "grounding", "metric": "accuracy", "task": "close_vqa",
                  "reason": "bad_json", "member": "txt", "benchmark": "rexvqa", "row": "all", "plot": "metrics"}


def pattern_regex(name: str) -> str:
    """A catalog name as a regex (no anchors): literal text escaped, each placeholder one path segment."""
    parts = re.split(r"(\{\w+\})", name)
    return "".join("[^/]+" if re.fullmatch(r"\{\w+\}", p) else re.escape(p) for p in parts if p)


def example_name(name: str) -> str:
    """A concrete name the entry matches (placeholders filled from EXAMPLE_VALUES)."""
    return re.sub(r"\{(\w+)\}", lambda m: EXAMPLE_VALUES[m.group(1)], name)


def _literal_chars(name: str) -> int:
    return len(re.sub(r"\{\w+\}", "", name))


@lru_cache(maxsize=None)
def _compiled() -> tuple[tuple[Metric, re.Pattern[str]], ...]:
    # most specific first, so the first match owns a name
    ordered = sorted(METRICS, key=lambda m: (m.is_pattern, -_literal_chars(m.name)))
    return tuple((m, re.compile(pattern_regex(m.name))) for m in ordered)


def lookup(name: str) -> Metric | None:
    """The entry that owns a logged name (the most specific match), or None when the catalog lacks it."""
    for metric, rx in _compiled():
        if rx.fullmatch(name):
            return metric
    return None


def placeholder_values(entry: Metric, name: str) -> dict[str, str]:
    """The placeholder values of a logged name, e.g. {'family': 'grounding'} for train/reward/grounding/total_mean."""
    parts = re.split(r"(\{\w+\})", entry.name)
    rx = "".join(f"(?P<{p[1:-1]}>[^/]+)" if re.fullmatch(r"\{\w+\}", p) else re.escape(p) for p in parts if p)
    m = re.fullmatch(rx, name)
    return m.groupdict() if m else {}


def owned_by(entries: tuple[str, ...], names) -> list[str]:
    """The names (in the given order) whose owning entry is one of ``entries``."""
    wanted = set(entries)
    return [n for n in names if (m := lookup(n)) is not None and m.name in wanted]


def exclusive_regex(entries: tuple[str, ...]) -> str:
    """An anchored regex (Python and JavaScript alike) matching exactly the names ``entries`` own: their patterns,
    minus any more specific entry elsewhere in the catalog that the patterns would also match (e.g. the reward
    pattern ``train/reward/{reward}_mean`` without ``train/reward/total_mean``)."""
    mine = set(entries)
    alternatives = [pattern_regex(e) for e in entries]
    combined = re.compile("(?:" + "|".join(alternatives) + ")")
    excluded = []
    for other in METRICS:
        if other.name in mine:
            continue
        if combined.fullmatch(example_name(other.name)) or combined.fullmatch(other.name):
            excluded.append(pattern_regex(other.name))
    guard = "(?!(?:" + "|".join(excluded) + ")$)" if excluded else ""
    return "^" + guard + "(?:" + "|".join(alternatives) + ")$"


def section(key: str) -> Section:
    for s in SECTIONS:
        if s.key == key:
            return s
    raise KeyError(f"no dashboard section {key!r}; sections: {[s.key for s in SECTIONS]}")


def catalog_problems() -> list[str]:
    """Inconsistencies inside the catalog itself (each panel's metrics exist, sections are known, names unique)."""
    problems = []
    names = [m.name for m in METRICS]
    keys = {s.key for s in SECTIONS}
    for n in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"metric {n!r} is listed twice")
    for m in METRICS:
        if m.section not in keys:
            problems.append(f"metric {m.name!r} has unknown section {m.section!r}")
        if lookup(example_name(m.name)) is not m:
            problems.append(f"metric {m.name!r}: its example {example_name(m.name)!r} is owned by another entry")
    for p in PANELS:
        if p.section not in keys:
            problems.append(f"panel {p.title!r} has unknown section {p.section!r}")
        for n in p.metrics:
            if n not in names:
                problems.append(f"panel {p.title!r} shows {n!r}, which is not in the catalog")
    return problems


__all__ = ["EXAMPLE_VALUES", "METRICS", "Metric", "PANELS", "Panel", "SECTIONS", "SMOOTHING", "Section",
           "WANDB_STEP", "catalog_problems", "example_name", "exclusive_regex", "lookup", "owned_by",
           "pattern_regex", "placeholder_values", "section"]
