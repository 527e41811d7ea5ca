"""Statistics against hand-computed values and SciPy."""

from __future__ import annotations

import math

import pytest

from normbench import stats


@pytest.mark.parametrize("df,q975", [(1, 12.706204736), (2, 4.302652730), (4, 2.776445105),
                                     (9, 2.262157163), (30, 2.042272456)])
def test_t_quantiles_match_tables(df, q975):
    assert stats.t_ppf(0.975, df) == pytest.approx(q975, rel=1e-8)


def test_mean_ci_by_hand():
    # values 0.90, 0.92, 0.97: mean 0.93, s = 0.036056, t(0.975, 2) = 4.302653
    mean, std, half = stats.mean_ci([0.90, 0.92, 0.97])
    assert mean == pytest.approx(0.93)
    assert std == pytest.approx(math.sqrt(0.0013), rel=1e-12)
    assert half == pytest.approx(4.302652730 * math.sqrt(0.0013) / math.sqrt(3), rel=1e-8)
    assert stats.mean_ci([0.5]) == (0.5, None, None)


def test_welch_by_hand():
    a, b = [1.0, 2.0, 3.0], [4.0, 6.0, 8.0]
    # va = 1/3, vb = 4/3; t = -4/sqrt(5/3) = -3.098; df = (5/3)^2 / ((1/9)/2 + (16/9)/2) = 2.9412
    diff, p = stats.welch(a, b)
    assert diff == 2.0 - 6.0
    t, df = -4 / math.sqrt(5 / 3), (5 / 3) ** 2 / ((1 / 9) / 2 + (16 / 9) / 2)
    assert p == pytest.approx(2 * stats.t_cdf(t, df))
    assert 0.05 < p < 0.1
    assert stats.welch([1.0], [2.0, 3.0])[1] is None
    assert stats.welch([1.0, 1.0], [1.0, 1.0])[1] is None


def test_against_scipy():
    sp = pytest.importorskip("scipy.stats")
    for df in (1, 2, 3, 5, 8, 13, 50):
        for q in (0.6, 0.9, 0.975, 0.995):
            assert stats.t_ppf(q, df) == pytest.approx(sp.t.ppf(q, df), rel=1e-9)
        for t in (-3.0, -0.5, 0.0, 1.7, 6.0):
            assert stats.t_cdf(t, df) == pytest.approx(sp.t.cdf(t, df), rel=1e-10, abs=1e-14)
    a, b = [0.91, 0.93, 0.92, 0.95], [0.89, 0.90, 0.94]
    expected = sp.ttest_ind(a, b, equal_var=False).pvalue
    assert stats.welch(a, b)[1] == pytest.approx(expected, rel=1e-9)


def test_paired_t_and_holm_against_scipy():
    sp = pytest.importorskip("scipy.stats")
    a, b = [0.91, 0.93, 0.90, 0.95, 0.92], [0.90, 0.90, 0.89, 0.93, 0.92]
    mean, half, p = stats.paired(a, b)
    assert mean == pytest.approx(0.014)
    assert p == pytest.approx(sp.ttest_rel(a, b).pvalue, rel=1e-6)
    low, high = sp.t.interval(0.95, 4, loc=mean, scale=sp.sem([x - y for x, y in zip(a, b)]))
    assert half == pytest.approx((high - low) / 2, rel=1e-6)
    assert stats.holm([0.01, 0.04, None, 0.03]) == pytest.approx([0.03, 0.06, None, 0.06])
