"""The statistics the results report: mean ± Student-t CI over seeds, the log-linear fit, Welch differences.

Everything here is textbook (OLS, Student t, Welch–Satterthwaite), written out so that a reader can check
each number of the tables and figures against a formula; scipy supplies only the t quantiles.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

CONFIDENCE = 0.95


def t_quantile(df: float, confidence: float = CONFIDENCE) -> float:
  """The two-sided Student-t critical value: t_{(1+confidence)/2, df}."""
  from scipy import stats as scipy_stats  # here, not at the top: ~1 s to import, and a training run never needs it

  return float(scipy_stats.t.ppf((1 + confidence) / 2, df))


@dataclasses.dataclass(frozen=True)
class Summary:
  """n values summarised: mean, sample SD (ddof=1) and the CI half-width of the mean; SD and CI need n ≥ 2."""

  n: int
  mean: float
  sd: float | None
  half_width: float | None

  @property
  def low(self) -> float | None:
    return None if self.half_width is None else self.mean - self.half_width

  @property
  def high(self) -> float | None:
    return None if self.half_width is None else self.mean + self.half_width


def mean_ci(values: Sequence[float], confidence: float = CONFIDENCE) -> Summary:
  """Mean of `values` with the Student-t confidence interval of the mean (t_{n-1} · sd / √n)."""
  values = np.asarray(values, dtype=float)
  if values.size == 0:
    raise ValueError('mean_ci needs at least one value')
  n, mean = int(values.size), float(values.mean())
  if n < 2:
    return Summary(n, mean, None, None)
  sd = float(values.std(ddof=1))
  return Summary(n, mean, sd, t_quantile(n - 1, confidence) * sd / math.sqrt(n))


@dataclasses.dataclass(frozen=True)
class Difference:
  """a − b with its Welch CI; `half_width` and `df` are None when either side has fewer than two values."""

  estimate: float
  half_width: float | None
  df: float | None

  @property
  def low(self) -> float | None:
    return None if self.half_width is None else self.estimate - self.half_width

  @property
  def high(self) -> float | None:
    return None if self.half_width is None else self.estimate + self.half_width


def welch_from_summaries(a: Summary, b: Summary, confidence: float = CONFIDENCE) -> Difference:
  """Mean difference a − b and its Welch CI (Welch–Satterthwaite df) from two summaries."""
  estimate = a.mean - b.mean
  if a.sd is None or b.sd is None:
    return Difference(estimate, None, None)
  va, vb = a.sd ** 2 / a.n, b.sd ** 2 / b.n
  if va + vb == 0:  # identical values on both sides: no spread to estimate, the difference is exact
    return Difference(estimate, 0.0, None)
  df = (va + vb) ** 2 / (va ** 2 / (a.n - 1) + vb ** 2 / (b.n - 1))
  return Difference(estimate, t_quantile(df, confidence) * math.sqrt(va + vb), df)


def welch_difference(a_values: Sequence[float], b_values: Sequence[float],
                     confidence: float = CONFIDENCE) -> Difference:
  """Mean of `a_values` minus mean of `b_values`, with the Welch (unequal-variance) t confidence interval."""
  return welch_from_summaries(mean_ci(a_values), mean_ci(b_values), confidence)


@dataclasses.dataclass(frozen=True)
class LogLinearFit:
  """OLS of y = intercept + slope · log10(x): slope is the change in y per tenfold x.

  `slope_ci95` and `residual_sd` need n ≥ 3 (n − 2 residual degrees of freedom); `r2` is None when y is constant.
  """

  intercept: float
  slope: float
  slope_ci95: float | None
  r2: float | None
  residual_sd: float | None
  n: int
  mean_log_x: float
  sxx: float  # Σ (log10 x − mean)², which sets how fast the band widens away from the mean

  def predict(self, x_new: Sequence[float] | float) -> np.ndarray:
    return self.intercept + self.slope * np.log10(np.asarray(x_new, dtype=float))

  def band(self, x_new: Sequence[float] | float, confidence: float = CONFIDENCE) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper) confidence band of the mean response at `x_new`: ŷ ± t_{n-2} s √(1/n + (u−ū)²/Sxx)."""
    if self.residual_sd is None:
      raise ValueError('a confidence band needs at least three points')
    u = np.log10(np.asarray(x_new, dtype=float))
    half = t_quantile(self.n - 2, confidence) * self.residual_sd * np.sqrt(
        1 / self.n + (u - self.mean_log_x) ** 2 / self.sxx)
    center = self.intercept + self.slope * u
    return center - half, center + half


def fit_log_linear(x: Sequence[float], y: Sequence[float]) -> LogLinearFit:
  """Least-squares fit of y against log10(x), with the slope's 95% CI and R²."""
  u, y = np.log10(np.asarray(x, dtype=float)), np.asarray(y, dtype=float)
  if u.shape != y.shape:
    raise ValueError(f'x and y differ in length: {u.size} vs {y.size}')
  if u.size < 2 or np.ptp(u) == 0:
    raise ValueError('a log-linear fit needs at least two distinct x values')
  n, mean_u = int(u.size), float(u.mean())
  sxx = float(np.sum((u - mean_u) ** 2))
  slope = float(np.sum((u - mean_u) * (y - y.mean())) / sxx)
  intercept = float(y.mean() - slope * mean_u)
  ss_res = float(np.sum((y - intercept - slope * u) ** 2))
  ss_tot = float(np.sum((y - y.mean()) ** 2))
  r2 = 1 - ss_res / ss_tot if ss_tot > 0 else None
  residual_sd = slope_ci95 = None
  if n > 2:
    residual_sd = math.sqrt(ss_res / (n - 2))
    slope_ci95 = t_quantile(n - 2) * residual_sd / math.sqrt(sxx)
  return LogLinearFit(intercept, slope, slope_ci95, r2, residual_sd, n, mean_u, sxx)
