"""Starting from trained weights (`config.init_from`): evaluation only, fine-tuning, and bad sources."""

from __future__ import annotations

import functools
import json
import os
import subprocess

import hooks
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hooks import hooked
from test_convert import keras_mobilenet, randomize
from test_models import abstract_variables
from test_train import (
  REPO,
  assert_identical_params,
  flat,
  killed_when_held,
  main_command,
  subprocess_env,
  tiny_overrides,
)

from mnet_jax import convert, datasets, train, warm_start
from mnet_jax.models import MobileNetV1


def test_evaluating_a_run_dir_without_training_gives_its_own_final_accuracy(reference_run, tmp_path):
  # 0 steps from the reference run's newest checkpoint: the evaluation must count exactly the hits the run's own
  # final evaluation counted (the same weights, BatchNorm statistics and eval batches).
  ref_workdir, overrides = reference_run
  relative = os.path.relpath(ref_workdir, tmp_path)  # as a user types it
  result = subprocess.run(main_command(tmp_path, dict(overrides, num_train_steps=0, init_from=relative)),
                          env=subprocess_env(), capture_output=True, text=True, timeout=300, cwd=tmp_path)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
  assert f'starting from the weights at step 24 of {relative}' in result.stdout
  expected = json.loads((ref_workdir / 'results.json').read_text())
  got = json.loads((tmp_path / 'results.json').read_text())
  assert (got['steps'], got['eval_examples']) == (0, expected['eval_examples'])
  assert (got['top1'], got['top5']) == (expected['top1'], expected['top5'])
  assert not list((tmp_path / 'checkpoints').glob('[0-9]*'))  # nothing trained, nothing saved


