"""Paired significance tests for comparing two retrievers question by question.

Every function takes two equal-length sequences of per-question scores ``a`` and ``b`` (the same
questions in the same order, e.g. one metric of system A and of system B) and works on the
differences ``d_i = a_i - b_i``, ``i = 1..n``. :func:`paired_scores` lines up two
``{qid: score}`` maps. Pure numpy/scipy; no state, and the bootstrap is seeded.

- :func:`paired_bootstrap_ci`: percentile bootstrap confidence interval of ``mean(d)``.
- :func:`paired_t_test`: two-sided paired t-test p value.
- :func:`wilcoxon_test`: two-sided Wilcoxon signed-rank p value.
- :func:`holm_bonferroni`: Holm's step-down adjustment of a family of p values.
- :func:`compare`: all of the above for one pair, as a dict.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

# Bootstrap resamples: with B = 10,000 the Monte Carlo error of a 2.5 % quantile is about
# sqrt(0.025 * 0.975 / B) = 0.16 percentage points of probability, small beside the interval.
N_RESAMPLES = 10_000
CONFIDENCE = 0.95
SEED = 0
_CHUNK = 1_000  # resamples drawn at once (memory: CHUNK x n indices)


def _differences(a: Sequence[float], b: Sequence[float], *, min_n: int = 1) -> np.ndarray:
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.ndim != 1 or y.ndim != 1:
        raise ValueError(f"paired scores: expected two flat sequences, got shapes {x.shape} and {y.shape}")
    if x.shape != y.shape:
        raise ValueError(f"paired scores: lengths differ ({x.size} and {y.size}); pair the same questions")
    if x.size < min_n:
        raise ValueError(f"paired scores: need at least {min_n} questions, got {x.size}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("paired scores: NaN or infinite values")
    return x - y


def paired_scores(a: Mapping[str, float], b: Mapping[str, float]) -> tuple[list[float], list[float]]:
    """Two ``{qid: score}`` maps as two lists in the same (sorted qid) order; the qids must match."""
    if set(a) != set(b):
        only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
        raise ValueError(
            f"paired scores: question sets differ ({len(only_a)} only in the first, e.g. {only_a[:3]}; "
            f"{len(only_b)} only in the second, e.g. {only_b[:3]})"
        )
    qids = sorted(a)
    return [float(a[q]) for q in qids], [float(b[q]) for q in qids]


def paired_bootstrap_ci(
    a: Sequence[float],
    b: Sequence[float],
    *,
    n_resamples: int = N_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = SEED,
) -> tuple[float, float, float]:
    """``(mean(d), low, high)``: the percentile bootstrap interval of the mean difference.

    With ``d_i = a_i - b_i``: draw ``B = n_resamples`` resamples of the n questions with
    replacement (``numpy.random.default_rng(seed).integers(0, n, size=(B, n))``: questions stay
    paired, since the same index picks both systems' scores), take each resample's mean
    ``m*_b = (1/n) sum_i d_{j_bi}``, and return the ``(1 - c)/2`` and ``(1 + c)/2`` quantiles of
    ``m*_1..m*_B`` (``numpy.quantile``, linear interpolation) for confidence ``c``. The same
    inputs and seed give the same interval.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence: expected a number between 0 and 1, got {confidence}")
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)) or n_resamples < 1:
        raise ValueError(f"n_resamples: expected a positive integer, got {n_resamples!r}")
    d = _differences(a, b)
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples, dtype=np.float64)
    for start in range(0, n_resamples, _CHUNK):
        stop = min(start + _CHUNK, n_resamples)
        idx = rng.integers(0, d.size, size=(stop - start, d.size))
        means[start:stop] = d[idx].mean(axis=1)
    alpha = 1.0 - confidence
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(d.mean()), float(low), float(high)


def paired_t_test(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p value of the paired t-test (``scipy.stats.ttest_rel``).

    ``t = mean(d) / (s_d / sqrt(n))`` with ``s_d`` the sample standard deviation of ``d``
    (divisor ``n - 1``); ``p = 2 * P(T_{n-1} >= |t|)``. When every difference is the same
    (``s_d = 0``), t is undefined: p is 1.0 if all differences are 0, else 0.0.
    """
    from scipy import stats

    d = _differences(a, b, min_n=2)
    if np.all(d == d[0]):
        return 1.0 if d[0] == 0 else 0.0
    return float(stats.ttest_rel(np.asarray(a, float), np.asarray(b, float)).pvalue)


def wilcoxon_test(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p value of the Wilcoxon signed-rank test (``scipy.stats.wilcoxon``, defaults).

    Zero differences are dropped (``zero_method="wilcox"``); the remaining ``|d_i|`` are ranked
    (ties get their average rank) and ``W = min(W+, W-)``, the smaller of the rank sums of the
    positive and of the negative differences. scipy uses the exact distribution of W for small
    samples without ties and the normal approximation otherwise. If every difference is 0
    there is nothing to test and p is 1.0.
    """
    from scipy import stats

    d = _differences(a, b)
    if not np.any(d):
        return 1.0
    return float(stats.wilcoxon(d).pvalue)


def holm_bonferroni(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p values, in the input order.

    Sort the m p values ascending, ``p_(1) <= ... <= p_(m)``; the adjusted value of the i-th is
    ``p~_(i) = min(1, max_{j <= i} (m - j + 1) p_(j))``. Rejecting the hypotheses whose adjusted
    p is at most alpha controls the family-wise error rate at alpha (Holm 1979).
    """
    p = np.asarray(pvalues, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"p values: expected a flat sequence, got shape {p.shape}")
    if p.size and (not np.isfinite(p).all() or (p < 0).any() or (p > 1).any()):
        raise ValueError("p values: each must be a number between 0 and 1")
    m = p.size
    order = np.argsort(p, kind="stable")
    scaled = (m - np.arange(m)) * p[order]
    adjusted = np.minimum(1.0, np.maximum.accumulate(scaled))
    out = np.empty(m, dtype=np.float64)
    out[order] = adjusted
    return out.tolist()


def compare(
    a: Sequence[float], b: Sequence[float], *, n_resamples: int = N_RESAMPLES, seed: int = SEED
) -> dict[str, float | int]:
    """Number of questions, mean difference, its 95 % bootstrap interval, and the t-test and Wilcoxon p values."""
    mean, low, high = paired_bootstrap_ci(a, b, n_resamples=n_resamples, seed=seed)
    return {
        "n": len(a),
        "mean_diff": mean,
        "ci_low": low,
        "ci_high": high,
        "p_t": paired_t_test(a, b),
        "p_wilcoxon": wilcoxon_test(a, b),
    }
