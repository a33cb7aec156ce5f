"""``python -m chexone.evaluate compare A B``: paired differences between two evaluation runs on the same samples.

Samples are paired by id within each benchmark both runs have. Per metric with per-sample scores: the means, the
difference B − A with a paired bootstrap CI, and the test docs/method.md §5 prescribes: McNemar (exact) when the scores
are correct/wrong (accuracy, exact match), the Wilcoxon signed-rank test for ordinal ratings, the paired t-test for
continuous scores. A metric class says which with ``paired_test = "mcnemar" | "paired_t" | "wilcoxon"`` (or
``ordinal = True``); without it, 0/1 scores get McNemar and anything else the t-test. Corpus-only metrics (e.g.
mAP) are listed without a test.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from chexone.metrics.stats import bootstrap_ci, mcnemar, paired_ttest, wilcoxon_signed_rank

SAMPLES_FILE = "samples.jsonl"


@dataclass
class Comparison:
    benchmark: str
    metric: str
    n: int
    mean_a: float
    mean_b: float
    diff: float
    ci_low: float | None
    ci_high: float | None
    test: str
    statistic: float | None
    pvalue: float | None


def benchmark_dirs(root: Path) -> dict[str, Path]:
    """Benchmark name -> directory holding ``samples.jsonl`` (a results root, or one benchmark directory)."""
    root = Path(root)
    if (root / SAMPLES_FILE).exists():
        return {root.name: root}
    found = {d.name: d for d in sorted(root.iterdir()) if (d / SAMPLES_FILE).exists()} if root.is_dir() else {}
    if not found:
        raise FileNotFoundError(f"{root}: no evaluation results (no */{SAMPLES_FILE}); pass an eval.out directory")
    return found


def load_scores(path: Path) -> dict[str, dict[str, float | None]]:
    """Sample id -> per-metric scores from a ``samples.jsonl``."""
    out = {}
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rec = json.loads(line)
                out[rec["id"]] = rec.get("scores") or {}
    return out


PAIRED_TESTS = ("mcnemar", "paired_t", "wilcoxon")


def declared_test(metric: str) -> str | None:
    """The metric class's ``paired_test`` (or ``wilcoxon`` when it declares ``ordinal = True``), if any."""
    try:
        from chexone.registry import METRICS

        cls = METRICS.get(metric)
    except Exception:  # noqa: BLE001 - an unknown or broken plugin metric: decide from the values
        return None
    test = getattr(cls, "paired_test", None)
    if test is None and getattr(cls, "ordinal", False):
        test = "wilcoxon"
    if test is not None and test not in PAIRED_TESTS:
        raise ValueError(f"metric {metric!r}: paired_test={test!r}; choose one of {PAIRED_TESTS}")
    return test


def choose_test(metric: str, a: np.ndarray, b: np.ndarray) -> str:
    """The metric's declared test; otherwise McNemar for 0/1 scores and the paired t-test for anything else."""
    declared = declared_test(metric)
    if declared:
        return declared
    if np.isin(a, (0.0, 1.0)).all() and np.isin(b, (0.0, 1.0)).all():
        return "mcnemar"
    return "paired_t"


def compare_scores(benchmark: str, metric: str, a: np.ndarray, b: np.ndarray, *, seed: int = 0,
                   n_resamples: int = 1000) -> Comparison:
    test = choose_test(metric, a, b)
    if test == "mcnemar":
        res = mcnemar(a.astype(bool), b.astype(bool))
    elif test == "wilcoxon":
        res = wilcoxon_signed_rank(b, a)
    else:
        res = paired_ttest(b, a)
    low = high = None
    if a.size >= 2 and n_resamples:
        ci = bootstrap_ci(b - a, n_resamples=n_resamples, seed=seed)
        low, high = ci.low, ci.high
    clean = (lambda x: None if x is None or not math.isfinite(x) else float(x))
    return Comparison(benchmark, metric, int(a.size), float(a.mean()), float(b.mean()), float((b - a).mean()),
                      low, high, f"{test} ({res.method})", clean(res.statistic), clean(res.pvalue))


