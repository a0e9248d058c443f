"""Restoring a checkpoint loses nothing: a read error that may pass is retried and then stops the run with every
checkpoint in place; only damaged content is set aside (tests/test_reliability.py covers a corrupt checkpoint)."""

import errno
import shutil
import subprocess

import hooks
import pytest
from test_reliability import checkpoint_steps
from test_train import assert_identical_params, main_command, subprocess_env, tiny_overrides, two_processes

from mnet_jax import checkpointing


# TensorStore, Orbax's reader, raises ValueError with the status code, HTTP status or strerror in the text.
@pytest.mark.parametrize('error', [
    TimeoutError('read timed out'),
    ConnectionResetError(errno.ECONNRESET, 'Connection reset by peer'),
    OSError(errno.ETIMEDOUT, 'Connection timed out'),
    OSError(errno.EIO, 'Input/output error'),
    ValueError('UNAVAILABLE: Error reading "gs://bucket/run/checkpoints/8/state/d/0": HTTP response code: 503'),
    ValueError('DEADLINE_EXCEEDED: Deadline Exceeded'),
    ValueError('Error reading local file "/data/ckpt": [OS error 110: Connection timed out]'),
    ValueError('HTTP status 502 Bad Gateway'),
])
def test_passing_io_errors_are_transient(error):
  assert checkpointing.is_transient(error)


def test_a_cause_is_looked_at_too():
  try:
    try:
      raise TimeoutError('read timed out')
    except TimeoutError as e:
      raise RuntimeError('restore failed') from e
  except RuntimeError as e:
    assert checkpointing.is_transient(e)


@pytest.mark.parametrize('error', [
    ValueError('DATA_LOSS: Error reading "ckpt/state/d/0": unexpected end of data'),
    ValueError('non-finite parameters'),
    KeyError('params/Conv_0/kernel'),
    FileNotFoundError(errno.ENOENT, 'No such file or directory'),
    ValueError('Requested shape (3, 3, 3, 8) does not match the saved shape (3, 3, 3, 16)'),
    ValueError('NOT_FOUND: Error opening "zarr" driver: Metadata at "ckpt/_METADATA" does not exist'),
    ValueError('the service was unavailable 500 times'),  # no status code, no HTTP status
])
def test_damaged_content_is_not_transient(error):
  assert not checkpointing.is_transient(error)


def _copied_run(reference_run, tmp_path):
  ref_workdir, overrides = reference_run
  workdir = tmp_path / 'run'
  shutil.copytree(ref_workdir, workdir)
  (workdir / 'results.json').unlink()
  return workdir, overrides


def test_a_passing_read_error_is_retried_and_the_run_resumes_from_the_newest_checkpoint(reference_run, tmp_path):
  workdir, overrides = _copied_run(reference_run, tmp_path)
  steps = checkpoint_steps(workdir)
  command = hooks.hooked(main_command(workdir, overrides),
                         hooks.restores_failing(2, "OSError(errno.ETIMEDOUT, 'Connection timed out')"))
  result = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.count('restore failed:') == 2
  assert result.stdout.count(f'reading the checkpoint at step {steps[-1]} in {workdir} failed') == 2
  assert f'resumed from checkpoint at step {steps[-1]}' in result.stdout
  assert checkpoint_steps(workdir) == steps and not (workdir / 'damaged_checkpoints').exists()
  assert_identical_params(workdir, reference_run[0])


