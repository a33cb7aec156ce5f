"""Score predictions with registered metrics: per-sample scores, corpus values with bootstrap CIs, per-group rows.

A metric (``chexone.metrics`` registry, built-in or plugin) is a ``torchmetrics.Metric``. What the harness feeds it
and how it reads it back is declared by optional class attributes, so a plugin metric plugs in the same way:

* ``eval_inputs = (prediction, reference)``: prediction ``"final"`` (the final answer text; the default),
  ``"response"`` (the whole output, reasoning included) or ``"samples"`` (the K stochastic final answers); reference
  ``"answer"`` (the task's answer text; the default), ``"report"`` (``meta['report']``, the reference report) or
  ``"options"`` (the option list).
* ``score(preds, refs) -> list[float | None]``: per-sample scores (None = not scorable, left out). Without it the
  metric is corpus-only: its value on a subset is recomputed from that subset (and so is its bootstrap).
* ``corpus_statistic(values, axis=-1)``: the corpus value from per-sample scores (default: the mean; RadCliQ:
  1/mean). ``primary``: the headline key when ``compute()`` returns a dict.
* A ``task`` constructor argument receives the task name (answer parsing of that task).
"""

from __future__ import annotations

import inspect
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from chexone.evaluation.predict import Prediction
from chexone.metrics.stats import bootstrap_ci

PREDICTION_KINDS = ("final", "response", "samples")
REFERENCE_KINDS = ("answer", "report", "options")


def metric_inputs(metric: Any) -> tuple[str, str]:
    pred, ref = getattr(metric, "eval_inputs", ("final", "answer"))
    if pred not in PREDICTION_KINDS or ref not in REFERENCE_KINDS:
        raise ValueError(f"{type(metric).__name__}.eval_inputs={pred, ref!r}: prediction must be one of "
                         f"{PREDICTION_KINDS}, reference one of {REFERENCE_KINDS}")
    return pred, ref


def prediction_input(p: Prediction, kind: str) -> Any:
    if kind == "final":
        return p.final or ""
    if kind == "response":
        return p.output
    return list(p.samples or [])


def reference_input(p: Prediction, kind: str) -> Any:
    if kind == "answer":
        return p.reference
    if kind == "options":
        return list(p.meta.get("options") or [])
    report = p.meta.get("report")
    if not isinstance(report, str) or not report.strip():
        raise ValueError(f"sample {p.id!r} (task {p.task}): the metric needs the reference report in meta['report']")
    return report


