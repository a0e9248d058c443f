"""The optimizer: which parameters decay, and RMSprop as TensorFlow defines it."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from mnet_jax import config_checks, optim
from mnet_jax.models import MobileNetV1


def _optim_config(**overrides):
  config = ml_collections.ConfigDict(dict(
      optimizer='rmsprop', rmsprop_decay=0.9, momentum=0.9, nesterov=False, epsilon=1.0,
      learning_rate=0.1, base_batch_size=256, schedule='constant', decay_rate=0.94, decay_epochs=2.5,
      warmup_epochs=0.0, weight_decay=4e-5, grad_clip_norm=0.0))
  config.update(overrides)
  return config


@functools.cache
def _params():
  return jax.jit(MobileNetV1(alpha=0.25, num_classes=10).init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))['params']


def test_weight_decay_mask_by_layer_kind():
  mask = optim.weight_decay_mask(_params())
  assert mask['stem']['kernel'] is True
  assert mask['classifier']['kernel'] is True
  assert mask['classifier']['bias'] is False
  for index in range(1, 14):
    assert mask[f'block{index}_pointwise']['kernel'] is True
    assert mask[f'block{index}_depthwise']['kernel'] is False
    for kind in ('depthwise', 'pointwise'):
      assert mask[f'block{index}_{kind}_bn'] == {'scale': False, 'bias': False}
  assert mask['stem_bn'] == {'scale': False, 'bias': False}


def test_depthwise_kernels_are_not_decayed_but_pointwise_are():
  params = _params()
  config = _optim_config(optimizer='sgd', momentum=0.0, weight_decay=0.5, learning_rate=1.0,
                         base_batch_size=1)
  tx = optim.create_optimizer(config, optax.constant_schedule(1.0))
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero_grads, tx.init(params), params)
  # With zero gradients, SGD's update is -lr * weight_decay * w on decayed parameters only.
  np.testing.assert_allclose(updates['block3_pointwise']['kernel'], -0.5 * params['block3_pointwise']['kernel'])
  np.testing.assert_allclose(updates['stem']['kernel'], -0.5 * params['stem']['kernel'])
  assert not np.any(updates['block3_depthwise']['kernel'])
  assert not np.any(updates['block3_depthwise_bn']['scale'])
  assert not np.any(updates['classifier']['bias'])


@pytest.mark.parametrize('initial_scale, epsilon', [(1.0, 1.0), (0.0, 1e-3)])
def test_rmsprop_matches_tensorflow_update_rule(initial_scale, epsilon):
  """TF's RMSPropOptimizer: ms starts at 1 (or the configured scale), ms = d*ms + (1-d)*g^2,
  mom = m*mom + lr*g/sqrt(ms+eps)."""
  config = _optim_config(weight_decay=0.0, rmsprop_initial_scale=initial_scale, epsilon=epsilon)
  w = {'kernel': jnp.array([1.0, -2.0, 3.0])}
  tx = optim.create_optimizer(config, optax.constant_schedule(0.1))
  state = tx.init(w)
  ms, mom, ref = np.full(3, initial_scale), np.zeros(3), np.array(w['kernel'])
  rng = np.random.default_rng(0)
  for _ in range(5):
    g = rng.normal(size=3)
    updates, state = tx.update({'kernel': jnp.asarray(g, jnp.float32)}, state, w)
    w = optax.apply_updates(w, updates)
    ms = 0.9 * ms + 0.1 * g * g
    mom = 0.9 * mom + 0.1 * g / np.sqrt(ms + epsilon)
    ref = ref - mom
  np.testing.assert_allclose(w['kernel'], ref, rtol=1e-5)


def test_schedule_warmup_then_exponential_staircase_scaled_by_batch():
  config = _optim_config(schedule='exponential', warmup_epochs=1.0, learning_rate=0.045,
                         base_batch_size=256, decay_epochs=2.0)
  schedule = optim.learning_rate_schedule(config, batch_size=512, steps_per_epoch=10, total_steps=100)
  peak = 0.045 * 2
  assert float(schedule(0)) == 0.0
  np.testing.assert_allclose(float(schedule(5)), peak / 2, rtol=1e-6)
  np.testing.assert_allclose(float(schedule(10)), peak, rtol=1e-6)
  np.testing.assert_allclose(float(schedule(10 + 19)), peak, rtol=1e-6)
  np.testing.assert_allclose(float(schedule(10 + 20)), peak * 0.94, rtol=1e-6)


def test_the_names_main_lets_through_before_its_imports_are_the_ones_that_build():
  # `main` checks the optimizer and schedule names before importing JAX (`config_checks`): each name it accepts
  # must build here, and a name it would refuse must be refused here with the same line.
  for name in config_checks.OPTIMIZERS:
    assert optim.create_optimizer(_optim_config(optimizer=name), optax.constant_schedule(0.1)).init({}) is not None
  for name in config_checks.SCHEDULES:
    config = _optim_config(schedule=name)
    assert float(optim.learning_rate_schedule(config, batch_size=256, steps_per_epoch=10, total_steps=100)(50)) > 0
  for field, bad in (('optimizer', 'adam'), ('schedule', 'linear')):
    config = _optim_config(**{field: bad})
    with pytest.raises(ValueError) as early:
      config_checks.check(ml_collections.ConfigDict({'optim': config}))
    with pytest.raises(ValueError) as late:
      optim.create_optimizer(config, optim.learning_rate_schedule(config, 256, 10, 100))
    assert str(early.value) == str(late.value) and bad in str(late.value)
