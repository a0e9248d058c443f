"""Faults injected into real runs: SIGTERM, bad input, a changed config in an existing run dir."""

import signal
import subprocess
import time

import numpy as np
import pytest
from test_train import final_params, flat, main_command, subprocess_env, tiny_overrides


@pytest.mark.parametrize('override, message', [
    ({'model.alpha': 0.0}, 'alpha'),
    ({'model.resolution': 16}, 'at least 32'),
    ({'batch_size': 6}, 'not a positive multiple of the 4 devices'),
    ({'data.name': 'imagenet2012'}, 'ILSVRC2012'),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tiny_data_dir, tmp_path, override, message):
  workdir = tmp_path / 'run'
  result = subprocess.run(main_command(workdir, tiny_overrides(tiny_data_dir, **override)),
                          env=subprocess_env(tmp_path, devices=4), capture_output=True, text=True, timeout=120)
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error:') and message in lines[0], result.stderr
  assert not workdir.exists()


def test_changed_config_is_refused_naming_the_fields(tiny_data_dir, tmp_path):
  overrides = tiny_overrides(tiny_data_dir, num_train_steps=1)
  subprocess.run(main_command(tmp_path, overrides), env=subprocess_env(tmp_path), check=True, timeout=300,
                 capture_output=True)
  changed = dict(overrides, **{'optim.learning_rate': 0.5})
  result = subprocess.run(main_command(tmp_path, changed), env=subprocess_env(tmp_path), capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 2 and 'optim.learning_rate' in result.stderr, result.stderr


def test_sigterm_saves_a_checkpoint_and_exits_143(tiny_data_dir, tmp_path):
  overrides = tiny_overrides(tiny_data_dir, num_train_steps=100_000, checkpoint_every_steps=100_000)
  process = subprocess.Popen(main_command(tmp_path, overrides), env=subprocess_env(tmp_path),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 240
  while not (tmp_path / 'metrics.jsonl').exists() and time.time() < deadline:  # training has started
    time.sleep(0.1)
  process.send_signal(signal.SIGTERM)
  _, stderr = process.communicate(timeout=120)
  assert process.returncode == 143, stderr[-2000:]
  assert 'checkpoint saved at step' in stderr
  steps = [int(p.name) for p in (tmp_path / 'checkpoints').iterdir() if p.name.isdigit()]
  assert steps and min(steps) > 0
  assert not (tmp_path / 'results.json').exists()


def test_corrupt_newest_checkpoint_falls_back_to_previous(tiny_data_dir, tmp_path):
  overrides = tiny_overrides(tiny_data_dir, num_train_steps=8, checkpoint_every_steps=4)
  subprocess.run(main_command(tmp_path, overrides), env=subprocess_env(tmp_path), check=True, timeout=300,
                 capture_output=True)
  expected = flat(final_params(tmp_path))
  for path in (tmp_path / 'checkpoints' / '8').rglob('*'):  # damage every data file of the newest checkpoint
    if path.is_file() and path.stat().st_size > 64:
      path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
  (tmp_path / 'results.json').unlink()
  result = subprocess.run(main_command(tmp_path, overrides), env=subprocess_env(tmp_path), capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'skipping damaged checkpoint at step 8' in result.stdout
  assert 'resumed from checkpoint at step 4' in result.stdout
  got = flat(final_params(tmp_path))
  for key in expected:
    np.testing.assert_array_equal(got[key], expected[key], err_msg=key)  # retrained 4 -> 8 identically
