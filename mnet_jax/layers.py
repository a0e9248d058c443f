"""Convolution layers of MobileNet, with backend-specific fast paths.

XLA:CPU's grouped convolution (`feature_group_count = C`) is 8-40x slower than the
same depthwise 3x3 written as nine shifted multiply-adds (measured, see
BENCHMARKS.md), while on GPU/TPU the grouped convolution is the fast path. Both
paths share one parameter layout, (3, 3, 1, C) for depthwise kernels and
(1, 1, C_in, C_out) for pointwise kernels, so checkpoints move between backends.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

DEPTHWISE_IMPLS = ('auto', 'grouped', 'shifted')


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """TensorFlow's 'SAME' padding (before, after) for one spatial axis."""
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


def resolve_depthwise_impl(impl: str) -> str:
  """'auto' picks the shifted form on CPU and the grouped convolution elsewhere."""
  if impl not in DEPTHWISE_IMPLS:
    raise ValueError(f'unknown depthwise implementation {impl!r}; expected one of {DEPTHWISE_IMPLS}')
  if impl == 'auto':
    return 'shifted' if jax.default_backend() == 'cpu' else 'grouped'
  return impl


def depthwise_conv_grouped(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
  """Depthwise 3x3 'SAME' convolution as XLA's grouped convolution."""
  return jax.lax.conv_general_dilated(
      x, kernel, (stride, stride),
      [same_padding(x.shape[1], kernel.shape[0], stride),
       same_padding(x.shape[2], kernel.shape[1], stride)],
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      feature_group_count=x.shape[-1])


def depthwise_conv_shifted(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
  """Depthwise 'SAME' convolution as a sum of shifted, strided slices times taps."""
  kh, kw = kernel.shape[:2]
  _, height, width, _ = x.shape
  pad_h, pad_w = same_padding(height, kh, stride), same_padding(width, kw, stride)
  padded = jnp.pad(x, ((0, 0), pad_h, pad_w, (0, 0)))
  out_h, out_w = -(-height // stride), -(-width // stride)
  out = None
  for i in range(kh):
    for j in range(kw):
      window = padded[:, i:i + (out_h - 1) * stride + 1:stride,
                      j:j + (out_w - 1) * stride + 1:stride, :]
      term = window * kernel[i, j, 0]
      out = term if out is None else out + term
  return out


def depthwise_conv(x: jax.Array, kernel: jax.Array, stride: int, impl: str = 'auto') -> jax.Array:
  """Depthwise convolution, kernel (kh, kw, 1, C), input NHWC, 'SAME' padding."""
  if resolve_depthwise_impl(impl) == 'grouped':
    return depthwise_conv_grouped(x, kernel, stride)
  return depthwise_conv_shifted(x, kernel, stride)


class DepthwiseConv(nn.Module):
  """3x3 depthwise convolution without bias; the kernel has the grouped-conv layout."""

  stride: int = 1
  impl: str = 'auto'
  dtype: Any = jnp.float32
  kernel_init: Any = nn.initializers.he_normal()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param('kernel', self.kernel_init, (3, 3, 1, x.shape[-1]), jnp.float32)
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    return depthwise_conv(x, kernel, self.stride, self.impl)


class PointwiseConv(nn.Module):
  """1x1 convolution without bias, as a plain contraction over channels.

  On XLA:CPU an einsum is a straight GEMM and measurably faster than `nn.Conv`
  with a 1x1 window; on accelerators both lower to the same matmul.
  """

  features: int
  dtype: Any = jnp.float32
  kernel_init: Any = nn.initializers.he_normal()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param('kernel', self.kernel_init, (1, 1, x.shape[-1], self.features), jnp.float32)
    return jnp.einsum('nhwc,cd->nhwd', x.astype(self.dtype), kernel[0, 0].astype(self.dtype))
