"""TF's per-example stateless flip draw, computed for a whole batch of positions at once.

The training input draws each example's flip as `tf.image.stateless_random_flip_left_right`
does: `stateless_uniform([], stateless_split([seed, position], 2)[1]) < 0.5`. Those ops take
one seed each, and tf.data's vectoriser has no rule for the key derivation they share
(`StatelessRandomGetKeyCounter`), so a batch paid one small graph per example. Here the
same Philox-4x32-10 arithmetic (Salmon et al., 2011, as TF's `philox_random.h` and
`GenerateKey` apply it) runs on uint64 tensors holding 32-bit words, over the whole batch:
bitwise the same draws (tested against TF's ops).
"""

from __future__ import annotations

import tensorflow as tf

_MULTIPLIERS = (0xD2511F53, 0xCD9E8D57)
_KEY_STEPS = (0x9E3779B9, 0xBB67AE85)
_SEED_KEY = (0x3EC8F720, 0x02461E29)  # the fixed key TF scrambles a seed with
_ROUNDS = 10


def _u64(value: int) -> tf.Tensor:
  return tf.constant(value, tf.uint64)


def _low(x: tf.Tensor) -> tf.Tensor:
  return tf.bitwise.bitwise_and(x, _u64(0xFFFFFFFF))


def _high(x: tf.Tensor) -> tf.Tensor:
  return tf.bitwise.right_shift(x, _u64(32))


def _philox(counter: tuple[tf.Tensor, ...], key: tuple[tf.Tensor, tf.Tensor]) -> tuple[tf.Tensor, ...]:
  """The four 32-bit words of one Philox-4x32-10 block (each word a uint64 tensor < 2**32)."""
  c0, c1, c2, c3 = counter
  k0, k1 = key
  xor = tf.bitwise.bitwise_xor
  for _ in range(_ROUNDS):
    p0, p1 = c0 * _u64(_MULTIPLIERS[0]), c2 * _u64(_MULTIPLIERS[1])  # exact: both factors < 2**32
    c0, c1, c2, c3 = xor(xor(_high(p1), c1), k0), _low(p1), xor(xor(_high(p0), c3), k1), _low(p0)
    k0, k1 = _low(k0 + _u64(_KEY_STEPS[0])), _low(k1 + _u64(_KEY_STEPS[1]))
  return c0, c1, c2, c3


def _key_and_counter(seed0: tf.Tensor, seed1: tf.Tensor) -> tuple[tuple[tf.Tensor, ...], tuple[tf.Tensor, ...]]:
  """TF's `StatelessRandomGetKeyCounter` of the int64 seeds (seed0, seed1), as uint64 words."""
  zero = tf.zeros_like(seed0)
  mix = _philox((_low(seed0), _high(seed0), _low(seed1), _high(seed1)),
                (zero + _u64(_SEED_KEY[0]), zero + _u64(_SEED_KEY[1])))
  return (mix[0], mix[1]), (zero, zero, mix[2], mix[3])


def flips(seed: tf.Tensor, positions: tf.Tensor) -> tf.Tensor:
  """Whether each example flips: `stateless_random_flip_left_right`'s draw with the example's flip seed,
  `stateless_split([seed, position], 2)[1]`, for int64 `positions` (any shape) and the int64 scalar `seed`."""
  key, counter = _key_and_counter(tf.bitcast(tf.fill(tf.shape(positions), seed), tf.uint64),
                                  tf.bitcast(positions, tf.uint64))
  # stateless_split draws 2x2 int64 = 8 words, two blocks; the second seed is the second block. The
  # counter's low word is 0 here, so the next block's counter is that word + 1, with no carry.
  words = _philox((counter[0] + _u64(1),) + counter[1:], key)
  join = lambda low, high: tf.bitwise.bitwise_or(low, tf.bitwise.left_shift(high, _u64(32)))  # noqa: E731
  key, counter = _key_and_counter(join(words[0], words[1]), join(words[2], words[3]))
  first = tf.cast(_philox(counter, key)[0], tf.uint32)
  # A uniform float in [0, 1) from 23 random mantissa bits, as TF's Uint32ToFloat.
  mantissa = tf.bitwise.bitwise_or(tf.bitwise.bitwise_and(first, tf.constant(0x7FFFFF, tf.uint32)),
                                   tf.constant(127 << 23, tf.uint32))
  return tf.bitcast(mantissa, tf.float32) - 1.0 < 0.5