def scalar(value: Any) -> float | None:
    """A float from a metric value (tensor/number); None for non-scalars."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            return None
        value = value.item()
    if isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool):
        return float(value)
    return None


def primary_value(metric: Any, computed: Any) -> float:
    if isinstance(computed, dict):
        key = getattr(metric, "primary", None)
        if key not in computed:
            raise ValueError(f"{type(metric).__name__}.compute() returned keys {sorted(computed)} but no 'primary' "
                             "attribute naming the headline one")
        computed = computed[key]
    v = scalar(computed)
    return float("nan") if v is None else v


def details(computed: Any) -> dict[str, Any]:
    """Every value of ``compute()`` in JSON form (scalars as floats, tensors as nested lists)."""
    if not isinstance(computed, dict):
        computed = {"value": computed}
    out = {}
    for k, v in computed.items():
        s = scalar(v)
        if s is not None:
            out[k] = None if math.isnan(s) else s
        elif isinstance(v, torch.Tensor):
            out[k] = [None if isinstance(x, float) and math.isnan(x) else x for x in v.tolist()] if v.dim() == 1 \
                else v.tolist()
    return out


def function_metric(fn: Callable[..., Any], name: str) -> type:
    """A metric class around a plain per-sample scoring function ``fn(preds, refs) -> list[float | None]`` (the
    docs allow registering one): it accumulates the scores, reports their mean, scores per sample and merges across
    processes like any built-in per-sample metric. Optional attributes of ``fn`` are honoured: ``eval_inputs``,
    ``higher_is_better``, ``corpus_statistic``."""
    from chexone.metrics._common import PerSampleMetric

    class FunctionMetric(PerSampleMetric):
        def _score(self, preds: Sequence[Any], targets: Sequence[Any]) -> list[float | None]:
            return [None if v is None else float(v) for v in fn(list(preds), list(targets))]

        def score(self, preds: Sequence[Any], refs: Sequence[Any]) -> list[float | None]:
            return self._score(preds, refs)

    for attr in ("eval_inputs", "higher_is_better", "corpus_statistic"):
        if hasattr(fn, attr):
            setattr(FunctionMetric, attr, getattr(fn, attr))
    FunctionMetric.__name__ = FunctionMetric.__qualname__ = f"FunctionMetric[{name}]"
    return FunctionMetric


def metric_problem(metric: Any) -> str | None:
    """What keeps ``metric`` (an instance) from being scored by the harness, or None: the checks run before any
    answer is generated, so a broken metric costs seconds, not a whole evaluation."""
    missing = [m for m in ("update", "compute") if not callable(getattr(metric, m, None))]
    if missing:
        return (f"has no {' and no '.join(f'{m}()' for m in missing)} method; a metric is a class with update(preds, "
                "refs) and compute() (e.g. a torchmetrics.Metric, or chexone.metrics.PerSampleMetric), or a plain "
                "function fn(preds, refs) -> list[float | None]")
    try:
        metric_inputs(metric)
    except (ValueError, TypeError) as err:
        return str(err)
    if hasattr(metric, "score") and not callable(metric.score):
        return "has a 'score' attribute that is not a method score(preds, refs) -> list[float | None]"
    return None


def build_metric(name: str, task: str, kwargs: dict[str, Any], registry: Any = None) -> Any:
    """Instantiate a registered metric for one task (``task=`` passed when the constructor takes it). A registered
    plain function becomes a per-sample metric (:func:`function_metric`); the result is checked
    (:func:`metric_problem`) and a ``TypeError`` names what is missing."""
    if registry is None:
        from chexone.registry import METRICS as registry
    cls = registry.get(name)
    if not isinstance(cls, type) and callable(cls) and not callable(getattr(cls, "update", None)):
        cls = function_metric(cls, name)
    kw = dict(kwargs)
    if isinstance(cls, type):
        try:
            params = inspect.signature(cls).parameters
        except (TypeError, ValueError):
            params = {}
        if "task" in params and "task" not in kw:
            kw["task"] = task
        metric = cls(**kw)
    else:  # a registered metric instance: a fresh copy per task
        metric = cls.clone() if callable(getattr(cls, "clone", None)) else cls
    problem = metric_problem(metric)
    if problem:
        raise TypeError(f"metric {name!r} {problem}")
    if hasattr(metric, "sync_on_compute"):
        # Scored per process: compute() must not gather other ranks' states (under DDP validation the ranks hold
        # different tasks, and a collective that only some ranks enter would hang).
        metric.sync_on_compute = False
        metric._to_sync = False
    return metric


@dataclass
class Estimate:
    """A corpus value with its confidence interval over the samples it was computed on."""

    value: float
    low: float | None
    high: float | None
    n: int

    def to_json(self) -> dict[str, Any]:
        def clean(x: float | None) -> float | None:
            return None if x is None or not math.isfinite(x) else x

        return {"value": clean(self.value), "ci_low": clean(self.low), "ci_high": clean(self.high), "n": self.n}


@dataclass
class MetricScores:
    """One metric on one task's predictions: per-sample scores (aligned, None = not scored) and how to aggregate."""

    name: str
    task: str
    metric: Any
    per_sample: list[float | None] | None
    statistic: Callable[..., Any]
    details: dict[str, Any] = field(default_factory=dict)
    higher_is_better: bool | None = True
    preds: list[Any] = field(default_factory=list)
    refs: list[Any] = field(default_factory=list)

    def corpus_value(self, idx: Sequence[int]) -> float:
        if self.per_sample is not None:
            v = np.array([self.per_sample[i] for i in idx if self.per_sample[i] is not None], dtype=np.float64)
            return float(self.statistic(v, axis=-1)) if v.size else float("nan")
        m = self.metric.clone()
        m.reset()
        m.update([self.preds[i] for i in idx], [self.refs[i] for i in idx])
        return primary_value(m, m.compute())

    def estimate(self, idx: Sequence[int], *, n_resamples: int, confidence: float, seed: int) -> Estimate:
        idx = list(idx)
        if self.per_sample is not None:
            values = np.array([self.per_sample[i] for i in idx if self.per_sample[i] is not None], dtype=np.float64)
            if values.size == 0:
                return Estimate(float("nan"), None, None, 0)
            value = float(self.statistic(values, axis=-1))
            if n_resamples == 0 or values.size < 2:
                return Estimate(value, None, None, int(values.size))
            with np.errstate(divide="ignore", invalid="ignore"):
                ci = bootstrap_ci(values, statistic=self.statistic, n_resamples=n_resamples, confidence=confidence,
                                  seed=seed)
            return Estimate(value, ci.low, ci.high, int(values.size))
        if not idx:
            return Estimate(float("nan"), None, None, 0)
        value = self.corpus_value(idx)
        if n_resamples == 0 or len(idx) < 2:
            return Estimate(value, None, None, len(idx))
        # corpus-only metric: recompute it on each resample of the samples
        rng = np.random.default_rng(seed)
        draws = rng.integers(0, len(idx), (n_resamples, len(idx)))
        dist = np.array([self.corpus_value([idx[j] for j in row]) for row in draws], dtype=np.float64)
        dist = dist[np.isfinite(dist)]
        if dist.size == 0:
            return Estimate(value, None, None, len(idx))
        alpha = (1 - confidence) / 2
        low, high = np.quantile(dist, [alpha, 1 - alpha])
        return Estimate(value, float(low), float(high), len(idx))


