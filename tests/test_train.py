"""End-to-end training: learning, eval counting, resume after SIGKILL, devices and hosts.

Every comparison is against an independent run: an uninterrupted run, a single-device run,
a single-process run — never the code against itself.
"""

import functools
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import hooks
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from fast_compile import FAST_COMPILE, xla_flags
from hooks import hooked

from mnet_jax import input_pipeline, train
from mnet_jax.config_util import sibling
from mnet_jax.datasets import TINY_DATASET

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / 'experiments' / 'default.py'
STEPS = 24


def tiny_overrides(data_dir, **extra) -> dict:
  """A few steps of the smallest MobileNet on the tiny embedded dataset."""
  overrides = {
      'data.name': TINY_DATASET, 'data.data_dir': str(data_dir),
      'model.alpha': 0.25, 'model.resolution': 32, 'batch_size': 16, 'num_train_steps': STEPS,
      'checkpoint_every_steps': 4, 'log_every_steps': 4, 'optim.warmup_epochs': 0.0,
  }
  overrides.update(extra)
  return overrides


def make_config(overrides: dict):
  config = sibling(str(DEFAULT_CONFIG), 'default').get_config()
  for key, value in overrides.items():
    *parents, leaf = key.split('.')
    node = config
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


def main_command(workdir, overrides: dict, *extra, preset: str = '', config_file=DEFAULT_CONFIG) -> list[str]:
  config = f'{config_file}:{preset}' if preset else str(config_file)
  args = [sys.executable, '-m', 'mnet_jax.main', f'--config={config}', f'--workdir={workdir}']
  args += [f'--config.{k}={v}' for k, v in overrides.items()]
  return args + list(extra)


def subprocess_env(devices: int = 1, x64: bool = False, fast_compile: bool = True) -> dict:
  """The environment of a subprocess run on `devices` CPU devices (its compilation cache is its config's
  `compilation_cache_dir`)."""
  env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED='1', JAX_ENABLE_X64='1' if x64 else '0')
  # Compiled for compile time (`fast_compile`), unless the run is long; every subprocess run of a comparison
  # compiles alike, so the comparisons are unaffected.
  env['XLA_FLAGS'] = ' '.join([f'--xla_force_host_platform_device_count={devices}',
                               *xla_flags(FAST_COMPILE if fast_compile else {})])
  env['JAX_NUM_CPU_DEVICES'] = str(devices)
  return env


def checkpoint_state(workdir, step: int | None = None) -> dict:
  """The newest (or `step`'s) checkpoint, the whole train state (params, batch_stats, opt_state, ema_params,
  ema_batch_stats, step), read by Orbax alone onto this process's device."""
  if step is None:
    step = ocp.CheckpointManager(pathlib.Path(workdir, 'checkpoints').absolute()).latest_step()
  path = pathlib.Path(workdir, 'checkpoints', str(step), 'default')
  checkpointer = ocp.StandardCheckpointer()
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                        checkpointer.metadata(path).item_metadata.tree)
  return checkpointer.restore(path, target)


def final_params(workdir, step: int | None = None) -> dict:
  """The newest (or `step`'s) checkpoint's parameters and BatchNorm statistics as arrays."""
  restored = checkpoint_state(workdir, step)
  return {'step': int(restored['step']), 'params': restored['params'], 'batch_stats': restored['batch_stats']}


def flat(tree, prefix=''):
  if isinstance(tree, dict):
    return {k: v for key in tree for k, v in flat(tree[key], f'{prefix}{key}/').items()}
  return {prefix.rstrip('/'): np.asarray(tree)}


DEVICE_STEPS = 12


