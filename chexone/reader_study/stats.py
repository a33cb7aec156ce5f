"""The reader study's statistics: summaries (mean, median, IQR), Wilson 95% intervals for proportions, and agreement
between readers (Cohen's kappa, weighted kappa, intraclass correlation).

Agreement comes from maintained libraries, in the optional ``reader-study`` extra: scikit-learn's
``cohen_kappa_score`` and pingouin's ``intraclass_corr`` (Shrout & Fleiss 1979 forms ICC(1,1), ICC(2,1), ICC(3,1)).
A statistic that is undefined for the data (too few items, no variation) is None, with the reason beside it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

Z95 = 1.959963984540054  # the standard normal's 97.5th percentile


class MissingExtra(RuntimeError):
    """An optional package of the ``reader-study`` extra is not installed."""


def _missing(module: str, exc: Exception) -> MissingExtra:
    return MissingExtra(f"reader-study agreement statistics need the optional package {module!r}, which is not "
                        f"importable ({exc}). Install it with: pip install 'chexone[reader-study]'")


def describe(values: Sequence[float]) -> dict[str, Any]:
    """n, mean, sd (n-1), median, first and third quartiles (linear interpolation), IQR, min, max."""
    x = np.asarray([v for v in values if v is not None], dtype=float)
    if x.size == 0:
        return {"n": 0, "mean": None, "sd": None, "median": None, "q1": None, "q3": None, "iqr": None,
                "min": None, "max": None}
    q1, med, q3 = (float(v) for v in np.percentile(x, [25, 50, 75]))
    return {"n": int(x.size), "mean": float(x.mean()), "sd": float(x.std(ddof=1)) if x.size > 1 else None,
            "median": med, "q1": q1, "q3": q3, "iqr": q3 - q1, "min": float(x.min()), "max": float(x.max())}


def wilson_ci(k: int, n: int, z: float = Z95) -> tuple[float | None, float | None]:
    """Wilson score interval for k successes in n trials (Newcombe 1998, method 3); (None, None) for n = 0."""
    if n <= 0:
        return None, None
    if not 0 <= k <= n:
        raise ValueError(f"k={k} outside 0..n={n}")
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def proportions(labels: Sequence[str], categories: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per category: count, proportion of all labels and its Wilson 95% interval."""
    n = len(labels)
    out = {}
    for cat in categories:
        k = sum(1 for lab in labels if lab == cat)
        lo, hi = wilson_ci(k, n)
        out[cat] = {"k": k, "n": n, "p": k / n if n else None, "ci_low": lo, "ci_high": hi}
    return out


def percent_agreement(a: Sequence[Any], b: Sequence[Any]) -> float | None:
    if len(a) != len(b):
        raise ValueError("the two raters must rate the same items")
    return sum(x == y for x, y in zip(a, b)) / len(a) if a else None


def cohen_kappa(a: Sequence[Any], b: Sequence[Any], *, labels: Sequence[Any] | None = None,
                weights: str | None = None) -> tuple[float | None, str]:
    """(Cohen's kappa of two raters on the same items, reason when None). ``weights``: None, "linear" or
    "quadratic" (weighted kappa, for ordinal scales; give ``labels`` in scale order)."""
    if len(a) != len(b):
        raise ValueError("the two raters must rate the same items")
    if len(a) < 2:
        return None, f"{len(a)} common items (needs 2 or more)"
    if len(set(a) | set(b)) < 2:
        return None, "undefined: both readers gave the same single answer to every item"
    try:
        from sklearn.metrics import cohen_kappa_score
    except ImportError as e:
        raise _missing("sklearn", e) from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = float(cohen_kappa_score(list(a), list(b), labels=None if labels is None else list(labels),
                                        weights=weights))
    if not math.isfinite(value):
        return None, "undefined: chance agreement is 1"
    return value, ""


#: Shrout & Fleiss's name -> pingouin's names for it (0.7: McGraw & Wong's A/C notation; before: ICC1..ICC3)
ICC_FORMS = {"ICC(1,1)": ("ICC(1,1)", "ICC1"), "ICC(2,1)": ("ICC(A,1)", "ICC2"), "ICC(3,1)": ("ICC(C,1)", "ICC3")}


def icc(table: Sequence[Sequence[float]]) -> tuple[dict[str, dict[str, Any]] | None, str]:
    """Single-rater intraclass correlations of a complete targets x raters table: ICC(1,1) one-way random, ICC(2,1)
    two-way random absolute agreement, ICC(3,1) two-way mixed consistency, each with its 95% CI (pingouin).
    Returns (None, reason) when the table is too small or has no variance."""
    x = np.asarray(table, dtype=float)
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 2:
        return None, f"needs at least 2 items rated by at least 2 readers (have {x.shape[0] if x.ndim == 2 else 0} " \
                     f"complete items)"
    if x.size < 5:
        return None, f"needs at least 5 ratings (have {x.size})"
    if np.all(x == x.flat[0]):
        return None, "undefined: every rating is the same"
    try:
        import pandas as pd
        import pingouin as pg
    except ImportError as e:
        raise _missing("pingouin", e) from None
    rows = [(t, r, float(x[t, r])) for t in range(x.shape[0]) for r in range(x.shape[1])]
    frame = pd.DataFrame(rows, columns=["target", "rater", "rating"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = pg.intraclass_corr(data=frame, targets="target", raters="rater", ratings="rating")
    out: dict[str, dict[str, Any]] = {}
    for label, names in ICC_FORMS.items():
        row = res[res["Type"].isin(names)]
        if row.empty:
            return None, f"pingouin returned no {label}"
        value = float(row["ICC"].iloc[0])
        lo, hi = (float(v) for v in row["CI95"].iloc[0])
        out[label] = {"value": value if math.isfinite(value) else None, "ci_low": lo, "ci_high": hi,
                      "n_items": int(x.shape[0]), "n_readers": int(x.shape[1])}
    return out, ""