def score_metric(name: str, task: str, predictions: Sequence[Prediction], kwargs: dict[str, Any],
                 registry: Any = None) -> MetricScores:
    """Run one metric over one task's predictions."""
    metric = build_metric(name, task, kwargs, registry)
    pred_kind, ref_kind = metric_inputs(metric)
    preds = [prediction_input(p, pred_kind) for p in predictions]
    refs = [reference_input(p, ref_kind) for p in predictions]
    metric.update(preds, refs)
    computed = metric.compute()
    per_sample = None
    if callable(getattr(metric, "score", None)):
        per_sample = [None if v is None else float(v) for v in metric.score(preds, refs)]
        if len(per_sample) != len(predictions):
            raise RuntimeError(f"metric {name!r}: score() returned {len(per_sample)} values for {len(predictions)} "
                               "samples")
    statistic = getattr(metric, "corpus_statistic", None) or np.mean
    higher = getattr(metric, "higher_is_better", True)
    return MetricScores(name, task, metric, per_sample, statistic, details(computed), higher, preds, refs)


def task_metrics(task_lookup: Callable[[str], Any], task: str, requested: Sequence[str],
                 allowed: Sequence[str] | None = None) -> list[str]:
    """The metrics to run on a task: the benchmark's list when it names any, else the task's defaults
    (``Task.metrics``), restricted to ``allowed`` when given (e.g. the cheap metrics of in-training validation)."""
    names = list(requested) or list(getattr(task_lookup(task), "metrics", ()) or ())
    return names if allowed is None else [n for n in names if n in allowed]


@dataclass
class BenchmarkScores:
    """All metrics of one benchmark: per task, and rows (overall, per task, per group) of estimates."""

    by_task: dict[str, list[MetricScores]]
    rows: dict[str, dict[str, Estimate]]
    higher_is_better: dict[str, bool | None]
    per_sample: dict[str, list[float | None]]  # metric -> aligned with the input predictions (None where N/A)


def row_indices(predictions: Sequence[Prediction], group_by: str) -> dict[str, list[int]]:
    rows: dict[str, list[int]] = {"all": list(range(len(predictions)))}
    tasks = sorted({p.task for p in predictions})
    if len(tasks) > 1:
        for t in tasks:
            rows[f"task={t}"] = [i for i, p in enumerate(predictions) if p.task == t]
    if group_by:
        groups: dict[str, list[int]] = defaultdict(list)
        for i, p in enumerate(predictions):
            value = getattr(p, group_by, None) if group_by in ("task", "dataset", "family") else p.meta.get(group_by)
            groups[str(value if value not in (None, "") else "(none)")].append(i)
        for g in sorted(groups):
            rows[f"{group_by}={g}"] = groups[g]
    return rows


