"""One PNG per dashboard panel (matplotlib, Agg: no display): every series drawn raw (faint) and EMA-smoothed, or
stacked for parts of a whole such as the step-time split."""

from __future__ import annotations

import io
import math

from chexone.dashboard.history import ema

#: Figure size in inches at DPI: 480 x 290 px, two panels side by side in the report.
FIGSIZE = (4.8, 2.9)
DPI = 100


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def line_panel_png(title: str, series: dict[str, list[tuple[float, float]]], *, smoothing: float,
                   unit: str = "", legend: bool | None = None) -> bytes:
    """PNG bytes of ``series`` (label -> [(step, value)]) against step: raw values faint (with markers when there
    are few), the EMA (weight ``smoothing``) solid in the same colour. The legend shows with several series unless
    ``legend`` says otherwise."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=FIGSIZE, dpi=DPI)
    try:
        for k, (label, points) in enumerate(series.items()):
            colour = f"C{k % 10}"
            xs = [x for x, _ in points]
            ys = [y for _, y in points]
            few = len(points) <= 25
            ax.plot(xs, ys, color=colour, alpha=0.3 if smoothing > 0 else 1.0, linewidth=1,
                    marker="o" if few else None, markersize=2.5)
            if smoothing > 0:
                ax.plot(xs, ema(ys, smoothing), color=colour, linewidth=1.8, label=label)
            else:
                ax.lines[-1].set_label(label)
        _finish(ax, title, unit, legend=len(series) > 1 if legend is None else legend)
        return _png(fig)
    finally:
        plt.close(fig)


def stacked_panel_png(title: str, series: dict[str, list[tuple[float, float]]], *, unit: str = "") -> bytes:
    """PNG bytes of ``series`` stacked (an area per label) at the steps where every series has a value."""
    plt = _pyplot()
    common = sorted(set.intersection(*(set(x for x, _ in pts) for pts in series.values())))
    values = {label: dict(points) for label, points in series.items()}
    fig, ax = plt.subplots(figsize=FIGSIZE, dpi=DPI)
    try:
        ax.stackplot(common, *[[values[label][x] for x in common] for label in series], labels=list(series),
                     alpha=0.85)
        _finish(ax, title, unit, legend=True)
        return _png(fig)
    finally:
        plt.close(fig)


def _finish(ax, title: str, unit: str, *, legend: bool) -> None:
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("step", fontsize=8)
    if unit:
        ax.set_ylabel(unit, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(fontsize=7, loc="best", frameon=False)


def _png(fig) -> bytes:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def finite_points(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    return [(x, y) for x, y in points if math.isfinite(y)]


__all__ = ["finite_points", "line_panel_png", "stacked_panel_png"]
