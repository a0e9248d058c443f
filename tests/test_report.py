"""Run and point rows, results.csv/json, and the paper-style table, checked against the paper's printed numbers
and against statistics computed independently (statistics, numpy, scipy)."""

import csv
import json
import math
import re
import statistics

import numpy as np
import pytest
from scipy import stats as scipy_stats

from mnet_jax import published, report


def _row(name, alpha, resolution, top1=0.5, status='done', **extra):
  row = {'name': name, 'alpha': alpha, 'resolution': resolution, 'rho': resolution / 224, 'variant': 'separable',
         'dataset': 'toy', 'mult_adds': 1_000_000, 'params': 200_000, 'top1': top1, 'top5': None,
         'latency_ms': 1.5, 'infer_img_s': None, 'train_img_s': None, 'wall_s': None, 'steps': 10,
         'status': status, 'error': None}
  row.update(extra)
  return row


def test_round_trip_json_and_csv(tmp_path):
  rows = [_row('a0.5_r64', 0.5, 64, top1=np.float32(0.25)), _row('a1_r64', 1.0, 64, top1=0.75, top5=0.9)]
  report.write_results(tmp_path, rows)
  loaded = report.load_results(tmp_path)
  assert [r['name'] for r in loaded] == ['a1_r64', 'a0.5_r64']
  assert {k: loaded[0][k] for k in rows[1]} == rows[1]
  assert loaded[0]['kind'] == 'point' and loaded[0]['n'] == 1  # rows without a kind are single-run points
  assert loaded[1]['top1'] == 0.25 and type(loaded[1]['top1']) is float  # numpy scalar stored as a number
  with open(tmp_path / 'results.csv') as f:
    table = list(csv.DictReader(f))
  assert [r['name'] for r in table] == ['a1_r64', 'a0.5_r64']
  assert float(table[0]['top1']) == 0.75 and table[0]['error'] == '' and table[1]['top5'] == ''
  assert list(table[0])[:6] == ['kind', 'name', 'seed', 'n', 'seeds', 'alpha']


def test_one_row_per_point_in_stable_order(tmp_path):
  rows = [_row('a0.5_r128', 0.5, 128), _row('a1_r96', 1.0, 96), _row('a1_r128', 1.0, 128, status='failed'),
          _row('conv_a1_r128', 1.0, 128, variant='conv'), _row('a0.5_r96', 0.5, 96),
          _row('a1_r128', 1.0, 128, top1=0.9)]  # a rerun of a1_r128: the later row wins
  report.write_results(tmp_path, rows)
  loaded = report.load_results(tmp_path)
  assert [r['name'] for r in loaded] == ['a1_r128', 'conv_a1_r128', 'a1_r96', 'a0.5_r128', 'a0.5_r96']
  assert loaded[0]['status'] == 'done' and loaded[0]['top1'] == 0.9
  report.write_results(tmp_path, list(reversed(rows)))  # input order does not matter, except which duplicate wins
  assert [r['name'] for r in report.load_results(tmp_path)] == [r['name'] for r in loaded]


def test_failed_write_leaves_previous_files_intact(tmp_path):
  report.write_results(tmp_path, [_row('a1_r64', 1.0, 64)])
  before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
  with pytest.raises(TypeError):
    report.write_results(tmp_path, [_row('a1_r64', 1.0, 64), _row('a0.5_r64', 0.5, 64, top1=object())])
  assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no temp files left either


def test_write_atomically_keeps_the_old_file_when_the_write_itself_fails(tmp_path):
  path = tmp_path / 'sub' / 'figure.png'
  report.write_atomically(path, b'old contents')
  with pytest.raises(TypeError):
    report.write_atomically(path, 'text where bytes belong')  # raises inside the file write
  assert path.read_bytes() == b'old contents' and [p.name for p in path.parent.iterdir()] == ['figure.png']
  report.write_atomically(path, b'new')
  assert path.read_bytes() == b'new'


def test_non_finite_numbers_become_null(tmp_path):
  report.write_results(tmp_path, [_row('a1_r64', 1.0, 64, top1=float('nan'), latency_ms=np.float64('inf'))])
  text = (tmp_path / 'results.json').read_text()
  json.loads(text)  # strict JSON: no NaN/Infinity tokens
  assert 'NaN' not in text and report.load_results(tmp_path)[0]['top1'] is None


def test_load_results_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match='results.json'):
    report.load_results(tmp_path)
  (tmp_path / 'results.json').write_text('{"not": "a list"}')
  with pytest.raises(ValueError, match='list'):
    report.load_results(tmp_path)
  (tmp_path / 'results.json').write_text('[{"name": "a1_r64"}')
  with pytest.raises(ValueError, match='not valid JSON'):
    report.load_results(tmp_path)


