"""Results files: ``results.json`` per benchmark and Markdown tables (per benchmark, and one row per benchmark like
the paper's tables)."""

from __future__ import annotations

from collections import Counter
from typing import Any, Sequence

from chexone.evaluation.benchmarks import Benchmark
from chexone.evaluation.predict import Prediction
from chexone.evaluation.scoring import BenchmarkScores, majority_baseline_of, row_indices

#: Families whose answers are categorical: the tables also show the majority-answer baseline.
CATEGORICAL_FAMILIES = ("multiple_choice", "open_vqa")


def results_json(bench: Benchmark, preds: Sequence[Prediction], scores: BenchmarkScores, *, confidence: float,
                 n_resamples: int, model: str, seconds: dict[str, float], task_lookup: Any = None) -> dict[str, Any]:
    if task_lookup is None:
        from chexone.tasks import get_task as task_lookup
    rows = {}
    for row, idx in row_indices(preds, bench.group_by).items():
        rows[row] = {m: est.to_json() for m, est in scores.rows.get(row, {}).items()}
        categorical = [preds[i] for i in idx if preds[i].family in CATEGORICAL_FAMILIES]
        if categorical:
            rows[row]["majority_baseline"] = {"value": majority_baseline_of(categorical, task_lookup),
                                              "ci_low": None, "ci_high": None, "n": len(categorical)}
        rows[row]["well_formed"] = {"value": sum(preds[i].well_formed for i in idx) / len(idx) if idx else None,
                                    "ci_low": None, "ci_high": None, "n": len(idx)}
    answer_s = seconds.get("answer", 0.0)
    return {
        "benchmark": bench.name,
        "title": bench.title,
        "path": bench.path,
        "model": model,
        "n": len(preds),
        "tasks": dict(sorted(Counter(p.task for p in preds).items())),
        "skipped": sum(p.skipped is not None for p in preds),
        "truncated": sum(p.truncated for p in preds) / max(1, len(preds)),
        "confidence": confidence,
        "n_resamples": n_resamples,
        "higher_is_better": dict(scores.higher_is_better),
        "rows": rows,
        "details": {task: {ms.name: ms.details for ms in items} for task, items in scores.by_task.items()},
        "seconds": seconds,
        "samples_per_s": len(preds) / answer_s if answer_s > 0 else None,
    }


def fmt(est: dict[str, Any] | None, digits: int = 3) -> str:
    """``0.532 [0.461, 0.605]`` (value and CI), ``0.532`` without a CI, ``-`` when missing."""
    if not est or est.get("value") is None:
        return "-"
    text = f"{est['value']:.{digits}f}"
    if est.get("ci_low") is not None and est.get("ci_high") is not None:
        text += f" [{est['ci_low']:.{digits}f}, {est['ci_high']:.{digits}f}]"
    return text


def metric_columns(results: Sequence[dict[str, Any]]) -> list[str]:
    cols: list[str] = []
    for r in results:
        for metrics in r["rows"].values():
            for m in metrics:
                if m not in cols and m not in ("well_formed", "majority_baseline"):
                    cols.append(m)
    tail = ["majority_baseline"] if any("majority_baseline" in m for r in results for m in r["rows"].values()) else []
    return cols + tail + ["well_formed"]


def _arrow(result: dict[str, Any], metric: str) -> str:
    h = result.get("higher_is_better", {}).get(metric, True)
    return "" if metric in ("well_formed", "majority_baseline") else (" ↑" if h else " ↓" if h is False else "")


def benchmark_markdown(result: dict[str, Any]) -> str:
    cols = metric_columns([result])
    lines = [f"### {result['title']}", "",
             f"{result['n']} samples ({', '.join(f'{t} {n}' for t, n in result['tasks'].items())}); "
             + (f"{result['confidence']:.0%} CI from {result['n_resamples']} bootstrap resamples."
                if result["n_resamples"] else "no CI (eval.bootstrap_resamples=0)."),
             "", "| | n | " + " | ".join(c + _arrow(result, c) for c in cols) + " |",
             "|---|---|" + "---|" * len(cols)]
    for row, metrics in result["rows"].items():
        n = metrics.get("well_formed", {}).get("n", "")
        lines.append(f"| {row} | {n} | " + " | ".join(fmt(metrics.get(c)) for c in cols) + " |")
    extra = []
    if result.get("skipped"):
        extra.append(f"{result['skipped']} sample(s) not answered (prompt too long) count as wrong")
    if result.get("truncated"):
        extra.append(f"{result['truncated']:.1%} of answers hit eval.max_new_tokens")
    if result.get("samples_per_s"):
        extra.append(f"{result['samples_per_s']:.2f} samples/s")
    if extra:
        lines += ["", "; ".join(extra) + "."]
    return "\n".join(lines) + "\n"


def summary_markdown(results: dict[str, dict[str, Any]]) -> str:
    """One row per benchmark (all its samples), one column per metric: the paper's table layout."""
    rs = list(results.values())
    cols = metric_columns(rs)
    model = rs[0]["model"] if rs else "?"
    lines = [f"# Evaluation of `{model}`", "",
             "| benchmark | n | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for r in rs:
        row = r["rows"]["all"]
        lines.append(f"| {r['title']} | {r['n']} | " + " | ".join(fmt(row.get(c)) for c in cols) + " |")
    lines.append("")
    for r in rs:
        lines.append(benchmark_markdown(r))
    return "\n".join(lines)
