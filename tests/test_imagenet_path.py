"""The paper-scale path, `experiments/default.py:imagenet2012`, end to end on a miniature ImageNet that TFDS's
real `imagenet2012` builder prepared (`mini_imagenet`): uncached ArrayRecord reads, JPEGs of several sizes, 1000
classes, the EMA of weights. Real subprocesses, Orbax checkpoints and SIGKILL; every comparison is against an
independent run or computation (TFDS's own label files, an uninterrupted run, one process, the EMA in numpy).
"""

import json
import re
import subprocess

import jax
import mini_imagenet
import numpy as np
import pytest
from test_train import (
  DEFAULT_CONFIG,
  _free_port,
  checkpoint_state,
  flat,
  main_command,
  sigkill_once_written,
  subprocess_env,
)

from mnet_jax import input_pipeline
from mnet_jax.config_util import sibling

PRESET = 'imagenet2012'
STEPS = 4
EMA_TREES = ('params', 'batch_stats', 'ema_params', 'ema_batch_stats')
EMA_DECAY = 0.995  # the preset's (the TPU reference's)


def preset_config(overrides: dict):
  config = sibling(str(DEFAULT_CONFIG), 'default').get_config(PRESET)
  for key, value in overrides.items():
    *parents, leaf = key.split('.')
    node = config
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


@pytest.fixture(scope='module')
def overrides(mini_imagenet_dir, cache_dir) -> dict:
  """The preset (uncached ArrayRecord reads, EMA decay 0.995, RMSprop, 1000 classes) with a tiny model and
  run. float32: bfloat16 compiled 2x slower on CPU and its round-off would blur the two-process comparison.
  No warmup, so that the weights move in 4 steps and a wrong EMA would show. A checkpoint every step feeds the
  EMA check; 8 does not divide the 12 training or the 13 validation examples."""
  return {'data.data_dir': mini_imagenet_dir, 'model.alpha': 0.25, 'model.resolution': 32,
          'model.dtype': 'float32', 'batch_size': 8, 'num_train_steps': STEPS, 'eval_every_steps': 2,
          'checkpoint_every_steps': 1, 'max_checkpoints_to_keep': STEPS, 'log_every_steps': 1,
          'optim.warmup_epochs': 0.0, 'compilation_cache_dir': str(cache_dir)}


