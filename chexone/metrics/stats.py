"""Statistics for reporting results (docs/method.md §5): bootstrap 95% CIs (1000 resamples, seeded), McNemar's test for
paired accuracy, the paired t-test for continuous scores, and the Wilcoxon signed-rank test for ordinal ratings.

Pure numpy + math (no scipy at run time); tests compare every function with ``scipy.stats``:

* :func:`bootstrap_ci` = ``scipy.stats.bootstrap(..., method="percentile", n_resamples=1000,
  rng=np.random.default_rng(seed))`` exactly (same index draws, ``np.quantile`` linear interpolation). Percentile CI
  of any statistic of the per-sample values (e.g. the mean, or ``1/mean`` for 1/RadCliQ); ``paired`` resamples the
  same indices of several arrays (e.g. a model difference).
* :func:`mcnemar` — exact (binomial, two-sided, default) or chi-square with continuity correction on the discordant
  pairs.
* :func:`paired_ttest` = ``scipy.stats.ttest_rel`` (two-sided).
* :func:`wilcoxon_signed_rank` = ``scipy.stats.wilcoxon`` defaults (zeros dropped, no continuity correction): the
  exact null distribution when there are no ties or zeros and n <= 50, the exact sign-flip permutation distribution
  when there are ties or zeros and n <= 13, else the normal approximation with tie correction.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["BootstrapResult", "TestResult", "bootstrap_ci", "mcnemar", "paired_ttest", "wilcoxon_signed_rank"]


@dataclass(frozen=True)
class BootstrapResult:
    estimate: float
    low: float
    high: float
    confidence: float
    n_resamples: int
    #: the statistic of each resample
    distribution: np.ndarray


@dataclass(frozen=True)
class TestResult:
    statistic: float
    pvalue: float
    method: str


def _mean(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x, axis=axis)


def bootstrap_ci(*samples: Sequence[float], statistic: Callable[..., np.ndarray] = _mean, n_resamples: int = 1000,
                 confidence: float = 0.95, seed: int = 0, paired: bool = True,
                 vectorized: bool = True) -> BootstrapResult:
    """Percentile bootstrap CI of ``statistic(*samples, axis=-1)``.

    Args:
        samples: one or more per-sample value arrays (several must have equal lengths when ``paired``).
        statistic: vectorised over the last axis (``np.mean`` by default); with ``vectorized=False`` it is called
            once per resample on 1-d arrays.
        paired: resample the same indices of all samples (one draw); otherwise each sample independently.
    """
    if not samples:
        raise ValueError("bootstrap_ci needs at least one sample")
    data = [np.asarray(s, dtype=np.float64) for s in samples]
    if any(d.ndim != 1 or d.size == 0 for d in data):
        raise ValueError("samples must be non-empty 1-d arrays")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")

    def stat(*arrays: np.ndarray) -> np.ndarray:
        if vectorized:
            return np.asarray(statistic(*arrays, axis=-1), dtype=np.float64)
        rows = arrays[0].shape[0] if arrays[0].ndim == 2 else None
        if rows is None:
            return np.asarray(statistic(*arrays), dtype=np.float64)
        return np.array([statistic(*(a[i] for a in arrays)) for i in range(rows)], dtype=np.float64)

    rng = np.random.default_rng(seed)
    if paired:
        n = data[0].size
        if any(d.size != n for d in data):
            raise ValueError("paired samples must have equal lengths")
        idx = rng.integers(0, n, (n_resamples, n))
        resampled = [d[idx] for d in data]
    else:
        resampled = [d[rng.integers(0, d.size, (n_resamples, d.size))] for d in data]
    dist = stat(*resampled)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(dist, [alpha, 1 - alpha])
    return BootstrapResult(float(stat(*data)), float(low), float(high), confidence, n_resamples, dist)


# ---------------------------------------------------------------------------------------------------- McNemar
def _binom_two_sided_half(k: int, n: int) -> float:
    """Two-sided exact binomial p-value of k successes in n trials at p = 1/2."""
    if n == 0:
        return 1.0
    k = min(k, n - k)
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2) for i in range(k + 1)]
    tail = math.fsum(math.exp(v) for v in logs)
    return min(1.0, 2 * tail) if 2 * k != n else 1.0


def mcnemar(correct_a: Sequence[bool], correct_b: Sequence[bool], *, exact: bool = True,
            correction: bool = True) -> TestResult:
    """McNemar's test of paired correctness (same questions, two models).

    b = A right & B wrong, c = A wrong & B right. Exact: two-sided binomial test of b among b + c at 1/2 (statistic
    = min(b, c)). Otherwise chi-square, 1 dof: (|b − c| − 1)² / (b + c) with ``correction`` (Edwards), else
    (b − c)² / (b + c).
    """
    a = np.asarray(correct_a, dtype=bool)
    b_ = np.asarray(correct_b, dtype=bool)
    if a.shape != b_.shape:
        raise ValueError("paired arrays must have equal lengths")
    b = int(np.sum(a & ~b_))
    c = int(np.sum(~a & b_))
    if exact:
        return TestResult(float(min(b, c)), _binom_two_sided_half(min(b, c), b + c), "exact binomial")
    if b + c == 0:
        return TestResult(0.0, 1.0, "chi-square")
    diff = abs(b - c) - (1 if correction else 0)
    stat = max(diff, 0) ** 2 / (b + c)
    return TestResult(float(stat), math.erfc(math.sqrt(stat / 2)), "chi-square" + (" (corrected)" if correction else ""))


# ---------------------------------------------------------------------------------------------------- t-test
def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-16
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def betainc_regularized(a: float, b: float, x: float) -> float:
    """I_x(a, b)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    lbeta = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1) / (a + b + 2):
        return math.exp(lbeta) * _betacf(a, b, x) / a
    return 1.0 - math.exp(lbeta) * _betacf(b, a, 1 - x) / b