# Howard et al. 2017, as printed: name -> (top-1 %, Million Mult-Adds, Million parameters).
PAPER = {
    'Table 4': {'1.0 Conv MobileNet-224': (71.7, 4866, 29.3), '1.0 MobileNet-224': (70.6, 569, 4.2)},
    'Table 5': {'0.75 MobileNet-224': (68.4, 325, 2.6), '1.0 Shallow MobileNet-224': (65.3, 307, 2.9)},
    'Table 6': {'1.0 MobileNet-224': (70.6, 569, 4.2), '0.75 MobileNet-224': (68.4, 325, 2.6),
                '0.5 MobileNet-224': (63.7, 149, 1.3), '0.25 MobileNet-224': (50.6, 41, 0.5)},
    'Table 7': {'1.0 MobileNet-224': (70.6, 569, 4.2), '1.0 MobileNet-192': (69.1, 418, 4.2),
                '1.0 MobileNet-160': (67.2, 290, 4.2), '1.0 MobileNet-128': (64.4, 186, 4.2)},
}


@pytest.mark.parametrize('table', sorted(PAPER))
def test_format_table_reproduces_the_papers_tables(table):
  text = report.format_table(published.as_rows(published.paper_results(table)))
  lines = {}
  for line in text.splitlines():
    match = re.match(r'(\S+ .*?MobileNet-\d+)\s+([\d.]+)\s+1\s+-\s+([\d.]+)\s+([\d.]+)\s+\S+\s+(\w+)$', line)
    if match:
      lines[match[1]] = match
  assert set(lines) == set(PAPER[table])
  for name, (top1, mult_adds, params) in PAPER[table].items():
    match = lines[name]
    assert float(match[2]) == top1
    # Our Mult-Adds/params come from the architecture; the paper rounds (and prints 4866 for 4867.3).
    assert float(match[3]) == pytest.approx(mult_adds, abs=1.5)
    assert float(match[4]) == pytest.approx(params, abs=0.051)
    assert match[5] == 'done'


def test_format_table_shows_failed_points():
  rows = [_row('a1_r64', 1.0, 64, top1=0.731), _row('a0.25_r64', 0.25, 64, top1=None, status='failed',
                                                     error='FloatingPointError: loss is NaN\ntraceback...')]
  text = report.format_table(rows)
  assert '1.0 MobileNet-64' in text and ' 73.1 ' in text
  failed = next(line for line in text.splitlines() if line.startswith('0.25 MobileNet-64'))
  assert failed.split()[2] == '-' and failed.endswith('failed')
  assert 'a0.25_r64 failed: FloatingPointError: loss is NaN' in text and 'traceback' not in text


def test_model_names_follow_the_paper():
  assert report.model_name(1, 224) == '1.0 MobileNet-224'
  assert report.model_name(0.75, 128) == '0.75 MobileNet-128'
  assert report.model_name(1.0, 224, 'conv') == '1.0 Conv MobileNet-224'
  assert report.model_name(1.0, 224, 'shallow') == '1.0 Shallow MobileNet-224'


def test_published_slim_grid_is_complete():
  grid = {(p.alpha, p.resolution): (p.top1, p.top5) for p in published.slim_results()}
  assert len(grid) == 16 and grid[(0.75, 128)] == (62.1, 83.9) and grid[(1.0, 224)] == (70.9, 89.9)
  rows = published.as_rows(published.slim_results())
  # Mult-Adds from the architecture (1001 classes), not the slim page's column (which lists 317 for 0.75-224).
  assert next(r for r in rows if (r['alpha'], r['resolution']) == (0.75, 224))['mult_adds'] // 10**6 == 325


def _run(name, seed, top1, status='done', alpha=0.5, resolution=64, **extra):
  row = _row(name, alpha, resolution, top1=top1, status=status, kind='run', seed=seed, latency_ms=None)
  row.update(extra)
  return row


def _t_half_width(values):
  """95% CI half-width of the mean, from the standard library and scipy's t quantile."""
  return scipy_stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))


SEED_TOP1 = (0.60, 0.62, 0.67)


def _runs():
  return ([_run('a1_r64', s, t, alpha=1.0, top5=t + 0.2, train_img_s=10.0 + s, wall_s=100.0)
           for s, t in enumerate(SEED_TOP1)]
          + [_run('a0.5_r64', 0, 0.50, wall_s=50.0),
             _run('a0.5_r64', 1, None, 'failed', error='FloatingPointError: NaN'),
             _run('a0.5_r64', 2, 0.54, wall_s=60.0)]
          + [_run('a0.25_r64', 0, 0.41, alpha=0.25)]
          + [_run('a1_r32', 0, 0.45, alpha=1.0, resolution=32), _run('a1_r32', 1, None, 'pending', alpha=1.0,
                                                                     resolution=32)]
          + [_run('a0.5_r32', 0, None, 'pending', resolution=32)])