def compare_runs(a_root: Path, b_root: Path, *, seed: int = 0, n_resamples: int = 1000) -> tuple[list[Comparison],
                                                                                                    list[str]]:
    """Paired comparisons for every benchmark and metric the two runs share; also notes on what was left out."""
    a_dirs, b_dirs = benchmark_dirs(a_root), benchmark_dirs(b_root)
    if len(a_dirs) == 1 and len(b_dirs) == 1 and set(a_dirs) != set(b_dirs):
        b_dirs = {next(iter(a_dirs)): next(iter(b_dirs.values()))}  # two single benchmark directories
    rows: list[Comparison] = []
    notes: list[str] = []
    for name in sorted(set(a_dirs) | set(b_dirs)):
        if name not in a_dirs or name not in b_dirs:
            notes.append(f"{name}: only in {'A' if name in a_dirs else 'B'}")
            continue
        sa, sb = load_scores(a_dirs[name] / SAMPLES_FILE), load_scores(b_dirs[name] / SAMPLES_FILE)
        ids = [i for i in sa if i in sb]
        if len(ids) < len(sa) or len(ids) < len(sb):
            notes.append(f"{name}: {len(ids)} paired samples ({len(sa)} in A, {len(sb)} in B)")
        metrics = list(dict.fromkeys(m for i in ids for m in list(sa[i]) + list(sb[i])))
        for metric in metrics:
            pairs = [(sa[i].get(metric), sb[i].get(metric)) for i in ids]
            pairs = [(x, y) for x, y in pairs if x is not None and y is not None]
            if not pairs:
                continue
            a = np.array([x for x, _ in pairs], dtype=np.float64)
            b = np.array([y for _, y in pairs], dtype=np.float64)
            rows.append(compare_scores(name, metric, a, b, seed=seed, n_resamples=n_resamples))
        res = a_dirs[name] / "results.json"
        if res.exists():
            corpus_only = [m for m in json.loads(res.read_text()).get("rows", {}).get("all", {})
                           if m not in metrics and m not in ("well_formed", "majority_baseline")]
            if corpus_only:
                notes.append(f"{name}: no per-sample scores for {', '.join(corpus_only)} (no paired test)")
    return rows, notes


def format_comparison(rows: list[Comparison], notes: list[str], a: str, b: str) -> str:
    def f(x: float | None, d: int = 4) -> str:
        return "-" if x is None else f"{x:.{d}f}"

    lines = [f"A = {a}", f"B = {b}", "",
             "| benchmark | metric | n | A | B | B − A [95% CI] | test | p |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ci = f" [{f(r.ci_low)}, {f(r.ci_high)}]" if r.ci_low is not None else ""
        lines.append(f"| {r.benchmark} | {r.metric} | {r.n} | {f(r.mean_a)} | {f(r.mean_b)} | {r.diff:+.4f}{ci} | "
                     f"{r.test} | {f(r.pvalue, 4)} |")
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def main_compare(argv: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m chexone.evaluate compare",
                                description="Paired differences between two evaluation runs (same samples).")
    p.add_argument("a", help="results directory of run A (eval.out) or one benchmark directory")
    p.add_argument("b", help="results directory of run B")
    p.add_argument("--out", help="also write the table to this Markdown file")
    p.add_argument("--json", help="also write the rows as JSON to this file")
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples for the CI of the difference")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        rows, notes = compare_runs(Path(args.a), Path(args.b), seed=args.seed, n_resamples=args.resamples)
    except FileNotFoundError as e:
        print(f"error: {e}")
        return 2
    text = format_comparison(rows, notes, args.a, args.b)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    if args.json:
        Path(args.json).write_text(json.dumps([r.__dict__ for r in rows], indent=2))
    return 0