@pytest.fixture(scope='module')
def device_reference(tiny_data_dir, cache_dir, tmp_path_factory):
  """12 steps on one device, checkpointed every 4, that runs on other device and process counts must reproduce.

  In float32 they cannot, past the first step: a different reduction order (as between 1 and 4 devices, or
  between XLA's optimisation levels on one device, measured alike) moves a few ReLU6 inputs across 0 or 6, and the
  difference grew ~100x in one step, to 1e-2..1 by step 4 at 64 px, at any rate and with SGD too. So the model
  computes in float64 (JAX_ENABLE_X64; parameters stay float32, rounded from float64 updates): 1 and 4 devices
  then gave bitwise the same parameters at steps 4, 8 and 12 here. A real difference (per-device BatchNorm
  statistics, a wrong data slice) is > 1e-3 after one step."""
  workdir = tmp_path_factory.mktemp('device_reference')
  overrides = tiny_overrides(tiny_data_dir, compilation_cache_dir=str(cache_dir), num_train_steps=DEVICE_STEPS,
                             **{'model.resolution': 64, 'model.dtype': 'float64'})
  result = subprocess.run(main_command(workdir, overrides), env=subprocess_env(x64=True),
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0 and '1 device(s), 1 process(es)' in result.stdout, result.stderr[-3000:]
  return workdir, overrides


def assert_same_steps(got_workdir, expected_workdir, steps=(4, 8, DEVICE_STEPS)):
  """Parameters and BatchNorm statistics at each checkpoint step within float64 round-off (rounded to float32)."""
  for step in steps:
    expected, got = flat(final_params(expected_workdir, step)), flat(final_params(got_workdir, step))
    assert expected.keys() == got.keys()
    for key in expected:
      np.testing.assert_allclose(got[key], expected[key], rtol=1e-5, atol=1e-6, err_msg=f'step {step}: {key}')


def test_run_writes_results_metrics_and_counts_every_eval_example(reference_run, tiny_data_dir):
  workdir, overrides = reference_run
  results = json.loads((workdir / 'results.json').read_text())
  info = input_pipeline.dataset_info(make_config(overrides).data)
  assert results['status'] == 'done' and results['steps'] == STEPS
  # The eval split (100 examples) is not a multiple of the batch (16): padded, never dropped.
  assert results['eval_examples'] == info.num_eval == 100
  assert 0.0 <= results['top1'] <= results['top5'] <= 1.0
  for key in ('alpha', 'resolution', 'rho', 'variant', 'mult_adds', 'params', 'train_img_s', 'wall_s', 'config'):
    assert key in results
  steps = [json.loads(line)['step'] for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert steps == sorted(steps) and 4 in steps and STEPS in steps
  assert list((workdir / 'tensorboard').glob('events.out.tfevents.*'))


def test_resume_after_sigkill_ends_with_identical_parameters(reference_run, tmp_path):
  ref_workdir, overrides = reference_run
  workdir = tmp_path / 'run'
  sigkill_once_written(main_command(workdir, overrides), subprocess_env(), workdir / 'checkpoints' / '4')
  assert not (workdir / 'results.json').exists(), 'the run finished before it was killed'
  resumed = subprocess.run(main_command(workdir, overrides), env=subprocess_env(),
                           capture_output=True, text=True, timeout=300)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert 'resumed from checkpoint at step' in resumed.stdout
  assert_identical_params(workdir, ref_workdir)


def sigkill_once_written(command: list[str], env: dict, *paths: pathlib.Path, timeout: float = 240) -> None:
  """Start `command` and SIGKILL it as soon as all `paths` exist (polled every 10 ms); assert that they were written."""
  process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + timeout
  while not all(path.exists() for path in paths) and process.poll() is None and time.time() < deadline:
    time.sleep(0.01)
  process.send_signal(signal.SIGKILL)
  process.wait()
  for path in paths:
    assert path.exists(), f'the run never wrote {path}'


def killed_when_held(commands: list[list[str]], env: dict, marker: pathlib.Path, timeout: float = 300) -> list[str]:
  """Start `commands` (one per process; one of them holds at a `hooks.held` point that touches `marker`), SIGKILL
  them all once it holds; their outputs."""
  processes = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for command in commands]
  deadline = time.time() + timeout
  while not marker.exists() and all(p.poll() is None for p in processes) and time.time() < deadline:
    time.sleep(0.02)
  for process in processes:
    process.kill()
  outputs = [process.communicate()[0] for process in processes]
  assert marker.exists(), 'the run never reached its hold point: ' + ''.join(o[-3000:] for o in outputs)
  return outputs


def assert_identical_params(got_workdir, expected_workdir):
  """Bitwise equal final parameters (on CPU a resumed run must reproduce the uninterrupted one exactly)."""
  expected, got = flat(final_params(expected_workdir)), flat(final_params(got_workdir))
  assert expected.keys() == got.keys()
  for key in expected:
    np.testing.assert_array_equal(got[key], expected[key], err_msg=key)


def test_four_devices_match_one_device(device_reference, tmp_path):
  ref_workdir, overrides = device_reference
  result = subprocess.run(main_command(tmp_path, overrides), env=subprocess_env(devices=4, x64=True),
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert '4 device(s), 1 process(es)' in result.stdout  # not one device compared with itself
  assert_same_steps(tmp_path, ref_workdir)
  ref, run = (json.loads((d / 'results.json').read_text()) for d in (ref_workdir, tmp_path))
  assert run['eval_examples'] == ref['eval_examples'] and run['top1'] == ref['top1']


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def two_processes(workdir, overrides, *process_hooks) -> list[list[str]]:
  """The command lines of processes 0 and 1 of one run (a fresh coordinator port), each with its hooks."""
  port = _free_port()
  return [hooked(main_command(workdir, overrides, f'--coordinator_address=localhost:{port}', '--num_processes=2',
                              f'--process_id={i}'), *process_hooks[i]) for i in range(2)]


def test_two_processes_killed_and_rerun_match_one_process(device_reference, tmp_path):
  """2 processes x 2 devices, both killed once checkpoint 4 is committed, then rerun: the same 12 steps as one
  process. Only process 0 writes the run's files; the rerun checks for preemption at log and checkpoint steps
  only (the check is a collective: every step, it would stop dispatch from running ahead of the devices)."""
  ref_workdir, overrides = device_reference
  workdir, writes_log, env = tmp_path / 'run', tmp_path / 'process_1_writes.txt', subprocess_env(2, True)

  held = tmp_path / 'held'
  killed_when_held(two_processes(workdir, overrides, [hooks.held(f'after:{workdir / "checkpoints" / "4"}', held)],
                                 [hooks.writes_logged(writes_log)]), env, held)
  processes = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for command in two_processes(workdir, overrides, [hooks.allgathers_counted()],
                                            [hooks.writes_logged(writes_log)])]
  outputs = [p.communicate(timeout=400)[0] for p in processes]
  assert [p.returncode for p in processes] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
  assert '4 device(s), 2 process(es)' in outputs[0] and 'resumed from checkpoint at step 4' in outputs[0]
  assert '[train]' not in outputs[1], 'only process 0 prints progress'
  assert_same_steps(workdir, ref_workdir)
  # Steps 8 and 12 (log and checkpoint steps) and the disk-space check of each save: 4. Every step would be 10.
  assert int(re.search(r'process_allgather calls: (\d+)', outputs[0]).group(1)) == 4, outputs[0][-3000:]
  # Process 1 probes that the workdir is writable and writes its part of the checkpoints, nothing else.
  written = {pathlib.Path(p).relative_to(workdir).parts[:1] for p in writes_log.read_text().split()
             if pathlib.Path(p).is_relative_to(workdir)}
  assert written <= {(), ('.write_test.1',), ('checkpoints',)}, written


# A run checkpointed by 2 processes resumes in 1, and one checkpointed by 1 in 2: the step it restores and the data it
# reads next are those of the uninterrupted one-process run.
def test_two_processes_killed_resume_in_one_process(device_reference, tmp_path):
  ref_workdir, overrides = device_reference
  workdir, held = tmp_path / 'run', tmp_path / 'held'
  killed_when_held(two_processes(workdir, overrides, [hooks.held(f'after:{workdir / "checkpoints" / "4"}', held)],
                                  []), subprocess_env(2, True), held)
  resumed = subprocess.run(main_command(workdir, overrides), env=subprocess_env(4, True), capture_output=True,
                           text=True, timeout=400)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert '4 device(s), 1 process(es)' in resumed.stdout and 'resumed from checkpoint at step 4' in resumed.stdout
  assert_same_steps(workdir, ref_workdir)


def test_one_process_killed_resumes_intwo_processes(device_reference, tmp_path):
  ref_workdir, overrides = device_reference
  workdir, held = tmp_path / 'run', tmp_path / 'held'
  killed_when_held([hooked(main_command(workdir, overrides),
                           hooks.held(f'after:{workdir / "checkpoints" / "4"}', held))], subprocess_env(4, True), held)
  processes = [subprocess.Popen(command, env=subprocess_env(2, True), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
               for command in two_processes(workdir, overrides, [], [])]
  outputs = [p.communicate(timeout=400)[0] for p in processes]
  assert [p.returncode for p in processes] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
  assert '4 device(s), 2 process(es)' in outputs[0] and 'resumed from checkpoint at step 4' in outputs[0]
  assert_same_steps(workdir, ref_workdir)


def test_small_model_learns_shapes_and_textures(tiny_data_dir, cache_dir, tmp_path):
  # The tiny dataset's 16 classes are 4 shapes x 4 textures: a model that sees only the shapes (say, a resize or
  # normalisation bug that blurs the textures away), or only the textures, tops out at 25%. The bar is twice that.
  # The offline study's recipe at twice its learning rate per image, 300 steps of 32 (30 epochs of the 320 images),
  # at the images' own 64 px: seeds 0-3 reached 70-80% top-1 on the 100 test images (session 15). At 48 px, where
  # the finest stripes are under two input pixels, it reached 41-56% over seeds 0-4, and 38-64% at half the
  # learning rate (this test's earlier config): too near the bar.
  # A subprocess at XLA's default optimisations: running its 300 steps, not compiling, is most of this test.
  overrides = tiny_overrides(
      tiny_data_dir, num_train_steps=300, batch_size=32, checkpoint_every_steps=1000, log_every_steps=100,
      compilation_cache_dir=str(cache_dir), **{
          'model.resolution': 64, 'model.alpha': 0.5, 'model.bn_momentum': 0.9, 'model.kernel_init': 'slim',
          'optim.epsilon': 1e-3, 'optim.learning_rate': 0.032, 'optim.rmsprop_initial_scale': 0.0,
          'data.min_area': 1.0, 'data.eval_crop': 1.0})
  result = subprocess.run(main_command(tmp_path, overrides), env=subprocess_env(fast_compile=False),
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  top1 = json.loads((tmp_path / 'results.json').read_text())['top1']
  assert top1 >= 0.50, top1


def test_ema_of_weights_and_batch_stats_follows_the_reference_formula():
  # TF's ExponentialMovingAverage(decay, num_updates): decay_t = min(decay, (1 + t) / (10 + t)), applied to the
  # weights and to the moving BatchNorm statistics, written out here step by step.
  import jax.numpy as jnp
  import optax

  model = train.create_model(make_config({'model.alpha': 0.25}).model, 5)
  tx = optax.sgd(0.5)
  state = jax.jit(functools.partial(train.init_state, model, tx, use_ema=True))(0)
  rng = np.random.default_rng(0)
  batches = [{'image': jnp.asarray(rng.uniform(-1, 1, (8, 32, 32, 3)), jnp.float32),
              'label': jnp.asarray(rng.integers(0, 5, 8), jnp.int32)} for _ in range(4)]
  step = jax.jit(lambda s, b: train.train_step(
      s, b, 0, model=model, tx=tx, schedule=optax.constant_schedule(0.5), label_smoothing=0.0, ema_decay=0.9))
  init = expected = {'params': state.params, 'batch_stats': state.batch_stats}
  for t, batch in enumerate(batches):
    state, _ = step(state, batch)
    decay = min(0.9, (1 + t) / (10 + t))
    expected = {k: jax.tree.map(lambda e, p, d=decay: d * e + (1 - d) * p, expected[k], getattr(state, k))
                for k in expected}
  for got, want in ((state.ema_params, expected['params']), (state.ema_batch_stats, expected['batch_stats'])):
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
      np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
  # After 4 updates the init still weighs 0.1 * 2/11 * 3/12 * 4/13 = 0.0014 (a fixed 0.9 would leave 0.66).
  kernel = lambda tree: np.asarray(tree['block10_depthwise']['kernel'])  # noqa: E731
  distance = lambda a, b: np.abs(kernel(a) - kernel(b)).max()  # noqa: E731
  assert distance(state.ema_params, state.params) < 0.5 * distance(init['params'], state.params)
