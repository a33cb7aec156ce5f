"""Export plots (matplotlib, Agg backend, no display): time to sign per reader and type, pairwise preferences per
reader, and the distribution of each Likert scale per reader."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

if TYPE_CHECKING:  # pragma: no cover
    from chexone.reader_study.export import Collected
    from chexone.reader_study.study import Study

COLOURS = {"model": "#0b5cad", "reference": "#e08a00", "equal": "#8c959f"}


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def time_plot(study: "Study", c: "Collected", path: Path) -> Path | None:
    kinds = [k for k in study.types if c.signed(k)]
    if not kinds:
        return None
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.2 * len(kinds), 3.6), squeeze=False)
    rng = np.random.default_rng(0)
    for ax, kind in zip(axes[0], kinds):
        readers = [r.id for r in study.readers]
        data = [[a.seconds_to_sign for a in c.signed(kind, r) if a.seconds_to_sign is not None] for r in readers]
        keep = [(r, d) for r, d in zip(readers, data) if d]
        ax.boxplot([d for _, d in keep], showfliers=False)
        for i, (_, d) in enumerate(keep, 1):
            ax.scatter(i + rng.uniform(-0.12, 0.12, len(d)), d, s=12, alpha=0.7, color="#24292f", zorder=3)
        ax.set_xticks(range(1, len(keep) + 1), [r for r, _ in keep], rotation=30, ha="right")
        ax.set_title(kind.replace("_", " "))
        ax.set_ylabel("seconds to sign")
    return _save(fig, path)


def preference_plot(study: "Study", c: "Collected", path: Path) -> Path | None:
    from chexone.reader_study.export import PREFERENCES, _preferred_report

    if not c.signed("pairwise"):
        return None
    groups = [("all readers", c.signed("pairwise"))] + [(r.id, c.signed("pairwise", r.id)) for r in study.readers]
    groups = [(name, xs) for name, xs in groups if xs]
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(groups) + 1.6))
    left = np.zeros(len(groups))
    for pref in PREFERENCES:
        share = np.array([sum(_preferred_report(a.payload) == pref for a in xs) / len(xs) for _, xs in groups])
        ax.barh([name for name, _ in groups], share, left=left, color=COLOURS[pref], label=pref)
        left += share
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of pairwise comparisons")
    ax.legend(ncols=3, loc="upper center", bbox_to_anchor=(0.5, -0.35), frameon=False)
    ax.set_title("preferred report")
    return _save(fig, path)


def likert_plot(study: "Study", c: "Collected", path: Path) -> Path | None:
    answers = c.signed("reasoning_rating")
    if not answers:
        return None
    scales = study.likert
    readers = [r.id for r in study.readers if c.signed("reasoning_rating", r.id)]
    fig, axes = plt.subplots(1, len(scales), figsize=(4 * len(scales), 3.4), squeeze=False)
    width = 0.8 / max(1, len(readers))
    for ax, scale in zip(axes[0], scales):
        for k, r in enumerate(readers):
            vals = [a.payload["ratings"].get(scale.key) for a in c.signed("reasoning_rating", r)]
            counts = [vals.count(v) for v in scale.values]
            ax.bar(np.array(scale.values) - 0.4 + width * (k + 0.5), counts, width=width, label=r)
        ax.set_xticks(scale.values)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(scale.key.replace("_", " "))
        ax.set_xlabel("rating")
        ax.set_ylabel("items")
    axes[0][0].legend(title="reader", fontsize="small")
    return _save(fig, path)


def write_plots(study: "Study", c: "Collected", out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    made = [time_plot(study, c, out / "time_to_sign.png"), preference_plot(study, c, out / "preferences.png"),
            likert_plot(study, c, out / "likert.png")]
    return [p for p in made if p is not None]
