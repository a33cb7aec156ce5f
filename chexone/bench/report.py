"""Markdown tables of a ``compare`` run: per-framework medians, the chexone/TRL ratio of every back-to-back group of
runs (min / median / max), the step split, peak memory, and (with a known peak) tokens/s/GPU and MFU."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from chexone.bench.workload import Workload


@dataclass
class Point:
    """Every run of one workload: ``groups[k]`` holds the runs made back to back (one per framework variant)."""

    workload: Workload
    groups: list[list[dict[str, Any]]] = field(default_factory=list)
    flops_per_step: dict[str, float] = field(default_factory=dict)   # label -> model FLOPs of one step
    peak_flops: float | None = None


def label(run: dict[str, Any]) -> str:
    name = "TRL" if run["framework"] == "trl" else "chexone"
    return f"{name} ({run['variant']})" if run.get("variant") else name


def tokens_per_second(run: dict[str, Any]) -> float:
    seconds = sum(run["step_seconds"])
    return sum(run["tokens_per_step"]) / seconds if seconds > 0 else 0.0


def seconds_per_step(run: dict[str, Any]) -> float:
    return statistics.median(run["step_seconds"])


def labels(point: Point) -> list[str]:
    return [label(r) for r in point.groups[0]]


def runs_of(point: Point, name: str) -> list[dict[str, Any]]:
    return [r for group in point.groups for r in group if label(r) == name]


def ratios(point: Point, name: str) -> list[float]:
    """chexone variant ``name`` over TRL in tokens/s, one ratio per back-to-back group."""
    out = []
    for group in point.groups:
        ours = next(r for r in group if label(r) == name)
        trl = next(r for r in group if r["framework"] == "trl")
        out.append(tokens_per_second(ours) / tokens_per_second(trl))
    return out


def spread(values: list[float], fmt: str = "{:.2f}") -> str:
    """``median (min–max)``, or the single value."""
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}–{fmt.format(max(values))})"


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def _split(run_list: list[dict[str, Any]]) -> str:
    phases = ("generation", "logps", "policy", "rewards")
    if not run_list[0]["split"]:
        return "–"
    parts = []
    for p in phases:
        values = [r["split"].get(p, 0.0) for r in run_list]
        parts.append(f"{p} {statistics.median(values):.3f}")
    return ", ".join(parts) + " s"


def point_table(point: Point) -> str:
    """One workload: a row per framework (medians over all runs) and a row per chexone/TRL ratio."""
    w = point.workload
    unit = "completion tokens/s" if w.bench == "grpo" else "non-pad tokens/s"
    show_mfu = point.peak_flops is not None
    head = ["framework", "s/step", unit + (" (per GPU)" if w.device == "cuda" else ""), "step split (median)",
            "peak memory"]
    if show_mfu:
        head.append("MFU")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in labels(point):
        rs = runs_of(point, name)
        row = [name, spread([seconds_per_step(r) for r in rs], "{:.3f}"),
               spread([tokens_per_second(r) for r in rs], "{:,.0f}"), _split(rs),
               f"{_gib(statistics.median(r['peak_memory_bytes'] for r in rs))} ({rs[0]['memory_kind']})"]
        if show_mfu:
            flops = point.flops_per_step.get(name)
            row.append(spread([flops / seconds_per_step(r) / point.peak_flops for r in rs], "{:.1%}")
                       if flops else "–")
        lines.append("| " + " | ".join(row) + " |")
    trl_memory = statistics.median(r["peak_memory_bytes"] for r in runs_of(point, "TRL"))
    for name in labels(point):
        if name == "TRL":
            continue
        memory = statistics.median(r["peak_memory_bytes"] for r in runs_of(point, name))
        row = [f"**{name} / TRL**", "", f"**{spread(ratios(point, name))}x** per pair", "",
               f"{memory / trl_memory - 1:+.0%}"]
        if show_mfu:
            row.append("")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def pairs_table(point: Point) -> str:
    """Every back-to-back group in the order it ran: tokens/s of each run and the ratios."""
    names = labels(point)
    others = [n for n in names if n != "TRL"]
    head = ["group", "order", *[f"{n} tokens/s" for n in names], *[f"{n} / TRL" for n in others]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for k, group in enumerate(point.groups, 1):
        by_name = {label(r): r for r in group}
        row = [str(k), " → ".join(label(r) for r in group),
               *[f"{tokens_per_second(by_name[n]):,.0f}" for n in names],
               *[f"{tokens_per_second(by_name[n]) / tokens_per_second(by_name['TRL']):.2f}x" for n in others]]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def scaling_table(points: list[tuple[str, Point]]) -> str:
    """GRPO points along one axis each: tokens/s of each framework and the ratio per pair."""
    lines = ["| varied | P x G | completion tokens | image tokens/image | chexone tokens/s | TRL tokens/s | "
             "chexone / TRL (median (min–max) per pair) |", "|---|---|---|---|---|---|---|"]
    for axis, p in points:
        w = p.workload
        ours = statistics.median(tokens_per_second(r) for r in runs_of(p, "chexone"))
        trl = statistics.median(tokens_per_second(r) for r in runs_of(p, "TRL"))
        lines.append(f"| {axis} | {w.prompts} x {w.generations} | {w.completion_tokens} | {w.image_tokens} | "
                     f"{ours:,.0f} | {trl:,.0f} | {spread(ratios(p, 'chexone'))}x |")
    return "\n".join(lines)


def header(command: str, run: dict[str, Any]) -> str:
    """The comment line every table set starts with: the exact command, versions and the machine."""
    v = run["versions"]
    return (f"<!-- {command} | torch {v['torch']} | transformers {v['transformers']} | trl {v['trl']} | "
            f"chexone {v['chexone']} | {run['device_name']} -->")
