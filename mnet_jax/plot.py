"""Trade-off figures of a sweep: top-1 vs Mult-Adds (paper Figure 4), vs params (Figure 5), vs latency, ablations.

Figures are rebuilt from results.json alone:

    python -m mnet_jax.plot --workdir=DIR
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import math
import os
import sys
from typing import Any

import matplotlib
import numpy as np
from etils import epath
from matplotlib import ticker
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from mnet_jax import published, report

FORMATS = ('png', 'svg')
_RESOLUTION_DASHES = ((0, (5, 2)), (0, (1, 1.5)), (0, (6, 2, 1, 2)), (0, (2, 2)), (0, (8, 3)))


@dataclasses.dataclass(frozen=True)
class Axis:
  """One x quantity: where it lives in a row, its scale, how it is labelled."""

  field: str
  scale: float
  label: str
  unit: str
  stem: str
  title: str


AXES = (
    Axis('mult_adds', 1e-6, 'Mult-Adds (millions, log scale)', 'Mult-Adds', 'top1_vs_mult_adds', 'Mult-Adds'),
    Axis('params', 1e-6, 'Parameters (millions, log scale)', 'params', 'top1_vs_params', 'parameters'),
    Axis('latency_ms', 1.0, 'Measured batch-1 inference latency (ms, log scale)', 'latency', 'top1_vs_latency',
         'measured latency'),
)


def fit_log_linear(x: Any, y: Any) -> tuple[float, float]:
  """Least-squares (a, b) of y = a + b * log10(x); b is the change in y per tenfold x."""
  u, y = np.log10(np.asarray(x, dtype=float)), np.asarray(y, dtype=float)
  if u.size < 2 or np.ptp(u) == 0:
    raise ValueError('a log-linear fit needs at least two distinct x values')
  b = float(np.sum((u - u.mean()) * (y - y.mean())) / np.sum((u - u.mean()) ** 2))
  return float(y.mean() - b * u.mean()), b


def _number(row: dict[str, Any], key: str) -> float | None:
  value = row.get(key)
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
    return None
  return float(value)


def _finished(rows: list[dict[str, Any]], field: str) -> list[dict[str, Any]]:
  """Rows that can be placed on a top-1 vs `field` plot: done, with top-1 and a positive x."""
  return [r for r in rows if r.get('status') == 'done' and _number(r, 'top1') is not None
          and (_number(r, field) or 0) > 0 and _number(r, 'alpha') is not None
          and _number(r, 'resolution') is not None]


def _save(fig: Figure, out_dir: epath.Path, stem: str) -> list[epath.Path]:
  paths = []
  for fmt in FORMATS:
    buffer = io.BytesIO()
    # A fixed hash salt and no date keep rebuilt SVGs byte-identical; text stays text, editable for a paper.
    with matplotlib.rc_context({'svg.hashsalt': 'mnet_jax', 'svg.fonttype': 'none'}):
      fig.savefig(buffer, format=fmt, dpi=150, metadata={'Date': None} if fmt == 'svg' else None)
    path = out_dir / f'{stem}.{fmt}'
    report.write_atomically(path, buffer.getvalue())
    paths.append(path)
  return paths


def _tradeoff_figure(rows: list[dict[str, Any]], axis: Axis, dataset: str | None) -> Figure | None:
  """Top-1 vs one cost: a line per α, a line per resolution, a log-linear fit, published results if ImageNet."""
  rows = _finished([r for r in rows if r.get('variant', 'separable') == 'separable'], axis.field)
  if not rows:
    return None
  fig = Figure(figsize=(9.5, 5.5), layout='constrained')
  ax = fig.add_subplot()

  def xy(points):
    points = sorted(points, key=lambda r: _number(r, axis.field))
    return [axis.scale * _number(r, axis.field) for r in points], [100 * _number(r, 'top1') for r in points]

  alphas = sorted({_number(r, 'alpha') for r in rows}, reverse=True)
  colors = matplotlib.colormaps['viridis'](np.linspace(0.0, 0.85, max(len(alphas), 2)))
  alpha_handles = []
  for alpha, color in zip(alphas, colors, strict=False):
    x, y = xy([r for r in rows if _number(r, 'alpha') == alpha])
    alpha_handles += ax.plot(x, y, '-o', color=color, markersize=6, linewidth=1.8, zorder=3, label=f'α = {alpha:g}')
  resolution_handles = []
  resolutions = sorted({int(_number(r, 'resolution')) for r in rows}, reverse=True)
  for i, resolution in enumerate(resolutions):
    x, y = xy([r for r in rows if int(_number(r, 'resolution')) == resolution])
    if len(x) > 1:
      resolution_handles += ax.plot(x, y, color='0.35', linewidth=1.1, linestyle=_RESOLUTION_DASHES[i % 5],
                                    zorder=2, label=f'{resolution} px')
  x_all, y_all = xy(rows)
  fit_handles = []
  if len(set(x_all)) > 1:
    a, b = fit_log_linear(x_all, y_all)
    span = np.geomspace(min(x_all), max(x_all), 50)
    fit_handles += ax.plot(span, a + b * np.log10(span), color='tab:red', linewidth=1.2, alpha=0.8, zorder=1,
                           label=f'log-linear fit: {b:+.1f} pts\nper 10× {axis.unit}')
  reference_handles = []
  if dataset == published.DATASET and axis.field != 'latency_ms':
    reference_handles = _overlay_published(ax, axis)
  ax.set_xscale('log')
  # Plain numbers at 1-2-5 steps read better than 2×10^1 on axes that span only a decade or two.
  ax.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
  ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f'{value:g}'))
  ax.xaxis.set_minor_formatter(ticker.NullFormatter())
  ax.set_xlabel(axis.label)
  ax.set_ylabel('Top-1 accuracy (%)')
  ax.set_title(f'MobileNet V1{f" on {dataset}" if dataset else ""}: top-1 accuracy vs {axis.title}')
  ax.grid(True, which='major', alpha=0.35)
  ax.grid(True, which='minor', alpha=0.12)
  # Sections of one legend, outside the axes so it never hides a point.
  handles = [_heading('Width multiplier (this sweep)')] + alpha_handles
  if resolution_handles:
    handles += [_heading('Resolution')] + resolution_handles
  handles += fit_handles
  if reference_handles:
    handles += [_heading('Published (ImageNet)')] + reference_handles
  legend = ax.legend(handles=handles, loc='upper left', bbox_to_anchor=(1.02, 1.0), frameon=False, fontsize=9)
  for handle, text in zip(handles, legend.get_texts(), strict=True):
    if handle.get_linestyle() == 'None' and handle.get_marker() in ('None', None, ''):
      text.set_fontweight('bold')
  return fig


def _heading(text: str) -> Line2D:
  return Line2D([], [], linestyle='none', label=text)


def _overlay_published(ax: Any, axis: Axis) -> list[Line2D]:
  handles = []
  styles = ((published.slim_results(), dict(marker='D', markersize=5, markerfacecolor='none', color='0.25'),
             'TF-slim checkpoints'),
            (published.paper_results('Table 6') + published.paper_results('Table 7')[1:],
             dict(marker='*', markersize=9, color='black'), 'Howard et al. 2017,\nTables 6–7'))
  for results, style, label in styles:
    rows = published.as_rows(results)
    x = [axis.scale * r[axis.field] for r in rows]
    y = [100 * r['top1'] for r in rows]
    if len(set(x)) > 1:
      label += f' (fit slope {fit_log_linear(x, y)[1]:+.1f})'
    handles += ax.plot(x, y, linestyle='none', zorder=4, label=label, **style)
  return handles


def _ablation_figure(rows: list[dict[str, Any]], dataset: str | None) -> Figure | None:
  """Tables 4/5 as bars: each non-separable model beside the separable models at the same resolution."""
  ablation = _finished([r for r in rows if r.get('variant', 'separable') != 'separable'], 'mult_adds')
  if not ablation:
    return None
  resolutions = {_number(r, 'resolution') for r in ablation}
  baselines = _finished([r for r in rows if r.get('variant', 'separable') == 'separable'
                         and _number(r, 'resolution') in resolutions], 'mult_adds')
  shown = list(reversed(report.sort_rows(ablation + baselines)))  # barh draws bottom-up
  colors = {'separable': 'tab:blue', 'conv': 'tab:orange', 'shallow': 'tab:green'}
  fig = Figure(figsize=(9.5, 1.6 + 0.65 * len(shown)), layout='constrained')
  ax = fig.add_subplot()
  names = [report.model_name(r['alpha'], r['resolution'], r.get('variant', 'separable')) for r in shown]
  top1 = [100 * _number(r, 'top1') for r in shown]
  ax.barh(range(len(shown)), top1, color=[colors.get(r.get('variant'), 'tab:gray') for r in shown], height=0.6)
  for i, t in enumerate(top1):  # inside the bar's end, clear of the published markers just past it
    ax.text(t - 0.01 * ax.get_xlim()[1], i, f'{t:.1f}%', ha='right', va='center', color='white', fontweight='bold')
  ax.set_yticks(range(len(shown)),
                [f'{n}\n{report.millions(r["mult_adds"])} M Mult-Adds, {report.millions(r["params"])} M params'
                 for n, r in zip(names, shown, strict=True)], fontsize=9)
  ax.set_xlim(0, min(100.0, max(top1) * 1.1 + 5))
  ax.set_xlabel('Top-1 accuracy (%)')
  ax.set_title(f'MobileNet V1 ablations{f" on {dataset}" if dataset else ""}\n'
               'depthwise separable vs full convolution (Table 4), narrow vs shallow (Table 5)')
  ax.grid(True, axis='x', alpha=0.35)
  if dataset == published.DATASET:
    paper = {(p.variant, p.alpha, p.resolution): p.top1
             for p in published.paper_results('Table 4') + published.paper_results('Table 5')}
    marks = [(paper[key], i) for i, r in enumerate(shown)
             if (key := (r.get('variant', 'separable'), _number(r, 'alpha'), int(_number(r, 'resolution')))) in paper]
    if marks:
      ax.plot(*zip(*marks, strict=True), linestyle='none', marker='|', markersize=22, markeredgewidth=2.5,
              color='black', label='published ImageNet top-1 (Howard et al. 2017, Tables 4–5)')
      fig.legend(loc='outside lower right', fontsize=9, markerscale=0.6, frameon=False)
  return fig


def make_figures(rows: list[dict[str, Any]], out_dir: str | os.PathLike, dataset: str | None = None
                 ) -> list[epath.Path]:
  """Write every figure the rows support (PNG and SVG) into `out_dir`; returns the paths written.

  `dataset` defaults to the rows' dataset when they share one; 'imagenet2012' overlays the published results.
  Failed or unfinished points, and points lacking the plotted quantity, are left out.
  """
  if dataset is None:
    names = {r.get('dataset') for r in rows}
    dataset = names.pop() if len(names) == 1 else None
  else:
    rows = [r for r in rows if r.get('dataset') in (None, dataset)]
  out_dir = epath.Path(out_dir)
  paths = []
  for axis in AXES:
    fig = _tradeoff_figure(rows, axis, dataset)
    if fig is not None:
      paths += _save(fig, out_dir, axis.stem)
  fig = _ablation_figure(rows, dataset)
  if fig is not None:
    paths += _save(fig, out_dir, 'ablation_top1')
  return paths


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m mnet_jax.plot', description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', required=True, help='sweep directory holding results.json; figures go there')
  parser.add_argument('--dataset', default=None, help="defaults to the rows' dataset")
  args = parser.parse_args(argv)
  try:
    rows = report.load_results(args.workdir)
  except (OSError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  paths = make_figures(rows, args.workdir, args.dataset)
  if not paths:
    print(f'error: no finished points with a top-1 accuracy in {epath.Path(args.workdir) / report.RESULTS_JSON}',
          file=sys.stderr)
    return 1
  for path in paths:
    print(path)
  return 0


if __name__ == '__main__':
  sys.exit(main())
