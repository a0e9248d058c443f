"""Figures of a study beyond α×ρ: series by swept field, the budget axes, learning curves, the frontier, the readers."""

import csv
import json
import math
import statistics

import numpy as np
import pytest
from scipy import stats as scipy_stats

from mnet_jax import plot, plot_study, report

SWEPT = ['variant', 'alpha', 'resolution', 'num_train_steps']
BATCH = 8
MULT_ADDS = {1.0: 4_000_000, 0.5: 1_000_000}
STEPS = (100, 200, 400)
# Final top-1 of each (α, steps) point, mean over its seeds.
TOP1 = {(1.0, 100): 0.40, (1.0, 200): 0.50, (1.0, 400): 0.60, (0.5, 100): 0.30, (0.5, 200): 0.38, (0.5, 400): 0.45}
SEED_OFFSETS = (-0.01, 0.01)  # seed s reaches the point's curve + this


def _name(alpha, steps):
  return f'a{alpha:g}_r32_steps{steps}'


def _flops(alpha, steps):
  return 6 * MULT_ADDS[alpha] * steps * BATCH  # forward + backward: 3 × 2 FLOPs per Mult-Add per image


def _point_rows(steps=STEPS, **extra):
  """The point rows of an α × training-steps study at one resolution, two seeds each."""
  rows = []
  for alpha in MULT_ADDS:
    for s in steps:
      rows.append({'kind': 'point', 'name': _name(alpha, s), 'seed': None, 'n': 2, 'alpha': alpha, 'resolution': 32,
                   'variant': 'separable', 'dataset': 'toy', 'depth': 1.0, 'mult_adds': MULT_ADDS[alpha],
                   'params': int(MULT_ADDS[alpha] / 2), 'batch_size': BATCH, 'num_train_steps': s,
                   'examples_seen': s * BATCH, 'train_examples': 1000, 'train_flops': _flops(alpha, s),
                   'top1': TOP1[alpha, s], 'top1_ci95': 0.02, 'eval_loss': 3 - 2 * TOP1[alpha, s], 'status': 'done',
                   'error': None, **extra})
  return rows


def _top1(alpha, steps, step):
  """A point's mean top-1 after `step` of its `steps`: rising to TOP1 at the end."""
  return TOP1[alpha, steps] * (step / steps) ** 0.5


def _curves(eval_loss=True):
  """Evaluations at a quarter, half and all of each run's steps; eval loss = 3 − 2·top-1 (+ seed offset)."""
  curves = []
  for alpha in MULT_ADDS:
    for steps in STEPS:
      for seed, offset in enumerate(SEED_OFFSETS):
        for step in (steps // 4, steps // 2, steps):
          top1 = _top1(alpha, steps, step) + offset
          curves.append({'name': _name(alpha, steps), 'seed': seed, 'step': step, 'alpha': alpha, 'resolution': 32,
                         'variant': 'separable', 'num_train_steps': steps, 'depth': 1.0,
                         'mult_adds': MULT_ADDS[alpha], 'params': MULT_ADDS[alpha] // 2, 'batch_size': BATCH,
                         'train_examples': 1000, 'examples_seen': step * BATCH,
                         'train_flops': 6 * MULT_ADDS[alpha] * step * BATCH, 'top1': top1, 'top5': None,
                         'eval_loss': 3 - 2 * top1 if eval_loss else None})
  return curves


def _series(ax):
  return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.get_lines()
          if not line.get_label().startswith('_') and line.get_marker() == 'o' and line.get_linestyle() == '-'
          and line.get_drawstyle() == 'default'}  # not the Pareto frontier's steps


