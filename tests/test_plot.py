"""Trade-off figures: the log-linear fit, valid PNG/SVG files, skipped points, and the rebuild CLI."""

import math
import subprocess
import sys
import xml.etree.ElementTree as ET

import matplotlib.image
import pytest

from mnet_jax import plot, published, report

PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


def test_fit_recovers_an_exact_line():
  # y = 2 + 5 log10(x), values written out by hand.
  a, b = plot.fit_log_linear([1, 10, 100, 1000, 10**0.5], [2, 7, 12, 17, 4.5])
  assert a == pytest.approx(2) and b == pytest.approx(5)
  a, b = plot.fit_log_linear([0.1, 1, 1000], [3, 1, -5])  # falling: y = 1 - 2 log10(x)
  assert a == pytest.approx(1) and b == pytest.approx(-2)
  with pytest.raises(ValueError):
    plot.fit_log_linear([3, 3], [1, 2])


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
  assert '+12.5 pts' in svg and 'Mult-Adds (millions, log scale)' in svg and 'Top-1 accuracy (%)' in svg
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
