"""MobileNet V1 (Howard et al., 2017) as a Flax Linen module built from the layer table."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mnet_jax import architecture
from mnet_jax.batch_norm import CLIP_MAX, BatchNormAct
from mnet_jax.layers import Conv, DepthwiseConv, PointwiseConv, resolve_depthwise_impl

ACTIVATIONS = tuple(CLIP_MAX)  # each fused into the BatchNorm before it
# Kernel initializers: Flax's He normal, or TF-slim's `mobilenet_v1_arg_scope` (a normal of std 0.09 cut at
# 2 std, every convolution and the logits). Every kernel sits before a BatchNorm, except the logits, so
# the scale sets the effective learning rate: He gives the 3x3 depthwise kernels (fan-in 9) std 0.47.
# Each name maps to (convolution kernels, classifier kernel); 'he_normal' keeps Flax's Dense default there.
KERNEL_INITS = {'he_normal': (nn.initializers.he_normal(), nn.initializers.lecun_normal()),
                'slim': (nn.initializers.truncated_normal(0.09),) * 2}


class MobileNetV1(nn.Module):
  """MobileNet of width multiplier `alpha` and depth multiplier `depth` (`architecture.block_specs`); the
  resolution multiplier is the input size.

  Every convolution is followed by BatchNorm and the activation; a global average
  pool, dropout and the fully connected classifier end the network.
  """

  alpha: float = 1.0
  depth: float = 1.0  # each stage of same-width blocks repeated ceil(depth x its blocks) times
  num_classes: int = 1000
  min_depth: int = 8
  variant: str = 'separable'
  activation: str = 'relu6'
  dropout_rate: float = 0.001
  bn_momentum: float = 0.9997  # TF-slim's "decay": weight of the old running average
  bn_epsilon: float = 1e-3
  dtype: Any = jnp.float32  # compute dtype; parameters stay float32
  depthwise_impl: str = 'auto'  # 'grouped' | 'shifted' | 'auto' (by backend)
  kernel_init: str = 'he_normal'  # a key of KERNEL_INITS

  def check(self) -> None:
    """Raise ValueError naming the first bad field."""
    architecture.check_alpha(self.alpha)
    architecture.check_depth(self.depth)
    architecture.check_variant(self.variant)
    if self.activation not in ACTIVATIONS:
      raise ValueError(f'unknown activation {self.activation!r}; expected one of {", ".join(ACTIVATIONS)}')
    resolve_depthwise_impl(self.depthwise_impl)
    if self.kernel_init not in KERNEL_INITS:
      raise ValueError(f'unknown kernel_init {self.kernel_init!r}; expected one of {", ".join(KERNEL_INITS)}')
    if self.num_classes < 1:
      raise ValueError(f'num_classes must be positive, got {self.num_classes}')

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    self.check()
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f'expected NHWC images with 3 channels, got shape {tuple(images.shape)}')
    if images.shape[1] != images.shape[2]:
      raise ValueError(f'expected square images, got {images.shape[1]}x{images.shape[2]}')
    norm_act = lambda name: BatchNormAct(  # noqa: E731
        use_running_average=not train, activation=self.activation, momentum=self.bn_momentum,
        epsilon=self.bn_epsilon, dtype=self.dtype, name=name)
    x = images.astype(self.dtype)
    init, classifier_init = KERNEL_INITS[self.kernel_init]
    for layer in architecture.layers(
        self.alpha, images.shape[1], self.variant, self.num_classes, self.min_depth, depth=self.depth):
      if layer.kind == 'conv3x3':
        x = Conv(layer.out_channels, 3, layer.stride, self.depthwise_impl, self.dtype, init, name=layer.name)(x)
      elif layer.kind == 'depthwise':
        x = DepthwiseConv(layer.stride, self.depthwise_impl, self.dtype, init, name=layer.name)(x)
      elif layer.kind == 'pointwise':
        x = PointwiseConv(layer.out_channels, self.dtype, init, name=layer.name)(x)
      else:  # the classifier
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        x = nn.Dense(layer.out_channels, dtype=self.dtype, kernel_init=classifier_init, name=layer.name)(x)
        break
      x = norm_act(f'{layer.name}_bn')(x)
    return x.astype(jnp.float32)
