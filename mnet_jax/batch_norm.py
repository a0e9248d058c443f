"""BatchNorm followed by ReLU6 (or ReLU) as one layer with a hand-written gradient.

Training-mode BatchNorm is memory-bound: on a 2-core CPU the passes over the
activations cost more than the 1x1 convolutions they follow. Autodiff of
`nn.BatchNorm` + `relu6` stores the centred activations and makes extra passes in the
backward; here the forward reads the convolution output twice (statistics, then
normalise + clip) and the backward twice (two per-channel sums, then the input
gradient), recomputing the normalised value instead of storing it. Parameters and
statistics have `nn.BatchNorm`'s names, initialisation and update rule, so checkpoints
and weight-decay rules are unchanged.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

CLIP_MAX = {'relu6': 6.0, 'relu': float('inf')}


def _stats_dtype(y: jax.Array) -> Any:
  """float32 for float32 and narrower inputs (bfloat16 statistics lose too much), else y's."""
  return jnp.promote_types(y.dtype, jnp.float32)


def batch_statistics(y: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-channel mean and biased variance over all axes but the last, in at least float32.

  The variance is E[y^2] - E[y]^2 (one pass over y), as `nn.BatchNorm`'s default.
  """
  axes = tuple(range(y.ndim - 1))
  y = y.astype(_stats_dtype(y))
  mean = jnp.mean(y, axes)
  return mean, jnp.maximum(jnp.mean(jnp.square(y), axes) - jnp.square(mean), 0.0)


def _normalize_and_clip(y, mean, var, scale, bias, epsilon, clip_max):
  """Returns clip(scale * (y - mean) / sqrt(var + eps) + bias, 0, clip_max) and its pre-clip value."""
  multiplier = scale * jax.lax.rsqrt(var + epsilon)
  pre = y.astype(_stats_dtype(y)) * multiplier + (bias - mean * multiplier)
  return jnp.clip(pre, 0.0, clip_max).astype(y.dtype), pre


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def batch_norm_act_train(y: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float,
                         clip_max: float) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Training-mode BatchNorm then clip(., 0, clip_max); returns (output, batch mean, batch variance)."""
  return _train_forward(y, scale, bias, epsilon, clip_max)[0]


def _train_forward(y, scale, bias, epsilon, clip_max):
  mean, var = batch_statistics(y)
  out, _ = _normalize_and_clip(y, mean, var, scale, bias, epsilon, clip_max)
  return (out, mean, var), (y, scale, bias, mean, var)


def _train_backward(epsilon, clip_max, residuals, cotangents):
  """Gradient of the batch-normalised, clipped output, written in two passes over y.

  With x = (y - mean) * r, r = rsqrt(var + eps), g = dout where 0 < pre < clip_max:
  dbias = sum(g), dscale = sum(g * x), and
  dy = scale * r * (g - dbias / m - x * dscale / m) + dmean / m + dvar * 2 (y - mean) / m.
  """
  y, scale, bias, mean, var = residuals
  dout, dmean, dvar = cotangents
  count = y.size // y.shape[-1]
  axes = tuple(range(y.ndim - 1))
  rstd = jax.lax.rsqrt(var + epsilon)
  _, pre = _normalize_and_clip(y, mean, var, scale, bias, epsilon, clip_max)
  g = jnp.where((pre > 0.0) & (pre < clip_max), dout.astype(pre.dtype), 0.0)
  centred = y.astype(pre.dtype) - mean
  dbias = jnp.sum(g, axes)
  dscale = jnp.sum(g * centred, axes) * rstd
  dy = (scale * rstd) * (g - dbias / count - centred * (rstd * dscale / count))
  dy = dy + dmean / count + centred * (2.0 * dvar / count)
  return dy.astype(y.dtype), dscale, dbias


batch_norm_act_train.defvjp(_train_forward, _train_backward)


class BatchNormAct(nn.Module):
  """`nn.BatchNorm` (same variables and running-average rule) fused with ReLU6 or ReLU."""

  use_running_average: bool
  activation: str = 'relu6'
  momentum: float = 0.99
  epsilon: float = 1e-3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, y: jax.Array) -> jax.Array:
    channels = y.shape[-1]
    running_mean = self.variable('batch_stats', 'mean', lambda: jnp.zeros((channels,), jnp.float32))
    running_var = self.variable('batch_stats', 'var', lambda: jnp.ones((channels,), jnp.float32))
    scale = self.param('scale', nn.initializers.ones, (channels,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (channels,), jnp.float32)
    y = y.astype(self.dtype)
    clip_max = CLIP_MAX[self.activation]
    if self.use_running_average:
      return _normalize_and_clip(y, running_mean.value, running_var.value, scale, bias, self.epsilon, clip_max)[0]
    out, mean, var = batch_norm_act_train(y, scale, bias, self.epsilon, clip_max)
    if not self.is_initializing():
      running_mean.value = self.momentum * running_mean.value + (1.0 - self.momentum) * mean
      running_var.value = self.momentum * running_var.value + (1.0 - self.momentum) * var
    return out
