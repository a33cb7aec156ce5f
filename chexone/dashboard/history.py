"""A run's logged metrics, read back from its own files, and the smoothing the report draws them with.

Every fit writes ``<output_dir>/csv/metrics.csv`` (``logger=csv``, and alongside W&B with ``logger=wandb``): the
report reads that. W&B's offline ``.wandb`` files are not read: wandb has no public API that reads them (its offline
store is only replayed by ``wandb sync``), so a run directory that has only them gets a report without curves and a
note saying so.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

#: Where a fit's CSV metrics live inside its output directory.
CSV_FILE = Path("csv") / "metrics.csv"
#: Row counters, not metrics.
AXES = ("step", "epoch")


@dataclass
class History:
    """``series[name]`` = [(step, value), ...] in step order, one value per step (the last logged)."""

    series: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    source: Path | None = None

    @property
    def names(self) -> list[str]:
        return list(self.series)

    def last(self, name: str) -> float | None:
        points = self.series.get(name)
        return points[-1][1] if points else None


def read_csv_history(path: Path) -> History:
    """Parse a Lightning ``metrics.csv``: rows of ``step``, ``epoch`` and any metric columns, blank where a row did not
    log that metric. Non-numeric cells are skipped; a later row for the same step wins."""
    by_name: dict[str, dict[float, float]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            try:
                step = float(row.get("step") or "nan")
            except ValueError:
                continue
            if math.isnan(step):
                continue
            for name, cell in row.items():
                if name is None or name in AXES or cell in (None, ""):
                    continue
                try:
                    value = float(cell)
                except ValueError:
                    continue
                by_name.setdefault(name, {})[step] = value
    series = {name: sorted(points.items()) for name, points in sorted(by_name.items())}
    return History(series=series, source=path)


def load_history(run_dir: Path) -> History:
    """The run's CSV history, or an empty one (``source`` None) when the run wrote none."""
    path = Path(run_dir) / CSV_FILE
    if path.is_file():
        return read_csv_history(path)
    return History()


def ema(values: list[float], weight: float) -> list[float]:
    """Debiased exponential moving average (TensorBoard/W&B "exponential" smoothing): ``s_t = w s_{t-1} + (1-w) x_t``
    from ``s_0 = 0``, divided by ``1 - w**(t+1)``. NaN/inf values are passed through and do not enter the average."""
    if not 0 <= weight < 1:
        raise ValueError(f"smoothing weight must be in [0, 1), got {weight}")
    out, acc, n = [], 0.0, 0
    for x in values:
        if not math.isfinite(x):
            out.append(x)
            continue
        acc = weight * acc + (1 - weight) * x
        n += 1
        out.append(acc / (1 - weight ** n))
    return out


def window_means(points: list[tuple[float, float]], fraction: float = 0.2) -> tuple[float, float, int] | None:
    """(mean of the first, mean of the last ``fraction`` of points, points per window); None with < 2 points."""
    values = [v for _, v in points if math.isfinite(v)]
    if len(values) < 2:
        return None
    k = max(1, round(len(values) * fraction))
    return sum(values[:k]) / k, sum(values[-k:]) / k, k


__all__ = ["CSV_FILE", "History", "ema", "load_history", "read_csv_history", "window_means"]
