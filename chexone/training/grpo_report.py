"""Summaries of a GRPO run's logged history: did each reward rise between the first and the last steps, by more than
its step-to-step noise?

Each reward's per-step mean (``reward/<name>_mean``, logged in the steps whose prompts it scored) is averaged over the
first and over the last ``fraction`` of the steps; the change gets a 95% confidence interval from Welch's t-interval
over those per-step means (the two windows as independent samples with unequal variances). A reward "rose" when the
whole interval is above 0: the rise is larger than the noise of the per-step means. Neighbouring steps of one run are
not independent, so read the interval as a yardstick for the noise, not as an exact coverage guarantee.
"""

from __future__ import annotations

import math
from statistics import fmean, variance
from typing import Any

#: The total first, then the built-in rewards in this order; other logged rewards follow in the order they appear.
TREND_ORDER = ("total", "format", "vqa", "grounding_iou", "report")
CONFIDENCE = 0.95


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile (p > 0.5) of Student's t with ``df`` degrees of freedom, by bisection on its two-sided tail
    (``chexone.metrics.stats.t_sf_two_sided``; no scipy at runtime)."""
    from chexone.metrics.stats import t_sf_two_sided

    if not 0.5 < p < 1:
        raise ValueError(f"t_quantile needs 0.5 < p < 1, got {p}")
    tail = 2 * (1 - p)
    lo, hi = 0.0, 1.0
    while t_sf_two_sided(hi, df) > tail:
        hi *= 2
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_sf_two_sided(mid, df) > tail else (lo, mid)
    return (lo + hi) / 2


def welch_interval(first: list[float], last: list[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Welch's t confidence interval of ``mean(last) - mean(first)``; needs at least 2 values on each side."""
    if len(first) < 2 or len(last) < 2:
        raise ValueError("Welch's interval needs at least 2 values in each window")
    change = fmean(last) - fmean(first)
    va, vb = variance(first) / len(first), variance(last) / len(last)
    se = math.sqrt(va + vb)
    if se == 0:
        return change, change
    df = (va + vb) ** 2 / (va ** 2 / (len(first) - 1) + vb ** 2 / (len(last) - 1))
    half = t_quantile(1 - (1 - confidence) / 2, df) * se
    return change - half, change + half


def _reward_names(history: list[dict[str, float]]) -> list[str]:
    """Rewards with a per-step mean in the history (``reward/<name>_mean``; per-family keys have a second "/")."""
    seen = []
    for h in history:
        for key in h:
            if key.startswith("reward/") and key.endswith("_mean") and key.count("/") == 1:
                name = key[len("reward/"):-len("_mean")]
                if name not in seen:
                    seen.append(name)
    known = [n for n in TREND_ORDER if n in seen]
    return known + [n for n in seen if n not in known]


def reward_trend(history: list[dict[str, float]], fraction: float = 0.25) -> dict[str, Any]:
    """Per reward: the mean over the first and the last ``fraction`` of steps, the change, its 95% Welch interval and
    a verdict ("rose" | "fell" | "no clear change" | "too few steps"), plus ``message``, a block for the log.

    Keys of the result: ``steps``, ``window``, ``message`` and ``reward/<name>_mean`` -> ``{"first", "last",
    "change", "ci": (low, high) | None, "n_first", "n_last", "verdict"}``.
    """
    n = len(history)
    if n == 0:
        return {"steps": 0, "message": "GRPO reward trend: no steps logged"}
    k = max(1, int(round(n * fraction)))
    out: dict[str, Any] = {"steps": n, "window": k}
    rows = []
    for name in _reward_names(history):
        key = f"reward/{name}_mean"
        a = [h[key] for h in history[:k] if key in h]
        b = [h[key] for h in history[-k:] if key in h]
        if not a or not b:
            continue
        start, end = fmean(a), fmean(b)
        ci = welch_interval(a, b) if len(a) >= 2 and len(b) >= 2 else None
        if ci is None:
            verdict = "too few steps"
        elif ci[0] > 0:
            verdict = "rose"
        elif ci[1] < 0:
            verdict = "fell"
        else:
            verdict = "no clear change"
        out[key] = {"first": start, "last": end, "change": end - start, "ci": ci, "n_first": len(a),
                    "n_last": len(b), "verdict": verdict}
        ci_text = f"[{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "-"
        steps = "" if len(a) == len(b) == min(k, n) else f"  ({len(a)} vs {len(b)} steps scored it)"
        rows.append(f"  {name:<14} {start:6.3f} {end:7.3f} {end - start:+8.3f}  {ci_text:<18}  {verdict}{steps}")
    header = (f"GRPO reward trend: mean of the first vs last {k} of {n} steps; change with its 95% CI "
              "(Welch t over per-step means); 'rose' = the whole CI is above 0")
    out["message"] = "\n".join([header, f"  {'reward':<14} {'first':>6} {'last':>7} {'change':>8}  95% CI", *rows])
    return out
