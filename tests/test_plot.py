"""Trade-off figures: CI error bars, the fit's band, the Pareto frontier, valid PNG/SVG files, the rebuild CLI."""

import math
import statistics
import subprocess
import sys
import xml.etree.ElementTree as ET

import matplotlib.image
import numpy as np
import pytest
from matplotlib.container import ErrorbarContainer
from scipy import stats as scipy_stats

from mnet_jax import plot, published, report

PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


def _grid_rows(dataset, slope=None):
  """A 2x2 α×resolution grid; with `slope`, top-1 % lies exactly on 10 + slope*log10(Million Mult-Adds)."""
  rows = []
  for alpha, resolution, mult_adds, params in ((1.0, 64, 40e6, 3e6), (1.0, 32, 10e6, 3e6),
                                               (0.5, 64, 2.5e6, 8e5), (0.5, 32, 1e6, 8e5)):
    top1 = (10 + slope * math.log10(mult_adds / 1e6)) / 100 if slope else 0.5 + 0.1 * alpha
    rows.append({'name': f'a{alpha:g}_r{resolution}', 'alpha': alpha, 'resolution': resolution,
                 'variant': 'separable', 'dataset': dataset, 'mult_adds': int(mult_adds), 'params': int(params),
                 'top1': top1, 'top5': None, 'latency_ms': mult_adds / 1e7, 'status': 'done', 'error': None})
  return rows


def _assert_valid(path):
  data = path.read_bytes()
  if path.suffix == '.png':
    assert data.startswith(PNG_SIGNATURE)
    height, width, _ = matplotlib.image.imread(path).shape
    assert width > 600 and height > 400
  else:
    assert ET.fromstring(data).tag.endswith('svg')


def test_figures_are_valid_png_and_svg_with_the_fitted_slope(tmp_path):
  rows = _grid_rows('toy', slope=12.5)
  rows.append(dict(rows[0], name='a0.25_r32', alpha=0.25, top1=None, status='failed', error='boom'))
  paths = plot.make_figures(rows, tmp_path)
  assert sorted(p.name for p in paths) == sorted(f'top1_vs_{x}.{ext}' for x in ('mult_adds', 'params', 'latency')
                                                 for ext in ('png', 'svg'))
  for path in paths:
    _assert_valid(path)
  svg = (tmp_path / 'top1_vs_mult_adds.svg').read_text()
  assert '+12.5 ± 0.0 pts' in svg and 'R² 1.00' in svg
  assert 'Mult-Adds (millions, log scale)' in svg and 'Top-1 accuracy (%)' in svg
  assert 'α = 0.25' not in svg  # the failed point has nothing to draw
  assert 'Howard et al.' not in svg  # published ImageNet results only on ImageNet plots


def test_imagenet_figures_overlay_published_results_and_ablations(tmp_path):
  rows = published.as_rows(published.slim_results() + published.paper_results('Table 4')
                           + published.paper_results('Table 5'))
  for i, row in enumerate(rows):
    row['name'] = f'point{i}'  # the sweep names its own points
  rows[0]['latency_ms'] = None  # latency not measured: that figure is skipped
  paths = plot.make_figures(rows, tmp_path, dataset='imagenet2012')
  names = {p.name for p in paths}
  assert 'top1_vs_latency.png' not in names
  assert {'top1_vs_mult_adds.png', 'top1_vs_params.svg', 'ablation_top1.png', 'ablation_top1.svg'} <= names
  for path in paths:
    _assert_valid(path)
  svg = (tmp_path / 'top1_vs_mult_adds.svg').read_text()
  assert 'TF-slim checkpoints' in svg and 'Howard et al. 2017' in svg
  ablation = (tmp_path / 'ablation_top1.svg').read_text()
  assert '1.0 Conv MobileNet-224' in ablation and '1.0 Shallow MobileNet-224' in ablation and 'Tables 4' in ablation


def test_nothing_finished_means_no_figures(tmp_path):
  rows = [dict(r, status='failed', top1=None) for r in _grid_rows('toy')]
  assert plot.make_figures(rows, tmp_path) == []
  assert list(tmp_path.iterdir()) == []


def test_cli_rebuilds_figures_from_results_json(tmp_path, capsys):
  report.write_results(tmp_path, _grid_rows('toy'))
  assert plot.main([f'--workdir={tmp_path}']) == 0
  printed = capsys.readouterr().out.split()
  assert len(printed) == 6 and all((tmp_path / p.rsplit('/', 1)[-1]).exists() for p in printed)


