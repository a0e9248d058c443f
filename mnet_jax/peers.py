"""Peer implementations timed by `mnet_jax.benchmark`: Keras MobileNet and a PyTorch model.

Each peer returns the same three callables the JAX side does (a train step, a forward in
eval mode at the batch, a forward at batch 1), so one timing harness measures them all.
A peer whose framework is not installed raises `PeerUnavailable` with a one-line reason.
The PyTorch model is the paper excerpt's `MobileNetV1` (plain ReLU, bias-free
convolutions, BatchNorm), widened by alpha through `architecture.layers`.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable

import numpy as np

from mnet_jax import architecture


class PeerUnavailable(RuntimeError):
  """The peer's framework is missing or cannot run here."""


@dataclasses.dataclass
class Workload:
  """What the harness times: each callable runs one step and blocks until it is done."""

  train_step: Callable[[], None]
  infer_batch: Callable[[], None]
  infer_single: Callable[[], None]
  compile_s: float  # first train-step call plus first eval calls (tracing/compilation)
  device: str
  bytes_moved: dict[str, float | None] = dataclasses.field(default_factory=dict)  # 'train'/'infer': XLA's count


def keras_workload(alpha: float, resolution: int, batch: int, num_classes: int = 1000) -> Workload:
  """Keras `applications.MobileNet(weights=None)` with a `tf.function` SGD train step."""
  try:
    import tensorflow as tf
    from tensorflow import keras
  except ImportError as e:
    raise PeerUnavailable(f'tensorflow/keras not installed ({e})') from None
  model = keras.applications.MobileNet(
      input_shape=(resolution, resolution, 3), alpha=alpha, weights=None, classes=num_classes)
  optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
  loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=False)
  rng = np.random.default_rng(0)
  images = tf.constant(rng.standard_normal((batch, resolution, resolution, 3), np.float32))
  labels = tf.constant(rng.integers(0, num_classes, batch))
  single = images[:1]

  @tf.function
  def train():
    with tf.GradientTape() as tape:
      loss = loss_fn(labels, model(images, training=True))
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
    return loss

  @tf.function
  def infer(x):
    return model(x, training=False)

  start = time.perf_counter()
  train().numpy()
  infer(images).numpy()
  infer(single).numpy()
  compile_s = time.perf_counter() - start
  return Workload(lambda: train().numpy(), lambda: infer(images).numpy(), lambda: infer(single).numpy(),
                  compile_s, 'tensorflow ' + tf.__version__)


def torch_model(alpha: float = 1.0, resolution: int = 224, num_classes: int = 1000):
  """The excerpt's PyTorch MobileNetV1 at width alpha (plain ReLU, as printed there)."""
  import torch
  from torch import nn

  def conv_bn_relu(cin: int, cout: int, stride: int, groups: int = 1, kernel: int = 3) -> list:
    return [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

  class MobileNetV1Torch(nn.Module):
    def __init__(self):
      super().__init__()
      body = []
      for layer in architecture.layers(alpha, resolution, 'separable', num_classes):
        if layer.kind == 'conv3x3':
          body += conv_bn_relu(layer.in_channels, layer.out_channels, layer.stride)
        elif layer.kind == 'depthwise':
          body += conv_bn_relu(layer.in_channels, layer.in_channels, layer.stride, groups=layer.in_channels)
        elif layer.kind == 'pointwise':
          body += conv_bn_relu(layer.in_channels, layer.out_channels, 1, kernel=1)
        else:
          self.fc = nn.Linear(layer.in_channels, layer.out_channels)
      # The excerpt pools with AvgPool2d(7) at 224 px; adaptive pooling is the same there
      # and also holds at other resolutions.
      self.model = nn.Sequential(*body, nn.AdaptiveAvgPool2d(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
      return self.fc(torch.flatten(self.model(x), 1))

  return MobileNetV1Torch()


TORCH_VARIANTS = ('contiguous', 'channels_last', 'channels_last+bf16', 'channels_last+bf16+compile')


def torch_workload(alpha: float, resolution: int, batch: int, variant: str = 'contiguous',
                   num_classes: int = 1000) -> Workload:
  """The excerpt's PyTorch model with an SGD train step, on CUDA when available."""
  try:
    import torch
  except ImportError as e:
    raise PeerUnavailable(f'torch not installed ({e}): pip install -r requirements-peers.txt') from None
  if variant not in TORCH_VARIANTS:
    raise ValueError(f'unknown torch variant {variant!r}')
  device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
  if 'bf16' in variant and device.type != 'cuda':
    raise PeerUnavailable('bf16 autocast is only measured on GPU')
  memory_format = torch.channels_last if 'channels_last' in variant else torch.contiguous_format
  model = torch_model(alpha, resolution, num_classes).to(device, memory_format=memory_format)
  optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
  loss_fn = torch.nn.CrossEntropyLoss()
  gen = torch.Generator().manual_seed(0)
  images = torch.randn(batch, 3, resolution, resolution, generator=gen).to(device, memory_format=memory_format)
  labels = torch.randint(0, num_classes, (batch,), generator=gen).to(device)
  single = images[:1].contiguous(memory_format=memory_format)
  autocast = lambda: torch.autocast(device.type, torch.bfloat16, enabled='bf16' in variant)  # noqa: E731
  forward = torch.compile(model) if 'compile' in variant else model
  # Inference as deployed, as mnet_jax's is: each BatchNorm folded into its convolution (torch.fx's fuse).
  from torch.fx.experimental.optimization import fuse

  folded = fuse(copy.deepcopy(model).eval())
  folded_forward = torch.compile(folded) if 'compile' in variant else folded
  sync = torch.cuda.synchronize if device.type == 'cuda' else (lambda: None)

  def train():
    model.train()
    optimizer.zero_grad(set_to_none=True)
    with autocast():
      loss = loss_fn(forward(images), labels)
    loss.backward()
    optimizer.step()
    sync()

  def infer(x):
    with torch.inference_mode(), autocast():
      folded_forward(x)
    sync()

  start = time.perf_counter()
  train()
  infer(images)
  infer(single)
  compile_s = time.perf_counter() - start
  name = torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'
  return Workload(train, lambda: infer(images), lambda: infer(single), compile_s,
                  f'torch {torch.__version__} {name}')