def test_series_follow_the_swept_fields_that_do_not_move_x():
  rows = _point_rows()
  by_flops = plot_study.series_layout(rows, SWEPT, plot_study.BUDGET_FIELDS)
  assert by_flops == plot_study.Layout(('alpha',), None)  # variant and resolution hold one value: ignored
  groups = plot_study.group_series(rows, by_flops.colour)
  assert [values for values, _ in groups] == [(1.0,), (0.5,)]
  assert [sorted(r['name'] for r in series) for _, series in groups] == [
      sorted(_name(1.0, s) for s in STEPS), sorted(_name(0.5, s) for s in STEPS)]
  by_mult_adds = plot_study.series_layout(rows, SWEPT, plot_study.ARCHITECTURE_FIELDS)
  assert by_mult_adds == plot_study.Layout(('num_train_steps',), None)
  assert [v for v, _ in plot_study.group_series(rows, by_mult_adds.colour)] == [(400,), (200,), (100,)]
  grid = [dict(r, resolution=res, num_train_steps=100) for r in rows for res in (32, 64)]
  assert plot_study.series_layout(grid, SWEPT, plot_study.ARCHITECTURE_FIELDS) == plot_study.Layout(
      ('alpha',), 'resolution')  # α×ρ: the paper's layout
  assert plot_study.series_layout(grid, None, plot_study.ARCHITECTURE_FIELDS) == plot_study.Layout(
      ('alpha',), 'resolution')
  lr = [dict(r, **{'optim.learning_rate': 0.1 * (1 + i % 2)}) for i, r in enumerate(grid)]
  layout = plot_study.series_layout(lr, [*SWEPT, 'optim.learning_rate'], plot_study.BUDGET_FIELDS)
  assert layout == plot_study.Layout(('alpha', 'resolution', 'optim.learning_rate'), None)
  assert plot_study.series_label(layout.colour, (0.5, 64, 0.2)) == 'α = 0.5, 64 px, optim.learning_rate = 0.2'


def test_frontier_keeps_the_best_reached_at_each_cost():
  points = [(1, 0.2), (2, 0.5), (2, 0.4), (3, 0.45), (4, 0.5), (5, 0.7), (6, 0.1)]
  assert plot_study.frontier(points, lambda p: p[0], lambda p: p[1]) == [(1, 0.2), (2, 0.5), (5, 0.7)]
  losses = [(1, 3.0), (2, 2.0), (2, 2.5), (3, 2.1), (4, 1.5), (5, 1.5)]
  assert plot_study.frontier(losses, lambda p: p[0], lambda p: p[1], maximize=False) == [(1, 3.0), (2, 2.0), (4, 1.5)]


def test_alpha_by_steps_study_draws_a_line_per_alpha_against_training_flops(tmp_path):
  paths = plot.make_figures(_point_rows(), tmp_path, curves=_curves(), swept=SWEPT)
  names = {p.name for p in paths}
  for stem in ('top1_vs_train_flops', 'top1_vs_examples_seen', 'curves_vs_train_flops', 'top1_vs_mult_adds'):
    assert {f'{stem}.png', f'{stem}.svg'} <= names
  ax = plot._tradeoff_figure(_point_rows(), plot.AXES[2], 'toy', SWEPT).axes[0]
  assert plot.AXES[2].field == 'train_flops' and ax.get_xscale() == 'log'
  series = _series(ax)
  for alpha, label in ((1.0, 'α = 1'), (0.5, 'α = 0.5')):
    assert series[label] == ([_flops(alpha, s) for s in STEPS], pytest.approx([100 * TOP1[alpha, s] for s in STEPS]))
  assert set(series) == {'α = 1', 'α = 0.5'}
  legend = [t.get_text() for t in ax.get_legend().get_texts()]
  assert legend[0] == 'Width multiplier (this sweep)' and 'Resolution' not in legend
  assert 'FLOPs' in ax.get_xlabel()
  ax = plot._tradeoff_figure(_point_rows(), plot.AXES[0], 'toy', SWEPT).axes[0]
  series = _series(ax)  # against Mult-Adds: a line per training budget across the widths
  assert set(series) == {'100 steps', '200 steps', '400 steps'}
  assert series['400 steps'][0] == pytest.approx([1.0, 4.0])


