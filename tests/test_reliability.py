"""Faults injected into real runs, as real subprocesses, signals and files: bad input, a changed config, SIGTERM,
a corrupt checkpoint, divergence, a full disk, SIGKILL at chosen moments, a failing and a killed sweep point, and
a dead or hung process of a two-process run."""

import csv
import json
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

import hooks
import numpy as np
import pytest
from hooks import hooked
from test_train import (
  REPO,
  STEPS,
  _free_port,
  assert_identical_params,
  final_params,
  flat,
  killed_when_held,
  main_command,
  subprocess_env,
  tiny_overrides,
)

from mnet_jax import cost


@pytest.mark.parametrize('override, message', [
    ({'model.alpha': 0.0}, 'alpha'),
    ({'model.resolution': 16}, 'at least 32'),
    ({'batch_size': 6}, 'not a positive multiple of the 4 devices'),
    ({'data.name': 'imagenet2012'}, 'ILSVRC2012'),
    ({'optim.optimizer': 'adam'}, 'unknown optimizer'),
    ({'optim.schedule': 'linear'}, 'unknown learning-rate schedule'),
    ({'data.name': 'no_such_dataset'}, "unknown TFDS dataset 'no_such_dataset'"),
    ({'data.eval_preprocess': 'tf'}, 'unknown data.eval_preprocess'),
    ({'optim.learning_rate': -0.1}, 'optim.learning_rate must be a non-negative number, got -0.1'),
    ({'model.dropout_rate': 2.0}, 'model.dropout_rate must be in [0, 1), got 2.0'),
    ({'checkpoint_every_steps': 0}, 'checkpoint_every_steps must be a positive integer, got 0'),
    ({'num_train_steps': -5}, 'num_train_steps must be -1 (train num_epochs) or a non-negative integer, got -5'),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tiny_data_dir, tmp_path, override, message):
  workdir = tmp_path / 'run'
  result = subprocess.run(main_command(workdir, tiny_overrides(tiny_data_dir, **override)),
                          env=subprocess_env(devices=4), capture_output=True, text=True, timeout=120)
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error:') and message in lines[0], result.stderr
  assert not workdir.exists()


def test_a_config_mistake_is_found_before_jax_or_tensorflow_is_imported(tmp_path):
  # `jax` and `tensorflow` packages that fail on import, first on the path: the mistake must still come back as its
  # one line, so it was found before either was imported (`config_checks`). The valid config shows the block works.
  env = hooks.without_jax_or_tensorflow(subprocess_env(), tmp_path / 'blocked', REPO)
  workdir = tmp_path / 'run'
  bad = subprocess.run(main_command(workdir, {'model.alpha': -1.0}), env=env, capture_output=True, text=True,
                       timeout=60)
  assert bad.returncode == 2, bad.stderr[-2000:]
  lines = bad.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error:') and 'alpha' in lines[0], bad.stderr
  assert not workdir.exists()
  valid = subprocess.run(main_command(workdir, {}), env=env, capture_output=True, text=True, timeout=60)
  assert valid.returncode == 1 and 'was imported' in valid.stderr, valid.stderr[-2000:]


@pytest.mark.parametrize('extra, message', [
    (['--config.model.alpah=0.5'], "unknown config field 'alpah' (did you mean \"alpha\""),
    (['--config.model.alpha=abc'], 'could not convert'),
    (['--config.batch_size=1.5'], 'invalid literal'),
    (['--no_such_flag'], 'no_such_flag'),
])
def test_mistyped_config_or_flag_is_one_line_exit_2_and_writes_nothing(tmp_path, extra, message):
  workdir = tmp_path / 'run'
  result = subprocess.run(main_command(workdir, {}, *extra), env=subprocess_env(), capture_output=True,
                          text=True, timeout=60)
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error:') and message in lines[0], result.stderr
  assert not workdir.exists()


@pytest.mark.parametrize('override, devices, message', [
    ({'model.alpha': 0.5}, 1, '--config.model.alpha is set by each sweep point; choose the grid with '
                              '--config.sweep.alphas='),
    # Only JAX knows the devices: a mistake every point's runs would fail on alike (each run would be tried, fail
    # and be recorded) is found before the first point.
    ({'batch_size': 6}, 4, 'batch_size 6 is not a positive multiple of the 4 devices'),
])
def test_a_sweep_refuses_a_config_before_its_first_point(tmp_path, override, devices, message):
  workdir = tmp_path / 'sweep'
  command = main_command(workdir, override, config_file=REPO / 'experiments' / 'sweep.py', preset='smoke')
  result = subprocess.run(command, env=subprocess_env(devices=devices), capture_output=True, text=True, timeout=60)
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error:') and message in lines[0], result.stderr
  assert not workdir.exists()


def test_unwritable_workdir_is_one_line_exit_2_before_any_data_is_prepared(tmp_path):
  (tmp_path / 'a_file').write_text('')
  data_dir = tmp_path / 'tfds'
  overrides = tiny_overrides(data_dir)
  result = subprocess.run(main_command(tmp_path / 'a_file' / 'run', overrides), env=subprocess_env(),
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and 'cannot write to workdir' in lines[0] and 'not a directory' in lines[0], result.stderr
  assert not data_dir.exists()


def test_verbose_shows_the_traceback(tiny_data_dir, tmp_path):
  result = subprocess.run(main_command(tmp_path / 'run', tiny_overrides(tiny_data_dir, **{'model.alpha': 0.0}),
                                       '--verbose'), env=subprocess_env(), capture_output=True, text=True,
                          timeout=120)
  assert result.returncode == 2
  last = result.stderr.strip().splitlines()[-1]
  assert 'Traceback (most recent call last)' in result.stderr and last.startswith('error:') and 'alpha' in last


def test_changed_config_is_refused_naming_the_fields(reference_run, tmp_path):
  ref_workdir, overrides = reference_run
  workdir = tmp_path / 'run'
  shutil.copytree(ref_workdir, workdir)  # a finished run; the refusal must come before any training
  changed = dict(overrides, **{'optim.learning_rate': 0.5})
  result = subprocess.run(main_command(workdir, changed), env=subprocess_env(), capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 2 and 'optim.learning_rate' in result.stderr, result.stderr
  assert (workdir / 'config.json').read_text() == (ref_workdir / 'config.json').read_text()


def test_sigterm_saves_the_step_it_arrives_at_and_the_rerun_ends_bitwise_identical(reference_run, tmp_path):
  # A preempted TPU VM gets SIGTERM, then the same command runs again. Here it arrives as the loop takes batch 10.
  ref_workdir, overrides = reference_run
  workdir, env = tmp_path / 'run', subprocess_env()
  stopped = subprocess.run(hooked(main_command(workdir, overrides), hooks.signalled(10, 'SIGTERM')), env=env,
                           capture_output=True, text=True, timeout=300)
  assert stopped.returncode == 143, stopped.stderr[-2000:]
  ours = [line for line in stopped.stderr.splitlines() if line.startswith(('preempted:', 'error:'))]
  assert len(ours) == 1 and ours[0].startswith('preempted:') and 'Traceback' not in stopped.stderr, stopped.stderr
  assert checkpoint_steps(workdir)[-1] == 10  # the step it arrived at, not only the last periodic one (8)
  assert not (workdir / 'results.json').exists()
  resumed = subprocess.run(main_command(workdir, overrides), env=env, capture_output=True, text=True, timeout=300)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert 'resumed from checkpoint at step 10' in resumed.stdout
  assert_identical_params(workdir, ref_workdir)
  assert metric_lines(workdir) == metric_lines(ref_workdir)  # no step logged twice or lost


@pytest.mark.parametrize('presses', [1, 2])
def test_ctrl_c_saves_the_current_step_and_exits_in_one_line(tiny_data_dir, cache_dir, tmp_path, presses):
  # A second Ctrl-C stops at once, without saving; both end with one line and the shell's exit code.
  overrides = tiny_overrides(tiny_data_dir, num_train_steps=100_000, checkpoint_every_steps=100_000,
                             compilation_cache_dir=str(cache_dir))
  process = subprocess.Popen(main_command(tmp_path, overrides), env=subprocess_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 240
  while not (tmp_path / 'metrics.jsonl').exists() and time.time() < deadline:  # training has started
    time.sleep(0.1)
  for _ in range(presses):
    process.send_signal(signal.SIGINT)
    time.sleep(0.01)
  start = time.time()
  _, stderr = process.communicate(timeout=120)
  assert process.returncode == 130, stderr[-2000:]
  assert time.time() - start < 30 and 'Traceback' not in stderr, stderr[-2000:]
  assert len([line for line in stderr.splitlines() if line.startswith('interrupted:')]) == 1, stderr[-2000:]
  assert not (tmp_path / 'results.json').exists()
  if presses == 1:  # the current step, not only the last periodic checkpoint (there is none before step 100000)
    step = int(re.search(r'checkpoint saved at step (\d+)', stderr).group(1))
    assert [int(p.name) for p in (tmp_path / 'checkpoints').iterdir() if p.name.isdigit()] == [step]
    assert step > 0


def test_ctrl_c_in_a_sweep_stops_the_sweep_not_only_the_point(tiny_data_dir, cache_dir, tmp_path):
  workdir = tmp_path / 'sweep'
  command = hooked(sweep_command(workdir, tiny_data_dir, cache_dir), hooks.signalled(5, 'SIGINT'))
  result = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=300)
  assert result.returncode == 130, result.stderr[-2000:]
  ours = [line for line in result.stderr.splitlines() if line.startswith(('interrupted:', 'error:'))]
  assert len(ours) == 1 and ours[0].startswith('interrupted:') and 'Traceback' not in result.stderr, result.stderr
  assert checkpoint_steps(workdir / 'a0.25_r48' / 'seed0') == [4, 5]  # the step it arrived at, saved
  assert not (workdir / 'a0.25_r40').exists() and not (workdir / 'a0.25_r32').exists()  # no next point


def test_corrupt_newest_checkpoint_falls_back_to_previous(reference_run, tmp_path):
  ref_workdir, overrides = reference_run
  workdir = tmp_path / 'run'
  shutil.copytree(ref_workdir, workdir)
  previous, newest = checkpoint_steps(workdir)[-2:]
  for path in (workdir / 'checkpoints' / str(newest)).rglob('*'):  # damage every data file of the newest one
    if path.is_file() and path.stat().st_size > 64:
      path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
  (workdir / 'results.json').unlink()
  result = subprocess.run(main_command(workdir, overrides), env=subprocess_env(), capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert f'skipping damaged checkpoint at step {newest}' in result.stdout
  assert f'resumed from checkpoint at step {previous}' in result.stdout
  assert_identical_params(workdir, ref_workdir)  # retrained the last steps identically


def checkpoint_steps(workdir) -> list[int]:
  """The committed checkpoint steps (Orbax writes into '<step>.orbax-checkpoint-tmp*' and renames when done)."""
  return sorted(int(p.name) for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit())


def test_divergence_stops_naming_the_step_and_keeps_only_finite_checkpoints(tiny_data_dir, cache_dir, tmp_path):
  # A staircase 'decay' by inf every 4 steps: the rate is 0.1 for steps 1-4, then inf. Step 5's
  # loss and gradient are still finite (computed before the update); only its parameters are not. Checkpoints
  # at every step, so that state would be saved unless caught at the very step it appears.
  overrides = tiny_overrides(tiny_data_dir, num_train_steps=12, checkpoint_every_steps=1,
                             compilation_cache_dir=str(cache_dir), **{
      'optim.schedule': 'exponential', 'optim.decay_rate': float('inf'), 'optim.decay_epochs': 0.2})
  result = subprocess.run(main_command(tmp_path, overrides), env=subprocess_env(), capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 1, result.stderr[-2000:]
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: NonFiniteLossError'), result.stderr[-3000:]
  step = int(re.search(r'at step (\d+)', lines[0])[1])
  assert step == 5, lines[0]
  results = json.loads((tmp_path / 'results.json').read_text())
  assert results['status'] == 'failed' and f'at step {step}' in results['error']
  # The last good checkpoints are kept (3, the default), all complete (no write cut off by the exit), all finite.
  assert checkpoint_steps(tmp_path) == [step - 3, step - 2, step - 1]
  assert not [p.name for p in (tmp_path / 'checkpoints').iterdir() if 'tmp' in p.name]
  for saved in checkpoint_steps(tmp_path):
    params = flat(final_params(tmp_path, saved)['params'])
    assert all(np.isfinite(v).all() for v in params.values()), saved


def small_filesystem_supported(tmp_path) -> bool:
  """Whether this machine lets us mount a tmpfs in a private user+mount namespace (no root needed)."""
  if not shutil.which('unshare'):
    return False
  probe = tmp_path / 'probe'
  probe.mkdir()
  result = subprocess.run(['unshare', '-rm', 'sh', '-c', f'mount -t tmpfs -o size=1m tmpfs {probe}'],
                          capture_output=True, timeout=30)
  return result.returncode == 0


def test_full_disk_while_checkpointing_is_one_line_exit_2_and_keeps_the_previous_checkpoint(tiny_data_dir, cache_dir,
                                                                                             tmp_path):
  if not small_filesystem_supported(tmp_path):
    pytest.skip('cannot mount a small tmpfs here (needs `unshare -rm`: unprivileged user namespaces)')
  # The compilation cache stays on the real disk: it is not what this test fills.
  overrides = tiny_overrides(tiny_data_dir, num_train_steps=4, compilation_cache_dir=str(cache_dir),
                             **{'optim.schedule': 'constant'})  # both runs compile the same step
  subprocess.run(main_command(tmp_path / 'run', overrides), env=subprocess_env(), check=True, timeout=300,
                 capture_output=True)
  before = flat(final_params(tmp_path / 'run', 4))
  # In a private mount namespace, on a copy of the run on a small tmpfs, continue the run to step 8 twice:
  # (a) with the disk 1 MiB short of full (one checkpoint is ~2.5 MB): the space check refuses the save;
  # (b) with room, but the disk fills between the check and the write: the write itself fails with ENOSPC.
  # Then copy what is left back out for inspection.
  small, after = tmp_path / 'small', tmp_path / 'after'
  small.mkdir()
  longer = main_command(small / 'run', dict(overrides, num_train_steps=8, allow_config_change=True))
  filled_after_check = hooked(longer, hooks.filled_after_check(small / 'filler', room=256 << 10))
  script = f"""
set -e
mount -t tmpfs -o size=32m tmpfs {small}
cp -a {tmp_path / 'run'} {small / 'run'}
free_kb=$(df --output=avail -k {small} | tail -1)
head -c $(( (free_kb - 1024) * 1024 )) /dev/zero > {small / 'filler'}
set +e
{shlex.join(longer)} > {tmp_path / 'stdout_a'} 2> {tmp_path / 'stderr_a'}
echo $? > {tmp_path / 'returncode_a'}
rm {small / 'filler'}
{shlex.join(filled_after_check)} > {tmp_path / 'stdout_b'} 2> {tmp_path / 'stderr_b'}
echo $? > {tmp_path / 'returncode_b'}
rm -f {small / 'filler'}
cp -a {small / 'run'} {after}
"""
  subprocess.run(['unshare', '-rm', 'bash', '-c', script], env=subprocess_env(), check=True, timeout=300)
  for case, expected in (('a', 'no space left in'), ('b', 'no space left on device')):
    stderr = (tmp_path / f'stderr_{case}').read_text()
    assert int((tmp_path / f'returncode_{case}').read_text()) == 2, stderr[-3000:]
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error:'), stderr[-3000:]
    assert expected in lines[0] and 'the checkpoint at step 4 is intact' in lines[0], lines[0]
  assert 'resumed from checkpoint at step 4' in (tmp_path / 'stdout_b').read_text()
  assert checkpoint_steps(after) == [4]
  got = flat(final_params(after, 4))
  for key in before:
    np.testing.assert_array_equal(got[key], before[key], err_msg=key)


def metric_lines(workdir) -> list[dict]:
  return [{k: v for k, v in json.loads(line).items() if k != 'img_s'}  # timing differs between runs
          for line in (workdir / 'metrics.jsonl').read_text().splitlines()]


def held_and_killed(command: list[str], env: dict, where: str, marker) -> str:
  """Run `command` (an mnet_jax.main command line) held at `where` (`hooks.held`), SIGKILL it there; its output."""
  return killed_when_held([hooked(command, hooks.held(where, marker))], env, marker)[0]


def test_sigkill_during_a_checkpoint_write_and_an_eval_then_rerun_ends_bitwise_identical(reference_run, tmp_path):
  ref_workdir, ref_overrides = reference_run
  overrides = dict(ref_overrides, eval_every_steps=8)  # evaluating changes no state: same parameters expected
  workdir, env = tmp_path / 'run', subprocess_env()
  # 1. Killed when checkpoint 8 is fully written but not yet committed (renamed into place).
  held_and_killed(main_command(workdir, overrides), env, f'before:{workdir / "checkpoints" / "8"}',
                   tmp_path / 'held_1')
  assert checkpoint_steps(workdir) == [4]
  assert list((workdir / 'checkpoints').glob('8.orbax-checkpoint-tmp*')), 'no half-committed checkpoint 8 left'
  # 2. The rerun resumes from 4, never from the uncommitted 8, and is killed evaluating at step 8.
  output = held_and_killed(main_command(workdir, overrides), env, 'eval', tmp_path / 'held_2')
  assert 'resumed from checkpoint at step 4' in output and '[train] step 8/' in output, output[-3000:]
  assert checkpoint_steps(workdir) == [4]
  # 3. The last rerun finishes like the run that was never interrupted.
  resumed = subprocess.run(main_command(workdir, overrides), env=env, capture_output=True, text=True, timeout=300)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert 'resumed from checkpoint at step 4' in resumed.stdout
  assert_identical_params(workdir, ref_workdir)
  # No metrics line lost or repeated (besides the extra evaluations at steps 8 and 16).
  lines = [line for line in metric_lines(workdir) if 'eval_top1' not in line or line['step'] == STEPS]
  assert lines == metric_lines(ref_workdir)


def sweep_command(workdir, data_dir, cache) -> list[str]:
  """Three points (α 0.25 at 48, 40 and 32 px) of one seed, 8 steps, checkpointed every 4; no inference timing."""
  return [sys.executable, '-m', 'mnet_jax.main', f'--config={REPO / "experiments" / "sweep.py"}:smoke',
          f'--workdir={workdir}', '--config.data.name=textured_shapes/tiny', f'--config.data.data_dir={data_dir}',
          '--config.sweep.alphas=0.25', '--config.sweep.resolutions=48,40,32', '--config.num_train_steps=8',
          '--config.sweep.seeds=0', '--config.checkpoint_every_steps=4', '--config.log_every_steps=4',
          '--config.sweep.latency_batch=0', '--config.sweep.tflite_latency=False',
          f'--config.compilation_cache_dir={cache}']


def test_sweep_carries_on_past_a_failing_point_and_reruns_only_the_failed_and_the_killed(tiny_data_dir, cache_dir,
                                                                                        tmp_path):
  workdir = tmp_path / 'sweep'
  command, env = sweep_command(workdir, tiny_data_dir, cache_dir), subprocess_env()
  # The middle point's run dir holds another run's config: that point fails whenever it is tried.
  planted = workdir / 'a0.25_r40' / 'seed0' / 'config.json'
  planted.parent.mkdir(parents=True)
  planted.write_text(json.dumps({'seed': 12345}))
  # 1. The first point finishes, the second fails, the third runs anyway and is killed once its first checkpoint
  # is committed (held there: it cannot finish first).
  checkpoint = workdir / 'a0.25_r32' / 'seed0' / 'checkpoints' / '4'
  output = held_and_killed(command, env, f'after:{checkpoint}', tmp_path / 'held')
  assert checkpoint.exists()
  assert '[sweep] a0.25_r40 seed 0 FAILED' in output and 'different config' in output
  assert not (workdir / 'a0.25_r32' / 'seed0' / 'row.json').exists()
  finished = json.loads((workdir / 'a0.25_r48' / 'seed0' / 'row.json').read_text())
  assert finished['status'] == 'done'

  # 2. The rerun skips the finished point, retries the failed one (failing again) and resumes the killed one.
  rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
  assert rerun.returncode == 1, rerun.stderr[-3000:]
  assert '1 runs already done, 2 to run' in rerun.stdout and '[sweep] a0.25_r40 seed 0 FAILED' in rerun.stdout
  assert 'resumed from checkpoint at step 4' in rerun.stdout
  csv_rows = [r for r in csv.DictReader((workdir / 'results.csv').open()) if r['kind'] == 'run']
  rows = [r for r in json.loads((workdir / 'results.json').read_text()) if r['kind'] == 'run']
  assert [r['name'] for r in rows] == [r['name'] for r in csv_rows] == ['a0.25_r48', 'a0.25_r40', 'a0.25_r32']
  assert [r['status'] for r in rows] == [r['status'] for r in csv_rows] == ['done', 'failed', 'done']
  assert {k: v for k, v in rows[0].items() if k in finished} == finished  # not redone
  assert 'different config' in rows[1]['error'] and rows[2]['error'] is None
  # The failed run's row has no results.json to take its cost from: the row builder's own, for 16 classes.
  assert rows[1]['mult_adds'] == cost.model_cost(0.25, 40, 'separable', num_classes=16, min_depth=8).mult_adds


HEARTBEAT_TIMEOUT_S = 10  # --heartbeat_timeout for the two-process fault tests (JAX's default is 100 s)


@pytest.mark.parametrize('fault', ['SIGKILL', 'SIGSTOP'])
def test_when_process_1_dies_or_hangs_process_0_exits_with_an_error(tiny_data_dir, cache_dir, tmp_path, fault):
  """SIGKILL: process 0's next collective fails at once. SIGSTOP (a hung host: its sockets stay open): process 0
  waits in the collective until the coordination service misses process 1's heartbeats (--heartbeat_timeout)."""
  overrides = tiny_overrides(tiny_data_dir, num_train_steps=100_000, checkpoint_every_steps=100_000,
                             compilation_cache_dir=str(cache_dir))
  port, workdir = _free_port(), tmp_path / 'run'
  logs = [tmp_path / f'process_{i}.log' for i in range(2)]
  processes = []
  for i, log in enumerate(logs):
    with log.open('w') as out:
      processes.append(subprocess.Popen(
          main_command(workdir, overrides, f'--coordinator_address=localhost:{port}', '--num_processes=2',
                       f'--process_id={i}', f'--heartbeat_timeout={HEARTBEAT_TIMEOUT_S}'),
          env=subprocess_env(), stdout=out, stderr=subprocess.STDOUT))
  try:
    deadline = time.time() + 300
    while not (workdir / 'metrics.jsonl').exists():  # both are training
      assert all(p.poll() is None for p in processes) and time.time() < deadline, logs[0].read_text()[-3000:]
      time.sleep(0.1)
    processes[1].send_signal(getattr(signal, fault))
    start = time.time()
    processes[0].wait(timeout=120)
    seconds = time.time() - start
  finally:
    for process in processes:
      process.kill()  # also ends a stopped process
      process.wait()
  output = logs[0].read_text()
  if fault == 'SIGKILL':
    assert processes[0].returncode == 1, output[-3000:]
    errors = [line for line in output.splitlines() if line.startswith('error:')]
    assert len(errors) == 1 and 'processes may have died' in errors[0], output[-3000:]
    assert json.loads((workdir / 'results.json').read_text())['status'] == 'failed'
    assert seconds < 3 * HEARTBEAT_TIMEOUT_S, seconds  # at once, in practice; at worst once heartbeats are missed
  else:
    # JAX ends the process itself (abort, with its own message) once the heartbeat timeout has passed.
    assert processes[0].returncode != 0 and 'another task died' in output, output[-3000:]
    # Once the coordination service has missed heartbeats for the timeout; well before JAX's default of 100 s.
    assert seconds < 4 * HEARTBEAT_TIMEOUT_S, seconds
