"""The Flax MobileNetV1 against the cost model, XLA's own op count, and a float32 run.

Everything that compiles uses a small width and resolution and is compiled once per shape
(module-scoped fixtures); parameter counts come from `jax.eval_shape`, which traces only.
"""

from __future__ import annotations

import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mnet_jax import architecture, cost
from mnet_jax.models import MobileNetV1


def abstract_variables(model: MobileNetV1, resolution: int):
  images = jax.ShapeDtypeStruct((1, resolution, resolution, 3), jnp.float32)
  return jax.eval_shape(model.init, jax.random.key(0), images)


def random_variables(model: MobileNetV1, resolution: int = 32, seed: int = 0):
  """Variables of the right shapes, He-scaled kernels, BN at its initial statistics.

  Built from the abstract tree rather than by `model.init`: compiling the init takes
  15-20 s on this machine (the apply, 1-2 s), and these tests do not need its values.
  """
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name == 'kernel':
      fan_in = int(np.prod(leaf.shape[:-1]))
      return jnp.asarray(rng.normal(0, np.sqrt(2 / fan_in), leaf.shape), leaf.dtype)
    return jnp.ones(leaf.shape, leaf.dtype) if name in ('scale', 'var') else jnp.zeros(leaf.shape, leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, abstract_variables(model, resolution))


def weight_count(params) -> int:
  """Kernels and biases; BatchNorm modules (the ones holding a 'scale') left out."""
  flat = flax.traverse_util.flatten_dict(params)
  norms = {path[:-1] for path in flat if path[-1] == 'scale'}
  return sum(int(np.prod(leaf.shape)) for path, leaf in flat.items() if path[:-1] not in norms)


# --- Parameters --------------------------------------------------------------------------------

@pytest.mark.parametrize('alpha, resolution, variant, num_classes', [
    (1.0, 224, 'separable', 1000),
    (0.75, 192, 'separable', 1000),
    (0.35, 97, 'separable', 10),
    (0.25, 128, 'conv', 1001),
    (0.5, 160, 'shallow', 5),
])
def test_parameter_count_equals_cost_model(alpha, resolution, variant, num_classes):
  model = MobileNetV1(alpha=alpha, num_classes=num_classes, variant=variant)
  params = abstract_variables(model, resolution)['params']
  assert weight_count(params) == cost.model_cost(alpha, resolution, variant, num_classes).params


def test_parameter_count_of_the_paper_model():
  # Table 6: 4.2 M; 4,209,088 weights (Table 1's filter shapes) + 1000 classifier biases.
  params = abstract_variables(MobileNetV1(), 224)['params']
  assert weight_count(params) == 4_210_088


@pytest.mark.parametrize('variant, depthwise_kernels', [('separable', 13), ('shallow', 8), ('conv', 0)])
def test_kernel_layouts(variant, depthwise_kernels):
  """Depthwise kernels have the grouped-convolution layout (3, 3, 1, C), all in float32."""
  params = abstract_variables(MobileNetV1(alpha=0.5, variant=variant), 64)['params']
  kernels = [leaf for path, leaf in flax.traverse_util.flatten_dict(params).items() if path[-1] == 'kernel']
  assert all(k.dtype == jnp.float32 for k in kernels)
  assert sum(k.shape[:3] == (3, 3, 1) for k in kernels) == depthwise_kernels


@pytest.mark.parametrize('variant, convolutions', [('separable', 27), ('shallow', 17), ('conv', 14)])
def test_every_convolution_has_its_batchnorm(variant, convolutions):
  """Section 3.2: every layer but the final fully connected one is followed by BatchNorm."""
  variables = abstract_variables(MobileNetV1(alpha=0.5, variant=variant), 64)
  flat = flax.traverse_util.flatten_dict(variables['params'])
  norms = sorted(leaf.shape[0] for path, leaf in flat.items() if path[-1] == 'scale')
  kernels = [leaf for path, leaf in flat.items() if path[-1] == 'kernel']
  conv_outputs = sorted(k.shape[-1] for k in kernels if k.ndim == 4)
  assert len(conv_outputs) == convolutions and len(kernels) == convolutions + 1  # and the classifier
  assert norms == conv_outputs
  stats = flax.traverse_util.flatten_dict(variables['batch_stats'])
  assert sorted(leaf.shape[0] for path, leaf in stats.items() if path[-1] == 'mean') == norms


# --- XLA's operation count ---------------------------------------------------------------------

def xla_flops(alpha: float, resolution: int, variant: str) -> float:
  """Flops XLA:CPU counts in the compiled eval-mode forward pass of one image (compiled, not run).

  Compiled for the CPU whatever the default backend: on GPU the convolutions become cuDNN
  custom calls that the cost analysis does not count (measured on an H100: 0.77 M flops
  for a model of 38 M).
  """
  model = MobileNetV1(alpha=alpha, variant=variant, depthwise_impl='grouped')
  on_cpu = jax.sharding.SingleDeviceSharding(jax.devices('cpu')[0])
  images = jax.ShapeDtypeStruct((1, resolution, resolution, 3), jnp.float32, sharding=on_cpu)
  variables = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=on_cpu),
                           abstract_variables(model, resolution))
  compiled = jax.jit(functools.partial(model.apply, train=False)).lower(variables, images).compile()
  analysis = compiled.cost_analysis()
  if isinstance(analysis, list | tuple):  # older JAX returned one dict per computation
    analysis = analysis[0]
  return analysis['flops']


def test_xla_flops_agree_with_mult_adds():
  """1.0 MobileNet-224: XLA's count is 2 x Mult-Adds plus the BN/activation flops.

  Measured ratio 1.016: XLA skips the taps of a 3x3 window that fall in the 'SAME'
  padding (-0.16% here) and adds about 4 flops per activation element for BatchNorm's
  scale and shift and ReLU6's two clamps (+1.8%); see the next test for both terms.
  """
  ratio = xla_flops(1.0, 224, 'separable') / (2 * cost.model_cost(1.0, 224).mult_adds)
  assert 1.0 < ratio < 1.03


def valid_taps(size: int, stride: int, kernel: int = 3) -> int:
  """Kernel taps, summed over output positions, that land inside a 'SAME'-padded axis."""
  out = -(-size // stride)
  before = max((out - 1) * stride + kernel - size, 0) // 2  # TF puts the odd pixel after
  return sum(0 <= o * stride - before + i < size for o in range(out) for i in range(kernel))


@pytest.mark.parametrize('alpha, resolution, variant', [
    (0.5, 33, 'separable'), (0.25, 64, 'conv'), (0.25, 97, 'shallow'),
])
def test_xla_flops_count_every_real_multiply_add(alpha, resolution, variant):
  """Small maps, where padding matters: the Conv variant at 64 px is only 0.76 x 2 x Mult-Adds.

  Each multiply-add that touches a real pixel is 2 flops to XLA; BatchNorm and ReLU6 add
  4 per activation element (measured 4.0-4.2 with pooling and the classifier bias).
  """
  layers = architecture.layers(alpha, resolution, variant)
  real_mult_adds = activations = 0
  for layer in layers:
    if layer.kind in ('pointwise', 'fc'):
      real_mult_adds += layer.in_channels * layer.out_channels * layer.out_size**2
    else:
      per_channel = valid_taps(layer.in_size, layer.stride) ** 2
      real_mult_adds += per_channel * layer.in_channels * (layer.out_channels if layer.kind == 'conv3x3' else 1)
    if layer.kind != 'fc':
      activations += layer.out_channels * layer.out_size**2
  flops = xla_flops(alpha, resolution, variant)
  assert 2 * real_mult_adds + 3 * activations < flops < 2 * real_mult_adds + 6 * activations


def test_valid_taps():
  # 7 px, stride 1: the two edge outputs lose one tap each: 7 x 3 - 2.
  assert valid_taps(7, 1) == 19
  # 4 px, stride 2 -> outputs 0, 1 read pixels (0, 1, 2) and (2, 3, pad): 5.
  assert valid_taps(4, 2) == 5


# --- Forward pass ------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def small_model():
  """alpha 0.25 with 7 classes; its parameters do not depend on the resolution."""
  model = MobileNetV1(alpha=0.25, num_classes=7)
  return model, random_variables(model)


@pytest.fixture(scope='module')
def images():
  return lambda n, size: jax.random.uniform(jax.random.key(size), (n, size, size, 3), minval=-1, maxval=1)


# 'SAME' padding halves each map rounding up: 33 -> 17 -> 9 -> 5 -> 3 -> 2.
@pytest.mark.parametrize('resolution, sizes', [
    (32, {16, 8, 4, 2, 1}),
    (33, {17, 9, 5, 3, 2}),
    (97, {49, 25, 13, 7, 4}),
])
def test_output_shape_at_any_resolution(small_model, images, resolution, sizes):
  model, variables = small_model
  logits, state = jax.jit(functools.partial(model.apply, train=False, capture_intermediates=True,
                                            mutable=['intermediates']))(variables, images(2, resolution))
  assert logits.shape == (2, 7) and logits.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(logits)))
  maps = [x.shape for x in jax.tree.leaves(state['intermediates']) if x.ndim == 4]
  assert {shape[1] for shape in maps} == sizes
  assert all(shape[1] == shape[2] for shape in maps)


@pytest.mark.parametrize('variant', ['conv', 'shallow'])
def test_variants_run(images, variant):
  model = MobileNetV1(alpha=0.25, num_classes=3, variant=variant)
  logits = jax.jit(functools.partial(model.apply, train=False))(random_variables(model, seed=1), images(1, 33))
  assert logits.shape == (1, 3) and bool(jnp.all(jnp.isfinite(logits)))


def test_bfloat16_compute_with_float32_params(small_model, images):
  # The grouped depthwise: XLA:CPU takes 3x longer to compile the shifted form in bf16.
  model, variables = small_model
  model = model.clone(depthwise_impl='grouped')
  bf16 = model.clone(dtype=jnp.bfloat16)
  x = images(2, 48)
  # Initialising in bf16 still makes float32 parameters and statistics.
  assert {leaf.dtype for leaf in jax.tree.leaves(abstract_variables(bf16, 48))} == {jnp.dtype('float32')}
  logits, state = jax.jit(functools.partial(bf16.apply, train=False, capture_intermediates=True,
                                            mutable=['intermediates']))(variables, x)
  assert logits.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(logits)))
  # The arithmetic really ran in bf16: the classifier's own output is bf16.
  assert state['intermediates']['classifier']['__call__'][0].dtype == jnp.bfloat16
  # ... and agrees with the float32 model on the same parameters to bf16 precision.
  reference = jax.jit(functools.partial(model.apply, train=False))(variables, x)
  np.testing.assert_allclose(logits, reference, atol=0.05 * float(jnp.max(jnp.abs(reference))))


def test_bfloat16_training_step_keeps_float32_statistics(small_model, images):
  model, variables = small_model
  bf16 = model.clone(dtype=jnp.bfloat16, depthwise_impl='grouped')
  logits, updates = jax.jit(functools.partial(bf16.apply, train=True, mutable=['batch_stats']))(
      variables, images(4, 32), rngs={'dropout': jax.random.key(2)})
  assert bool(jnp.all(jnp.isfinite(logits)))
  stats = jax.tree.leaves(updates['batch_stats'])
  assert stats and all(s.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(s))) for s in stats)


def test_slim_initializer_is_tf_slims_truncated_normal():
  # tf.truncated_normal_initializer(stddev=0.09): a N(0, 0.09) cut at 2 std (std 0.09 * 0.8796), on every
  # kernel including the classifier's; He normal gives the 3x3 depthwise kernels (fan-in 9) std sqrt(2/9).
  def init(model):
    return jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))['params']

  slim, he = init(MobileNetV1(alpha=1.0, kernel_init='slim')), init(MobileNetV1(alpha=1.0))
  for name in ('stem', 'block13_depthwise', 'block13_pointwise', 'classifier'):
    kernel = np.asarray(slim[name]['kernel'])
    assert abs(kernel.std() / (0.09 * 0.8796) - 1) < 0.1 and np.abs(kernel).max() <= 0.18
  assert abs(np.asarray(he['block13_depthwise']['kernel']).std() / np.sqrt(2 / 9) - 1) < 0.1


# --- Bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize('fields, match', [
    ({'alpha': 0.0}, 'alpha'),
    ({'alpha': -0.25}, 'alpha'),
    ({'alpha': float('nan')}, 'alpha'),
    ({'alpha': 1000.0}, 'alpha'),
    ({'variant': 'dense'}, 'variant'),
    ({'activation': 'gelu'}, 'activation'),
    ({'depthwise_impl': 'fft'}, 'depthwise'),
    ({'num_classes': 0}, 'num_classes'),
    ({'kernel_init': 'xavier'}, 'kernel_init'),
])
def test_bad_fields(fields, match):
  with pytest.raises(ValueError, match=match):
    abstract_variables(MobileNetV1(**fields), 64)


@pytest.mark.parametrize('shape, match', [
    ((1, 3, 64, 64), 'NHWC'),  # NCHW
    ((64, 64, 3), 'NHWC'),  # no batch axis
    ((1, 64, 64, 1), '3 channels'),
    ((1, 64, 64, 4), '3 channels'),
    ((1, 31, 31, 3), 'resolution.*at least 32'),
    ((1, 64, 48, 3), 'square'),
])
def test_bad_images(shape, match):
  model = MobileNetV1(alpha=0.25)
  with pytest.raises(ValueError, match=match):
    jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct(shape, jnp.float32))
