"""Plots next to the results: a bar chart of each benchmark's metrics with CI whiskers, and for grounding a grid of
images with the true (green) and predicted (red) boxes drawn."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from PIL import Image, ImageDraw

from chexone.data.sample import Sample
from chexone.evaluation.predict import Prediction
from chexone.metrics.grounding import grid_to_pixels, to_boxes

TRUE_COLOUR = (40, 200, 80)
PRED_COLOUR = (230, 50, 50)


def bar_chart(result: dict[str, Any], path: Path) -> Path | None:
    """One panel per metric, one horizontal bar per row (all samples, each task, each group) with its CI whisker."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    rows = list(result["rows"])
    metrics = list(dict.fromkeys(m for r in rows for m in result["rows"][r]))
    if not metrics:
        return None
    height = 1.2 + 0.32 * len(rows)
    fig, axes = plt.subplots(1, len(metrics), figsize=(2.2 + 3.2 * len(metrics), height), sharey=True,
                             squeeze=False)
    ys = list(range(len(rows)))[::-1]  # first row on top
    for ax, m in zip(axes[0], metrics):
        vals, lo, hi, colours = [], [], [], []
        for row in rows:
            est = result["rows"][row].get(m) or {}
            v = est.get("value")
            vals.append(v if v is not None else 0.0)
            lo.append(v - est["ci_low"] if v is not None and est.get("ci_low") is not None else 0.0)
            hi.append(est["ci_high"] - v if v is not None and est.get("ci_high") is not None else 0.0)
            colours.append("#4c72b0" if row == "all" else "#8fb0d9" if row.startswith("task=") else "#c9d6e8")
        ax.barh(ys, vals, xerr=[lo, hi], color=colours, capsize=3, error_kw={"elinewidth": 1})
        for y, v, h, row in zip(ys, vals, hi, rows):
            if (result["rows"][row].get(m) or {}).get("value") is not None:
                ax.text(v + h, y, f"  {v:.3f}", va="center", ha="left", fontsize=7)
        ax.set_title(m + {True: " ↑", False: " ↓"}.get(result.get("higher_is_better", {}).get(m), ""), fontsize=9)
        top = max([v + h for v, h in zip(vals, hi)] + [1.0])
        ax.set_xlim(0, top * 1.25)
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(ys)
    axes[0][0].set_yticklabels(rows, fontsize=8)
    fig.suptitle(f"{result['title']} (n={result['n']}; whiskers: {result['confidence']:.0%} bootstrap CI)",
                 fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def draw_boxes(image: Image.Image, answer: str | None, colour: tuple[int, int, int], width: int = 2) -> Image.Image:
    """Draw the boxes of a grounding answer (0-99 grid) onto a copy of ``image``."""
    out = image.convert("RGB")
    draw = ImageDraw.Draw(out)
    try:
        boxes = to_boxes(answer or "")
    except ValueError:
        boxes = []
    for _, box in boxes:
        x1, y1, x2, y2 = grid_to_pixels(box, out.width, out.height)
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=width)
    return out


def grounding_overlay(samples: Sequence[Sample], preds: dict[str, Prediction], path: Path,
                      tile: int = 256) -> Path | None:
    """A grid of the samples' first images (scaled to ``tile``) with true (green) and predicted (red) boxes, captioned
    with the finding and the IoU."""
    items = [(s, preds[s.id]) for s in samples if s.id in preds and s.images]
    if not items:
        return None
    cols = min(4, len(items))
    rows = math.ceil(len(items) / cols)
    caption = 22
    sheet = Image.new("RGB", (cols * tile, rows * (tile + caption)), "white")
    draw = ImageDraw.Draw(sheet)
    for k, (sample, pred) in enumerate(items):
        img = sample.images[0].convert("RGB")
        scale = tile / max(img.size)
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BICUBIC)
        img = draw_boxes(img, pred.reference, TRUE_COLOUR)
        img = draw_boxes(img, pred.final, PRED_COLOUR)
        x, y = (k % cols) * tile, (k // cols) * (tile + caption)
        sheet.paste(img, (x + (tile - img.width) // 2, y + (tile - img.height) // 2))
        iou = pred.scores.get("iou")
        text = f"{sample.meta.get('ref_name') or sample.task}"[:32] + (f"  IoU {iou:.2f}" if iou is not None else "")
        draw.text((x + 4, y + tile + 5), text, fill=(0, 0, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


def write_plots(result: dict[str, Any], preds: Sequence[Prediction], overlay: Sequence[Sample],
                out: Path) -> dict[str, str]:
    """Write the benchmark's plots; returns {kind: path}."""
    written = {}
    bars = bar_chart(result, out / "metrics.png")
    if bars:
        written["metrics"] = str(bars)
    if overlay:
        grid = grounding_overlay(overlay, {p.id: p for p in preds}, out / "grounding.png")
        if grid:
            written["grounding"] = str(grid)
    return written
