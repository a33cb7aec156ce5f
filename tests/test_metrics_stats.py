"""Statistics against scipy.stats: bootstrap percentile CI, McNemar, paired t-test, Wilcoxon signed-rank."""

from __future__ import annotations

import numpy as np
import pytest

from chexone.metrics.stats import (
    betainc_regularized,
    bootstrap_ci,
    mcnemar,
    paired_ttest,
    wilcoxon_signed_rank,
)

stats = pytest.importorskip("scipy.stats")


def test_bootstrap_matches_scipy_percentile_exactly():
    rng = np.random.default_rng(3)
    x = rng.normal(0.4, 0.2, size=57)
    ours = bootstrap_ci(x, seed=11)
    ref = stats.bootstrap((x,), np.mean, n_resamples=1000, method="percentile", confidence_level=0.95,
                          rng=np.random.default_rng(11))
    assert ours.n_resamples == 1000 and ours.confidence == 0.95
    assert ours.estimate == pytest.approx(x.mean())
    assert ours.low == pytest.approx(ref.confidence_interval.low, abs=1e-12)
    assert ours.high == pytest.approx(ref.confidence_interval.high, abs=1e-12)
    np.testing.assert_allclose(ours.distribution, ref.bootstrap_distribution, atol=1e-12)
    # seeded: same seed, same interval; another seed, another one
    assert bootstrap_ci(x, seed=11).low == ours.low
    assert bootstrap_ci(x, seed=12).low != ours.low


def test_bootstrap_of_a_corpus_statistic_and_paired_difference():
    rng = np.random.default_rng(4)
    q = rng.normal(-0.5, 0.3, size=40)  # per-sample RadCliQ

    def inv_mean(v, axis=-1):
        return 1.0 / np.mean(v, axis=axis)

    ours = bootstrap_ci(q, statistic=inv_mean, seed=0)
    ref = stats.bootstrap((q,), inv_mean, n_resamples=1000, method="percentile", rng=np.random.default_rng(0))
    assert ours.estimate == pytest.approx(1 / q.mean())
    assert (ours.low, ours.high) == pytest.approx((ref.confidence_interval.low, ref.confidence_interval.high),
                                                  abs=1e-12)

    a, b = rng.random(30), rng.random(30)

    def diff(u, v, axis=-1):
        return np.mean(u, axis=axis) - np.mean(v, axis=axis)

    ours = bootstrap_ci(a, b, statistic=diff, seed=5, paired=True)
    ref = stats.bootstrap((a, b), diff, paired=True, n_resamples=1000, method="percentile",
                          rng=np.random.default_rng(5))
    assert (ours.low, ours.high) == pytest.approx((ref.confidence_interval.low, ref.confidence_interval.high),
                                                  abs=1e-12)
    # non-vectorised statistic gives the same result
    slow = bootstrap_ci(a, b, statistic=lambda u, v: u.mean() - v.mean(), seed=5, vectorized=False)
    assert (slow.low, slow.high) == pytest.approx((ours.low, ours.high), abs=1e-12)


@pytest.mark.parametrize("b,c", [(0, 0), (3, 3), (1, 9), (12, 4), (40, 25), (0, 7), (200, 170)])
def test_mcnemar_exact_and_chi2_match_scipy(b, c):
    n_both, n_none = 5, 4
    a = [True] * b + [False] * c + [True] * n_both + [False] * n_none
    bb = [False] * b + [True] * c + [True] * n_both + [False] * n_none
    ex = mcnemar(a, bb)
    expected = stats.binomtest(min(b, c), b + c, 0.5).pvalue if b + c else 1.0
    assert ex.pvalue == pytest.approx(expected, rel=1e-9, abs=1e-15)
    assert ex.statistic == min(b, c)
    if b + c:
        chi = mcnemar(a, bb, exact=False)
        stat = (abs(b - c) - 1) ** 2 / (b + c) if abs(b - c) >= 1 else 0.0
        assert chi.statistic == pytest.approx(stat)
        assert chi.pvalue == pytest.approx(stats.chi2.sf(stat, 1), rel=1e-9)
        plain = mcnemar(a, bb, exact=False, correction=False)
        assert plain.pvalue == pytest.approx(stats.chi2.sf((b - c) ** 2 / (b + c), 1), rel=1e-9)


@pytest.mark.parametrize("n,seed", [(5, 0), (12, 1), (40, 2), (300, 3)])
def test_paired_ttest_matches_scipy(n, seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(0.5, 0.1, n)
    b = a + rng.normal(0.02, 0.05, n)
    ours = paired_ttest(a, b)
    ref = stats.ttest_rel(a, b)
    assert ours.statistic == pytest.approx(ref.statistic, rel=1e-10)
    assert ours.pvalue == pytest.approx(ref.pvalue, rel=1e-8, abs=1e-300)


def test_incomplete_beta_matches_scipy():
    special = pytest.importorskip("scipy.special")
    for a, b, x in [(0.5, 0.5, 0.3), (2.0, 0.5, 0.9), (10.0, 0.5, 0.99), (149.5, 0.5, 0.97), (3, 4, 0.0001)]:
        assert betainc_regularized(a, b, x) == pytest.approx(special.betainc(a, b, x), rel=1e-10, abs=1e-300)


@pytest.mark.parametrize(
    "case",
    [
        "exact",  # no ties, no zeros, n <= 50 -> exact null distribution
        "ties_small",  # ties and zeros, n <= 13 -> sign-flip permutation distribution
        "ties_medium",  # ties, 13 < n <= 50 -> normal approximation with tie correction
        "large",  # n > 50 -> normal approximation
    ],
)
def test_wilcoxon_matches_scipy(case):
    rng = np.random.default_rng(7)
    if case == "exact":
        a, b = rng.normal(size=18), rng.normal(0.4, 1, size=18)
    elif case == "ties_small":
        a = np.array([3, 4, 2, 5, 3, 4, 1, 5, 2, 3], dtype=float)  # ordinal ratings
        b = np.array([2, 4, 3, 3, 1, 2, 1, 4, 4, 1], dtype=float)
    elif case == "ties_medium":
        a, b = rng.integers(1, 6, size=35).astype(float), rng.integers(1, 6, size=35).astype(float)
    else:
        a, b = rng.normal(size=120), rng.normal(0.2, 1, size=120)
    ours = wilcoxon_signed_rank(a, b)
    ref = stats.wilcoxon(a, b)
    assert ours.statistic == pytest.approx(ref.statistic)
    assert ours.pvalue == pytest.approx(ref.pvalue, rel=1e-9)