def test_cli_garbled_results_exit_2(tmp_path, capsys):
  (tmp_path / 'results.json').write_text('[{"name": ')
  assert plot.main([f'--workdir={tmp_path}']) == 2
  assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_cli_missing_results_exit_2_with_one_line(tmp_path):
  done = subprocess.run([sys.executable, '-m', 'mnet_jax.plot', f'--workdir={tmp_path / "nope"}'],
                        capture_output=True, text=True, timeout=120)
  assert done.returncode == 2
  assert done.stdout == '' and len(done.stderr.strip().splitlines()) == 1 and 'results.json' in done.stderr


# Per point: (alpha, resolution, Mult-Adds, top-1 of each seed). 10 M Mult-Adds is dominated by 2.5 M.
SEEDED = ((1.0, 64, 40e6, (0.69, 0.70, 0.71)), (1.0, 32, 10e6, (0.48, 0.50, 0.52)),
          (0.5, 64, 2.5e6, (0.54, 0.55, 0.56)), (0.5, 32, 1e6, (0.40,)))


def _seeded_results(tmp_path):
  """results.json with run rows and the point rows `report.aggregate` makes of them; returns the loaded rows."""
  runs = []
  for alpha, resolution, mult_adds, top1s in SEEDED:
    for seed, top1 in enumerate(top1s):
      runs.append({'kind': 'run', 'name': f'a{alpha:g}_r{resolution}', 'seed': seed, 'alpha': alpha,
                   'resolution': resolution, 'variant': 'separable', 'dataset': 'toy', 'mult_adds': int(mult_adds),
                   'params': int(alpha * 1e6), 'top1': top1, 'top5': None, 'latency_ms': mult_adds / 1e7,
                   'status': 'done', 'error': None})
  report.write_results(tmp_path, runs + report.aggregate(runs))
  return report.load_results(tmp_path)


def test_seed_means_carry_ci_error_bars_and_the_fit_its_band(tmp_path):
  rows = _seeded_results(tmp_path)
  ax = plot._tradeoff_figure(rows, plot.AXES[0], 'toy').axes[0]
  bars = {}
  for container in ax.containers:
    for segment in container.lines[2][0].get_segments():
      (x0, y0), (x1, y1) = segment
      assert x0 == x1
      bars[round(x0, 6)] = ((y0 + y1) / 2, y1 - y0)
  # Independently: mean ± t_{0.975,2} · sd / √3 of each point's three seeds, in percent; no bar for n = 1.
  expected = {}
  for _, _, mult_adds, top1s in SEEDED:
    if len(top1s) > 1:
      half = scipy_stats.t.ppf(0.975, len(top1s) - 1) * statistics.stdev(top1s) / math.sqrt(len(top1s))
      expected[round(mult_adds / 1e6, 6)] = (100 * statistics.mean(top1s), 200 * half)
  assert set(bars) == set(expected)
  for x, (center, length) in expected.items():
    assert bars[x] == pytest.approx((center, length))

  band = next(c for c in ax.collections if c.get_label().startswith('95% confidence band'))
  vertices = band.get_paths()[0].vertices
  u = np.log10([m / 1e6 for _, _, m, _ in SEEDED])
  y = [100 * statistics.mean(t) for _, _, _, t in SEEDED]
  reference = scipy_stats.linregress(u, y)
  s = reference.stderr * math.sqrt(np.sum((u - u.mean()) ** 2))  # residual SD from the slope's standard error
  for x_vertex, y_vertex in vertices[:-1]:
    uv = math.log10(x_vertex)
    half = scipy_stats.t.ppf(0.975, 2) * s * math.sqrt(1 / 4 + (uv - u.mean()) ** 2 / np.sum((u - u.mean()) ** 2))
    center = reference.intercept + reference.slope * uv
    assert y_vertex == pytest.approx(center - half, abs=1e-6) or y_vertex == pytest.approx(center + half, abs=1e-6)

  frontier = next(line for line in ax.get_lines() if line.get_label().startswith('Pareto frontier'))
  assert list(frontier.get_xdata()) == pytest.approx([1, 2.5, 40])
  assert frontier.get_drawstyle() == 'steps-post'
  legend = [t.get_text() for t in ax.get_legend().get_texts()]
  assert any(t.startswith(f'log-linear fit: {reference.slope:+.1f} ± ') and f'R² {reference.rvalue ** 2:.2f}' in t
             for t in legend)
  assert any(t.startswith('95% CI of the mean') for t in legend)


