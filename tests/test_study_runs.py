"""A study of two axes run end to end: each axis value reaches its runs, every swept field and the training compute
land in the tables, learning curves survive a kill between two seeds' evaluations, and a rerun retrains nothing."""

import json
import subprocess
import sys

import hooks
import pandas as pd
import pytest
from hooks import hooked
from test_train import REPO, final_params, flat, killed_when_held, subprocess_env

POINTS = {'a0.25_r48_steps4_d0.5': (4, 0.5), 'a0.25_r48_steps8_d1': (8, 1.0)}
# log:2 evaluates at the last step and half of it.
EVAL_STEPS = {'a0.25_r48_steps4_d0.5': [2, 4], 'a0.25_r48_steps8_d1': [4, 8]}
# Separable blocks: depth 1 is Table 1's 13; depth 0.5 keeps ceil(0.5 * n) of each stage's 1, 2, 2, 6, 2 blocks.
SEPARABLE_BLOCKS = {0.5: 1 + 1 + 1 + 3 + 1, 1.0: 13}


def axes_command(workdir, data_dir, cache_dir, *extra) -> list[str]:
  """Steps and depth zipped: two points, two seeds each, on the tiny dataset."""
  return [sys.executable, '-m', 'mnet_jax.main', f'--config={REPO / "experiments" / "sweep.py"}:smoke',
          f'--workdir={workdir}', '--config.data.name=textured_shapes/tiny', f'--config.data.data_dir={data_dir}',
          '--config.sweep.alphas=0.25', '--config.sweep.resolutions=48', '--config.sweep.seeds=0,1',
          '--config.sweep.axes=num_train_steps=4,8;model.depth=0.5,1', '--config.sweep.zip_axes=True',
          '--config.eval_at=log:2', '--config.checkpoint_every_steps=2', '--config.log_every_steps=2',
          '--config.sweep.tflite_latency=False', f'--config.compilation_cache_dir={cache_dir}', *extra]


@pytest.fixture(scope='module')
def axes_study(tiny_data_dir, cache_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp('axes')
  command = axes_command(workdir, tiny_data_dir, cache_dir)
  result = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir, command


def test_each_axis_value_reaches_its_runs(axes_study):
  workdir, _ = axes_study
  for name, (steps, depth) in POINTS.items():
    point = json.loads((workdir / name / 'point.json').read_text())
    assert list(point['overrides']) == ['model.variant', 'model.alpha', 'model.resolution', 'num_train_steps',
                                        'model.depth']  # the order the name lists them in
    assert point['overrides'] == {'model.variant': 'separable', 'model.alpha': 0.25, 'model.resolution': 48,
                                  'num_train_steps': steps, 'model.depth': depth}
    for seed in (0, 1):
      run_dir = workdir / name / f'seed{seed}'
      saved = sorted(int(p.name) for p in (run_dir / 'checkpoints').iterdir() if p.name.isdigit())
      assert saved[-1] == steps  # trained as long as its axis says
      params = flat(final_params(run_dir)['params'])
      blocks = {key.split('/')[0] for key in params if key.split('/')[0].endswith('_depthwise')}
      assert len(blocks) == SEPARABLE_BLOCKS[depth]  # as deep as its axis says


def test_the_tables_carry_every_swept_field_and_the_training_compute(axes_study):
  workdir, _ = axes_study
  results = pd.read_csv(workdir / 'results.csv')
  runs, points = results[results.kind == 'run'], results[results.kind == 'point']
  assert sorted(zip(runs.name, runs.seed, strict=True)) == [(n, s) for n in sorted(POINTS) for s in (0, 1)]
  assert len(points) == 2 and (points.n == 2).all() and (points.status == 'done').all()
  for rows in (runs, points):
    for row in rows.itertuples():
      steps, depth = POINTS[row.name]
      assert (row.num_train_steps, row.depth, row.batch_size, row.train_examples) == (steps, depth, 32, 320)
      assert row.examples_seen == steps * 32
      assert row.eval_loss > 0
  # Deeper and trained longer: the 8-step depth-1 runs cost more than twice the 4-step depth-0.5 ones.
  flops = points.set_index('name').train_flops
  assert flops['a0.25_r48_steps8_d1'] > 2 * flops['a0.25_r48_steps4_d0.5'] > 0
  study = json.loads((workdir / 'study.json').read_text())
  assert study['swept'] == ['variant', 'alpha', 'resolution', 'num_train_steps', 'depth']

  curves = pd.read_csv(workdir / 'curves.csv')
  assert not curves.duplicated(['name', 'seed', 'step']).any() and not runs.duplicated(['name', 'seed']).any()
  assert list(curves.columns[:8]) == ['name', 'seed', 'step', 'variant', 'alpha', 'resolution', 'num_train_steps',
                                      'depth']
  for (name, seed), curve in curves.groupby(['name', 'seed']):
    assert list(curve.step) == EVAL_STEPS[name]
    assert list(curve.examples_seen) == [32 * s for s in EVAL_STEPS[name]]
    final = runs[(runs.name == name) & (runs.seed == seed)].iloc[0]
    assert curve.top1.iloc[-1] == final.top1 and curve.eval_loss.iloc[-1] == final.eval_loss
    assert curve.train_flops.iloc[-1] == final.train_flops


def test_a_rerun_of_a_finished_study_retrains_nothing(axes_study):
  workdir, command = axes_study
  rerun = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=300)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert '2 points x 2 seeds, 4 runs already done, 0 to run' in rerun.stdout and '[train]' not in rerun.stdout


def test_a_kill_between_two_seeds_evaluations_neither_loses_nor_repeats_a_curve_row(axes_study, tiny_data_dir,
                                                                                    cache_dir, tmp_path):
  reference, _ = axes_study
  name = 'a0.25_r48_steps8_d1'
  command = axes_command(tmp_path, tiny_data_dir, cache_dir, f'--config.sweep.only={name}')
  marker = tmp_path / 'held'
  # Killed once seed 0's evaluation at step 4 is in its curve, before seed 1's and before checkpoint 4.
  killed_when_held([hooked(command, hooks.held('curve:4', marker))], subprocess_env(), marker)
  assert [e['step'] for e in json.loads((tmp_path / name / 'seed0' / 'curve.json').read_text())] == [4]
  assert not (tmp_path / name / 'seed1' / 'curve.json').exists()
  assert not (tmp_path / name / 'seed0' / 'checkpoints' / '4').exists()

  resumed = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=600)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert 'resumed from checkpoint at step 2' in resumed.stdout
  for seed in (0, 1):  # the uninterrupted study's curve, to the last bit
    got = json.loads((tmp_path / name / f'seed{seed}' / 'curve.json').read_text())
    assert got == json.loads((reference / name / f'seed{seed}' / 'curve.json').read_text())
  curves = pd.read_csv(tmp_path / 'curves.csv')
  assert sorted(zip(curves.seed, curves.step, strict=True)) == [(0, 4), (0, 8), (1, 4), (1, 8)]
