"""The batched flip draws against TF's own per-example stateless ops."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from mnet_jax import philox


def _tf_flip(seed: int, position: int) -> bool:
  """What `input_pipeline`'s per-example path draws: `stateless_random_flip_left_right`'s uniform, with the
  second seed of `stateless_split([seed, position], 2)`."""
  flip_seed = tf.random.experimental.stateless_split(tf.constant([seed, position], tf.int64), 2)[1]
  return bool(tf.random.stateless_uniform([], flip_seed) < 0.5)


@pytest.mark.parametrize('seed', [0, 1, -7, 2**40 + 3, 2**63 - 1])
def test_batched_flips_are_tfs_per_example_draws(seed):
  rng = np.random.default_rng(seed % 2**32)
  positions = np.concatenate([np.arange(40), rng.integers(0, 2**62, 40), [2**32 - 1, 2**32, 2**63 - 1]])
  got = philox.flips(tf.constant(seed, tf.int64), tf.constant(positions, tf.int64)).numpy()
  expected = np.array([_tf_flip(seed, int(p)) for p in positions])
  np.testing.assert_array_equal(got, expected)
  assert 0 < expected.sum() < len(expected)  # both outcomes occur: the comparison is not of constants


def test_batched_flips_keep_the_shape_of_the_positions():
  positions = tf.reshape(tf.range(12, dtype=tf.int64), (3, 4))
  flat = philox.flips(tf.constant(5, tf.int64), tf.reshape(positions, [-1]))
  np.testing.assert_array_equal(philox.flips(tf.constant(5, tf.int64), positions).numpy(),
                                tf.reshape(flat, (3, 4)).numpy())
