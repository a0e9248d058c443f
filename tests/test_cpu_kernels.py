"""The compiled depthwise kernel gradient against a float64 loop over taps, and its use in the layer."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mnet_jax import cpu_kernels, layers


def same_padding_before(size: int, stride: int, kernel: int = 3) -> int:
  """TensorFlow's 'SAME' rule, written out here rather than taken from the code under test: the output has
  ceil(size / stride) pixels, the padding that needs is split with the smaller half before."""
  out = -(-size // stride)
  return max((out - 1) * stride + kernel - size, 0) // 2


def numpy_kernel_grad(x: np.ndarray, grad: np.ndarray, stride: int) -> np.ndarray:
  """sum over images and output pixels of the tap's input pixel times the output gradient, in float64."""
  _, height, width, channels = x.shape
  top, left = same_padding_before(height, stride), same_padding_before(width, stride)
  out = np.zeros((3, 3, 1, channels))
  for i, j, o, p in itertools.product(range(3), range(3), range(grad.shape[1]), range(grad.shape[2])):
    row, col = o * stride + i - top, p * stride + j - left
    if 0 <= row < height and 0 <= col < width:
      out[i, j, 0] += np.sum(x[:, row, col, :].astype(np.float64) * grad[:, o, p, :], axis=0)
  return out


# (batch, height, width, channels, stride): odd/even sizes, both strides, a single pixel.
CASES = [(2, 7, 8, 4, 1), (3, 8, 8, 16, 1), (2, 8, 7, 4, 2), (3, 7, 7, 8, 2), (1, 1, 1, 4, 1)]


@pytest.mark.parametrize('batch,height,width,channels,stride', CASES)
def test_kernel_grad_matches_float64_loop(batch, height, width, channels, stride):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((batch, height, width, channels), np.float32)
  grad = rng.standard_normal((batch, -(-height // stride), -(-width // stride), channels), np.float32)
  top, left = same_padding_before(height, stride), same_padding_before(width, stride)
  got = jax.jit(cpu_kernels.depthwise_kernel_grad, static_argnums=(2, 3, 4))(x, grad, stride, top, left)
  np.testing.assert_allclose(got, numpy_kernel_grad(x, grad, stride), rtol=1e-5, atol=1e-5)


def test_kernel_grad_under_vmap_gives_each_group_its_own_gradient():
  # Seeds trained together vmap the call: the handler sees stacked operands and must not mix the seeds.
  rng = np.random.default_rng(2)
  x = rng.standard_normal((3, 2, 9, 8, 4), np.float32)
  grad = rng.standard_normal((3, 2, 5, 4, 4), np.float32)
  top, left = same_padding_before(9, 2), same_padding_before(8, 2)
  got = jax.jit(jax.vmap(lambda a, b: cpu_kernels.depthwise_kernel_grad(a, b, 2, top, left)))(x, grad)
  assert got.shape == (3, 3, 3, 1, 4)
  for seed in range(3):
    np.testing.assert_allclose(got[seed], numpy_kernel_grad(x[seed], grad[seed], 2), rtol=1e-5, atol=1e-5)


def test_kernel_grad_rejects_other_dtypes():
  x = jnp.zeros((1, 4, 4, 2), jnp.bfloat16)
  with pytest.raises(ValueError, match='float32'):
    cpu_kernels.depthwise_kernel_grad(x, x, 1, 1, 1)


@pytest.mark.parametrize('compiled', [True, False])
def test_layer_gradient_is_the_same_with_and_without_the_compiled_kernel(compiled, monkeypatch):
  """The shifted layer's kernel gradient, through the compiled pass or XLA's scan (used by data-parallel
  runs), against the float64 loop; the compiled pass must really be in the program when it applies."""
  monkeypatch.setattr(layers, 'compiled_kernel_grad_applies', lambda dtype: compiled)
  rng = np.random.default_rng(1)
  x = rng.standard_normal((3, 8, 9, 8), np.float32)  # even height: 'SAME' pads 0 before, 1 after
  kernel = rng.standard_normal((3, 3, 1, 8), np.float32)
  grad = rng.standard_normal((3, 4, 5, 8), np.float32)
  kernel_grad = lambda k: jax.vjp(lambda k: layers.depthwise_conv_shifted(x, k, 2), k)[1](grad)[0]  # noqa: E731
  assert (cpu_kernels.TARGET in jax.jit(kernel_grad).lower(kernel).as_text()) == compiled
  np.testing.assert_allclose(jax.jit(kernel_grad)(kernel), numpy_kernel_grad(x, grad, 2), rtol=1e-5, atol=1e-5)


def test_compiled_kernel_applies_to_float32_on_one_cpu_device():
  assert layers.compiled_kernel_grad_applies(jnp.float32) == (
      jax.default_backend() == 'cpu' and jax.device_count() == 1)
  assert not layers.compiled_kernel_grad_applies(jnp.bfloat16)