@pytest.mark.parametrize('change, message', [
    ({'model.alpha': 0.5}, 'params/stem/kernel is (3, 3, 3, 8), the model needs (3, 3, 3, 16)'),
    ({'init_from': '{tmp}/nothing'}, 'neither a converted checkpoint'),
])
def test_weights_that_do_not_fit_give_one_line_and_write_nothing(reference_run, tmp_path, change, message):
  ref_workdir, overrides = reference_run
  overrides = dict(overrides, num_train_steps=4, init_from=ref_workdir)
  overrides.update({k: str(v).format(tmp=tmp_path) for k, v in change.items()})
  result = subprocess.run(main_command(tmp_path / 'run', overrides), env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 2, result.stderr[-2000:]
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: init_from') and message in lines[0], result.stderr
  assert not (tmp_path / 'run').exists()


def _variables(model: MobileNetV1, seed: int) -> dict:
  variables = jax.jit(functools.partial(model.init, train=False))(jax.random.key(seed), jnp.zeros((1, 32, 32, 3)))
  # Statistics that differ from the initial ones, so that taking them is visible.
  return jax.tree.map(lambda x: x + 0.25, variables) if seed else variables


def test_fine_tuning_to_another_class_count_keeps_every_layer_but_the_classifier():
  source = _variables(MobileNetV1(alpha=0.25, num_classes=10), seed=1)
  model = MobileNetV1(alpha=0.25, num_classes=16)
  abstract = abstract_variables(model, 32)
  weights = warm_start.Weights(source['params'], source['batch_stats'], 'src', 'weights')
  with pytest.raises(warm_start.InitFromError, match='classifier/bias is \\(10,\\), the model needs \\(16,\\)'):
    warm_start.fit(weights, abstract, replace_classifier=False)  # evaluating: a mismatch is an error
  fitted, note = warm_start.fit(weights, abstract, replace_classifier=True)
  assert note == 'weights of src; classifier replaced (10 -> 16 classes, newly initialised)'

  tx = optax.sgd(0.1, momentum=0.9)
  fresh = jax.jit(functools.partial(train.init_state, model, tx, use_ema=True))(3)
  fresh = fresh.replace(opt_state=jax.tree.map(lambda x: x + 1.0, fresh.opt_state))  # a non-initial optimizer
  state = train.start_from(fresh, fitted.params, fitted.batch_stats, tx=tx, use_ema=True)
  got, imported, initial = flat(state.params), flat(source['params']), flat(fresh.params)
  for key in got:
    expected = initial[key] if key.startswith('classifier') else imported[key]
    np.testing.assert_array_equal(got[key], expected, err_msg=key)
  for key, value in flat(state.batch_stats).items():
    np.testing.assert_array_equal(value, flat(source['batch_stats'])[key], err_msg=key)
  assert all(not np.any(x) for x in jax.tree.leaves(state.opt_state))  # momentum starts at zero again
  assert int(state.step) == 0
  for ema, value in ((state.ema_params, state.params), (state.ema_batch_stats, state.batch_stats)):
    jax.tree.map(np.testing.assert_array_equal, ema, value)


def _slim_eval_images(images: np.ndarray, resolution: int) -> np.ndarray:
  """TF-slim's preprocess_for_eval with TF's ops: to [0, 1], central_crop(0.875), TF1 bilinear, to [-1, 1]."""
  import tensorflow as tf

  images = tf.image.central_crop(tf.image.convert_image_dtype(images, tf.float32), 0.875)
  images = tf.compat.v1.image.resize_bilinear(images, [resolution, resolution], align_corners=False)
  return ((images - 0.5) * 2.0).numpy()


@pytest.fixture(scope='module')
def trained_keras(tiny_data_dir, tmp_path_factory):
  """A Keras MobileNet 0.25-32 trained for a few epochs on the tiny dataset (so that its predictions vary from
  image to image), saved as .keras; and its own top-1/top-5 hits on the test split, preprocessed as slim does."""
  import keras
  import tensorflow_datasets as tfds

  keras.utils.set_random_seed(0)
  train_split, test_split = (tfds.as_numpy(tfds.load(datasets.TINY_DATASET, split=split, data_dir=tiny_data_dir,
                                                     batch_size=-1)) for split in ('train', 'test'))
  model = keras_mobilenet(0.25, 32, 16)
  for layer in model.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
      layer.momentum = 0.8  # statistics that keep up with 80 steps
  model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  model.fit(_slim_eval_images(train_split['image'], 32), train_split['label'], batch_size=32, epochs=8, verbose=0)
  logits = model.predict(_slim_eval_images(test_split['image'], 32), verbose=0)
  path = tmp_path_factory.mktemp('keras_trained') / 'mobilenet.keras'
  model.save(path)
  top5 = np.argsort(-logits, axis=-1)[:, :5]
  labels = test_split['label']
  assert len(set(top5[:, 0])) >= 8, 'the reference predicts too few classes for its hits to tell much'
  return str(path), int(np.sum(top5[:, 0] == labels)), int(np.sum(np.any(top5 == labels[:, None], -1)))


def test_the_eval_preset_scores_imported_keras_weights_as_keras_does(trained_keras, tiny_data_dir, tmp_path):
  # convert -> experiments/eval.py: every test image decoded, cropped and resized as slim does, and classified by
  # the imported weights, must give Keras' own hits on the same split.
  path, top1_hits, top5_hits = trained_keras
  convert.save(convert.from_keras(path), str(tmp_path / 'imported'))
  command = main_command(tmp_path / 'eval', {
      'data.name': datasets.TINY_DATASET, 'data.data_dir': tiny_data_dir, 'model.alpha': 0.25,
      'model.resolution': 32, 'batch_size': 32, 'init_from': tmp_path / 'imported'},
      config_file=REPO / 'experiments' / 'eval.py')
  result = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
  got = json.loads((tmp_path / 'eval' / 'results.json').read_text())
  assert got['eval_examples'] == 100 and got['config']['data']['eval_preprocess'] == 'slim'
  assert (round(got['top1'] * 100), round(got['top5'] * 100)) == (top1_hits, top5_hits)


def test_fine_tuning_imported_weights_to_another_class_count_resumes_bitwise(tiny_data_dir, cache_dir, tmp_path):
  # A Keras MobileNet with 10 classes fine-tuned on the 16-class tiny dataset: killed once checkpoint 4 is
  # committed, then rerun, it must end where the uninterrupted fine-tuning ends.
  model = keras_mobilenet(0.25, 32, 10)
  randomize(model, seed=5)
  model.save(tmp_path / 'keras.h5')
  convert.save(convert.from_keras(str(tmp_path / 'keras.h5')), str(tmp_path / 'imported'))
  overrides = tiny_overrides(tiny_data_dir, num_train_steps=8, init_from=tmp_path / 'imported',
                             compilation_cache_dir=str(cache_dir))
  env = subprocess_env()
  whole = subprocess.run(main_command(tmp_path / 'whole', overrides), env=env, capture_output=True, text=True,
                         timeout=300)
  assert whole.returncode == 0, whole.stderr[-2000:]
  assert 'classifier replaced (10 -> 16 classes, newly initialised)' in whole.stdout
  killed = tmp_path / 'killed'
  killed_when_held([hooked(main_command(killed, overrides), hooks.held(f'after:{killed / "checkpoints" / "4"}',
                                                                       tmp_path / 'held'))], env, tmp_path / 'held')
  rerun = subprocess.run(main_command(killed, overrides), env=env, capture_output=True, text=True, timeout=300)
  assert rerun.returncode == 0, rerun.stderr[-2000:]
  assert 'resumed from checkpoint at step 4' in rerun.stdout and 'starting from' not in rerun.stdout
  assert_identical_params(killed, tmp_path / 'whole')