def t_sf_two_sided(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` degrees of freedom."""
    if math.isnan(t):
        return float("nan")
    if math.isinf(t):
        return 0.0
    return betainc_regularized(df / 2, 0.5, df / (df + t * t))


def paired_ttest(a: Sequence[float], b: Sequence[float]) -> TestResult:
    """Two-sided paired t-test of a − b (``scipy.stats.ttest_rel``)."""
    x = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    n = x.size
    if n < 2:
        return TestResult(float("nan"), float("nan"), "paired t")
    mean, sd = float(x.mean()), float(x.std(ddof=1))
    if sd == 0:
        t = float("nan") if mean == 0 else math.copysign(math.inf, mean)
    else:
        t = mean / (sd / math.sqrt(n))
    return TestResult(t, t_sf_two_sided(t, n - 1), "paired t")


# ---------------------------------------------------------------------------------------------------- Wilcoxon
def _rank_average(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Average ranks (1-based) and the sizes of tie groups."""
    order = np.argsort(v, kind="mergesort")
    ranks = np.empty(v.size, dtype=np.float64)
    sizes = []
    i = 0
    sv = v[order]
    while i < v.size:
        j = i
        while j + 1 < v.size and sv[j + 1] == sv[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        sizes.append(j - i + 1)
        i = j + 1
    return ranks, np.asarray(sizes, dtype=np.float64)


def _signed_rank_null(n: int) -> np.ndarray:
    """P(W+ = k), k = 0..n(n+1)/2, under the null (no ties): counts of subsets of {1..n} by sum / 2^n."""
    total = n * (n + 1) // 2
    counts = np.zeros(total + 1, dtype=np.float64)
    counts[0] = 1
    for r in range(1, n + 1):
        counts[r:] = counts[r:] + counts[:-r]  # right side uses the old values
    return counts / 2.0**n


def wilcoxon_signed_rank(a: Sequence[float], b: Sequence[float] | None = None) -> TestResult:
    """Two-sided Wilcoxon signed-rank test of a − b (or of a alone), as ``scipy.stats.wilcoxon`` by default.

    Statistic: min(W+, W−) over the non-zero differences.
    """
    d = np.asarray(a, dtype=np.float64)
    if b is not None:
        d = d - np.asarray(b, dtype=np.float64)
    n_all = d.size
    if n_all == 0:
        return TestResult(float("nan"), float("nan"), "wilcoxon")
    n_zero = int(np.sum(d == 0))
    nz = d[d != 0]
    n = nz.size
    ranks, ties = _rank_average(np.abs(nz)) if n else (np.zeros(0), np.zeros(0))
    r_plus = float(ranks[nz > 0].sum())
    r_minus = float(ranks[nz < 0].sum())
    stat = min(r_plus, r_minus)
    has_ties = bool(np.any(ties > 1))
    if n_all > 50 or ((has_ties or n_zero > 0) and n_all > 13):
        method = "asymptotic"
    elif not (has_ties or n_zero > 0):
        method = "exact"
    else:
        method = "permutation"
    if n == 0:
        return TestResult(stat, float("nan") if method == "asymptotic" else 1.0, method)
    if method == "exact":
        pmf = _signed_rank_null(n)
        k = int(round(r_plus))
        p = 2 * min(float(pmf[k:].sum()), float(pmf[: k + 1].sum()))
        return TestResult(stat, min(1.0, p), method)
    if method == "permutation":
        signs = ((np.arange(2**n)[:, None] >> np.arange(n)[None, :]) & 1).astype(bool)
        null = (signs * ranks[None, :]).sum(1)
        gamma = abs(np.finfo(np.float64).eps * 100 * r_plus)
        p_less = float(np.mean(null <= r_plus + gamma))
        p_greater = float(np.mean(null >= r_plus - gamma))
        return TestResult(stat, min(1.0, 2 * min(p_less, p_greater)), method)
    mn = n * (n + 1) / 4
    se = math.sqrt((n * (n + 1) * (2 * n + 1) - float(np.sum(ties**3 - ties)) / 2) / 24)
    z = (r_plus - mn) / se
    return TestResult(stat, math.erfc(abs(z) / math.sqrt(2)), method)
