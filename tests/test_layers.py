"""Depthwise convolution paths against an independent per-channel reference."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mnet_jax import layers
from mnet_jax.models import MobileNetV1

jax.config.update('jax_default_matmul_precision', 'highest')


def reference_depthwise(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
  """A loop over channels, each a plain single-channel 'SAME' convolution."""
  outputs = []
  for c in range(x.shape[-1]):
    outputs.append(jax.lax.conv_general_dilated(
        x[..., c:c + 1], kernel[:, :, :, c:c + 1], (stride, stride), 'SAME',
        dimension_numbers=('NHWC', 'HWIO', 'NHWC')))
  return jnp.concatenate(outputs, axis=-1)


def numpy_depthwise(x: np.ndarray, kernel: np.ndarray, stride: int) -> np.ndarray:
  """Direct sum with TensorFlow's 'SAME' rule written out: extra padding goes after."""
  n, height, width, channels = x.shape
  out_h, out_w = -(-height // stride), -(-width // stride)
  pad_h = max((out_h - 1) * stride + 3 - height, 0)
  pad_w = max((out_w - 1) * stride + 3 - width, 0)
  padded = np.pad(x, ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)))
  out = np.zeros((n, out_h, out_w, channels), np.float64)
  for o, p, i, j in itertools.product(range(out_h), range(out_w), range(3), range(3)):
    out[:, o, p, :] += padded[:, o * stride + i, p * stride + j, :] * kernel[i, j, 0, :]
  return out


# (height, width, stride): odd and even sizes for both strides.
CASES = [(7, 8, 1), (8, 8, 1), (8, 7, 2), (7, 7, 2)]


def _inputs(height, width, channels=4, seed=0):
  kx, kk, kg = jax.random.split(jax.random.PRNGKey(seed), 3)
  x = jax.random.normal(kx, (2, height, width, channels))
  kernel = jax.random.normal(kk, (3, 3, 1, channels))
  return x, kernel, kg