@pytest.fixture(scope='module')
def reference(overrides, tmp_path_factory):
  """An uninterrupted run, one process with two devices: two processes of one device each run the same
  partitioned program, so they must end bitwise where it does. Returns (workdir, its stdout)."""
  workdir = tmp_path_factory.mktemp('imagenet_reference')
  result = subprocess.run(main_command(workdir, overrides, preset=PRESET), env=subprocess_env(2),
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir, result.stdout


def metric_lines(workdir) -> list[dict]:
  return [{k: v for k, v in json.loads(line).items() if k != 'img_s'}  # timing differs between runs
          for line in (workdir / 'metrics.jsonl').read_text().splitlines()]


def test_the_preset_trains_and_evaluates_mid_run_and_at_the_end_on_every_validation_example(reference):
  workdir, stdout = reference
  results = json.loads((workdir / 'results.json').read_text())
  assert results['status'] == 'done' and results['steps'] == STEPS and results['dataset'] == 'imagenet2012'
  assert results['eval_examples'] == mini_imagenet.NUM_VAL
  assert results['config']['data']['cache'] is False and results['config']['optim']['ema_decay'] == EMA_DECAY
  assert f'12 train / {mini_imagenet.NUM_VAL} eval examples of imagenet2012' in stdout
  assert '[eval] step 2:' in stdout and f'on {mini_imagenet.NUM_VAL} examples' in stdout
  lines = metric_lines(workdir)
  assert [line['step'] for line in lines if 'loss' in line] == [1, 2, 3, 4]
  evals = [line for line in lines if 'eval_top1' in line]
  assert [line['step'] for line in evals] == [2, 4]
  assert all(line['eval_examples'] == mini_imagenet.NUM_VAL for line in evals), evals


@pytest.mark.parametrize('process_count', [1, 2])
def test_the_pipeline_reads_each_example_of_the_real_build_once(overrides, process_count):
  """Evaluation: every validation example once, with the label TFDS's bundled files give its file name.
  Training: the first epoch (12 examples over steps 0 and 1 of 8) is a permutation of the training split."""
  data = preset_config(overrides).data
  labels, masked = [], 0
  for process in range(process_count):
    for batch in input_pipeline.eval_batches(data, global_batch_size=8, resolution=32, process_index=process,
                                             process_count=process_count):
      assert batch['image'].shape == (8 // process_count, 32, 32, 3)
      assert batch['image'].dtype == np.uint8  # scaled on the device (`evaluation.model_input`)
      labels.extend(batch['label'][batch['mask'] == 1].tolist())
      masked += int(np.sum(batch['mask'] == 0))
  assert sorted(labels) == sorted(mini_imagenet.validation_labels())
  assert masked == 16 - mini_imagenet.NUM_VAL
  train_labels = []
  for process in range(process_count):
    local = 8 // process_count
    batches = input_pipeline.train_batches(data, global_batch_size=8, resolution=32, seed=0,
                                           process_index=process, process_count=process_count)
    for step in range(2):
      batch = next(batches)
      assert batch['image'].shape == (local, 32, 32, 3)
      first_epoch = [step * 8 + process * local + slot < 12 for slot in range(local)]  # global positions 0-11
      train_labels += batch['label'][first_epoch].tolist()
  assert sorted(train_labels) == sorted(mini_imagenet.train_labels())


def flat_state(workdir, step: int = STEPS) -> dict[str, np.ndarray]:
  """Every array of a checkpoint, optimizer state included, by its path."""
  leaves = jax.tree_util.tree_flatten_with_path(checkpoint_state(workdir, step))[0]
  return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def assert_identical_states(got_workdir, expected_workdir, step: int = STEPS):
  expected, got = flat_state(expected_workdir, step), flat_state(got_workdir, step)
  assert expected.keys() == got.keys()
  assert {key.split(']')[0] for key in expected} >= {f"['{tree}'" for tree in EMA_TREES + ('opt_state',)}
  for key in expected:
    np.testing.assert_array_equal(got[key], expected[key], err_msg=key)


def test_killed_and_rerun_ends_bitwise_identical_to_the_uninterrupted_run(reference, overrides, tmp_path):
  """A preempted job: SIGKILLed mid-run, then the same command again; the result must be the uninterrupted
  run's, optimizer state and EMA included. (Killed after checkpoint 2, which follows the first evaluation.)
  Two processes reading their halves of every batch ended bitwise where one process with two devices does
  (the next test)."""
  ref_workdir, _ = reference
  workdir = tmp_path / 'run'
  command = main_command(workdir, overrides, preset=PRESET)
  sigkill_once_written(command, subprocess_env(2), workdir / 'checkpoints' / '2')
  assert not (workdir / 'results.json').exists(), 'the run finished before it was killed'
  result = subprocess.run(command, env=subprocess_env(2), capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  assert 'resumed from checkpoint at step' in result.stdout
  assert_identical_states(workdir, ref_workdir)
  ref, run = (json.loads((d / 'results.json').read_text()) for d in (ref_workdir, workdir))
  assert (run['top1'], run['top5'], run['eval_examples']) == (ref['top1'], ref['top5'], mini_imagenet.NUM_VAL)
  assert metric_lines(workdir) == metric_lines(ref_workdir)


def test_two_processes_end_bitwise_where_one_process_with_two_devices_does(reference, overrides, tmp_path):
  """Two hosts of one device each, each reading its half of every batch from the ArrayRecord build and evaluating
  its half of the validation split: the same partitioned program as the reference, so the same bits."""
  ref_workdir, _ = reference
  port, workdir = _free_port(), tmp_path / 'run'
  processes = [subprocess.Popen(main_command(workdir, overrides, f'--coordinator_address=localhost:{port}',
                                             '--num_processes=2', f'--process_id={i}', preset=PRESET),
                                env=subprocess_env(1), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True) for i in range(2)]
  outputs = [p.communicate(timeout=400)[0] for p in processes]
  assert [p.returncode for p in processes] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
  assert '2 device(s), 2 process(es)' in outputs[0]
  assert_identical_states(workdir, ref_workdir)
  ref, run = (json.loads((d / 'results.json').read_text()) for d in (ref_workdir, workdir))
  assert (run['top1'], run['top5'], run['eval_examples']) == (ref['top1'], ref['top5'], mini_imagenet.NUM_VAL)
  assert metric_lines(workdir) == metric_lines(ref_workdir)


def test_the_ema_is_tf_exponential_moving_average_with_num_updates(reference):
  """Update t (0, 1, ...) sets ema = d_t * ema + (1 - d_t) * weights, d_t = min(0.995, (1 + t) / (10 + t)),
  from the initial values; recomputed in float64 from the weights checkpointed after every step. The BatchNorm
  statistics start at mean 0, variance 1; the initial weights are not saved, so their average is followed from
  the one saved after update 0."""
  workdir, _ = reference
  first = flat(checkpoint_state(workdir, 1)['batch_stats'])
  assert first and all(key.endswith(('/mean', '/var')) for key in first)
  ema = {'batch_stats': {k: np.full(v.shape, 0.0 if k.endswith('/mean') else 1.0) for k, v in first.items()}}
  for t in range(STEPS):
    state = checkpoint_state(workdir, t + 1)
    decay = min(EMA_DECAY, (1 + t) / (10 + t))
    for tree in ('batch_stats', 'params'):
      weights, saved = flat(state[tree]), flat(state[f'ema_{tree}'])
      if tree not in ema:
        ema[tree] = {k: v.astype(np.float64) for k, v in saved.items()}
        continue
      assert saved.keys() == ema[tree].keys()
      moved = 0.0
      for key in saved:
        ema[tree][key] = decay * ema[tree][key] + (1 - decay) * weights[key]
        np.testing.assert_allclose(saved[key], ema[tree][key], rtol=1e-6, atol=1e-8, err_msg=f'step {t + 1} {key}')
        moved = max(moved, float(np.max(np.abs(weights[key] - ema[tree][key]))))
      assert moved > 1e-5, f'{tree} hardly moved at step {t + 1}: a wrong average would pass unseen'


def test_the_unprepared_message_gives_a_command_that_prepares_what_the_preset_reads(tmp_path):
  """Follow the one-line error literally: put the manual files where it says, run the command it gives."""
  data = preset_config({'data.data_dir': str(tmp_path / 'tfds')}).data
  with pytest.raises(input_pipeline.DatasetError) as error:
    input_pipeline.dataset_info(data)
  match = re.search(r'put .* in (\S+), then run `([^`]+)`', str(error.value))
  assert match, error.value
  manual_dir, command = match.groups()
  mini_imagenet.write_manual_dir(manual_dir, train_per_synset=1, num_val=2)
  result = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-3000:]
  assert input_pipeline.dataset_info(data) == input_pipeline.DatasetInfo(1000, 4, 2)
  batch = next(input_pipeline.train_batches(data, global_batch_size=4, resolution=32, seed=0, process_index=0,
                                            process_count=1))
  assert batch['image'].shape == (4, 32, 32, 3)