def test_the_accuracy_axis_stays_within_0_and_100_percent_when_a_ci_reaches_past_it():
  rows = [dict(row, top1=0.03 if row['alpha'] == 0.5 else 0.97, top1_ci95=0.2, n=2) for row in _grid_rows('toy')]
  ax = plot._tradeoff_figure(rows, plot.AXES[0], 'toy').axes[0]
  assert ax.get_ylim() == (0.0, 100.0)
  lengths = [y1 - y0 for c in ax.containers for (_, y0), (_, y1) in c.lines[2][0].get_segments()]
  assert lengths == pytest.approx([40.0] * 4)  # the bars keep their length; the axis cuts them


def test_figures_from_run_and_point_rows(tmp_path):
  _seeded_results(tmp_path)
  assert plot.main([f'--workdir={tmp_path}']) == 0
  svg = (tmp_path / 'top1_vs_mult_adds.svg').read_text()
  assert 'Pareto frontier' in svg and '95% confidence band' in svg and 'seeds per point: 1–3' in svg
  for path in tmp_path.glob('top1_vs_*.*'):
    _assert_valid(path)


def test_pareto_frontier_keeps_only_non_dominated_points():
  rows = [{'name': n, 'mult_adds': m, 'top1': t} for n, m, t in
          (('a', 1, 0.4), ('b', 2, 0.6), ('c', 2, 0.5), ('d', 3, 0.55), ('e', 5, 0.7), ('f', 8, 0.7))]
  assert [r['name'] for r in plot.pareto_frontier(rows, 'mult_adds')] == ['a', 'b', 'e']


def test_ablation_bars_carry_ci(tmp_path):
  runs = []
  for variant, alpha, top1s in (('separable', 1.0, (0.60, 0.62)), ('conv', 1.0, (0.64, 0.65, 0.66)),
                                ('shallow', 1.0, (0.5,))):
    for seed, top1 in enumerate(top1s):
      prefix = '' if variant == 'separable' else f'{variant}_'
      runs.append({'kind': 'run', 'name': f'{prefix}a1_r64', 'seed': seed, 'alpha': alpha, 'resolution': 64,
                   'variant': variant, 'dataset': 'toy', 'mult_adds': 10**6, 'params': 10**5, 'top1': top1,
                   'status': 'done'})
  fig = plot._ablation_figure(report.aggregate(runs), 'toy')
  ax = fig.axes[0]
  (container,) = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
  lengths = sorted(s[1][0] - s[0][0] for s in container.lines[2][0].get_segments())
  half = [scipy_stats.t.ppf(0.975, len(t) - 1) * statistics.stdev(t) / math.sqrt(len(t))
          for t in ((0.60, 0.62), (0.64, 0.65, 0.66))]
  assert lengths == pytest.approx(sorted(200 * h for h in half))  # the shallow model's single seed: no bar
  assert any('(n=3)' in t.get_text() for t in ax.texts)


def test_litert_latency_figure_has_ci_bars_and_interquartile_spreads(tmp_path):
  rows = _seeded_results(tmp_path)
  spreads = {}
  for i, row in enumerate(r for r in rows if r['kind'] == 'point'):
    row['tflite_1t_latency_ms'] = 0.1 * (i + 1)
    row['tflite_1t_latency_ms_spread'] = spreads[row['name']] = [0.1 * (i + 1) - 0.01, 0.1 * (i + 1) + 0.02]
  axis = next(a for a in plot.AXES if a.field == 'tflite_1t_latency_ms')
  ax = plot._tradeoff_figure(rows, axis, 'toy').axes[0]
  vertical, horizontal = [], []
  for container in ax.containers:
    for (x0, y0), (x1, y1) in container.lines[2][0].get_segments():
      (vertical if x0 == x1 else horizontal).append(((x0, y0), (x1, y1)))
  assert len(vertical) == 3  # the points of n >= 2, as on the other figures
  assert sorted((round(x0, 6), round(x1, 6)) for (x0, _), (x1, _) in horizontal) == sorted(
      (round(low, 6), round(high, 6)) for low, high in spreads.values())
  assert 'LiteRT' in ax.get_xlabel() and '1 thread' in ax.get_xlabel()
  for row in rows:
    row['tflite_1t_latency_ms'] = None
  assert 'top1_vs_tflite_latency.png' not in {p.name for p in plot.make_figures(rows, tmp_path)}
