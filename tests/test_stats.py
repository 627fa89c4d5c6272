"""common/stats.py: the intervals and tests behind every bar, on values worked by hand."""

import math

import numpy as np
import pytest

from common.stats import (
    bootstrap_interval,
    paired_bootstrap_interval,
    sign_test_p,
    t_interval,
    wilson_interval,
    win_rate_with_ties,
)


def test_wilson_interval_by_hand():
    # 8 of 200: p = 0.04, z² = 3.8416, denominator 1 + z²/n = 1.019208
    # centre = (0.04 + 3.8416/400) / 1.019208 = 0.048670
    # half = 1.96 · sqrt(0.04 · 0.96 / 200 + 3.8416 / 160000) / 1.019208 = 1.96 · 0.014697 / 1.019208 = 0.028264
    assert wilson_interval(8, 200) == pytest.approx((0.020406, 0.076934), abs=1e-5)
    # 0 of 10: centre = half = (3.8416/20) / 1.38416 = 0.13877: the interval is [0, 0.2775], not [0, 0]
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.27753), abs=1e-4)
    lo, hi = wilson_interval(10, 10)
    assert hi == pytest.approx(1.0) and lo == pytest.approx(1 - 0.27753, abs=1e-4)
    assert wilson_interval(2.5, 5)[0] < 0.5 < wilson_interval(2.5, 5)[1]  # ties as 1/2 are allowed
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def test_sign_test_and_ties_as_half_by_hand():
    # 8 wins, 2 losses: P(X <= 2 | n = 10, 1/2) = (1 + 10 + 45) / 1024; two-sided: 112/1024
    assert sign_test_p(8, 2) == pytest.approx(112 / 1024)
    assert sign_test_p(5, 5) == 1.0 and sign_test_p(0, 0) == 1.0
    # 3 wins, 1 loss, 6 ties: rate (3 + 6/2) / 10 = 0.6; 4 decisive pairs, p = 2 · (1 + 4) / 16
    w = win_rate_with_ties(3, 1, 6)
    assert w["win_rate"] == pytest.approx(0.6) and w["decisive"] == 4 and w["n"] == 10
    assert w["sign_test_p"] == pytest.approx(10 / 16)
    assert w["interval"] == pytest.approx(list(wilson_interval(6, 10)))


def test_t_interval_by_hand():
    # 1, 2, 3: mean 2, s = 1, t(0.975, 2 df) = 4.303: 2 ± 4.303 / sqrt(3) = 2 ± 2.4843
    assert t_interval([1.0, 2.0, 3.0]) == pytest.approx((2 - 4.303 / math.sqrt(3), 2 + 4.303 / math.sqrt(3)))
    assert t_interval([5.0]) == (5.0, 5.0)


def test_bootstrap_intervals():
    assert bootstrap_interval([3.0] * 10) == (3.0, 3.0)
    x = np.random.default_rng(0).normal(0, 1, 1000)
    lo, hi = bootstrap_interval(x)
    assert lo < x.mean() < hi and (hi - lo) == pytest.approx(2 * 1.96 / math.sqrt(1000), rel=0.2)
    assert bootstrap_interval(x, seed=1) != (lo, hi) and bootstrap_interval(x) == (lo, hi)  # seeded
    # paired: item difficulty (sd 1) is shared by both systems, the difference (0.1 ± 0.01) is not
    b = np.random.default_rng(1).normal(0, 1, 200)
    a = b + 0.1 + np.random.default_rng(2).normal(0, 0.01, 200)
    plo, phi = paired_bootstrap_interval(a, b)
    assert plo > 0.09 and phi < 0.11  # clearly positive, although the unpaired spreads overlap
    ulo, uhi = bootstrap_interval(a)
    assert uhi - ulo > 10 * (phi - plo)
    with pytest.raises(ValueError):
        paired_bootstrap_interval([1.0, 2.0], [1.0])
