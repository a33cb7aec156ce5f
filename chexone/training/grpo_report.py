"""Summaries of a GRPO run's logged history, e.g. whether rewards rose between its first and last steps."""

from __future__ import annotations

from typing import Any

TREND_KEYS = ("reward/total_mean", "reward/vqa_mean", "reward/format_mean", "reward/grounding_iou_mean")


def reward_trend(history: list[dict[str, float]], fraction: float = 0.2) -> dict[str, Any]:
    """Mean of each reward over the first and the last ``fraction`` of steps, their difference, and a one-line
    message for the log."""
    n = len(history)
    if n == 0:
        return {"steps": 0, "message": "GRPO reward trend: no steps logged"}
    k = max(1, int(round(n * fraction)))
    first, last = history[:k], history[-k:]
    out: dict[str, Any] = {"steps": n, "window": k}
    parts = []
    for key in TREND_KEYS:
        a = [h[key] for h in first if key in h]
        b = [h[key] for h in last if key in h]
        if not a or not b:
            continue
        start, end = sum(a) / len(a), sum(b) / len(b)
        out[key] = {"first": start, "last": end, "change": end - start}
        parts.append(f"{key.removeprefix('reward/').removesuffix('_mean')} {start:.3f} -> {end:.3f} "
                     f"({end - start:+.3f})")
    out["message"] = (f"GRPO reward trend, mean of the first vs last {k} of {n} steps: " + "; ".join(parts))
    return out
