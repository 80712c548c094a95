"""onmkd.study.stats against values worked out by hand and against scipy called directly."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from onmkd.study.stats import (
    N_RESAMPLES,
    compare,
    holm_bonferroni,
    paired_bootstrap_ci,
    paired_scores,
    paired_t_test,
    wilcoxon_test,
)


def test_bootstrap_by_hand() -> None:
    # d = (0, 1): a resample's mean is 0, 0.5 or 1 with probabilities 1/4, 1/2, 1/4, so the
    # 2.5 % and 97.5 % quantiles of 10,000 resample means are 0 and 1.
    assert paired_bootstrap_ci([1.0, 1.0], [1.0, 0.0]) == (0.5, 0.0, 1.0)
    # Constant differences: every resample has the same mean.
    mean, low, high = paired_bootstrap_ci([0.5, 0.7, 0.9], [0.25, 0.45, 0.65])
    assert mean == pytest.approx(0.25) and low == pytest.approx(0.25) and high == pytest.approx(0.25)
    assert N_RESAMPLES == 10_000


def test_bootstrap_is_seeded_and_near_the_normal_interval() -> None:
    rng = np.random.default_rng(1)
    a = rng.random(400)
    b = a - 0.05 + 0.2 * rng.standard_normal(400)
    first = paired_bootstrap_ci(a, b)
    assert paired_bootstrap_ci(list(a), list(b)) == first  # same seed, same interval
    assert paired_bootstrap_ci(a, b, seed=2) != first
    d = a - b
    half = 1.959964 * d.std(ddof=1) / math.sqrt(d.size)  # the t/normal interval for large n
    mean, low, high = first
    assert mean == pytest.approx(d.mean())
    assert low == pytest.approx(mean - half, abs=0.15 * half) and high == pytest.approx(mean + half, abs=0.15 * half)
    narrow = paired_bootstrap_ci(a, b, confidence=0.5, n_resamples=2_000)
    assert low < narrow[1] < narrow[2] < high


def test_t_test_by_hand() -> None:
    # d = (1, 2, 3, 4): mean 2.5, s = sqrt(5/3), t = 2.5 / (s / 2) = sqrt(15) = 3.873, 3 df.
    a, b = [2.0, 4.0, 6.0, 8.0], [1.0, 2.0, 3.0, 4.0]
    t = 2.5 / (math.sqrt(5 / 3) / 2)
    assert t == pytest.approx(math.sqrt(15))
    assert paired_t_test(a, b) == pytest.approx(2 * sps.t.sf(t, 3), rel=1e-12)
    assert paired_t_test(a, b) == pytest.approx(0.030466, abs=1e-6)
    assert paired_t_test([1, 2], [1, 2]) == 1.0 and paired_t_test([2, 3], [1, 2]) == 0.0


def test_wilcoxon_by_hand() -> None:
    # Five positive differences with distinct sizes: W- = 0, the most extreme of the 2^5 equally
    # likely sign patterns on each side, so the exact two-sided p = 2 / 32.
    assert wilcoxon_test([2, 4, 6, 8, 10], [1, 2, 3, 4, 5]) == pytest.approx(0.0625)
    rng = np.random.default_rng(3)
    a, b = rng.random(60), rng.random(60)
    assert wilcoxon_test(a, b) == pytest.approx(sps.wilcoxon(a - b).pvalue)
    assert paired_t_test(a, b) == pytest.approx(sps.ttest_rel(a, b).pvalue)
    assert wilcoxon_test([1, 2, 3], [1, 2, 3]) == 1.0


def test_holm_by_hand() -> None:
    # Sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, max(0.04*1, 0.06) = 0.06.
    assert holm_bonferroni([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm_bonferroni([0.5, 0.6]) == [1.0, 1.0]  # capped at 1
    assert holm_bonferroni([0.2]) == [0.2] and holm_bonferroni([]) == []


def test_compare_and_pairing() -> None:
    a, b = paired_scores({"q2": 1.0, "q1": 0.0, "q3": 1.0}, {"q1": 0.0, "q3": 0.0, "q2": 0.0})
    assert (a, b) == ([0.0, 1.0, 1.0], [0.0, 0.0, 0.0])
    out = compare(a, b, n_resamples=500)
    assert out["n"] == 3 and out["mean_diff"] == pytest.approx(2 / 3)
    assert out["ci_low"] <= out["mean_diff"] <= out["ci_high"]
    assert set(out) == {"n", "mean_diff", "ci_low", "ci_high", "p_t", "p_wilcoxon"}


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: paired_bootstrap_ci([1, 2], [1]), "lengths differ"),
        (lambda: paired_bootstrap_ci([], []), "at least 1"),
        (lambda: paired_t_test([1], [0]), "at least 2"),
        (lambda: wilcoxon_test([1, float("nan")], [0, 0]), "NaN"),
        (lambda: paired_bootstrap_ci([1], [0], confidence=1.0), "confidence"),
        (lambda: paired_bootstrap_ci([1], [0], n_resamples=0), "n_resamples"),
        (lambda: holm_bonferroni([0.1, 1.5]), "between 0 and 1"),
        (lambda: paired_scores({"a": 1}, {"b": 1}), "question sets differ"),
    ],
)
def test_bad_input_is_one_line(call, message: str) -> None:
    with pytest.raises(ValueError) as info:
        call()
    assert message in str(info.value) and "\n" not in str(info.value)
