"""Small-sample statistics for seeds: Student-t confidence intervals and Welch's t-test.

Hand-written (about 40 lines) rather than importing SciPy, whose import alone would cost
`normbench compare` more than its whole 0.5 s budget; the tests check every function against SciPy.
"""

from __future__ import annotations

import functools
import math
import statistics


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)),
                   -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b)."""
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                     + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


@functools.lru_cache(maxsize=1024)  # a table of many groups asks for the same few quantiles
def t_ppf(q: float, df: float) -> float:
    """Quantile of Student's t, by bisection on the CDF."""
    lo, hi = -1e6, 1e6
    for _ in range(200):
        mid = (lo + hi) / 2.0
        lo, hi = (mid, hi) if t_cdf(mid, df) < q else (lo, mid)
    return (lo + hi) / 2.0


def mean(values: list[float]) -> float | None:
    """The mean of any floats, never raising: +inf and -inf together give NaN, one kind of
    infinity gives it, and finite values too large to sum (1.7e308 twice) are averaged without
    overflow. None for no values."""
    values = list(values)
    if not values:
        return None
    if any(math.isnan(v) for v in values) or (math.inf in values and -math.inf in values):
        return math.nan
    if math.inf in values or -math.inf in values:
        return math.inf if math.inf in values else -math.inf
    n = len(values)
    return math.fsum(v / n for v in values)


def mean_ci(values: list[float], level: float = 0.95) -> tuple[float, float | None, float | None]:
    """(mean, sample std, half-width of the Student-t confidence interval); None for n < 2."""
    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return mean, None, None
    std = statistics.stdev(values)
    return mean, std, t_ppf(0.5 + level / 2.0, n - 1) * std / math.sqrt(n)


def welch(a: list[float], b: list[float]) -> tuple[float, float | None]:
    """(mean(a) - mean(b), two-sided Welch t-test p-value; None when it is undefined)."""
    diff = statistics.fmean(a) - statistics.fmean(b)
    if len(a) < 2 or len(b) < 2:
        return diff, None
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    if va + vb == 0.0:
        return diff, None if diff == 0.0 else 0.0
    t = diff / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    return diff, 2.0 * (1.0 - t_cdf(abs(t), df))


def paired(a: list[float], b: list[float], level: float = 0.95
           ) -> tuple[float, float | None, float | None]:
    """(mean of a - b, half-width of its Student-t CI, two-sided paired t-test p-value) for
    values paired by position (the same seed); None where n < 2 or the spread is 0."""
    diffs = [x - y for x, y in zip(a, b)]
    n = len(diffs)
    mean = statistics.fmean(diffs)
    if n < 2:
        return mean, None, None
    sd = statistics.stdev(diffs)
    if sd == 0.0:
        return mean, 0.0, None if mean == 0.0 else 0.0
    t = mean / (sd / math.sqrt(n))
    return mean, t_ppf(0.5 + level / 2.0, n - 1) * sd / math.sqrt(n), 2.0 * (1.0 - t_cdf(abs(t), n - 1))


def holm(p_values: list[float | None]) -> list[float | None]:
    """Holm-Bonferroni adjusted p-values (None stays None and is not counted)."""
    present = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    m, running = len(present), 0.0
    adjusted: list[float | None] = [None] * len(p_values)
    for rank, (p, i) in enumerate(present):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted
