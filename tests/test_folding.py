"""BatchNorm folding against the unfolded model (random weights and random BatchNorm statistics) and one folded
layer against a float64 loop over channels and pixels written here."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mnet_jax import folding
from mnet_jax.models import MobileNetV1

# max |folded - unfolded| / max |unfolded| in float32 over the whole network. Measured 1e-6 to 3e-6 (the two
# only round differently: conv(x, w * m) against conv(x, w) * m); a BatchNorm folded wrongly moves it by > 0.1.
TOLERANCE = 2e-5


def randomize(variables, seed: int):
  """He-normal kernels, BatchNorm scale and variance in [0.5, 2], shift and mean ~ N(0, 0.1): every statistic
  away from the 1 and 0 it starts at, as in tests/test_convert.py."""
  rng = np.random.default_rng(seed)

  def value(path, leaf):
    name, shape = path[-1].key, leaf.shape
    if name == 'kernel':
      fan_in = 9 if len(shape) == 4 and shape[2] == 1 else np.prod(shape[:-1])  # depthwise: (3, 3, 1, C)
      return rng.normal(0, np.sqrt(2 / fan_in), shape).astype(np.float32)
    if name in ('scale', 'var'):
      return rng.uniform(0.5, 2.0, shape).astype(np.float32)
    return rng.normal(0, 0.1, shape).astype(np.float32)  # bias, mean

  return jax.tree_util.tree_map_with_path(value, variables)


def random_variables(model: MobileNetV1, seed: int = 0):
  shapes = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
  return randomize(shapes, seed)


@pytest.mark.parametrize('alpha, resolution, impl, pointwise_impl, variant, activation', [
    (0.25, 45, 'shifted', 'matmul', 'separable', 'relu6'),  # the CPU forms, an odd resolution
    (0.5, 48, 'shifted', 'matmul', 'separable', 'relu6'),
    (1.0, 45, 'grouped', 'conv', 'separable', 'relu6'),  # XLA's convolutions, as exported
    (0.75, 48, 'grouped', 'matmul', 'shallow', 'relu'),
    (0.25, 45, 'grouped', 'conv', 'conv', 'relu6'),
])
def test_folded_model_matches_the_unfolded_one(alpha, resolution, impl, pointwise_impl, variant, activation):
  model = MobileNetV1(alpha=alpha, num_classes=10, variant=variant, activation=activation, depthwise_impl=impl)
  variables = random_variables(model)
  images = np.random.default_rng(1).uniform(-1, 1, (2, resolution, resolution, 3)).astype(np.float32)
  expected = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images))
  folded_model = folding.FoldedMobileNetV1.of(model, pointwise_impl=pointwise_impl)
  got = np.asarray(jax.jit(folded_model.apply)({'params': folding.fold(variables, model.bn_epsilon)}, images))
  assert got.shape == expected.shape == (2, 10)
  assert np.max(np.abs(got - expected)) <= TOLERANCE * np.max(np.abs(expected))
  assert np.max(np.abs(expected[0] - expected[1])) > 0.1 * np.max(np.abs(expected))  # the logits depend on x


def same_padding_before(size: int, stride: int, kernel: int = 3) -> int:
  """TensorFlow's documented 'SAME' rule: out = ceil(size / stride), the padding split with the extra on the end."""
  out = -(-size // stride)
  return max((out - 1) * stride + kernel - size, 0) // 2


def reference_layer(x, kernel, scale, shift, mean, var, epsilon, stride, kind):
  """Convolution, inference BatchNorm and ReLU6 of one image, in float64, one output channel and pixel at a time."""
  x = x.astype(np.float64)
  size, channels = x.shape[0], x.shape[-1]
  out_size, k = -(-size // stride), kernel.shape[0]
  before = same_padding_before(size, stride, k)
  out_channels = channels if kind == 'depthwise' else kernel.shape[-1]
  y = np.zeros((out_size, out_size, out_channels))
  for c in range(out_channels):
    for i in range(out_size):
      for j in range(out_size):
        total = 0.0
        for a in range(k):
          for b in range(k):
            row, col = i * stride + a - before, j * stride + b - before
            if 0 <= row < size and 0 <= col < size:  # outside: the zero padding
              if kind == 'depthwise':
                total += x[row, col, c] * kernel[a, b, 0, c]
              else:
                total += float(np.dot(x[row, col, :], kernel[a, b, :, c]))
        normalized = (total - mean[c]) / np.sqrt(var[c] + epsilon) * scale[c] + shift[c]
        y[i, j, c] = min(max(normalized, 0.0), 6.0)
  return y


@pytest.mark.parametrize('kind, stride, size, impl', [
    ('depthwise', 2, 9, 'shifted'), ('depthwise', 2, 9, 'grouped'), ('depthwise', 1, 8, 'shifted'),
    ('conv3x3', 2, 9, 'shifted'), ('conv3x3', 2, 9, 'grouped'), ('pointwise', 1, 7, 'grouped'),
])
def test_one_folded_layer_matches_a_float64_loop(kind, stride, size, impl):
  rng = np.random.default_rng(2)
  in_channels = 3 if kind == 'conv3x3' else 5
  out_channels = in_channels if kind == 'depthwise' else 6
  shape = {'depthwise': (3, 3, 1, in_channels), 'conv3x3': (3, 3, in_channels, out_channels),
           'pointwise': (1, 1, in_channels, out_channels)}[kind]
  kernel = rng.normal(0, 0.5, shape).astype(np.float32)
  scale, var = (rng.uniform(0.5, 2.0, out_channels).astype(np.float32) for _ in range(2))
  shift, mean = (rng.normal(0, 0.3, out_channels).astype(np.float32) for _ in range(2))
  x = rng.uniform(-1, 1, (size, size, in_channels)).astype(np.float32)
  epsilon = 1e-3
  expected = reference_layer(x, kernel, scale, shift, mean, var, epsilon, stride, kind)
  params = folding.fold_layer(kernel, {'scale': scale, 'bias': shift}, {'mean': mean, 'var': var}, epsilon)
  for pointwise_impl in ('matmul', 'conv') if kind == 'pointwise' else ('matmul',):
    layer = folding.FoldedConv(kind, out_channels, stride, impl=impl, pointwise_impl=pointwise_impl)
    got = np.asarray(layer.apply({'params': params}, x[None]))[0]
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
  assert 0.1 < np.mean((expected > 0) & (expected < 6))  # not all clipped: the test sees the affine part


def test_fold_leaves_the_variables_alone_and_runs_under_jit():
  model = MobileNetV1(alpha=0.25, num_classes=10)
  variables = random_variables(model, seed=3)
  before = jax.tree.map(np.copy, variables)
  folded = folding.fold(variables, model.bn_epsilon)
  jax.tree.map(np.testing.assert_array_equal, variables, before)  # checkpoints keep the unfolded variables
  assert not any(name.endswith('_bn') for name in folded)
  assert set(folded) == {name for name in variables['params'] if not name.endswith('_bn')}
  np.testing.assert_array_equal(folded['classifier']['kernel'], variables['params']['classifier']['kernel'])
  assert folded['block3_depthwise']['kernel'].shape == variables['params']['block3_depthwise']['kernel'].shape
  assert folded['block3_depthwise']['bias'].shape == (variables['params']['block3_depthwise']['kernel'].shape[-1],)
  traced = jax.jit(lambda v: folding.fold(v, model.bn_epsilon))(variables)  # e.g. inside an eval step
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), traced, folded)
