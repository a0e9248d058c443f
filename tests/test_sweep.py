"""The α×ρ sweep with seeds: a 2-seed smoke study killed mid-point and resumed exactly, a rerun that skips
finished runs, seeds trained together against a seed trained alone, and points trained side by side in worker
processes against a one-CPU run."""

import csv
import json
import os
import re
import signal
import statistics
import subprocess
import sys

import numpy as np
import pytest
from hooks import hooked
from test_train import (
  REPO,
  assert_identical_params,
  final_params,
  flat,
  main_command,
  sigkill_once_written,
  subprocess_env,
)

from mnet_jax import cost, study, sweep_workers
from mnet_jax.config_util import sibling

STEPS = 8


@pytest.mark.parametrize('field, value, message', [
    ('alphas', '0.5,-1', 'sweep.alphas: width multiplier alpha must be a positive number, got -1.0'),
    ('resolutions', '64,16', 'sweep.resolutions: '),
    ('variants', 'separable,dense', 'sweep.variants: '),
])
def test_a_bad_grid_value_is_named_by_its_field(field, value, message):
  config = sibling(str(REPO / 'experiments' / 'sweep.py'), 'sweep').get_config('smoke')
  config.sweep[field] = value
  with pytest.raises(ValueError, match=re.escape(message)):
    study.expand(config)


def smoke_command(workdir, data_dir, cache_dir, *extra) -> list[str]:
  """Two seeds of one point (α 0.25 at 48 px: no 1x1 feature map, so round-off stays round-off), 8 steps."""
  return [sys.executable, '-m', 'mnet_jax.main', f'--config={REPO / "experiments" / "sweep.py"}:smoke',
          f'--workdir={workdir}', '--config.data.name=textured_shapes/tiny', f'--config.data.data_dir={data_dir}',
          '--config.sweep.alphas=0.25', '--config.sweep.resolutions=48', '--config.sweep.seeds=0,1',
          f'--config.num_train_steps={STEPS}', '--config.checkpoint_every_steps=4', '--config.log_every_steps=4',
          f'--config.compilation_cache_dir={cache_dir}', *extra]


@pytest.fixture(scope='module')
def together_run(tiny_data_dir, cache_dir, tmp_path_factory):
  """An uninterrupted 2-seed smoke study (seeds trained together), with the LiteRT axis, int8 included."""
  workdir = tmp_path_factory.mktemp('together')
  command = smoke_command(workdir, tiny_data_dir, cache_dir, '--config.sweep.tflite_latency=True',
                          '--config.sweep.tflite_int8=True')
  result = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir, result.stdout


