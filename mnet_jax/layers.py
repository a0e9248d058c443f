"""Convolution layers of MobileNet, with backend-specific fast paths.

XLA:CPU's grouped convolution (`feature_group_count = C`) is 8-40x slower than the
same depthwise 3x3 written as nine shifted multiply-adds (measured, see
BENCHMARKS.md), while on GPU/TPU the grouped convolution is the fast path. Both
paths share one parameter layout, (3, 3, 1, C) for depthwise kernels and
(1, 1, C_in, C_out) for pointwise kernels, so checkpoints move between backends.
"""

from __future__ import annotations

import functools
import importlib.util
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


def _phase_geometry(height: int, width: int, kh: int, kw: int, stride: int) -> tuple[int, ...]:
  """(out_h, out_w, rows_h, rows_w, lo_h, lo_w) of `_phases`: output size, phase rows, 'SAME' padding before."""
  out_h, out_w = -(-height // stride), -(-width // stride)
  (lo_h, _), (lo_w, _) = same_padding(height, kh, stride), same_padding(width, kw, stride)
  return out_h, out_w, out_h + (kh - 1) // stride, out_w + (kw - 1) // stride, lo_h, lo_w


def _pad_same(x: jax.Array, kh: int, kw: int, stride: int) -> jax.Array:
  """x 'SAME'-padded and rounded up to whole polyphase rows: the array `_phases` reshapes."""
  _, height, width, _ = x.shape
  _, _, rows_h, rows_w, lo_h, lo_w = _phase_geometry(height, width, kh, kw, stride)
  return jnp.pad(x, ((0, 0), (lo_h, stride * rows_h - height - lo_h), (lo_w, stride * rows_w - width - lo_w), (0, 0)))


def _phases(x: jax.Array, kh: int, kw: int, stride: int) -> tuple[jax.Array, tuple[int, ...]]:
  """'SAME'-pad x and split it into stride x stride polyphase components.

  Returns an array (N, Mh, stride, Mw, stride, C) whose [:, m, a, q, b] is padded pixel
  (m * stride + a, q * stride + b), so tap (i, j) of output (o, p) reads phase
  (i % stride, j % stride) at (o + i // stride, p + j // stride): contiguous slices, no
  strided gathers, and the transpose (the input gradient) is a sum of plain pads.
  """
  n, height, width, c = x.shape
  geometry = _, _, rows_h, rows_w, _, _ = _phase_geometry(height, width, kh, kw, stride)
  return _pad_same(x, kh, kw, stride).reshape(n, rows_h, stride, rows_w, stride, c), geometry


def _windows(phases: jax.Array, kh: int, kw: int, stride: int, out_h: int, out_w: int):
  """Yield (i, j, the input window that tap (i, j) multiplies)."""
  for i in range(kh):
    for j in range(kw):
      yield i, j, phases[:, i // stride:i // stride + out_h, i % stride,
                         j // stride:j // stride + out_w, j % stride, :]


def compiled_kernel_grad_applies(dtype: Any) -> bool:
  """Whether the depthwise kernel gradient runs as `cpu_kernels`' compiled pass: float32 on a
  single CPU device, numba installed. (Data-parallel runs would gather the batch into it.)"""
  return (jnp.dtype(dtype) == jnp.float32 and jax.default_backend() == 'cpu' and jax.device_count() == 1
          and importlib.util.find_spec('numba') is not None)


def _shifted_forward(padded: jax.Array, kernel: jax.Array, stride: int, out_h: int, out_w: int) -> jax.Array:
  n, height, width, c = padded.shape
  kh, kw = kernel.shape[:2]
  phases = padded.reshape(n, height // stride, stride, width // stride, stride, c)
  out = None
  for i, j, window in _windows(phases, kh, kw, stride, out_h, out_w):
    term = window * kernel[i, j, 0]
    out = term if out is None else out + term
  return out


def depthwise_conv_shifted(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
  """Depthwise 'SAME' convolution as a sum of shifted slices times taps (fast on XLA:CPU).

  Autodiff of pad + strided slices gives a slow backward on XLA:CPU, so the gradient is
  written by hand (see `_shifted_backward`).
  """
  return _depthwise_shifted(x, kernel, stride, x.shape[1:3])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _depthwise_shifted(x: jax.Array, kernel: jax.Array, stride: int, size: tuple[int, int]) -> jax.Array:
  return _depthwise_shifted_forward(x, kernel, stride, size)[0]


def _depthwise_shifted_forward(x, kernel, stride, size):
  # The padded input is the one residual: the kernel gradient reads it, so the unpadded
  # activation need not be written to memory as well (one pass less per layer).
  padded = _pad_same(x, *kernel.shape[:2], stride)
  return _shifted_forward(padded, kernel, stride, -(-size[0] // stride), -(-size[1] // stride)), (padded, kernel)


def _kernel_grad_scanned(padded, grad, kh, kw, stride):
  """The kernel gradient, nine reductions over (N, H, W), in XLA one image at a time.

  Done over the whole batch each reduction streams both tensors from memory, while a scan
  over images keeps one image's window and gradient in cache for all nine (measured ~2x
  faster per layer here).
  """
  n, height, width, c = padded.shape
  phases = padded.reshape(n, height // stride, stride, width // stride, stride, c)
  out_h, out_w = grad.shape[1:3]

  def accumulate(total, image_and_grad):
    image, image_grad = image_and_grad[0][None], image_and_grad[1][None]
    taps = [jnp.sum(window * image_grad, axis=(0, 1, 2))
            for _, _, window in _windows(image, kh, kw, stride, out_h, out_w)]
    return total + jnp.stack(taps), None

  total, _ = jax.lax.scan(accumulate, jnp.zeros((kh * kw, c), grad.dtype), (phases, grad))
  return total.reshape(kh, kw, 1, c)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _kernel_grad_compiled(padded, grad, stride):
  """The 3x3 kernel gradient as `cpu_kernels`' single compiled pass, on the padded input."""
  from mnet_jax import cpu_kernels  # imports numba: only where it is used
  return cpu_kernels.depthwise_kernel_grad(padded, grad, stride, 0, 0)


@_kernel_grad_compiled.defjvp
def _kernel_grad_compiled_jvp(stride, primals, tangents):
  # Bilinear in (padded, grad); the tangent goes through XLA's formulation, which JAX can
  # differentiate and transpose further (the compiled call it cannot).
  (padded, grad), (padded_dot, grad_dot) = primals, tangents
  return (_kernel_grad_compiled(padded, grad, stride),
          _kernel_grad_scanned(padded_dot, grad, 3, 3, stride) + _kernel_grad_scanned(padded, grad_dot, 3, 3, stride))


def _shifted_backward(stride, size, residuals, grad):
  """Input gradient per polyphase component; the kernel gradient compiled or scanned."""
  padded, kernel = residuals
  kh, kw = kernel.shape[:2]
  n, c = padded.shape[0], padded.shape[-1]
  height, width = size
  out_h, out_w, rows_h, rows_w, lo_h, lo_w = _phase_geometry(height, width, kh, kw, stride)
  if (kh, kw) == (3, 3) and compiled_kernel_grad_applies(grad.dtype):
    kernel_grad = _kernel_grad_compiled(padded, grad, stride)
  else:
    kernel_grad = _kernel_grad_scanned(padded, grad, kh, kw, stride)
  kernel_grad = kernel_grad.astype(kernel.dtype)

  # Tap (i, j) sent phase (i % s, j % s) at offset (i // s, j // s) to the output, so its
  # gradient is the output gradient shifted back by that offset (a pad) times the tap.
  phase_grads = {}
  for i in range(kh):
    for j in range(kw):
      di, dj = i // stride, j // stride
      term = jnp.pad(grad, ((0, 0), (di, rows_h - out_h - di), (dj, rows_w - out_w - dj), (0, 0))) * kernel[i, j, 0]
      key = (i % stride, j % stride)
      phase_grads[key] = term + phase_grads[key] if key in phase_grads else term
  zeros = jnp.zeros((n, rows_h, rows_w, c), grad.dtype)
  stacked = jnp.stack([jnp.stack([phase_grads.get((a, b), zeros) for b in range(stride)], axis=3)
                       for a in range(stride)], axis=2)
  padded_grad = stacked.reshape(n, rows_h * stride, rows_w * stride, c)
  return padded_grad[:, lo_h:lo_h + height, lo_w:lo_w + width, :], kernel_grad


_depthwise_shifted.defvjp(_depthwise_shifted_forward, _shifted_backward)


def depthwise_conv(x: jax.Array, kernel: jax.Array, stride: int, impl: str = 'auto') -> jax.Array:
  """Depthwise convolution, kernel (kh, kw, 1, C), input NHWC, 'SAME' padding."""
  if resolve_depthwise_impl(impl) == 'grouped':
    return depthwise_conv_grouped(x, kernel, stride)
  return depthwise_conv_shifted(x, kernel, stride)


def conv_im2col(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
  """Dense 'SAME' convolution as one matmul over the stacked shifted windows (im2col).

  XLA:CPU's direct convolution runs the 3-channel stem at a few GFLOP/s; the windows of
  `_phases` concatenated along channels turn it into a (pixels, kh*kw*C_in) x (kh*kw*C_in,
  C_out) matmul. Window (i, j) holds channels [(i*kw + j)*C_in, ...), the HWIO order.
  """
  kh, kw, c_in, c_out = kernel.shape
  phases, (out_h, out_w, *_) = _phases(x, kh, kw, stride)
  patches = jnp.concatenate([window for _, _, window in _windows(phases, kh, kw, stride, out_h, out_w)], axis=-1)
  return pointwise_conv(patches, kernel.reshape(kh * kw * c_in, c_out))


class Conv(nn.Module):
  """Dense 'SAME' convolution without bias; `nn.Conv`'s parameter layout (kh, kw, C_in, C_out).

  With impl 'shifted' (the CPU choice of 'auto') it runs as `conv_im2col`, otherwise as
  XLA's convolution.
  """

  features: int
  kernel_size: int = 3
  stride: int = 1
  impl: str = 'auto'
  dtype: Any = jnp.float32
  kernel_init: Any = nn.initializers.he_normal()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    shape = (self.kernel_size, self.kernel_size, x.shape[-1], self.features)
    kernel = self.param('kernel', self.kernel_init, shape, jnp.float32)
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    if resolve_depthwise_impl(self.impl) == 'shifted':
      return conv_im2col(x, kernel, self.stride)
    return jax.lax.conv_general_dilated(
        x, kernel, (self.stride, self.stride),
        [same_padding(size, self.kernel_size, self.stride) for size in x.shape[1:3]],
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


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


@jax.custom_vjp
def pointwise_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """1x1 convolution of NHWC x with a (C_in, C_out) matrix, as one 2-D matmul.

  Autodiff of the 4-D einsum gives a backward that measured 2-3x slower on XLA:CPU than
  the two plain 2-D matmuls written here (input and kernel gradients).
  """
  return (x.reshape(-1, x.shape[-1]) @ kernel).reshape(*x.shape[:-1], kernel.shape[-1])


def _pointwise_forward(x, kernel):
  return pointwise_conv(x, kernel), (x, kernel)


def _pointwise_backward(residuals, grad):
  x, kernel = residuals
  grad = grad.reshape(-1, kernel.shape[-1])
  return (grad @ kernel.T).reshape(x.shape), x.reshape(-1, x.shape[-1]).T @ grad


pointwise_conv.defvjp(_pointwise_forward, _pointwise_backward)


class PointwiseConv(nn.Module):
  """1x1 convolution without bias, as a plain contraction over channels.

  On XLA:CPU a plain matmul is measurably faster than `nn.Conv` with a 1x1 window
  (forward and backward); on accelerators both lower to the same matmul.
  """

  features: int
  dtype: Any = jnp.float32
  kernel_init: Any = nn.initializers.he_normal()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param('kernel', self.kernel_init, (1, 1, x.shape[-1], self.features), jnp.float32)
    return pointwise_conv(x.astype(self.dtype), kernel[0, 0].astype(self.dtype))

