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

import numpy as np
import pytest
from test_train import (
  REPO,
  STEPS,
  _free_port,
  assert_identical_params,
  final_params,
  flat,
  main_command,
  subprocess_env,
  tiny_overrides,
)


@pytest.mark.parametrize('override, message', [
    ({'model.alpha': 0.0}, 'alpha'),
    ({'model.resolution': 16}, 'at least 32'),
    ({'batch_size': 6}, 'not a positive multiple of the 4 devices'),
    ({'data.name': 'imagenet2012'}, 'ILSVRC2012'),
    ({'optim.optimizer': 'adam'}, 'unknown optimizer'),
    ({'data.eval_preprocess': 'tf'}, 'unknown data.eval_preprocess'),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tiny_data_dir, tmp_path, override, message):
  workdir = tmp_path / 'run'
  result = subprocess.run(main_command(workdir, tiny_overrides(tiny_data_dir, **override)),
                          env=subprocess_env(tmp_path, devices=4), capture_output=True, text=True, timeout=120)
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error:') and message in lines[0], result.stderr
  assert not workdir.exists()


@pytest.mark.parametrize('extra, message', [
    (['--config.model.alpah=0.5'], "unknown config field 'alpah' (did you mean \"alpha\""),
    (['--config.model.alpha=abc'], 'could not convert'),
    (['--config.batch_size=1.5'], 'invalid literal'),
    (['--no_such_flag'], 'no_such_flag'),
])
def test_mistyped_config_or_flag_is_one_line_exit_2_and_writes_nothing(tmp_path, extra, message):
  workdir = tmp_path / 'run'
  result = subprocess.run(main_command(workdir, {}, *extra), env=subprocess_env(tmp_path), capture_output=True,
                          text=True, timeout=60)
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error:') and message in lines[0], result.stderr
  assert not workdir.exists()


def test_unwritable_workdir_is_one_line_exit_2_before_any_data_is_prepared(tmp_path):
  (tmp_path / 'a_file').write_text('')
  data_dir = tmp_path / 'tfds'
  overrides = tiny_overrides(data_dir)
  result = subprocess.run(main_command(tmp_path / 'a_file' / 'run', overrides), env=subprocess_env(tmp_path),
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and 'cannot write to workdir' in lines[0] and 'not a directory' in lines[0], result.stderr
  assert not data_dir.exists()


def test_verbose_shows_the_traceback(tiny_data_dir, tmp_path):
  result = subprocess.run(main_command(tmp_path / 'run', tiny_overrides(tiny_data_dir, **{'model.alpha': 0.0}),
                                       '--verbose'), env=subprocess_env(tmp_path), capture_output=True, text=True,
                          timeout=120)
  assert result.returncode == 2
  last = result.stderr.strip().splitlines()[-1]
  assert 'Traceback (most recent call last)' in result.stderr and last.startswith('error:') and 'alpha' in last


def test_changed_config_is_refused_naming_the_fields(reference_run, cache_dir, tmp_path):
  ref_workdir, overrides = reference_run
  workdir = tmp_path / 'run'
  shutil.copytree(ref_workdir, workdir)  # a finished run; the refusal must come before any training
  changed = dict(overrides, **{'optim.learning_rate': 0.5})
  result = subprocess.run(main_command(workdir, changed), env=subprocess_env(cache_dir), capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 2 and 'optim.learning_rate' in result.stderr, result.stderr
  assert (workdir / 'config.json').read_text() == (ref_workdir / 'config.json').read_text()


@pytest.mark.parametrize('fault, signals, exit_code', [('SIGTERM', 1, 143), ('Ctrl-C', 1, 130), ('Ctrl-C', 2, 130)])
def test_sigterm_or_ctrl_c_saves_the_current_step_and_exits_in_one_line(tiny_data_dir, cache_dir, tmp_path, fault,
                                                                         signals, exit_code):
  # A second Ctrl-C stops at once, without saving; both end with one line and the shell's exit code.
  overrides = tiny_overrides(tiny_data_dir, num_train_steps=100_000, checkpoint_every_steps=100_000,
                             compilation_cache_dir=str(cache_dir))
  process = subprocess.Popen(main_command(tmp_path, overrides), env=subprocess_env(tmp_path),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 240
  while not (tmp_path / 'metrics.jsonl').exists() and time.time() < deadline:  # training has started
    time.sleep(0.1)
  for _ in range(signals):
    process.send_signal(signal.SIGTERM if fault == 'SIGTERM' else signal.SIGINT)
    time.sleep(0.01)
  start = time.time()
  _, stderr = process.communicate(timeout=120)
  assert process.returncode == exit_code, stderr[-2000:]
  assert time.time() - start < 30 and 'Traceback' not in stderr, stderr[-2000:]
  assert len([line for line in stderr.splitlines() if line.startswith(('preempted:', 'interrupted:'))]) == 1
  assert not (tmp_path / 'results.json').exists()
  if signals == 1:  # the current step, not only the last periodic checkpoint (there is none before step 100000)
    step = int(re.search(r'checkpoint saved at step (\d+)', stderr).group(1))
    assert [int(p.name) for p in (tmp_path / 'checkpoints').iterdir() if p.name.isdigit()] == [step]
    assert step > 0


def test_corrupt_newest_checkpoint_falls_back_to_previous(reference_run, cache_dir, tmp_path):
  ref_workdir, overrides = reference_run
  workdir = tmp_path / 'run'
  shutil.copytree(ref_workdir, workdir)
  previous, newest = checkpoint_steps(workdir)[-2:]
  for path in (workdir / 'checkpoints' / str(newest)).rglob('*'):  # damage every data file of the newest one
    if path.is_file() and path.stat().st_size > 64:
      path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
  (workdir / 'results.json').unlink()
  result = subprocess.run(main_command(workdir, overrides), env=subprocess_env(cache_dir), capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert f'skipping damaged checkpoint at step {newest}' in result.stdout
  assert f'resumed from checkpoint at step {previous}' in result.stdout
  assert_identical_params(workdir, ref_workdir)  # retrained the last steps identically


def checkpoint_steps(workdir) -> list[int]:
  """The committed checkpoint steps (Orbax writes into '<step>.orbax-checkpoint-tmp*' and renames when done)."""
  return sorted(int(p.name) for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit())


def test_divergence_stops_naming_the_step_and_keeps_only_finite_checkpoints(tiny_data_dir, tmp_path):
  # A staircase 'decay' by inf every 4 steps: the rate is 0.1 for steps 1-4, then inf. Step 5's
  # loss and gradient are still finite (computed before the update); only its parameters are not. Checkpoints
  # at every step, so that state would be saved unless caught at the very step it appears.
  overrides = tiny_overrides(tiny_data_dir, num_train_steps=12, checkpoint_every_steps=1, **{
      'optim.schedule': 'exponential', 'optim.decay_rate': float('inf'), 'optim.decay_epochs': 0.2})
  result = subprocess.run(main_command(tmp_path, overrides), env=subprocess_env(tmp_path), capture_output=True,
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


def test_full_disk_while_checkpointing_is_one_line_exit_2_and_keeps_the_previous_checkpoint(tiny_data_dir,
                                                                                             tmp_path):
  if not small_filesystem_supported(tmp_path):
    pytest.skip('cannot mount a small tmpfs here (needs `unshare -rm`: unprivileged user namespaces)')
  cache = tmp_path / 'cache'  # on the real disk: the compilation cache is not what this test fills
  overrides = tiny_overrides(tiny_data_dir, num_train_steps=4, compilation_cache_dir=str(cache),
                             **{'optim.schedule': 'constant'})  # both runs compile the same step
  subprocess.run(main_command(tmp_path / 'run', overrides), env=subprocess_env(tmp_path), check=True, timeout=300,
                 capture_output=True)
  before = flat(final_params(tmp_path / 'run', 4))
  # In a private mount namespace: copy the run onto a small tmpfs, fill it to 1 MiB short of full (one
  # checkpoint is ~2.5 MB), continue the run to step 8, then copy what is left back out for inspection.
  small, after = tmp_path / 'small', tmp_path / 'after'
  small.mkdir()
  longer = dict(overrides, num_train_steps=8, allow_config_change=True)
  script = f"""
set -e
mount -t tmpfs -o size=32m tmpfs {small}
cp -a {tmp_path / 'run'} {small / 'run'}
free_kb=$(df --output=avail -k {small} | tail -1)
head -c $(( (free_kb - 1024) * 1024 )) /dev/zero > {small / 'filler'}
set +e
{shlex.join(main_command(small / 'run', longer))} > {tmp_path / 'stdout'} 2> {tmp_path / 'stderr'}
echo $? > {tmp_path / 'returncode'}
rm {small / 'filler'}
cp -a {small / 'run'} {after}
"""
  subprocess.run(['unshare', '-rm', 'bash', '-c', script], env=subprocess_env(tmp_path), check=True, timeout=300)
  stderr = (tmp_path / 'stderr').read_text()
  assert int((tmp_path / 'returncode').read_text()) == 2, stderr[-3000:]
  lines = stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error:'), stderr[-3000:]
  assert 'no space left' in lines[0] and 'the checkpoint at step 4 is intact' in lines[0], lines[0]
  assert checkpoint_steps(after) == [4]
  got = flat(final_params(after, 4))
  for key in before:
    np.testing.assert_array_equal(got[key], before[key], err_msg=key)


def metric_lines(workdir) -> list[dict]:
  return [{k: v for k, v in json.loads(line).items() if k != 'img_s'}  # timing differs between runs
          for line in (workdir / 'metrics.jsonl').read_text().splitlines()]


def kill_during_checkpoint_write(process, workdir) -> None:
  """SIGKILL as soon as Orbax starts writing checkpoint 8 (its temporary directory appears)."""
  deadline = time.time() + 240
  while not list((workdir / 'checkpoints').glob('8.orbax-checkpoint-tmp*')):
    assert process.poll() is None and time.time() < deadline, 'the run never started checkpoint 8'
    time.sleep(0.005)
  process.kill()
  process.communicate()
  assert list((workdir / 'checkpoints').glob('8.orbax-checkpoint-tmp*')), 'checkpoint 8 was finished'


def kill_during_eval(process, workdir) -> str:
  """SIGKILL right after step 8's progress line: step 8 evaluates before it checkpoints. Returns the output."""
  output = ''
  for line in process.stdout:
    output += line
    if line.startswith('[train] step 8/'):
      process.kill()
      break
  output += process.communicate()[0]
  assert '[train] step 8/' in output, output[-2000:]
  assert '[eval] step 8' not in output, 'the evaluation finished before the kill'
  assert not list((workdir / 'checkpoints').glob('8*')), 'checkpoint 8 was started: the evaluation was over'
  return output


def test_sigkill_during_a_checkpoint_write_and_an_eval_then_rerun_ends_bitwise_identical(reference_run, cache_dir,
                                                                                           tmp_path):
  ref_workdir, ref_overrides = reference_run
  overrides = dict(ref_overrides, eval_every_steps=8)  # evaluating changes no state: same parameters expected
  workdir, env = tmp_path / 'run', subprocess_env(cache_dir)
  # 1. Killed while Orbax writes checkpoint 8; it starts a save only once the previous one is committed.
  process = subprocess.Popen(main_command(workdir, overrides), env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
  kill_during_checkpoint_write(process, workdir)
  assert checkpoint_steps(workdir) == [4]
  # 2. The rerun resumes from 4, never from the half-written 8, and is killed evaluating at step 8.
  process = subprocess.Popen(main_command(workdir, overrides), env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
  assert 'resumed from checkpoint at step 4' in kill_during_eval(process, workdir)
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
          '--config.sweep.latency_batch=0', f'--config.compilation_cache_dir={cache}']


def test_sweep_carries_on_past_a_failing_point_and_reruns_only_the_failed_and_the_killed(tiny_data_dir, cache_dir,
                                                                                        tmp_path):
  workdir = tmp_path / 'sweep'
  command, env = sweep_command(workdir, tiny_data_dir, cache_dir), subprocess_env(cache_dir)
  # The middle point's run dir holds another run's config: that point fails whenever it is tried.
  planted = workdir / 'a0.25_r40' / 'seed0' / 'config.json'
  planted.parent.mkdir(parents=True)
  planted.write_text(json.dumps({'seed': 12345}))
  # 1. The first point finishes, the second fails, the third runs anyway and is killed after its first checkpoint.
  process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
  checkpoint = workdir / 'a0.25_r32' / 'seed0' / 'checkpoints' / '4'
  deadline = time.time() + 300
  while not checkpoint.exists():
    assert process.poll() is None and time.time() < deadline, 'the third point never checkpointed'
    time.sleep(0.02)
  process.kill()
  output = process.communicate()[0]
  assert '[sweep] a0.25_r40 seed 0 FAILED' in output and 'different config' in output
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
                       f'--process_id={i}', '--heartbeat_timeout=10'),
          env=subprocess_env(tmp_path), stdout=out, stderr=subprocess.STDOUT))
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
    assert seconds < 30, seconds
  else:
    # JAX ends the process itself (abort, with its own message) once the heartbeat timeout has passed.
    assert processes[0].returncode != 0 and 'another task died' in output, output[-3000:]
    assert seconds < 40, seconds  # the default timeout would be 100 s


# `python -c ALLGATHERS_COUNTED <mnet_jax.main flags>` runs the entry point counting the cross-process allgathers
# that `train.any_process` makes (each blocks until every process has finished its pending steps) and prints the
# count at exit. (Orbax's own barriers while saving are not counted.)
ALLGATHERS_COUNTED = '''
import atexit, runpy, sys
from jax.experimental import multihost_utils
calls, allgather = [], multihost_utils.process_allgather
def counted(*args, **kwargs):
  if sys._getframe(1).f_code.co_name == 'any_process':
    calls.append(1)
  return allgather(*args, **kwargs)
multihost_utils.process_allgather = counted
atexit.register(lambda: print(f'process_allgather calls: {len(calls)}', flush=True))
runpy.run_module('mnet_jax.main', run_name='__main__', alter_sys=True)
'''


def test_two_processes_check_for_preemption_at_log_and_checkpoint_steps_only(tiny_data_dir, cache_dir, tmp_path):
  # The check is a collective: every step, it would stop dispatch from running ahead of the devices on a pod.
  steps = 12
  overrides = tiny_overrides(tiny_data_dir, num_train_steps=steps, log_every_steps=6, checkpoint_every_steps=steps,
                             compilation_cache_dir=str(cache_dir))
  port, workdir = _free_port(), tmp_path / 'run'
  commands = [main_command(workdir, overrides, f'--coordinator_address=localhost:{port}', '--num_processes=2',
                           f'--process_id={i}') for i in range(2)]
  processes = [subprocess.Popen([sys.executable, '-c', ALLGATHERS_COUNTED, *command[3:]],
                                env=subprocess_env(cache_dir, devices=2), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True) for command in commands]
  outputs = [p.communicate(timeout=400)[0] for p in processes]
  assert [p.returncode for p in processes] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
  for output in outputs:
    calls = int(re.search(r'process_allgather calls: (\d+)', output).group(1))
    # Steps 6 and 12, and the checkpoint's disk-space check; once per step would be 13.
    assert calls == 3, output[-3000:]