def test_smoke_study_writes_run_and_point_rows_figures_and_claims(together_run):
  workdir, stdout = together_run
  assert 'seeds 0,1 together' in stdout
  rows = json.loads((workdir / 'results.json').read_text())
  runs = [r for r in rows if r['kind'] == 'run']
  points = [r for r in rows if r['kind'] == 'point']
  assert [(r['name'], r['seed']) for r in runs] == [('a0.25_r48', 0), ('a0.25_r48', 1)]
  assert len(points) == 1 and points[0]['n'] == 2 and points[0]['status'] == 'done'
  # Exactly the cost of α 0.25 at 48 px with the tiny dataset's 16 classes (the cost model is tested against the
  # paper's tables): a row builder with the wrong class count or min_depth would write another number.
  expected = cost.model_cost(0.25, 48, 'separable', num_classes=16, min_depth=8)
  for row in [*runs, *points, *(json.loads((workdir / 'a0.25_r48' / f'seed{s}' / 'results.json').read_text())
                                for s in (0, 1))]:
    assert (row['mult_adds'], row['params']) == (expected.mult_adds, expected.params)
  # The aggregate, recomputed independently from the run rows (Student t, 1 degree of freedom: 12.706).
  top1 = [r['top1'] for r in runs]
  assert points[0]['top1'] == pytest.approx(statistics.mean(top1))
  assert points[0]['top1_sd'] == pytest.approx(statistics.stdev(top1))
  assert points[0]['top1_ci95'] == pytest.approx(12.7062047 * statistics.stdev(top1) / 2 ** 0.5)
  loss = [r['eval_loss'] for r in runs]  # the eval loss is aggregated as top-1 is
  assert points[0]['eval_loss'] == pytest.approx(statistics.mean(loss)) and min(loss) > 0
  assert points[0]['eval_loss_ci95'] == pytest.approx(12.7062047 * statistics.stdev(loss) / 2 ** 0.5)
  assert points[0]['latency_ms'] > 0 and points[0]['infer_img_s'] > 0
  csv_rows = list(csv.DictReader((workdir / 'results.csv').open()))
  assert [(r['kind'], r['seed']) for r in csv_rows] == [('point', ''), ('run', '0'), ('run', '1')]
  for name in ('top1_vs_mult_adds', 'top1_vs_params', 'top1_vs_latency'):
    assert (workdir / f'{name}.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  assert '0.25 MobileNet-48' in stdout and '±' in stdout  # the paper-style table, mean ± CI
  assert '| (c) | Accuracy is roughly log-linear' in (workdir / 'results.md').read_text()
  # Each seed's run dir is an ordinary run of its own seed.
  for seed in (0, 1):
    assert json.loads((workdir / 'a0.25_r48' / f'seed{seed}' / 'config.json').read_text())['seed'] == seed


def test_smoke_study_writes_the_litert_latency_and_int8_columns(together_run):
  workdir, stdout = together_run
  rows = json.loads((workdir / 'results.json').read_text())
  point = next(r for r in rows if r['kind'] == 'point')
  for prefix in ('tflite', 'int8'):  # float32 and int8 flatbuffers, at 1 and 2 interpreter threads
    for threads in (1, 2):
      key = f'{prefix}_{threads}t_latency_ms'
      low, high = point[f'{key}_spread']
      assert 0 < low <= point[key] <= high < 1000, key
  # The int8 top-1 per seed (from each seed's own export) and their mean ± CI, as top-1's.
  runs = [r for r in rows if r['kind'] == 'run']
  int8 = [json.loads((workdir / 'a0.25_r48' / f'seed{s}' / 'int8.json').read_text())['top1_int8'] for s in (0, 1)]
  assert [r['top1_int8'] for r in runs] == int8 and all(0 <= t <= 1 for t in int8)
  assert point['top1_int8'] == pytest.approx(statistics.mean(int8))
  assert point['top1_int8_ci95'] == pytest.approx(12.7062047 * statistics.stdev(int8) / 2 ** 0.5)
  header = next(csv.reader((workdir / 'results.csv').open()))
  assert {'tflite_1t_latency_ms', 'tflite_2t_latency_ms_spread', 'int8_1t_latency_ms', 'top1_int8'} <= set(header)
  assert (workdir / 'top1_vs_tflite_latency.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  assert 'LiteRT 1/2 thr (ms)' in stdout and 'int8 Top-1 (%)' in stdout


def test_killed_two_seed_point_resumes_exactly_and_a_rerun_skips_finished_runs(together_run, tiny_data_dir,
                                                                                cache_dir, tmp_path):
  reference, _ = together_run
  command = smoke_command(tmp_path, tiny_data_dir, cache_dir, '--config.sweep.tflite_latency=False')
  env = subprocess_env()
  # The seeds' checkpoints are finalised asynchronously, in either order: resume needs the step in both.
  sigkill_once_written(command, env, *(tmp_path / 'a0.25_r48' / f'seed{seed}' / 'checkpoints' / '4' for seed in (0, 1)),
                       timeout=300)
  assert not (tmp_path / 'a0.25_r48' / 'seed0' / 'row.json').exists(), 'the point finished before it was killed'

  resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert 'resumed from checkpoint at step 4' in resumed.stdout
  for seed in (0, 1):
    assert_identical_params(tmp_path / 'a0.25_r48' / f'seed{seed}', reference / 'a0.25_r48' / f'seed{seed}')

  rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert '2 runs already done, 0 to run' in rerun.stdout and '[train]' not in rerun.stdout


def test_seeds_trained_together_match_a_seed_trained_alone(together_run, tiny_data_dir, cache_dir, tmp_path):
  """Seed 1 of the together run against seed 1 run alone (no vmap): the same data, dropout and init, so the
  only difference allowed is the round-off of batched products."""
  reference, _ = together_run
  overrides = {'data.name': 'textured_shapes/tiny', 'data.data_dir': tiny_data_dir, 'seed': 1,
               'num_train_steps': STEPS, 'batch_size': 32,
               'checkpoint_every_steps': 4, 'log_every_steps': 4, 'compilation_cache_dir': str(cache_dir)}
  config = REPO / 'experiments' / 'sweep.py'
  command = main_command(tmp_path, overrides)
  command[3] = f'--config={config}:smoke'  # the sweep's recipe, run as a single point: sweep.only
  command += ['--config.sweep.points=a0.25_r48', '--config.sweep.seeds=1', '--config.sweep.latency_batch=0',
              '--config.sweep.tflite_latency=False']
  alone = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=600)
  assert alone.returncode == 0, alone.stderr[-3000:]
  assert '8 steps of 32 on 1 device' in alone.stdout  # not vmapped
  expected = flat(final_params(reference / 'a0.25_r48' / 'seed1'))
  got = flat(final_params(tmp_path / 'a0.25_r48' / 'seed1'))
  other_seed = flat(final_params(reference / 'a0.25_r48' / 'seed0'))
  assert expected.keys() == got.keys()
  for key in expected:
    np.testing.assert_allclose(got[key], expected[key], rtol=1e-5, atol=1e-6, err_msg=key)
  # The tolerance is far below the difference between seeds, which it would otherwise hide.
  assert max(np.max(np.abs(other_seed[k] - expected[k])) for k in expected) > 1e-2


def test_workers_get_disjoint_cpus_and_no_more_workers_than_cpus():
  cpus = sorted(os.sched_getaffinity(0))
  assert sweep_workers.core_sets(1) == [cpus]
  sets = sweep_workers.core_sets(len(cpus))
  assert sorted(c for s in sets for c in s) == cpus and all(len(s) == 1 for s in sets)
  for workers in (0, len(cpus) + 1):
    with pytest.raises(ValueError, match=f'sweep.workers must be 1..{len(cpus)}'):
      sweep_workers.core_sets(workers)


def test_points_in_worker_processes_match_a_one_cpu_run_and_resume_after_ctrl_c(tiny_data_dir, cache_dir, tmp_path):
  """Two points trained side by side (sweep.workers=2, one CPU each), stopped by a Ctrl-C to the sweep and rerun,
  against the same sweep run in one process on one CPU: the same parameters and rows, bitwise."""
  assert len(os.sched_getaffinity(0)) >= 2, 'needs two CPUs'
  points = ['--config.sweep.resolutions=48,40', '--config.sweep.seeds=0', '--config.sweep.latency_batch=0',
            '--config.sweep.tflite_latency=False']
  pinned = hooked(smoke_command(tmp_path / 'one', tiny_data_dir, cache_dir, *points),
                  'import os; os.sched_setaffinity(0, {0})')  # before JAX starts (no fork of this JAX process)
  one_cpu = subprocess.run(pinned, env=subprocess_env(), capture_output=True, text=True, timeout=600)
  assert one_cpu.returncode == 0, one_cpu.stderr[-3000:]
  command = smoke_command(tmp_path / 'two', tiny_data_dir, cache_dir, *points, '--config.sweep.workers=2')
  process = subprocess.Popen(command, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
  lines = []
  for line in process.stdout:  # Ctrl-C once a worker has taken 4 of its 8 steps
    lines.append(line)
    if line.startswith('[a0.25_r') and f'[train] step 4/{STEPS}' in line:
      process.send_signal(signal.SIGINT)
      break
  stdout, stderr = process.communicate(timeout=300)
  assert process.returncode == 130, stderr[-3000:]
  assert [line for line in stderr.splitlines() if line.strip()] == [
      'interrupted: Ctrl-C: the points in training saved their checkpoints; rerun the same command to resume']
  assert 'on CPU 0' in ''.join(lines) and 'on CPU 1' in ''.join(lines)
  rerun = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=600)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  for point in ('a0.25_r48', 'a0.25_r40'):
    assert_identical_params(tmp_path / 'two' / point / 'seed0', tmp_path / 'one' / point / 'seed0')
    rows = [json.loads((tmp_path / run / point / 'seed0' / 'row.json').read_text()) for run in ('one', 'two')]
    assert rows[0]['status'] == 'done' and all(rows[1][k] == rows[0][k] for k in ('top1', 'top5', 'steps'))
