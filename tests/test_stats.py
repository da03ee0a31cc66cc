"""Confidence intervals and the exact McNemar test against values computed by hand."""

from __future__ import annotations

import math

import pytest

from advdistill.stats import mcnemar_exact, mean_t_interval, paired_difference, pass_at_k, t_quantile, wilson_interval

Z = 1.959963984540054  # the 0.975 normal quantile
Z2 = Z * Z  # 3.841458820694124


def test_wilson_interval_at_zero_half_and_all_right():
    """n = 10, n + z² = 13.841458820694124:

    0/10: centre = half = (z²/2)/(n + z²), so [0, z²/(n + z²)] = [0, 0.27753279986288...].
    10/10: centre = (10 + z²/2)/(n + z²), half = (z²/2)/(n + z²), so [10/(n + z²), 1] = [0.72246720013711..., 1].
    5/10: centre = 0.5, half = z/(n + z²)·sqrt(5·5/10 + z²/4) = 0.1416012...·1.8602056... = 0.2634069...
    """
    assert wilson_interval(0, 10) == (0.0, pytest.approx(Z2 / (10 + Z2), rel=1e-12))
    assert wilson_interval(0, 10)[1] == pytest.approx(0.2775327998628892, rel=1e-12)
    assert wilson_interval(10, 10) == (pytest.approx(10 / (10 + Z2), rel=1e-12), 1.0)
    assert wilson_interval(10, 10)[0] == pytest.approx(0.7224672001371108, rel=1e-12)
    half = Z / (10 + Z2) * math.sqrt(2.5 + Z2 / 4)
    assert half == pytest.approx(0.2634069094874, rel=1e-12)
    assert wilson_interval(5, 10) == (pytest.approx(0.5 - half, rel=1e-12), pytest.approx(0.5 + half, rel=1e-12))


def test_wilson_interval_without_observations_and_bad_counts():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="0 <= k <= n"):
        wilson_interval(11, 10)
    with pytest.raises(ValueError, match="confidence"):
        wilson_interval(1, 2, confidence=1.0)


def test_t_quantile_closed_forms_and_table_values():
    """df = 1 (Cauchy): t = tan(π·0.95/2) = 12.7062047361747; df = 2: t = (2p − 1)/sqrt(2p(1 − p)) at
    p = 0.975, = 0.95/sqrt(0.04875) = 4.30265272974946; larger df against printed t tables."""
    assert t_quantile(0.95, 1) == pytest.approx(math.tan(math.pi * 0.95 / 2), rel=1e-12)
    assert t_quantile(0.95, 2) == pytest.approx(0.95 / math.sqrt(0.04875), rel=1e-12)
    assert t_quantile(0.95, 2) == pytest.approx(4.302652729749, rel=1e-12)
    for df, table in ((3, 3.182446305), (4, 2.776445105), (9, 2.262157163), (30, 2.042272456)):
        assert t_quantile(0.95, df) == pytest.approx(table, rel=1e-9)
    assert t_quantile(0.99, 5) == pytest.approx(4.032142984, rel=1e-9)
    with pytest.raises(ValueError, match="degree of freedom"):
        t_quantile(0.95, 0)


def test_mean_t_interval_of_three_seeds_and_of_one():
    """[1, 2, 3]: mean 2, s = sqrt((1 + 0 + 1)/2) = 1, half = t_{0.975,2}·1/sqrt(3) = 4.30265272974946/1.7320508
    = 2.48413771175033."""
    mean, lower, upper = mean_t_interval([1.0, 2.0, 3.0])
    assert mean == 2.0
    assert lower == pytest.approx(2 - 2.48413771175033, rel=1e-12)
    assert upper == pytest.approx(2 + 2.48413771175033, rel=1e-12)
    assert mean_t_interval([0.42]) == (0.42, None, None)
    assert mean_t_interval([0.5, 0.5]) == (0.5, 0.5, 0.5)
    with pytest.raises(ValueError):
        mean_t_interval([])


def test_mcnemar_exact_hand_values():
    """b=1, c=6: X ~ Bin(7, ½), P[X <= 1] = (C(7,0) + C(7,1))/2^7 = 8/128, p = 2·8/128 = 0.125.
    b=5, c=5: P[X <= 5] = (1 + 10 + 45 + 120 + 210 + 252)/1024 = 638/1024, 2·638/1024 > 1, so p = 1.
    b=0, c=3: p = 2·1/8 = 0.25.  b=0, c=0: no discordant pair, p = 1.
    b=0, c=20: p = 2/2^20 = 2^-19, exact where a normal approximation is not."""
    assert mcnemar_exact(1, 6) == 0.125
    assert mcnemar_exact(6, 1) == 0.125
    assert mcnemar_exact(5, 5) == 1.0
    assert mcnemar_exact(0, 3) == 0.25
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(0, 20) == 2.0**-19
    assert 0 < mcnemar_exact(5000, 7000) < 1e-70  # large counts stay exact, no overflow


def test_paired_difference_wald_interval():
    """b=10, c=30, n=100: d = (10 − 30)/100 = −0.2; sqrt(40 − 400/100) = 6, half = 1.96·6/100 = 0.1176.
    b=3, c=0, n=4: d = 0.75, half = 1.96·sqrt(3 − 9/4)/4 = 0.4243, so the upper bound 1.1743 is clipped to 1.
    b=c=0: d = 0 and the interval collapses to [0, 0]."""
    difference, lower, upper = paired_difference(10, 30, 100)
    assert difference == -0.2
    assert lower == pytest.approx(-0.2 - Z * 0.06, rel=1e-12)
    assert upper == pytest.approx(-0.2 + Z * 0.06, rel=1e-12)
    assert paired_difference(3, 0, 4) == (0.75, pytest.approx(0.75 - Z * math.sqrt(0.75) / 4, rel=1e-12), 1.0)
    assert paired_difference(0, 0, 5) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError):
        paired_difference(3, 3, 5)


@pytest.mark.parametrize(("n", "c", "k", "expected"), [
    (4, 2, 1, 0.5),            # k = 1: c/n
    (4, 2, 2, 1 - 1 / 6),      # 1 − C(2, 2)/C(4, 2)
    (4, 1, 2, 1 - 3 / 6),      # 1 − C(3, 2)/C(4, 2)
    (5, 2, 3, 1 - 1 / 10),     # 1 − C(3, 3)/C(5, 3)
    (8, 1, 4, 1 - 35 / 70),    # 1 − C(7, 4)/C(8, 4)
    (4, 3, 2, 1.0),            # one wrong sample cannot fill a draw of two
    (4, 0, 4, 0.0),
    (1, 1, 1, 1.0),
])
def test_pass_at_k_hand_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-15)


def test_pass_at_k_rejects_impossible_counts():
    for n, c, k in ((4, 5, 1), (4, -1, 1), (4, 2, 0), (4, 2, 5)):
        with pytest.raises(ValueError, match="need 0 <= c <= n and 1 <= k <= n"):
            pass_at_k(n, c, k)