@pytest.mark.parametrize('impl', ['shifted', 'grouped'])
@pytest.mark.parametrize('height,width,stride', CASES)
def test_depthwise_forward_matches_references(impl, height, width, stride):
  x, kernel, _ = _inputs(height, width)
  got = layers.depthwise_conv(x, kernel, stride, impl)
  np.testing.assert_allclose(got, numpy_depthwise(np.asarray(x, np.float64), np.asarray(kernel), stride),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got, reference_depthwise(x, kernel, stride), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('impl', ['shifted', 'grouped'])
@pytest.mark.parametrize('height,width,stride', CASES)
def test_depthwise_gradients_match_reference(impl, height, width, stride):
  x, kernel, kg = _inputs(height, width)
  out_shape = (2, -(-height // stride), -(-width // stride), x.shape[-1])
  cotangent = jax.random.normal(kg, out_shape)
  loss = lambda f: lambda a, b: jnp.sum(f(a, b) * cotangent)  # noqa: E731
  got = jax.grad(loss(lambda a, b: layers.depthwise_conv(a, b, stride, impl)), argnums=(0, 1))(x, kernel)
  want = jax.grad(loss(lambda a, b: reference_depthwise(a, b, stride)), argnums=(0, 1))(x, kernel)
  np.testing.assert_allclose(got[0], want[0], rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(got[1], want[1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('height,width,stride', CASES[1:3])
def test_shifted_equals_grouped_under_jit_and_second_order(height, width, stride):
  x, kernel, _ = _inputs(height, width, channels=3, seed=1)

  def loss(impl):
    return jax.jit(lambda a, b: jnp.sum(jnp.tanh(layers.depthwise_conv(a, b, stride, impl)) ** 2))

  for argnum in (0, 1):
    np.testing.assert_allclose(jax.grad(loss('shifted'), argnum)(x, kernel),
                               jax.grad(loss('grouped'), argnum)(x, kernel), rtol=1e-4, atol=1e-4)
  # The custom VJP is itself differentiable (e.g. for gradient penalties).
  hvp = lambda impl: jax.jvp(jax.grad(loss(impl)), (x, kernel), (x, kernel))[1]  # noqa: E731
  np.testing.assert_allclose(hvp('shifted'), hvp('grouped'), rtol=1e-3, atol=1e-3)


def test_resolve_depthwise_impl():
  assert layers.resolve_depthwise_impl('grouped') == 'grouped'
  assert layers.resolve_depthwise_impl('auto') == ('shifted' if jax.default_backend() == 'cpu' else 'grouped')
  with pytest.raises(ValueError, match='unknown depthwise'):
    layers.resolve_depthwise_impl('fft')


def test_model_paths_agree_and_share_parameters():
  images = jax.random.normal(jax.random.PRNGKey(2), (2, 40, 40, 3))
  shifted, grouped = (MobileNetV1(alpha=0.25, num_classes=5, depthwise_impl=i) for i in ('shifted', 'grouped'))
  variables = jax.jit(shifted.init)(jax.random.PRNGKey(0), images)
  assert jax.tree.structure(variables) == jax.tree.structure(jax.eval_shape(grouped.init, jax.random.PRNGKey(0),
                                                                            images))
  assert variables['params']['block1_depthwise']['kernel'].shape == (3, 3, 1, 8)
  assert variables['params']['block1_pointwise']['kernel'].shape == (1, 1, 8, 16)

  def loss(model):
    def fn(params):
      logits, updates = model.apply({'params': params, 'batch_stats': variables['batch_stats']}, images,
                                    train=True, mutable=['batch_stats'], rngs={'dropout': jax.random.PRNGKey(3)})
      return jnp.sum(jnp.sin(logits)), (logits, updates['batch_stats'])
    return jax.jit(jax.value_and_grad(fn, has_aux=True))

  (_, (logits_s, stats_s)), grads_s = loss(shifted)(variables['params'])
  (_, (logits_g, stats_g)), grads_g = loss(grouped)(variables['params'])
  # The logits, not their summed sines: that sum (~0.12 of ten terms near 1) cancels, and its relative error
  # says nothing about the paths.
  np.testing.assert_allclose(logits_s, logits_g, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(logits_g))))
  # float32 through train-mode BatchNorm on 2 images: compare to each leaf's scale.
  for a, b in zip(jax.tree.leaves((grads_s, stats_s)), jax.tree.leaves((grads_g, stats_g)), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3 * float(jnp.max(jnp.abs(b))))



def test_pointwise_forward_and_gradients_match_numpy():
  kx, kk, kg = jax.random.split(jax.random.PRNGKey(5), 3)
  x, kernel = jax.random.normal(kx, (2, 3, 5, 4)), jax.random.normal(kk, (4, 6))
  cotangent = jax.random.normal(kg, (2, 3, 5, 6))
  xn, kn, gn = (np.asarray(a, np.float64) for a in (x, kernel, cotangent))
  np.testing.assert_allclose(layers.pointwise_conv(x, kernel), np.einsum('nhwc,cd->nhwd', xn, kn), rtol=1e-5, atol=1e-5)
  grad_x, grad_kernel = jax.grad(lambda a, b: jnp.sum(layers.pointwise_conv(a, b) * cotangent), (0, 1))(x, kernel)
  np.testing.assert_allclose(grad_x, np.einsum('nhwd,cd->nhwc', gn, kn), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(grad_kernel, np.einsum('nhwc,nhwd->cd', xn, gn), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('height,width,stride', CASES)
def test_im2col_convolution_matches_xla_convolution(height, width, stride):
  kx, kk, kg = jax.random.split(jax.random.PRNGKey(6), 3)
  x, kernel = jax.random.normal(kx, (2, height, width, 3)), jax.random.normal(kk, (3, 3, 3, 5))
  cotangent = jax.random.normal(kg, (2, -(-height // stride), -(-width // stride), 5))
  xla = lambda a, b: jax.lax.conv_general_dilated(  # noqa: E731
      a, b, (stride, stride), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  np.testing.assert_allclose(layers.conv_im2col(x, kernel, stride), xla(x, kernel), rtol=1e-5, atol=1e-5)
  loss = lambda f: lambda a, b: jnp.sum(f(a, b) * cotangent)  # noqa: E731
  got = jax.grad(loss(lambda a, b: layers.conv_im2col(a, b, stride)), argnums=(0, 1))(x, kernel)
  want = jax.grad(loss(xla), argnums=(0, 1))(x, kernel)
  for g, w in zip(got, want, strict=True):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)