def test_budget_axes_only_where_the_training_budget_varies(tmp_path):
  rows = _point_rows(steps=(100,))
  grid = [dict(r, name=f'{r["name"]}_{res}', resolution=res, mult_adds=r['mult_adds'] * res // 32,
               train_flops=6 * r['mult_adds'] * res // 32 * 800) for r in rows for res in (32, 64)]
  names = {p.name for p in plot.make_figures(grid, tmp_path)}
  assert 'top1_vs_mult_adds.png' in names and not any('train_flops' in n or 'examples_seen' in n for n in names)
  constant = [dict(r, train_flops=10**12) for r in grid]  # a compute-matched study: every point at one x
  assert not any('train_flops' in p.name for p in plot.make_figures(constant, tmp_path, swept=SWEPT))


def test_learning_curves_mean_ci_band_final_dots_and_frontier():
  fig = plot_study.curves_figure(_curves(), 'toy', SWEPT)
  top1_ax, loss_ax = fig.axes
  assert top1_ax.get_xscale() == loss_ax.get_xscale() == 'log'
  assert top1_ax.get_ylabel() == 'Top-1 accuracy (%)' and 'loss' in loss_ax.get_ylabel()
  assert 'toy' in fig.get_suptitle() and 'n = 2 seeds' in fig.get_suptitle()
  half = scipy_stats.t.ppf(0.975, 1) * statistics.stdev(SEED_OFFSETS) / math.sqrt(2)  # Student t, n = 2
  # (axes, y scale, the metric of a top-1, how far apart the seeds lie relative to top-1's, better is higher)
  for ax, scale, metric, spread, higher in ((top1_ax, 100, lambda t: t, 1, True), (loss_ax, 1, lambda t: 3 - 2 * t, 2,
                                                                                      False)):
    curves = [line for line in ax.get_lines() if line.get_linestyle() == '-' and line.get_drawstyle() == 'default']
    dots = [line for line in ax.get_lines() if line.get_marker() == 'o']
    assert len(curves) == len(dots) == 6
    expected = {(alpha, steps): ([_flops(alpha, s) for s in (steps // 4, steps // 2, steps)],
                                 [scale * metric(_top1(alpha, steps, s)) for s in (steps // 4, steps // 2, steps)])
                for alpha in MULT_ADDS for steps in STEPS}
    drawn = sorted((list(c.get_xdata()), list(c.get_ydata())) for c in curves)
    for (x, y), (ex, ey) in zip(drawn, sorted(expected.values()), strict=True):
      assert x == pytest.approx(ex) and y == pytest.approx(ey)
    final = sorted((d.get_xdata()[0], d.get_ydata()[0]) for d in dots)
    assert np.array(final) == pytest.approx(np.array(sorted((ex[-1], ey[-1]) for ex, ey in expected.values())))
    bands = [c for c in ax.collections if len(c.get_paths())]
    assert len(bands) == 6
    for band in bands:  # at each evaluation the band spans mean ± t·sd/√n
      at_x = {}
      for x, y in band.get_paths()[0].vertices:
        at_x.setdefault(x, []).append(y)
      assert [np.ptp(ys) for ys in at_x.values()] == pytest.approx([2 * scale * spread * half] * 3)
    (frontier,) = [line for line in ax.get_lines() if line.get_drawstyle() == 'steps-post']
    assert frontier.get_color() == 'black'
    reached = [(x, y) for ex, ey in expected.values() for x, y in zip(ex, ey, strict=True)]
    sign = 1 if higher else -1
    vertices = list(zip(frontier.get_xdata(), frontier.get_ydata(), strict=True))
    for x, y in reached:  # nothing reached at some compute beats the frontier there
      assert sign * y <= max(sign * fy for fx, fy in vertices if fx <= x) + 1e-9
    for fx, fy in vertices:  # and each of its corners was reached, better than anything cheaper
      assert any(fx == pytest.approx(x) and fy == pytest.approx(y) for x, y in reached)
      assert all(sign * y < sign * fy for x, y in reached if x < fx * (1 - 1e-9))
  legend = [t.get_text() for t in fig.legends[0].get_texts()]
  assert legend[:3] == ['Width multiplier (this sweep)', 'α = 1', 'α = 0.5']
  assert any(t.startswith('compute-optimal frontier') for t in legend)


def test_curves_without_eval_loss_have_only_the_top1_panel():
  fig = plot_study.curves_figure(_curves(eval_loss=False), None, SWEPT)
  assert len(fig.axes) == 1 and fig.axes[0].get_ylabel() == 'Top-1 accuracy (%)'
  assert plot_study.curves_figure([], None, SWEPT) is None


def test_failed_runs_curves_are_left_out_and_svgs_are_byte_stable(tmp_path):
  rows = _point_rows() + [{'kind': 'run', 'name': _name(1.0, 400), 'seed': 2, 'alpha': 1.0, 'resolution': 32,
                           'mult_adds': MULT_ADDS[1.0], 'params': 1, 'status': 'failed', 'error': 'nan loss'}]
  diverged = [dict(c, seed=2, top1=0.0, eval_loss=50.0) for c in _curves() if c['name'] == _name(1.0, 400)]
  first = plot.make_figures(rows, tmp_path / 'a', curves=_curves() + diverged, swept=SWEPT)
  second = plot.make_figures(rows, tmp_path / 'b', curves=_curves(), swept=SWEPT)
  for a, b in zip(first, second, strict=True):
    if a.suffix == '.svg':
      assert a.read_bytes() == b.read_bytes(), a.name


def _write_curves_csv(path, curves):
  columns = list(dict.fromkeys(k for c in curves for k in c))
  with open(path, 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=columns, lineterminator='\n')
    writer.writeheader()
    writer.writerows({k: '' if v is None else v for k, v in c.items()} for c in curves)


def test_load_curves_parses_numbers_and_empty_cells(tmp_path):
  assert plot_study.load_curves(tmp_path) == [] and plot_study.load_study(tmp_path) == {}
  curves = [{'name': '100', 'seed': 0, 'step': 50, 'alpha': 0.5, 'optim.schedule': 'cosine', 'train_flops': 2.4e11,
             'top1': 0.25, 'top5': None, 'eval_loss': ''}]
  _write_curves_csv(tmp_path / 'curves.csv', curves)
  (row,) = plot_study.load_curves(tmp_path)
  assert row == {'name': '100', 'seed': 0, 'step': 50, 'alpha': 0.5, 'optim.schedule': 'cosine',
                 'train_flops': 2.4e11, 'top1': 0.25, 'top5': None, 'eval_loss': None}
  assert type(row['seed']) is int and type(row['alpha']) is float
  (tmp_path / 'curves.csv').write_text('name,seed\na,0\n')
  with pytest.raises(ValueError, match='step'):
    plot_study.load_curves(tmp_path)
  (tmp_path / 'study.json').write_text('{"swept": "alpha"}')
  with pytest.raises(ValueError, match='swept'):
    plot_study.load_study(tmp_path)


def test_cli_reads_study_json_and_curves_csv(tmp_path, capsys):
  report.write_results(tmp_path, _point_rows())
  (tmp_path / 'study.json').write_text(json.dumps({'swept': SWEPT, 'config': {}}))
  _write_curves_csv(tmp_path / 'curves.csv', _curves())
  assert plot.main([f'--workdir={tmp_path}']) == 0
  printed = {p.rsplit('/', 1)[-1] for p in capsys.readouterr().out.split()}
  assert {'curves_vs_train_flops.png', 'curves_vs_train_flops.svg', 'top1_vs_train_flops.svg'} <= printed
  assert 'α = 0.5' in (tmp_path / 'top1_vs_train_flops.svg').read_text()
  (tmp_path / 'study.json').write_text('{')
  assert plot.main([f'--workdir={tmp_path}']) == 2


def test_an_alpha_by_resolution_study_draws_the_same_figures_as_before_studies(tmp_path):
  grid = [dict(r, name=f'{r["name"]}_{res}', resolution=res, mult_adds=r['mult_adds'] * res // 32)
          for r in _point_rows(steps=(100,)) for res in (32, 64)]
  legacy = plot.make_figures(grid, tmp_path / 'legacy')
  study = plot.make_figures(grid, tmp_path / 'study', swept=['variant', 'alpha', 'resolution'])
  assert [p.name for p in legacy] == [p.name for p in study]
  for a, b in zip(legacy, study, strict=True):
    assert a.read_bytes() == b.read_bytes(), a.name
  svg = (tmp_path / 'study' / 'top1_vs_mult_adds.svg').read_text()
  assert 'Width multiplier (this sweep)' in svg and '64 px' in svg and '32 px' in svg