def test_aggregate_summarises_seeds():
  points = {r['name']: r for r in report.aggregate(_runs())}
  full = points['a1_r64']
  assert (full['kind'], full['seed'], full['n'], full['seeds'], full['status']) == ('point', None, 3, '0,1,2', 'done')
  assert full['top1'] == pytest.approx(statistics.mean(SEED_TOP1))
  assert full['top1_sd'] == pytest.approx(statistics.stdev(SEED_TOP1))
  assert full['top1_ci95'] == pytest.approx(_t_half_width(SEED_TOP1))
  assert full['top1_ci95'] == pytest.approx(4.302653 * statistics.stdev(SEED_TOP1) / math.sqrt(3), rel=1e-6)
  assert full['top5'] == pytest.approx(statistics.mean(SEED_TOP1) + 0.2)
  assert full['top5_ci95'] == pytest.approx(_t_half_width(SEED_TOP1))
  assert full['train_img_s'] == pytest.approx(11.0) and full['wall_s'] == pytest.approx(300.0)
  assert (full['alpha'], full['resolution'], full['mult_adds'], full['steps']) == (1.0, 64, 1_000_000, 10)

  failed = points['a0.5_r64']  # one of three seeds failed: the mean is over the two that finished
  assert (failed['n'], failed['seeds'], failed['status']) == (2, '0,2', 'failed')
  assert failed['error'] == 'seed 1: FloatingPointError: NaN'
  assert failed['top1'] == pytest.approx(0.52) and failed['top1_ci95'] == pytest.approx(_t_half_width([0.5, 0.54]))
  assert failed['top5'] is None and failed['top5_sd'] is None and failed['wall_s'] == pytest.approx(110.0)

  single = points['a0.25_r64']
  assert (single['n'], single['top1'], single['top1_sd'], single['top1_ci95']) == (1, 0.41, None, None)
  assert points['a1_r32']['status'] == 'partial' and points['a1_r32']['n'] == 1
  assert points['a0.5_r32']['status'] == 'pending' and points['a0.5_r32']['top1'] is None
  assert points['a0.5_r32']['n'] == 0 and points['a0.5_r32']['seeds'] is None


def test_aggregate_takes_latency_from_the_probe_or_the_runs():
  runs = [_run('a1_r64', s, 0.6, alpha=1.0, latency_ms=ms, infer_img_s=100.0) for s, ms in enumerate((3.0, 9.0, 4.0))]
  (point,) = report.aggregate(runs)
  assert point['latency_ms'] == 4.0 and point['infer_img_s'] == 100.0  # median over the runs
  measured = {'a1_r64': {'latency_ms': 2.5, 'latency_ms_spread': [2.4, 2.9], 'infer_img_s': 130.0}}
  (point,) = report.aggregate(runs + [dict(runs[0], kind='point')], measured)  # point rows among the input: ignored
  assert (point['latency_ms'], point['latency_ms_spread'], point['infer_img_s'], point['n']) == (2.5, [2.4, 2.9],
                                                                                                  130.0, 3)


def test_round_trip_of_run_and_point_rows(tmp_path):
  runs = _runs()
  rerun = _run('a0.25_r64', 0, 0.43, alpha=0.25)  # the same (kind, name, seed) again: the later row wins
  report.write_results(tmp_path, list(reversed(runs)) + report.aggregate(runs) + [rerun])
  loaded = report.load_results(tmp_path)
  order = [(r['kind'], r['name'], r['seed']) for r in loaded]
  assert order[:5] == [('point', 'a1_r64', None), ('run', 'a1_r64', 0), ('run', 'a1_r64', 1), ('run', 'a1_r64', 2),
                       ('point', 'a1_r32', None)]
  assert len(order) == len(set(order)) == len(runs) + 5
  assert next(r for r in loaded if r['kind'] == 'run' and r['name'] == 'a0.25_r64')['top1'] == 0.43
  point = next(r for r in loaded if r['kind'] == 'point' and r['name'] == 'a1_r64')
  aggregated = next(r for r in report.aggregate(runs) if r['name'] == 'a1_r64')
  assert {k: point[k] for k in aggregated} == aggregated
  with open(tmp_path / 'results.csv') as f:
    table = list(csv.DictReader(f))
  assert [(r['kind'], r['name'], r['seed']) for r in table] == [(k, n, '' if s is None else f'{s}')
                                                                 for k, n, s in order]
  report.write_results(tmp_path, loaded)  # rewriting what was read changes nothing
  assert report.load_results(tmp_path) == loaded


