"""Figures of a study beyond α×ρ: series that follow the swept fields, learning curves against training compute
with the compute-optimal frontier, and the readers of the study's `study.json` and `curves.csv`.

A figure's series are the combinations of the swept fields that do not move its x. Training steps, batch size and
data size move training FLOPs and examples seen, so against training FLOPs each width is one line, its points
ordered by compute; the architecture (α, resolution, depth, variant) moves Mult-Adds and parameters, so against
Mult-Adds each training budget is one line. An α×ρ study keeps the paper's layout: a line per α, a dashed line
per resolution. Imports no JAX: it reads tables.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import matplotlib
import numpy as np
from etils import epath
from matplotlib import ticker
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from mnet_jax import report, stats
from mnet_jax.study import DEFAULT_SWEPT_COLUMNS, STUDY_JSON

CURVES_STEM = 'curves_vs_train_flops'
# The swept columns that move each kind of x (a dotted config path is matched by its last component).
ARCHITECTURE_FIELDS = ('alpha', 'resolution', 'depth', 'variant')
BUDGET_FIELDS = ('num_train_steps', 'num_epochs', 'batch_size', 'train_examples')
_TITLES = {'alpha': 'Width multiplier', 'resolution': 'Resolution', 'depth': 'Depth multiplier', 'variant': 'Variant',
           'num_train_steps': 'Training steps', 'num_epochs': 'Epochs', 'batch_size': 'Batch size',
           'train_examples': 'Training examples'}
_VALUE_FORMATS = {'alpha': 'α = {}', 'resolution': '{} px', 'depth': 'depth × {}', 'num_train_steps': '{} steps',
                  'num_epochs': '{} epochs', 'batch_size': 'batch {}', 'train_examples': '{} train examples'}
# Cells of curves.csv that stay text even when they read as numbers (a point named '100').
_TEXT_COLUMNS = ('name', 'variant')
_BAND_ALPHA = 0.18

T = TypeVar('T')
Series = tuple[tuple[Any, ...], list[dict[str, Any]]]  # (values of the series fields, its rows)


def _base(field: str) -> str:
  return field.rsplit('.', 1)[-1]


def field_title(field: str) -> str:
  """'Width multiplier' for alpha; a field without a title is named by its column."""
  return _TITLES.get(_base(field), field)


def value_label(field: str, value: Any) -> str:
  """'α = 0.5', '64 px', '300 steps', 'optim.learning_rate = 0.1'."""
  text = f'{value:g}' if isinstance(value, float) else str(value)
  return _VALUE_FORMATS.get(_base(field), f'{field} = {{}}').format(text)


def series_label(fields: Sequence[str], values: Sequence[Any]) -> str:
  """The legend entry of one series: its value of each field, e.g. 'α = 0.5, 300 steps'."""
  return ', '.join(value_label(f, v) for f, v in zip(fields, values, strict=True)) or 'all points'


def series_heading(fields: Sequence[str]) -> str:
  """The legend heading over the series, e.g. 'Width multiplier (this sweep)'."""
  return f'{" × ".join(field_title(f) for f in fields) or "Points"} (this sweep)'


@dataclasses.dataclass(frozen=True)
class Layout:
  """How a figure splits its points: one coloured series per combination of `colour`'s values, and a dashed
  grey line per value of `lines` (None: no such lines)."""

  colour: tuple[str, ...]
  lines: str | None


def _order(value: Any) -> tuple[int, Any]:
  if isinstance(value, (int, float)) and not isinstance(value, bool):
    return (1, float(value))
  return (0, '') if value is None else (2, str(value))


def varying(rows: Sequence[dict[str, Any]], fields: Sequence[str]) -> list[str]:
  """The fields that take at least two values among `rows`, in the given order."""
  return [f for f in fields if len({_order(r.get(f)) for r in rows}) > 1]


def series_layout(rows: Sequence[dict[str, Any]], swept: Sequence[str] | None, moved_by: Sequence[str]) -> Layout:
  """The series of a figure whose x is moved by the fields `moved_by` (e.g. `BUDGET_FIELDS` for training FLOPs).

  A series per combination of the swept fields that vary and do not move x. If every varying field moves x: an
  α×ρ study keeps a series per α and dashed lines per resolution; any other, a series per value of the first
  field, dashed lines per value of the second. Swept fields that hold one value among `rows` split nothing and are
  ignored. `swept` None: `study.DEFAULT_SWEPT_COLUMNS` (results written before study.json).
  """
  changing = varying(rows, DEFAULT_SWEPT_COLUMNS if swept is None else swept)
  moving = [f for f in changing if _base(f) in moved_by]
  held = [f for f in changing if _base(f) not in moved_by]
  if held:
    return Layout(tuple(held), None)
  if {'alpha', 'resolution'} <= set(moved_by) and {_base(f) for f in changing} <= set(DEFAULT_SWEPT_COLUMNS):
    return Layout(('alpha',), 'resolution')  # the paper's layout, even where one of the two holds one value
  return Layout(tuple(moving[:1]), moving[1] if len(moving) > 1 else None)


def group_series(rows: Sequence[dict[str, Any]], fields: Sequence[str]) -> list[Series]:
  """(values of `fields`, the rows that have them) per combination, largest values first (α = 1 before α = 0.5);
  rows keep their order within a series."""
  groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
  for row in rows:
    groups.setdefault(tuple(row.get(f) for f in fields), []).append(row)
  return sorted(groups.items(), key=lambda item: [_order(v) for v in item[0]], reverse=True)


def series_colors(count: int) -> np.ndarray:
  """Viridis, dark to light, clear of its faint yellow end."""
  return matplotlib.colormaps['viridis'](np.linspace(0.0, 0.85, max(count, 2)))


def frontier(items: Sequence[T], x: Callable[[T], float], y: Callable[[T], float], *,
             maximize: bool = True) -> list[T]:
  """The items no cheaper-or-equal item beats, cheapest first: where the best `y` so far improves along `x` (the
  upper envelope of accuracy, `maximize`, or the lower envelope of a loss)."""
  sign = 1.0 if maximize else -1.0
  kept, best = [], -math.inf
  # At equal x the better item comes first, so the other one is dominated.
  for item in sorted(items, key=lambda i: (x(i), -sign * y(i))):
    if sign * y(item) > best:
      kept.append(item)
      best = sign * y(item)
  return kept


def budget_varies(rows: Sequence[dict[str, Any]]) -> bool:
  """Whether the points trained on different budgets (examples seen = steps × batch). With one budget for all,
  training FLOPs are Mult-Adds times a constant: a figure against them would repeat the Mult-Adds one."""
  return len({r['examples_seen'] for r in rows if report.numeric(r, 'examples_seen') is not None}) > 1


def tick_label(value: float, _position: Any = None) -> str:
  """Plain numbers on axes of everyday magnitudes (2, 50, 1000), powers of ten for FLOPs and examples."""
  if value <= 0:
    return ''
  if 1e-3 <= value < 1e5:
    return f'{value:g}'
  exponent = math.floor(math.log10(value) + 1e-9)
  mantissa = f'{value / 10 ** exponent:.3g}'
  return f'$10^{{{exponent}}}$' if mantissa == '1' else f'${mantissa}{{\\times}}10^{{{exponent}}}$'


def log_x(ax: Any) -> None:
  """Log x, ticked at 1-2-5 where the data span three decades or less (at powers of ten beyond, where 1-2-5
  labels would collide)."""
  ax.set_xscale('log')
  low, high = ax.get_xlim()
  subs = (1.0, 2.0, 5.0) if math.log10(high / low) <= 3 else (1.0,)
  ax.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=subs))
  ax.xaxis.set_major_formatter(ticker.FuncFormatter(tick_label))
  ax.xaxis.set_minor_formatter(ticker.NullFormatter())


def mean_curve(rows: Sequence[dict[str, Any]], metric: str) -> list[tuple[float, stats.Summary]]:
  """One point's curve: at each evaluation step (ascending), training FLOPs so far and the mean of `metric` over
  the seeds that have it, with its Student-t 95% CI (n ≥ 2)."""
  by_step: dict[int, list[dict[str, Any]]] = {}
  for row in rows:
    by_step.setdefault(row['step'], []).append(row)
  curve = []
  for step in sorted(by_step):
    values = [v for r in by_step[step] if (v := report.numeric(r, metric)) is not None]
    flops = [v for r in by_step[step] if (v := report.numeric(r, 'train_flops')) is not None and v > 0]
    if values and flops:
      curve.append((float(np.mean(flops)), stats.mean_ci(values)))
  return curve


_PANELS = (('top1', 100.0, 'Top-1 accuracy (%)', True), ('eval_loss', 1.0, 'Eval loss (cross-entropy)', False))


def curves_figure(curves: Sequence[dict[str, Any]], dataset: str | None = None,
                  swept: Sequence[str] | None = None) -> Figure | None:
  """Top-1 and eval loss against training FLOPs so far (log x), side by side: per point the mean over seeds at each
  evaluation with a 95% CI band, its final evaluation dotted, one colour per series, and the compute-optimal
  frontier over all curves. Only the top-1 panel where no curve has an eval loss; None without curves."""
  rows = [r for r in curves if (report.numeric(r, 'train_flops') or 0) > 0 and report.numeric(r, 'top1') is not None]
  if not rows:
    return None
  panels = [p for p in _PANELS if any(report.numeric(r, p[0]) is not None for r in rows)]
  layout = series_layout(rows, swept, BUDGET_FIELDS)
  groups = group_series(rows, layout.colour)
  fig = Figure(figsize=(4.6 + 5.4 * len(panels), 5.4), layout='constrained')
  axes = fig.subplots(1, len(panels), squeeze=False)[0]
  for ax, (metric, scale, label, maximize) in zip(axes, panels, strict=True):
    reached = []
    for (_, series), color in zip(groups, series_colors(len(groups)), strict=False):
      for name in dict.fromkeys(r['name'] for r in series):
        curve = mean_curve([r for r in series if r['name'] == name], metric)
        if not curve:
          continue
        x = np.array([flops for flops, _ in curve])
        mean = scale * np.array([s.mean for _, s in curve])
        ax.plot(x, mean, color=color, linewidth=1.4, zorder=2)
        with_ci = np.array([s.half_width is not None for _, s in curve])
        if with_ci.any():
          half = scale * np.array([s.half_width or 0.0 for _, s in curve])
          ax.fill_between(x, mean - half, mean + half, where=with_ci, color=color, alpha=_BAND_ALPHA, linewidth=0,
                          zorder=1)
        ax.plot(x[-1:], mean[-1:], 'o', color=color, markersize=6, zorder=4)
        reached += zip(x, mean, strict=True)
    best = frontier(reached, lambda p: p[0], lambda p: p[1], maximize=maximize)
    ax.plot([p[0] for p in best], [p[1] for p in best], drawstyle='steps-post', color='black', linewidth=0.9,
            zorder=5)
    log_x(ax)
    low, high = ax.get_ylim()
    # Accuracy lives in [0, 100] and a loss above 0; a CI band of few seeds can reach past either.
    ax.set_ylim(max(low, 0.0), min(high, 100.0) if metric == 'top1' else high)
    ax.set_xlabel('Training compute so far (FLOPs, forward + backward; log scale)')
    ax.set_ylabel(label)
    ax.grid(True, which='major', alpha=0.35)
  heading = Line2D([], [], linestyle='none', label=series_heading(layout.colour))
  handles = [heading] + [Line2D([], [], color=c, linewidth=1.4, label=series_label(layout.colour, values))
                         for (values, _), c in zip(groups, series_colors(len(groups)), strict=False)]
  handles += [Line2D([], [], color='0.3', marker='o', markersize=6, linestyle='none', label='final evaluation'),
              Patch(color='0.3', alpha=_BAND_ALPHA, linewidth=0, label='95% CI of the mean\nover seeds (n ≥ 2)'),
              Line2D([], [], color='black', linewidth=0.9, drawstyle='steps-post',
                     label='compute-optimal frontier\n(best reached at that compute)')]
  legend = fig.legend(handles=handles, loc='outside right upper', frameon=False, fontsize=9)
  legend.get_texts()[0].set_fontweight('bold')
  seeds = sorted({len({r['seed'] for r in rows if r['name'] == name}) for name in {r['name'] for r in rows}})
  n = f'{seeds[0]}' if len(seeds) == 1 else f'{seeds[0]}–{seeds[-1]}'
  fig.suptitle(f'MobileNet V1{f" on {dataset}" if dataset else ""}: learning curves against training compute\n'
               f'mean over n = {n} seeds per point at each evaluation', fontsize=10)
  return fig


def load_study(workdir: str | os.PathLike) -> dict[str, Any]:
  """`workdir`/study.json ({'swept': [columns], 'config': {...}}), or {} where there is none."""
  path = epath.Path(workdir) / STUDY_JSON
  if not path.exists():
    return {}
  try:
    study = json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f'{path} is not valid JSON: {e}') from None
  swept = study.get('swept') if isinstance(study, dict) else None
  if not isinstance(swept, list) or not all(isinstance(f, str) for f in swept):
    raise ValueError(f'{path} should hold an object whose "swept" is a list of column names')
  return study


def _cell(column: str, text: str) -> Any:
  if text == '':
    return None
  if column in _TEXT_COLUMNS:
    return text
  for kind in (int, float):
    try:
      return kind(text)
    except ValueError:
      pass
  return text


def load_curves(workdir: str | os.PathLike) -> list[dict[str, Any]]:
  """The rows of `workdir`/curves.csv (one per point, seed and evaluation step), numbers as int or float and empty
  cells as None; [] where there is no such file."""
  path = epath.Path(workdir) / report.CURVES_CSV
  if not path.exists():
    return []
  reader = csv.DictReader(io.StringIO(path.read_text(), newline=''))
  missing = [c for c in ('name', 'seed', 'step', 'train_flops', 'top1') if c not in (reader.fieldnames or [])]
  if missing:
    raise ValueError(f'{path} lacks the column(s) {", ".join(missing)}')
  # A short row reads its missing cells as None, a long row's surplus cells (key None) are dropped.
  return [{column: _cell(column, text or '') for column, text in row.items() if column is not None} for row in reader]
