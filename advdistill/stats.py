"""Confidence intervals and a paired test for the report: pure functions of counts and values.

* :func:`wilson_interval`: the Wilson score interval of one accuracy (k right of n).
* :func:`mean_t_interval`: the mean of replicate runs (e.g. seeds) with its Student-t interval.
* :func:`paired_difference`: the Wald interval of the accuracy difference of two models on the same prompts.
* :func:`mcnemar_exact`: the exact (binomial) two-sided McNemar test on the same paired outcomes.
* :func:`pass_at_k`: the unbiased pass@k estimate of one prompt from its n samples (Chen et al. 2021).

Everything is computed from the standard library: normal quantiles with :class:`statistics.NormalDist`,
Student-t quantiles by inverting the closed-form t distribution for integer degrees of freedom (so no
scipy dependency), McNemar p-values with exact integer arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction
from statistics import NormalDist


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")


def _two_sided_z(confidence: float) -> float:
    """z with P(|Z| <= z) = confidence for a standard normal Z (1.959963984540054 at 0.95)."""
    _check_confidence(confidence)
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n.

    With p = k/n and z the two-sided normal quantile (1.96 at 95 %)::

        centre = (k + z²/2) / (n + z²)
        half   = z / (n + z²) · sqrt(k (n − k) / n + z²/4)
        interval = [centre − half, centre + half]

    Unlike the Wald interval p ± z·sqrt(p(1−p)/n) it stays inside [0, 1] and does not collapse to a point
    at k = 0 or k = n: the bound at 0 (k = 0) or 1 (k = n) is exact, the other one is
    z²/(n + z²) resp. n/(n + z²). n = 0 carries no information and gives [0, 1].
    """
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 0.0, 1.0
    z2 = _two_sided_z(confidence) ** 2
    centre = (k + z2 / 2) / (n + z2)
    half = math.sqrt(z2) / (n + z2) * math.sqrt(k * (n - k) / n + z2 / 4)
    return (0.0 if k == 0 else centre - half), (1.0 if k == n else centre + half)


def _t_two_sided_mass(theta: float, df: int) -> float:
    """P(|T| <= sqrt(df)·tan θ) for T ~ Student-t with integer df (Abramowitz & Stegun 26.7.3 and 26.7.4).

    Even df: sin θ · (1 + ½ cos²θ + (1·3)/(2·4) cos⁴θ + … + (1·3⋯(df−3))/(2·4⋯(df−2)) cos^(df−2) θ).
    Odd df: (2/π) · (θ + sin θ cos θ · (1 + ⅔ cos²θ + … + (2·4⋯(df−3))/(1·3⋯(df−2)) cos^(df−3) θ)),
    which is 2θ/π for df = 1.
    """
    cos2 = math.cos(theta) ** 2
    term = total = 1.0
    if df % 2 == 0:
        for j in range(1, df // 2):
            term *= cos2 * (2 * j - 1) / (2 * j)
            total += term
        return math.sin(theta) * total
    if df == 1:
        return 2 * theta / math.pi
    for j in range(1, (df - 1) // 2):
        term *= cos2 * (2 * j) / (2 * j + 1)
        total += term
    return 2 / math.pi * (theta + math.sin(theta) * math.cos(theta) * total)


def t_quantile(confidence: float, df: int) -> float:
    """t with P(|T| <= t) = confidence for T ~ Student-t with ``df`` degrees of freedom, i.e. the
    (1 + confidence)/2 quantile (t_{0.975, 2} = 4.30265272974946).

    Solved by bisection on θ ∈ [0, π/2] (t = sqrt(df)·tan θ) of the closed-form two-sided mass, which
    rises monotonically from 0 to 1; bisection runs until θ stops changing, i.e. to float precision.
    """
    _check_confidence(confidence)
    if df < 1:
        raise ValueError(f"need at least 1 degree of freedom, got {df}")
    low, high = 0.0, math.pi / 2
    while True:
        middle = (low + high) / 2
        if middle in (low, high):
            return math.sqrt(df) * math.tan(middle)
        if _t_two_sided_mass(middle, df) < confidence:
            low = middle
        else:
            high = middle


def mean_t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float | None, float | None]:
    """Mean of replicate values (e.g. one accuracy per seed) and its Student-t interval.

    With m values, mean x̄ and sample standard deviation s (divisor m − 1)::

        interval = x̄ ± t_{(1+confidence)/2, m−1} · s / sqrt(m)

    One value has no spread to estimate: its bounds are None.
    """
    if not values:
        raise ValueError("need at least one value")
    m = len(values)
    mean = math.fsum(values) / m
    if m == 1:
        return mean, None, None
    s = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (m - 1))
    half = t_quantile(confidence, m - 1) * s / math.sqrt(m)
    return mean, mean - half, mean + half


def paired_difference(b: int, c: int, n: int, confidence: float = 0.95) -> tuple[float, float, float]:
    """Accuracy difference (first − second) of two models judged on the same n prompts, with its Wald interval.

    b = prompts the first model gets right and the second wrong, c = the reverse. The concordant prompts
    cancel, so the difference is d = (b − c)/n, and the variance of the paired difference of proportions
    (Agresti, Categorical Data Analysis, §10.1) gives::

        interval = d ± z · sqrt((b + c) − (b − c)²/n) / n, clipped to [−1, 1]

    (few prompts and a large difference can reach past the range a difference can take). With no
    discordant prompt (b = c = 0) the interval collapses to [0, 0], as every Wald interval does;
    :func:`mcnemar_exact` still gives the test (p = 1).
    """
    if min(b, c) < 0 or b + c > n or n == 0:
        raise ValueError(f"need b, c >= 0, n > 0 and b + c <= n, got b={b}, c={c}, n={n}")
    difference = (b - c) / n
    half = _two_sided_z(confidence) * math.sqrt((b + c) - (b - c) ** 2 / n) / n
    return difference, max(-1.0, difference - half), min(1.0, difference + half)


def mcnemar_exact(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value of b versus c discordant pairs.

    Under the null hypothesis both models are equally accurate, so each of the b + c discordant prompts
    falls either way with probability ½: X ~ Binomial(b + c, ½) and::

        p = min(1, 2 · P[X <= min(b, c)]) = min(1, 2 · Σ_{i=0}^{min(b,c)} C(b+c, i) / 2^(b+c))

    computed with exact integers (no normal approximation); b + c = 0 gives p = 1.
    """
    if min(b, c) < 0:
        raise ValueError(f"need b, c >= 0, got b={b}, c={c}")
    n = b + c
    tail, term = 0, 1  # term = C(n, i)
    for i in range(min(b, c) + 1):
        tail += term
        term = term * (n - i) // (i + 1)
    return float(min(Fraction(1), Fraction(2 * tail, 2**n)))


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of pass@k of one prompt from ``n`` samples of which ``c`` are correct (Chen et al. 2021,
    "Evaluating Large Language Models Trained on Code", eq. 1).

    The chance that ``k`` samples drawn without replacement from the ``n`` include a correct one::

        pass@k = 1 − C(n − c, k) / C(n, k)

    which is c/n at k = 1 and 1 when fewer than k samples are wrong (n − c < k). Averaged over prompts it
    estimates the chance that k fresh samples solve a prompt, without the downward bias of 1 − (1 − c/n)^k.
    Computed with exact integers.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    return float(1 - Fraction(math.comb(n - c, k), math.comb(n, k)))
