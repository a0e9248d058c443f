"""results.csv/json writing and the paper-style table, checked against the paper's printed numbers."""

import csv
import json
import re

import numpy as np
import pytest

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
  assert loaded[0] == rows[1]
  assert loaded[1]['top1'] == 0.25 and type(loaded[1]['top1']) is float  # numpy scalar stored as a number
  with open(tmp_path / 'results.csv') as f:
    table = list(csv.DictReader(f))
  assert [r['name'] for r in table] == ['a1_r64', 'a0.5_r64']
  assert float(table[0]['top1']) == 0.75 and table[0]['error'] == '' and table[1]['top5'] == ''
  assert list(table[0])[:4] == ['name', 'alpha', 'resolution', 'rho']


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
    match = re.match(r'(\S+ .*?MobileNet-\d+)\s+([\d.]+)%\s+\S+\s+([\d.]+)\s+([\d.]+)\s+\S+\s+(\w+)$', line)
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
  assert '1.0 MobileNet-64' in text and '73.1%' in text
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
