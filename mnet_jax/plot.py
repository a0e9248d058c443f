"""Trade-off figures of a sweep: top-1 vs Mult-Adds (paper Figure 4), vs params (Figure 5), vs latency (XLA and
LiteRT), vs training FLOPs and examples seen; ablations; learning curves (`plot_study`).

Each point is the mean over its finished seeds (the 'point' rows of results.json) with its 95% CI; the
log-linear fit comes with its 95% confidence band. The series follow the swept fields of study.json (see
`plot_study`); the learning curves come from curves.csv. Figures are rebuilt from those files alone:

    python -m mnet_jax.plot --workdir=DIR
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
import sys
from typing import Any

import matplotlib
import numpy as np
from etils import epath
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from mnet_jax import plot_study, published, report, stats

FORMATS = ('png', 'svg')
_LINE_DASHES = ((0, (5, 2)), (0, (1, 1.5)), (0, (6, 2, 1, 2)), (0, (2, 2)), (0, (8, 3)))


@dataclasses.dataclass(frozen=True)
class Axis:
  """One x quantity: where it lives in a row, its scale, how it is labelled."""

  field: str
  scale: float
  label: str
  unit: str
  stem: str
  title: str
  moved_by: tuple[str, ...] = plot_study.ARCHITECTURE_FIELDS  # the swept fields that move this x
  budget: bool = False  # drawn only where the points' training budgets differ (`plot_study.budget_varies`)


AXES = (
    Axis('mult_adds', 1e-6, 'Mult-Adds (millions, log scale)', 'Mult-Adds', 'top1_vs_mult_adds', 'Mult-Adds'),
    Axis('params', 1e-6, 'Parameters (millions, log scale)', 'params', 'top1_vs_params', 'parameters'),
    Axis('train_flops', 1.0, 'Training compute (FLOPs, forward + backward; log scale)', 'FLOPs',
         'top1_vs_train_flops', 'training compute', plot_study.BUDGET_FIELDS, budget=True),
    Axis('examples_seen', 1.0, 'Training examples seen (steps × global batch; log scale)', 'examples',
         'top1_vs_examples_seen', 'training examples seen', plot_study.BUDGET_FIELDS, budget=True),
    Axis('latency_ms', 1.0, 'Measured batch-1 inference latency (ms, log scale)', 'latency', 'top1_vs_latency',
         'measured latency'),
    Axis('tflite_1t_latency_ms', 1.0, 'Single-image latency in LiteRT (TFLite float32, XNNPACK, 1 thread; ms, log '
         'scale)', 'latency', 'top1_vs_tflite_latency', 'mobile-runtime (LiteRT) latency'),
)


def save_figure(fig: Figure, out_dir: epath.Path, stem: str) -> list[epath.Path]:
  """`fig` as `out_dir`/`stem`.png and .svg, each written atomically; returns their paths."""
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


def _x(row: dict[str, Any], axis: Axis) -> float:
  return axis.scale * row[axis.field]


def _error_bars(ax: Any, points: list[dict[str, Any]], axis: Axis, color: Any) -> None:
  """95% CI bars on top-1 where a point has n ≥ 2 seeds; [min, max] latency spreads as horizontal bars."""
  with_ci = [r for r in points if report.numeric(r, 'top1_ci95') is not None]
  if with_ci:
    ax.errorbar([_x(r, axis) for r in with_ci], [100 * r['top1'] for r in with_ci],
                yerr=[100 * r['top1_ci95'] for r in with_ci], fmt='none', ecolor=color, elinewidth=1.2,
                capsize=3, zorder=3)
  spread_key = f'{axis.field}_spread'
  spread = [r for r in points if isinstance(r.get(spread_key), (list, tuple)) and len(r[spread_key]) == 2]
  if spread:
    x = np.array([_x(r, axis) for r in spread])
    low, high = (axis.scale * np.array([r[spread_key][i] for r in spread]) for i in (0, 1))
    ax.errorbar(x, [100 * r['top1'] for r in spread], xerr=[np.maximum(x - low, 0), np.maximum(high - x, 0)],
                fmt='none', ecolor=color, elinewidth=0.8, capsize=2, zorder=3)


def pareto_frontier(points: list[dict[str, Any]], field: str) -> list[dict[str, Any]]:
  """The non-dominated points, cheapest first: each has a higher top-1 than every point costing as much or less."""
  return plot_study.frontier(points, lambda r: r[field], lambda r: r['top1'])


def _tradeoff_figure(rows: list[dict[str, Any]], axis: Axis, dataset: str | None,
                     swept: list[str] | None = None) -> Figure | None:
  """Top-1 vs one cost: seed means with 95% CIs, a line per series of the swept fields (α×ρ: per α and per
  resolution), the log-linear fit with its 95% confidence band, the Pareto frontier, and the published results
  if ImageNet."""
  rows = [r for r in report.finished_points(rows, axis.field) if r.get('variant', 'separable') == 'separable']
  if not rows or (axis.budget and not plot_study.budget_varies(rows)):
    return None
  fig = Figure(figsize=(9.5, 5.8), layout='constrained')
  ax = fig.add_subplot()

  def by_cost(points):
    return sorted(points, key=lambda r: r[axis.field])

  def xy(points):
    return [_x(r, axis) for r in by_cost(points)], [100 * r['top1'] for r in by_cost(points)]

  layout = plot_study.series_layout(rows, swept, axis.moved_by)
  groups = plot_study.group_series(rows, layout.colour)
  series_handles = []
  for (values, points), color in zip(groups, plot_study.series_colors(len(groups)), strict=False):
    series_handles += ax.plot(*xy(points), '-o', color=color, markersize=6, linewidth=1.8, zorder=3,
                              label=plot_study.series_label(layout.colour, values))
    _error_bars(ax, points, axis, color)
  if any(report.numeric(r, 'top1_ci95') is not None for r in rows):
    series_handles.append(Line2D([], [], color='0.3', marker='|', markersize=12, linestyle='none',
                                 label='95% CI of the mean\nover seeds (n ≥ 2)'))
  line_handles = []
  if layout.lines:
    for i, (values, points) in enumerate(plot_study.group_series(rows, (layout.lines,))):
      x, y = xy(points)
      if len(x) > 1:
        line_handles += ax.plot(x, y, color='0.35', linewidth=1.1, linestyle=_LINE_DASHES[i % 5], zorder=2,
                                label=plot_study.value_label(layout.lines, values[0]))
  frontier = pareto_frontier(rows, axis.field)
  summary_handles = ax.plot(*xy(frontier), drawstyle='steps-post', color='black', linewidth=0.9, alpha=0.75,
                            marker='o', markersize=11, markerfacecolor='none', markeredgewidth=1.2, zorder=4,
                            label='Pareto frontier\n(best top-1 at its cost)')
  fit = report.log_linear_fit(rows, axis.field)
  subtitle = ''
  if fit is not None:
    ci = '' if fit.slope_ci95 is None else f' ± {fit.slope_ci95:.1f}'
    r2 = '' if fit.r2 is None else f', R² {fit.r2:.2f}'
    span = np.geomspace(min(r[axis.field] for r in rows), max(r[axis.field] for r in rows), 60)
    summary_handles += ax.plot(axis.scale * span, fit.predict(span), color='tab:red', linewidth=1.2, alpha=0.8,
                               zorder=1, label=f'log-linear fit: {fit.slope:+.1f}{ci} pts\nper 10× {axis.unit}{r2}')
    if fit.residual_sd is not None:
      low, high = fit.band(span)
      summary_handles.append(ax.fill_between(axis.scale * span, low, high, color='tab:red', alpha=0.12,
                                             linewidth=0, zorder=0, label='95% confidence band\nof the fit'))
    subtitle = (f'\nfit over {fit.n} point means: {fit.slope:+.1f}{ci} points per 10× {axis.unit} '
                f'(95% CI){r2}; seeds per point: {_seed_counts(rows)}')
  reference_handles = []
  if dataset == published.DATASET and axis.field in ('mult_adds', 'params'):  # latency: not on this machine
    reference_handles = _overlay_published(ax, axis)
  plot_study.log_x(ax)
  # Accuracy lives in [0, 100]. A CI of a mean near chance over few seeds reaches past it (t = 12.7 at n = 2): the
  # axis stops at the range and cuts the bar there, instead of showing negative accuracies.
  low, high = ax.get_ylim()
  ax.set_ylim(max(low, 0.0), min(high, 100.0))
  ax.set_xlabel(axis.label)
  ax.set_ylabel('Top-1 accuracy (%)')
  # Centred over the whole figure, legend included: over the axes alone a long fit line would run off the left.
  fig.suptitle(f'MobileNet V1{f" on {dataset}" if dataset else ""}: top-1 accuracy vs {axis.title}{subtitle}',
               fontsize=10)
  ax.grid(True, which='major', alpha=0.35)
  ax.grid(True, which='minor', alpha=0.12)
  # Sections of one legend, outside the axes so it never hides a point.
  headings = [_heading(plot_study.series_heading(layout.colour))]
  handles = headings[-1:] + series_handles
  if line_handles:
    headings.append(_heading(plot_study.field_title(layout.lines)))
    handles += headings[-1:] + line_handles
  handles += summary_handles
  if reference_handles:
    headings.append(_heading('Published (ImageNet)'))
    handles += headings[-1:] + reference_handles
  legend = ax.legend(handles=handles, loc='upper left', bbox_to_anchor=(1.02, 1.0), frameon=False, fontsize=9)
  for handle, text in zip(handles, legend.get_texts(), strict=True):
    if any(handle is h for h in headings):
      text.set_fontweight('bold')
  return fig


def _seed_counts(rows: list[dict[str, Any]]) -> str:
  counts = sorted({int(r.get('n') or 0) for r in rows})
  return f'{counts[0]}' if len(counts) == 1 else f'{counts[0]}–{counts[-1]}'


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
    x = [_x(r, axis) for r in rows]
    y = [100 * r['top1'] for r in rows]
    if len(set(x)) > 1:
      label += f' (fit slope {stats.fit_log_linear(x, y).slope:+.1f})'
    handles += ax.plot(x, y, linestyle='none', zorder=4, label=label, **style)
  return handles


def _ablation_figure(rows: list[dict[str, Any]], dataset: str | None) -> Figure | None:
  """Tables 4/5 as bars with 95% CIs: each non-separable model beside the separable ones at its resolution."""
  points = report.finished_points(rows)
  ablation = [r for r in points if r.get('variant', 'separable') != 'separable']
  if not ablation:
    return None
  resolutions = {r['resolution'] for r in ablation}
  baselines = [r for r in points if r.get('variant', 'separable') == 'separable' and r['resolution'] in resolutions]
  shown = list(reversed(report.sort_rows(ablation + baselines)))  # barh draws bottom-up
  colors = {'separable': 'tab:blue', 'conv': 'tab:orange', 'shallow': 'tab:green'}
  fig = Figure(figsize=(9.5, 1.6 + 0.65 * len(shown)), layout='constrained')
  ax = fig.add_subplot()
  names = [report.model_name(r['alpha'], r['resolution'], r.get('variant', 'separable')) for r in shown]
  top1 = [100 * r['top1'] for r in shown]
  ci = [100 * (report.numeric(r, 'top1_ci95') or 0) for r in shown]
  ax.barh(range(len(shown)), top1, color=[colors.get(r.get('variant'), 'tab:gray') for r in shown], height=0.6)
  with_ci = [i for i, r in enumerate(shown) if report.numeric(r, 'top1_ci95') is not None]  # n = 1: no bar
  if with_ci:
    ax.errorbar([top1[i] for i in with_ci], with_ci, xerr=[ci[i] for i in with_ci], fmt='none', ecolor='black',
                elinewidth=1.2, capsize=4, zorder=3)
  ax.set_xlim(0, min(100.0, max(t + c for t, c in zip(top1, ci, strict=True)) * 1.1 + 5))
  for i, (r, t, c) in enumerate(zip(shown, top1, ci, strict=True)):  # inside the bar, clear of the CI bar
    ax.text(t - c - 0.01 * ax.get_xlim()[1], i, f'{report.mean_with_ci(r)}% (n={r.get("n")})', ha='right',
            va='center', color='white', fontweight='bold', fontsize=9)
  ax.set_yticks(range(len(shown)),
                [f'{n}\n{report.millions(r["mult_adds"])} M Mult-Adds, {report.millions(r["params"])} M params'
                 for n, r in zip(names, shown, strict=True)], fontsize=9)
  ax.set_xlabel('Top-1 accuracy (%), mean over seeds with 95% CI')
  ax.set_title(f'MobileNet V1 ablations{f" on {dataset}" if dataset else ""}\n'
               'depthwise separable vs full convolution (Table 4), narrow vs shallow (Table 5)')
  ax.grid(True, axis='x', alpha=0.35)
  if dataset == published.DATASET:
    paper = {(p.variant, p.alpha, p.resolution): p.top1
             for p in published.paper_results('Table 4') + published.paper_results('Table 5')}
    marks = [(paper[key], i) for i, r in enumerate(shown)
             if (key := (r.get('variant', 'separable'), float(r['alpha']), int(r['resolution']))) in paper]
    if marks:
      ax.plot(*zip(*marks, strict=True), linestyle='none', marker='|', markersize=22, markeredgewidth=2.5,
              color='black', label='published ImageNet top-1 (Howard et al. 2017, Tables 4–5)')
      fig.legend(loc='outside lower right', fontsize=9, markerscale=0.6, frameon=False)
  return fig


def make_figures(rows: list[dict[str, Any]], out_dir: str | os.PathLike, dataset: str | None = None, *,
                 curves: list[dict[str, Any]] | None = None, swept: list[str] | None = None) -> list[epath.Path]:
  """Write every figure the rows support (PNG and SVG) into `out_dir`; returns the paths written.

  `dataset` defaults to the rows' dataset when they share one; 'imagenet2012' overlays the published results.
  Failed or unfinished points, and points lacking the plotted quantity, are left out. `swept`: the swept columns
  (study.json), which decide the series; None for an α×ρ sweep. `curves`: the learning-curve rows (curves.csv),
  for `plot_study.CURVES_STEM`; the curves of failed runs are left out, as their point rows leave them out.
  """
  if dataset is None:
    names = {r.get('dataset') for r in rows}
    dataset = names.pop() if len(names) == 1 else None
  else:
    rows = [r for r in rows if r.get('dataset') in (None, dataset)]
  out_dir = epath.Path(out_dir)
  paths = []
  for axis in AXES:
    fig = _tradeoff_figure(rows, axis, dataset, swept)
    if fig is not None:
      paths += save_figure(fig, out_dir, axis.stem)
  fig = _ablation_figure(rows, dataset)
  if fig is not None:
    paths += save_figure(fig, out_dir, 'ablation_top1')
  failed = {(r['name'], r.get('seed')) for r in rows if r.get('kind') == report.RUN and r.get('status') == 'failed'}
  fig = plot_study.curves_figure([c for c in curves or () if (c.get('name'), c.get('seed')) not in failed], dataset,
                                 swept)
  if fig is not None:
    paths += save_figure(fig, out_dir, plot_study.CURVES_STEM)
  return paths


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m mnet_jax.plot', description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', required=True,
                      help='sweep directory holding results.json (and study.json, curves.csv); figures go there')
  parser.add_argument('--dataset', default=None, help="defaults to the rows' dataset")
  args = parser.parse_args(argv)
  try:
    rows = report.load_results(args.workdir)
    swept = plot_study.load_study(args.workdir).get('swept')
    curves = plot_study.load_curves(args.workdir)
  except (OSError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  paths = make_figures(rows, args.workdir, args.dataset, curves=curves, swept=swept)
  if not paths:
    print(f'error: no finished points with a top-1 accuracy in {epath.Path(args.workdir) / report.RESULTS_JSON}',
          file=sys.stderr)
    return 1
  for path in paths:
    print(path)
  return 0


if __name__ == '__main__':
  sys.exit(main())
