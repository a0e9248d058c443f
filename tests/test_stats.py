"""Seed statistics and the log-linear fit, checked against the standard library, numpy, scipy and a t table."""

import math
import statistics

import numpy as np
import pytest
from scipy import stats as scipy_stats

from mnet_jax import stats

# Student t critical values t_{0.975, df}, typed from a printed table.
T_TABLE = {2: 4.302653, 4: 2.776445}


def test_t_quantile_matches_a_printed_table():
  for df, value in T_TABLE.items():
    assert stats.t_quantile(df) == pytest.approx(value, abs=1e-6)


def test_mean_ci_against_statistics_and_the_t_table():
  values = [0.61, 0.64, 0.66]
  summary = stats.mean_ci(values)
  assert summary.n == 3
  assert summary.mean == pytest.approx(statistics.mean(values))
  assert summary.sd == pytest.approx(statistics.stdev(values))
  assert summary.half_width == pytest.approx(T_TABLE[2] * statistics.stdev(values) / math.sqrt(3), rel=1e-6)
  assert (summary.low, summary.high) == pytest.approx((summary.mean - summary.half_width,
                                                       summary.mean + summary.half_width))
  five = [63.1, 64.0, 62.2, 65.3, 63.9]
  half = scipy_stats.t.ppf(0.975, 4) * statistics.stdev(five) / math.sqrt(5)
  assert stats.mean_ci(five).half_width == pytest.approx(half)
  assert stats.mean_ci(five).half_width == pytest.approx(T_TABLE[4] * statistics.stdev(five) / math.sqrt(5),
                                                         rel=1e-6)
  # 90% uses t_{0.95, 4} = 2.131847 (printed table).
  assert stats.mean_ci(five, 0.90).half_width == pytest.approx(2.131847 * statistics.stdev(five) / math.sqrt(5),
                                                               rel=1e-6)


def test_mean_ci_of_one_value_has_no_spread():
  assert stats.mean_ci([0.7]) == stats.Summary(1, 0.7, None, None)
  with pytest.raises(ValueError):
    stats.mean_ci([])


def test_fit_recovers_an_exact_line():
  # y = 2 + 5 log10(x), values written out by hand.
  fit = stats.fit_log_linear([1, 10, 100, 1000, 10**0.5], [2, 7, 12, 17, 4.5])
  assert (fit.intercept, fit.slope, fit.r2) == pytest.approx((2, 5, 1))
  assert fit.slope_ci95 == pytest.approx(0, abs=1e-9) and fit.residual_sd == pytest.approx(0, abs=1e-9)
  fit = stats.fit_log_linear([0.1, 1, 1000], [3, 1, -5])  # falling: y = 1 - 2 log10(x)
  assert (fit.intercept, fit.slope) == pytest.approx((1, -2))
  with pytest.raises(ValueError):
    stats.fit_log_linear([3, 3], [1, 2])
  two = stats.fit_log_linear([1, 10], [1, 3])  # two points: a line, but no residual degrees of freedom
  assert two.slope == pytest.approx(2) and two.slope_ci95 is None and two.residual_sd is None
  with pytest.raises(ValueError):
    two.band([5])


NOISY_X = [41, 77, 110, 150, 186, 290, 325, 418, 569]
NOISY_Y = [50.6, 55.1, 57.9, 63.7, 64.4, 67.2, 68.4, 69.1, 70.6]


def test_fit_against_polyfit_and_linregress():
  fit = stats.fit_log_linear(NOISY_X, NOISY_Y)
  u = np.log10(NOISY_X)
  slope, intercept = np.polyfit(u, NOISY_Y, 1)
  assert (fit.slope, fit.intercept) == pytest.approx((slope, intercept))
  reference = scipy_stats.linregress(u, NOISY_Y)
  assert fit.r2 == pytest.approx(reference.rvalue ** 2)
  assert fit.slope_ci95 == pytest.approx(scipy_stats.t.ppf(0.975, len(u) - 2) * reference.stderr)
  residuals = np.asarray(NOISY_Y) - (intercept + slope * u)
  assert fit.residual_sd == pytest.approx(math.sqrt(np.sum(residuals ** 2) / (len(u) - 2)))
  assert fit.predict([100]) == pytest.approx([intercept + 2 * slope])


def test_band_at_the_mean_of_x_is_the_ci_of_the_centered_intercept():
  fit = stats.fit_log_linear(NOISY_X, NOISY_Y)
  u = np.log10(NOISY_X)
  centered = scipy_stats.linregress(u - u.mean(), NOISY_Y)  # its intercept is the mean response at ū
  half = scipy_stats.t.ppf(0.975, len(u) - 2) * centered.intercept_stderr
  low, high = fit.band([10 ** u.mean()])
  assert (low[0], high[0]) == pytest.approx((centered.intercept - half, centered.intercept + half))
  # Away from the mean the band widens, symmetrically about the fitted line.
  low, high = fit.band([41, 569, 5000])
  widths = high - low
  assert widths[2] > widths[1] and widths[2] > widths[0] and widths[0] > 2 * half
  assert (low + high) / 2 == pytest.approx(fit.predict([41, 569, 5000]))


def test_welch_against_scipy_ttest_ind():
  a, b = [70.1, 71.3, 69.8, 70.9], [66.0, 68.2, 64.9]
  difference = stats.welch_difference(a, b)
  reference = scipy_stats.ttest_ind(a, b, equal_var=False)
  interval = reference.confidence_interval(0.95)
  assert difference.estimate == pytest.approx(statistics.mean(a) - statistics.mean(b))
  assert (difference.low, difference.high) == pytest.approx((interval.low, interval.high))
  assert difference.df == pytest.approx(reference.df)


def test_welch_needs_two_values_per_side():
  difference = stats.welch_difference([70.0], [66.0, 67.0])
  assert difference.estimate == pytest.approx(3.5) and difference.half_width is None and difference.low is None
  exact = stats.welch_difference([1.0, 1.0], [0.5, 0.5])
  assert (exact.low, exact.high) == (0.5, 0.5)