@pytest.mark.parametrize('error', [
    "TimeoutError('read timed out')",
    "ValueError('UNAVAILABLE: Error reading \"gs://b/c/8/d/0\": HTTP response code: 503')",
])
def test_a_read_error_that_persists_ends_the_run_in_one_line_and_moves_nothing(reference_run, tmp_path, error):
  workdir, overrides = _copied_run(reference_run, tmp_path)
  steps = checkpoint_steps(workdir)
  command = hooks.hooked(main_command(workdir, overrides), hooks.restores_failing(1000, error))
  result = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=300)
  assert result.returncode == 1, result.stderr[-2000:]
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: CheckpointUnavailableError'), result.stderr[-3000:]
  assert f'checkpoint at step {steps[-1]}' in lines[0] and 'nothing was moved' in lines[0], lines[0]
  assert result.stdout.count('restore failed:') == checkpointing.RESTORE_TRIES  # the newest only, never an older
  assert 'resumed from' not in result.stdout and 'skipping damaged' not in result.stdout
  assert checkpoint_steps(workdir) == steps and not (workdir / 'damaged_checkpoints').exists()


@pytest.fixture(scope='module')
def two_process_run(tiny_data_dir, cache_dir, tmp_path_factory):
  """An uninterrupted run of 2 processes with one device each; returns (workdir, overrides)."""
  workdir = tmp_path_factory.mktemp('two_processes') / 'run'
  overrides = tiny_overrides(tiny_data_dir, compilation_cache_dir=str(cache_dir))
  results = _two_processes(workdir, overrides, [], [])
  assert [r.returncode for r in results] == [0, 0], results[0].stdout[-3000:] + results[1].stdout[-3000:]
  return workdir, overrides


def _two_processes(workdir, overrides, hooks_0: list[str], hooks_1: list[str]) -> list[subprocess.CompletedProcess]:
  commands = two_processes(workdir, overrides, hooks_0, hooks_1)
  processes = [subprocess.Popen(c, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for c in commands]
  try:
    outputs = [p.communicate(timeout=300)[0] for p in processes]
  finally:
    for process in processes:
      process.kill()  # only one left running if the other failed before a collective
      process.wait()
  return [subprocess.CompletedProcess(c, p.returncode, o) for c, p, o in zip(commands, processes, outputs, strict=True)]


def test_a_read_error_on_one_process_alone_stops_both_and_moves_nothing(two_process_run, tmp_path):
  workdir, overrides = _copied_run(two_process_run, tmp_path)
  steps = checkpoint_steps(workdir)
  results = _two_processes(workdir, overrides, [], [hooks.restores_failing(1000, "TimeoutError('read timed out')",
                                                                           process=1)])
  outputs = [r.stdout for r in results]
  assert [r.returncode for r in results] == [1, 1], outputs[0][-3000:] + outputs[1][-3000:]
  assert outputs[1].count('restore failed:') == checkpointing.RESTORE_TRIES  # process 1 retried, then both stopped
  for output in outputs:
    errors = [line for line in output.splitlines() if line.startswith('error:')]
    assert len(errors) == 1 and 'CheckpointUnavailableError' in errors[0], output[-3000:]
    assert f'checkpoint at step {steps[-1]}' in errors[0] and 'nothing was moved' in errors[0], errors[0]
  assert 'another process could not read it' in outputs[0]
  assert checkpoint_steps(workdir) == steps and not (workdir / 'damaged_checkpoints').exists()


def test_a_checkpoint_damaged_for_one_process_alone_sends_both_to_the_same_older_step(two_process_run, tmp_path):
  workdir, overrides = _copied_run(two_process_run, tmp_path)
  previous, newest = checkpoint_steps(workdir)[-2:]
  results = _two_processes(workdir, overrides, [], [hooks.restores_failing(1, "ValueError('DATA_LOSS: injected')",
                                                                           process=1)])
  outputs = [r.stdout for r in results]
  assert [r.returncode for r in results] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
  assert outputs[1].count('restore failed:') == 1
  assert f'skipping damaged checkpoint at step {newest} (another process could not read it)' in outputs[0]
  assert f'resumed from checkpoint at step {previous}' in outputs[0]
  assert [p.name.split('-')[0] for p in (workdir / 'damaged_checkpoints').iterdir()] == [str(newest)]
  assert_identical_params(workdir, two_process_run[0])  # both retrained the last steps from the same step
