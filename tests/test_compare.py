"""Two hand-written studies compared: the join on swept columns, Welch CIs against scipy, unmatched points, config
differences (`compare_join`); the printout, the CSV and figure files, the CLI's exit codes (`compare`)."""

import csv
import json
import math
import statistics

import pytest
from scipy import stats as scipy_stats

from mnet_jax import compare, compare_join

CONFIG_A = {'seed': 0, 'num_train_steps': -1, 'batch_size': 64, 'compilation_cache_dir': '/tmp/a',
            'log_every_steps': 20, 'model': {'alpha': 1.0, 'resolution': 64, 'variant': 'separable'},
            'optim': {'learning_rate': 0.008, 'optimizer': 'rmsprop'},
            'sweep': {'seeds': '0,1,2', 'axes': 'num_train_steps=300,600'}}
CONFIG_B = {**CONFIG_A, 'num_train_steps': 300, 'compilation_cache_dir': '/tmp/b', 'log_every_steps': 50,
            'optim': {'learning_rate': 0.016, 'optimizer': 'rmsprop'}, 'sweep': {'seeds': '0,1,2,3'}}


def _point(name, alpha, resolution, steps, top1s, losses=None, status='done'):
  """Run rows (one per seed) and the point row of one point; description columns as the contract gives them."""
  described = {'name': name, 'alpha': alpha, 'resolution': resolution, 'variant': 'separable', 'depth': 1.0,
               'dataset': 'toy', 'mult_adds': int(alpha ** 2 * resolution ** 2 * 250), 'params': int(alpha * 1e6),
               'batch_size': 64, 'num_train_steps': steps, 'train_examples': 1000,
               'examples_seen': 64 * steps, 'train_flops': 6 * alpha ** 2 * resolution ** 2 * 250 * 64 * steps}
  losses = losses or [None] * len(top1s)
  runs = [{**described, 'kind': 'run', 'seed': seed, 'status': status, 'top1': top1, 'top5': None,
           'eval_loss': loss} for seed, (top1, loss) in enumerate(zip(top1s, losses, strict=True))]
  point = {**described, 'kind': 'point', 'seed': None, 'n': len(top1s), 'status': status,
           'top1': statistics.mean(top1s), 'top1_sd': statistics.stdev(top1s) if len(top1s) > 1 else None}
  return [point, *runs]


def _study(path, rows, swept=None, config=None):
  path.mkdir(parents=True, exist_ok=True)
  (path / 'results.json').write_text(json.dumps(rows))
  if swept is not None:
    (path / 'study.json').write_text(json.dumps({'swept': swept, 'config': config}))
  return str(path)


# A swept the steps; B trained everything for 300. Names coincide across the studies but not points: A's 'p1' is
# B's 'p0'. B's rows are in another order.
A_P1 = [0.50, 0.52, 0.55]
A_P1_LOSS = [1.20, 1.10, 1.05]
B_P0 = [0.58, 0.61, 0.57, 0.60]
B_P0_LOSS = [1.00, 0.95, 1.02, 0.90]


@pytest.fixture
def studies(tmp_path):
  a = _study(tmp_path / 'lr008', _point('p0', 0.5, 64, 600, [0.60, 0.62, 0.65])
             + _point('p1', 0.5, 64, 300, A_P1, A_P1_LOSS) + _point('p2', 1.0, 64, 300, [0.70, 0.71]),
             ['alpha', 'resolution', 'num_train_steps'], CONFIG_A)
  b = _study(tmp_path / 'lr016', _point('p2', 0.25, 32, 300, [0.30, 0.31]) + _point('p1', 1.0, 64, 300, [0.74])
             + _point('p0', 0.5, 64, 300, B_P0, B_P0_LOSS), ['alpha', 'resolution'], CONFIG_B)
  return a, b


def _welch(b, a):
  """B − A and the half-width of its 95% Welch interval, written out from the textbook formula."""
  va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
  df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
  return statistics.mean(b) - statistics.mean(a), scipy_stats.t.ppf(0.975, df) * math.sqrt(va + vb)


def test_points_join_on_swept_columns_not_names(studies):
  c = compare_join.compare(compare_join.load_study(studies[0]), compare_join.load_study(studies[1]))
  assert c.columns == ('alpha', 'resolution', 'num_train_steps')
  assert [(a.name, b.name) for a, b in c.joined] == [('p1', 'p0'), ('p2', 'p1')]
  assert [a.key for a, _ in c.joined] == [(0.5, 64, 300), (1.0, 64, 300)]
  assert [(p.name, p.key) for p in c.only_a] == [('p0', (0.5, 64, 600))]
  assert [(p.name, p.key) for p in c.only_b] == [('p2', (0.25, 32, 300))]


def test_welch_difference_b_minus_a_matches_the_formula(studies):
  c = compare_join.compare(compare_join.load_study(studies[0]), compare_join.load_study(studies[1]))
  rows = compare.table_rows(c)
  first = rows[0]
  estimate, half_width = _welch(B_P0, A_P1)
  assert (first['n_a'], first['n_b']) == (3, 4)
  assert first['diff'] == pytest.approx(estimate) and estimate > 0  # B is better: the sign says B − A
  assert first['diff_ci95'] == pytest.approx(half_width)
  loss_estimate, loss_half_width = _welch(B_P0_LOSS, A_P1_LOSS)
  assert first['eval_loss_diff'] == pytest.approx(loss_estimate)
  assert first['eval_loss_ci95'] == pytest.approx(loss_half_width)
  # One seed in B: the difference, no interval; no eval loss in either: no loss difference.
  second = rows[1]
  assert second['n_b'] == 1 and second['diff'] == pytest.approx(0.74 - 0.705) and second['diff_ci95'] is None
  assert second['eval_loss_diff'] is None
  text = compare.format_comparison(c)
  assert 'differences are B − A' in text
  assert f'{100 * estimate:+.2f} ± {100 * half_width:.2f}' in text
  assert f'{100 * (0.74 - 0.705):+.2f} (no CI)' in text
  assert f'{loss_estimate:+.3f} ± {loss_half_width:.3f}' in text


