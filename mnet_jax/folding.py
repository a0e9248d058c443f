"""Inference-time BatchNorm folding: each BatchNorm goes into the convolution before it.

With running statistics, BatchNorm is a per-channel affine map, y * m + (beta - mean * m) with
m = gamma / sqrt(var + eps), so the convolution's kernel scaled by m per output channel, plus one bias,
computes the same thing; the bias and the activation then run in one pass after the convolution.

`fold(variables, epsilon)` computes the folded weights from a `MobileNetV1`'s variables (params and
batch_stats) whenever it is called: checkpoints keep the unfolded variables. It is traceable, so it can run
inside `jax.jit` too. `FoldedMobileNetV1` walks the same layer table as `MobileNetV1` and takes the same
images to the same logits as `MobileNetV1.apply(variables, images, train=False)`:

    folded = folding.fold(variables, model.bn_epsilon)
    logits = folding.FoldedMobileNetV1.of(model).apply({'params': folded}, images)

Folded parameters keep the unfolded kernels' layouts ((3, 3, C_in, C_out), (3, 3, 1, C) depthwise,
(1, 1, C_in, C_out) pointwise) and add a `bias` of C_out; the classifier is passed through unchanged. The
convolutions are `layers.py`'s, chosen by `depthwise_impl` as in `MobileNetV1`: on CPU the shifted depthwise
and the im2col stem, many times faster on XLA:CPU than its grouped convolution (DESIGN.md), and XLA's own
convolutions on accelerators (and for export, where a converter should see plain convolutions).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mnet_jax import architecture
from mnet_jax.batch_norm import CLIP_MAX
from mnet_jax.layers import (
  conv_im2col,
  depthwise_conv,
  pointwise_conv,
  resolve_depthwise_impl,
  same_padding,
)

BN_SUFFIX = '_bn'  # `MobileNetV1` names the BatchNorm after a layer `<layer>_bn`
POINTWISE_IMPLS = ('matmul', 'conv')


def fold_layer(kernel: jax.Array, batch_norm: dict[str, Any], batch_stats: dict[str, Any],
               epsilon: float) -> dict[str, jax.Array]:
  """{'kernel', 'bias'} of one convolution followed by inference BatchNorm (params `scale`/`bias`, statistics
  `mean`/`var`). The kernel's last axis is its output channel in every layout, the depthwise one included."""
  dtype = jnp.promote_types(jnp.result_type(kernel), jnp.float32)
  scale, shift = jnp.asarray(batch_norm['scale'], dtype), jnp.asarray(batch_norm['bias'], dtype)
  mean, var = jnp.asarray(batch_stats['mean'], dtype), jnp.asarray(batch_stats['var'], dtype)
  multiplier = scale * jax.lax.rsqrt(var + epsilon)
  return {'kernel': jnp.asarray(kernel, dtype) * multiplier, 'bias': shift - mean * multiplier}


def fold(variables: dict[str, Any], epsilon: float = 1e-3) -> dict[str, Any]:
  """The folded parameters of a `MobileNetV1`'s {'params', 'batch_stats'}: every layer with a `<layer>_bn`
  gets a scaled kernel and a bias; layers without one (the classifier) are copied."""
  params, stats = variables['params'], variables['batch_stats']
  folded = {}
  for name, layer in params.items():
    if name.endswith(BN_SUFFIX):
      continue
    bn_name = name + BN_SUFFIX
    if bn_name in params:
      folded[name] = fold_layer(layer['kernel'], params[bn_name], stats[bn_name], epsilon)
    else:
      folded[name] = dict(layer)
  return folded