def test_old_results_files_load_as_points_of_one_run(tmp_path):
  old = [{k: v for k, v in _row('a1_r64', 1.0, 64, top1=0.7).items()},
         _row('a0.5_r64', 0.5, 64, top1=None, status='failed', error='boom')]
  (tmp_path / 'results.json').write_text(json.dumps(old))
  loaded = report.load_results(tmp_path)
  assert [(r['kind'], r['n']) for r in loaded] == [('point', 1), ('point', 0)]
  text = report.format_table(loaded)
  assert ' 70.0  1 ' in text and 'a0.5_r64 failed: boom' in text
  (tmp_path / 'results.json').write_text(json.dumps([dict(old[0], kind='sweep')]))
  with pytest.raises(ValueError, match="kind 'sweep'"):
    report.load_results(tmp_path)
  (tmp_path / 'results.json').write_text(json.dumps([dict(old[0], kind='run')]))
  with pytest.raises(ValueError, match='lacks seed'):
    report.load_results(tmp_path)


def test_table_shows_mean_ci_n_the_fit_and_failed_runs():
  runs = _runs()
  text = report.format_table(runs + report.aggregate(runs))
  line = next(line for line in text.splitlines() if line.startswith('1.0 MobileNet-64 '))
  mean, half = 100 * statistics.mean(SEED_TOP1), 100 * _t_half_width(SEED_TOP1)
  assert re.search(rf' {mean:.1f} ± {half:.1f} +3 +{mean + 20:.1f} ± {half:.1f} ', line)
  assert 'a0.5_r64 seed 1 failed: FloatingPointError: NaN' in text
  assert sum('failed:' in line for line in text.splitlines()) == 1  # the run, not its point again
  # The fit over the separable point means (those with a finished seed), computed here with numpy and scipy.
  assert 'Log-linear fit: needs two separable points' in text  # every point costs the same here
  mult_adds = {'a1_r64': 4e6, 'a0.5_r64': 1.2e6, 'a0.25_r64': 0.4e6, 'a1_r32': 1e6}
  for row in runs:
    row['mult_adds'] = mult_adds.get(row['name'], 3e5)
  text = report.format_table(runs + report.aggregate(runs))
  points = [(mult_adds[n], 100 * t) for n, t in
            (('a1_r64', statistics.mean(SEED_TOP1)), ('a0.5_r64', 0.52), ('a0.25_r64', 0.41), ('a1_r32', 0.45))]
  u, y = np.log10([p[0] for p in points]), [p[1] for p in points]
  reference = scipy_stats.linregress(u, y)
  slope_ci = scipy_stats.t.ppf(0.975, 2) * reference.stderr
  assert (f'4 separable point means: {np.polyfit(u, y, 1)[0]:+.1f} ± {slope_ci:.1f} points per 10× Mult-Adds '
          f'(95% CI), R² {reference.rvalue ** 2:.3f}') in text


def test_aggregate_takes_the_litert_probe_and_summarises_int8_top1():
  int8 = (0.55, 0.58, 0.66)
  runs = [_run('a1_r64', s, t, alpha=1.0, latency_ms=ms, top1_int8=q)
          for s, (t, ms, q) in enumerate(zip(SEED_TOP1, (3.0, 9.0, 4.0), int8, strict=True))]
  runs.append(_run('a1_r64', 3, None, 'failed', alpha=1.0, top1_int8=0.9))  # a failed seed counts nowhere
  litert = {'tflite_1t_latency_ms': 0.9, 'tflite_1t_latency_ms_spread': [0.85, 0.95], 'tflite_2t_latency_ms': 0.6,
            'tflite_2t_latency_ms_spread': [0.5, 0.7], 'tflite_probe_s': 3.1}
  (point,) = report.aggregate(runs, {'a1_r64': litert})
  assert point['latency_ms'] == 4.0  # no XLA probe: still the runs' median
  assert {k: point[k] for k in report.TFLITE_FIELDS} == {k: litert[k] for k in report.TFLITE_FIELDS}
  assert all(point[k] is None for k in report.INT8_FIELDS) and 'tflite_probe_s' not in point
  assert point['top1_int8'] == pytest.approx(statistics.mean(int8))
  assert point['top1_int8_sd'] == pytest.approx(statistics.stdev(int8))
  assert point['top1_int8_ci95'] == pytest.approx(_t_half_width(int8))
  text = report.format_table(runs + [point])
  line = next(line for line in text.splitlines() if line.startswith('1.0 MobileNet-64 '))
  assert ' 0.9 / 0.6 ' in line and f'{100 * statistics.mean(int8):.1f} ± {100 * _t_half_width(int8):.1f}' in line
  assert 'LiteRT 1/2 thr (ms)' in text and 'int8 Top-1 (%)' in text
  assert 'LiteRT' not in report.format_table(report.aggregate(runs))  # columns only where measured