def test_unmatched_points_and_config_differences_are_listed(studies):
  c = compare_join.compare(compare_join.load_study(studies[0]), compare_join.load_study(studies[1]))
  assert c.config_differences == ['num_train_steps: swept over 300, 600 (A) vs 300 (B)',
                                  'optim.learning_rate: 0.008 (A) vs 0.016 (B)']
  text = compare.format_comparison(c)
  assert 'Only in A (1):\n  alpha=0.5, resolution=64, num_train_steps=600: p0' in text
  assert 'Only in B (1):\n  alpha=0.25, resolution=32, num_train_steps=300: p2' in text
  for bookkeeping in ('sweep.', 'compilation_cache_dir', 'log_every_steps'):
    assert bookkeeping not in text


def test_an_old_study_takes_unswept_columns_from_a_run_config(tmp_path, studies):
  """No study.json: variant, alpha and resolution were swept; rows without num_train_steps take the run's
  config.json value, so they join A's 300-step points and not its 600-step one."""
  rows = _point('a0.5_r64', 0.5, 64, 300, [0.56, 0.57])
  for row in rows:
    del row['num_train_steps']
  old = _study(tmp_path / 'old', rows)
  (tmp_path / 'old' / 'a0.5_r64' / 'seed0').mkdir(parents=True)
  (tmp_path / 'old' / 'a0.5_r64' / 'seed0' / 'config.json').write_text(json.dumps(CONFIG_B))
  old_study = compare_join.load_study(old)
  assert old_study.swept == ('variant', 'alpha', 'resolution')
  assert old_study.config_source == 'a0.5_r64/seed0/config.json'
  c = compare_join.compare(compare_join.load_study(studies[0]), old_study)
  assert c.columns == ('alpha', 'resolution', 'num_train_steps', 'variant')
  assert [(a.name, b.name) for a, b in c.joined] == [('p1', 'a0.5_r64')]


def test_two_names_on_one_key_is_an_error(tmp_path):
  # Swept the learning rate but study.json does not say so: the key cannot tell the points apart.
  a = _study(tmp_path / 'a', _point('lr1', 0.5, 64, 300, [0.5]) + _point('lr2', 0.5, 64, 300, [0.6]),
             ['alpha', 'resolution'], CONFIG_A)
  with pytest.raises(ValueError, match="points 'lr1' and 'lr2' share alpha=0.5, resolution=64"):
    compare_join.study_points(compare_join.load_study(a), ('alpha', 'resolution'))


def test_cli_writes_the_table_csv_and_figure(studies, tmp_path, capsys):
  out = tmp_path / 'out'
  assert compare.main([f'--workdir={studies[0]}', f'--workdir={studies[1]}', f'--out={out}']) == 0
  printed = capsys.readouterr().out
  assert 'A = ' in printed and 'lr008' in printed and 'lr016' in printed
  with open(out / 'compare.csv') as f:
    rows = list(csv.DictReader(f))
  assert [(r['present_in'], r['name_a'], r['name_b']) for r in rows] == [
      ('both', 'p1', 'p0'), ('both', 'p2', 'p1'), ('A', 'p0', ''), ('B', '', 'p2')]
  assert float(rows[0]['diff']) == pytest.approx(_welch(B_P0, A_P1)[0])
  assert rows[0]['num_train_steps'] == '300' and rows[2]['num_train_steps'] == '600'
  assert (out / 'compare.png').read_bytes().startswith(b'\x89PNG\r\n\x1a\n')
  svg = (out / 'compare.svg').read_text()
  assert 'A: lr008' in svg and 'B: lr016' in svg
  # A and B swept the same steps but trained different FLOPs at one Mult-Adds: x is the training compute.
  assert 'Training compute (FLOPs, log scale)' in svg


def test_cli_without_common_points_exits_0(tmp_path, studies, capsys):
  other = _study(tmp_path / 'other', _point('q', 0.75, 48, 300, [0.4, 0.41]), ['alpha', 'resolution'], CONFIG_B)
  assert compare.main([f'--workdir={studies[0]}', f'--workdir={other}']) == 0
  printed = capsys.readouterr().out
  assert 'No point in common on alpha, resolution, num_train_steps.' in printed
  assert 'Only in A (3):' in printed and 'Only in B (1):' in printed


def _exit_code(argv):
  try:
    return compare.main(argv)
  except SystemExit as e:  # argparse's usage errors
    return e.code


@pytest.mark.parametrize('which', ['missing', 'twice', 'one', 'metric'])
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, studies, capsys, which):
  argv = {'missing': [f'--workdir={studies[0]}', f'--workdir={tmp_path / "nowhere"}'],
          'twice': [f'--workdir={studies[0]}', f'--workdir={studies[0]}/'],
          'one': [f'--workdir={studies[0]}'],
          'metric': [f'--workdir={studies[0]}', f'--workdir={studies[1]}', '--metric=top2']}[which]
  assert _exit_code(argv) == 2
  err = capsys.readouterr().err
  assert err.startswith('error: ') and err.count('\n') == 1
  if which == 'missing':
    assert 'nowhere/results.json does not exist' in err