class FoldedConv(nn.Module):
  """One folded layer: a convolution of kind 'conv3x3' | 'depthwise' | 'pointwise' ('SAME' padding, NHWC),
  its bias and the activation, clip(., 0, CLIP_MAX[activation])."""

  kind: str
  features: int
  stride: int = 1
  activation: str = 'relu6'
  impl: str = 'auto'
  dtype: Any = jnp.float32
  pointwise_impl: str = 'matmul'  # or 'conv': see `FoldedMobileNetV1`

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    shape = {'conv3x3': (3, 3, channels, self.features), 'depthwise': (3, 3, 1, channels),
             'pointwise': (1, 1, channels, self.features)}[self.kind]
    kernel = self.param('kernel', nn.initializers.zeros, shape, jnp.float32).astype(self.dtype)
    bias = self.param('bias', nn.initializers.zeros, shape[-1:], jnp.float32).astype(self.dtype)
    x = x.astype(self.dtype)
    shifted = resolve_depthwise_impl(self.impl) == 'shifted'
    if self.kind == 'depthwise':
      y = depthwise_conv(x, kernel, self.stride, self.impl)
    elif self.kind == 'pointwise' and self.pointwise_impl == 'matmul':
      y = pointwise_conv(x, kernel[0, 0])
    elif self.kind == 'conv3x3' and shifted:
      y = conv_im2col(x, kernel, self.stride)
    else:  # XLA's convolution: the 3x3 stem off CPU, or a 1x1 pointwise
      size = kernel.shape[0]
      y = jax.lax.conv_general_dilated(
          x, kernel, (self.stride, self.stride), [same_padding(n, size, self.stride) for n in x.shape[1:3]],
          dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    return jnp.clip(y + bias, 0.0, CLIP_MAX[self.activation])


class FoldedMobileNetV1(nn.Module):
  """`MobileNetV1` at inference with its BatchNorms folded (`fold`): conv + bias + activation per layer, global
  average pool, classifier. The fields are `MobileNetV1`'s that shape the network; `of(model)` copies them."""

  alpha: float = 1.0
  depth: float = 1.0
  num_classes: int = 1000
  min_depth: int = 8
  variant: str = 'separable'
  activation: str = 'relu6'
  dtype: Any = jnp.float32
  depthwise_impl: str = 'auto'
  # 'matmul' (layers.py's, fast on XLA:CPU) or 'conv', a 1x1 convolution: what TFLite's converter turns into
  # CONV_2D, where its matmul path fails on 1x1 feature maps (32 px: "tfl.batch_matmul ... invalid output rank").
  pointwise_impl: str = 'matmul'

  @classmethod
  def of(cls, model: nn.Module, **overrides: Any) -> FoldedMobileNetV1:
    """The folded counterpart of a `MobileNetV1` (its epsilon goes to `fold`), e.g. with another impl."""
    fields = {name: getattr(model, name) for name in
              ('alpha', 'depth', 'num_classes', 'min_depth', 'variant', 'activation', 'dtype', 'depthwise_impl')}
    return cls(**{**fields, **overrides})

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    if images.ndim != 4 or images.shape[-1] != 3 or images.shape[1] != images.shape[2]:
      raise ValueError(f'expected square NHWC images with 3 channels, got shape {tuple(images.shape)}')
    if self.activation not in CLIP_MAX:
      raise ValueError(f'unknown activation {self.activation!r}; expected one of {", ".join(CLIP_MAX)}')
    if self.pointwise_impl not in POINTWISE_IMPLS:
      raise ValueError(f'unknown pointwise_impl {self.pointwise_impl!r}; expected one of {", ".join(POINTWISE_IMPLS)}')
    x = images.astype(self.dtype)
    for layer in architecture.layers(self.alpha, images.shape[1], self.variant, self.num_classes, self.min_depth,
                                     depth=self.depth):
      if layer.kind == 'fc':
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dense(layer.out_channels, dtype=self.dtype, name=layer.name)(x)
        break
      x = FoldedConv(layer.kind, layer.out_channels, layer.stride, self.activation, self.depthwise_impl,
                     self.dtype, self.pointwise_impl, name=layer.name)(x)
    return x.astype(jnp.float32)