def score_predictions(predictions: Sequence[Prediction], task_lookup: Callable[[str], Any], *,
                      metrics: Sequence[str] = (), metric_kwargs: dict[str, dict[str, Any]] | None = None,
                      group_by: str = "", n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0,
                      allowed: Sequence[str] | None = None, registry: Any = None) -> BenchmarkScores:
    """Score a benchmark's predictions: each task's metrics on its samples, then every row (all samples, each task,
    each ``group_by`` value) with a bootstrap CI. On a row spanning several tasks a metric pools the tasks' per-sample
    scores; a corpus-only metric is recomputed on the row's samples (with the first task's instance).
    Per-sample scores are also written into each prediction's ``scores``."""
    metric_kwargs = metric_kwargs or {}
    preds = list(predictions)
    by_task_idx: dict[str, list[int]] = defaultdict(list)
    for i, p in enumerate(preds):
        by_task_idx[p.task].append(i)
    by_task: dict[str, list[MetricScores]] = {}
    per_sample: dict[str, list[float | None]] = {}
    higher: dict[str, bool | None] = {}
    position: dict[tuple[str, int], tuple[MetricScores, int]] = {}  # (metric, global index) -> (scores, local index)
    for task, idx in sorted(by_task_idx.items()):
        subset = [preds[i] for i in idx]
        by_task[task] = []
        for name in task_metrics(task_lookup, task, metrics, allowed):
            ms = score_metric(name, task, subset, dict(metric_kwargs.get(name, {}) or {}), registry)
            by_task[task].append(ms)
            higher.setdefault(name, ms.higher_is_better)
            vals = per_sample.setdefault(name, [None] * len(preds))
            for local, i in enumerate(idx):
                position[(name, i)] = (ms, local)
                if ms.per_sample is not None:
                    vals[i] = ms.per_sample[local]
                    preds[i].scores[name] = ms.per_sample[local]
    rows: dict[str, dict[str, Estimate]] = {}
    for row, idx in row_indices(preds, group_by).items():
        rows[row] = {}
        for name in per_sample:
            members = [position[(name, i)] for i in idx if (name, i) in position]
            if not members:
                continue
            owners = {id(ms) for ms, _ in members}
            ms0 = members[0][0]
            local = [j for _, j in members]
            if len(owners) == 1:
                rows[row][name] = ms0.estimate(local, n_resamples=n_resamples, confidence=confidence, seed=seed)
            else:  # a row spanning tasks: pool the per-sample scores, or recompute a corpus-only metric on all
                per = None if any(ms.per_sample is None for ms, _ in members) else [ms.per_sample[j]
                                                                                     for ms, j in members]
                pooled = MetricScores(name, "*", ms0.metric, per, ms0.statistic,
                                      preds=[ms.preds[j] for ms, j in members], refs=[ms.refs[j] for ms, j in members])
                rows[row][name] = pooled.estimate(range(len(members)), n_resamples=n_resamples,
                                                  confidence=confidence, seed=seed)
    return BenchmarkScores(by_task, rows, higher, per_sample)


def majority_baseline(rows: Sequence[tuple[str, object]]) -> float:
    """Accuracy of always giving the most frequent answer of each question group, over the same samples: the bar a
    model that ignores the image reaches. ``rows`` = (group, canonical answer) pairs."""
    by_group: dict[str, Counter] = defaultdict(Counter)
    for group, answer in rows:
        by_group[group][answer] += 1
    hits = sum(c.most_common(1)[0][1] for c in by_group.values())
    return hits / max(1, len(rows))


def majority_baseline_of(predictions: Sequence[Prediction], task_lookup: Callable[[str], Any]) -> float:
    """:func:`majority_baseline` of predictions, grouped by task + ``meta['question_type']``, answers parsed by the
    task (so "(A) yes" and "A" are one answer)."""
    rows = []
    for p in predictions:
        answer = task_lookup(p.task).parse_answer(p.reference)
        rows.append((f"{p.task}/{p.meta.get('question_type', '')}", answer))
    return majority_baseline(rows)
