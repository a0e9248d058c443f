"""Training compute in FLOPs, from the analytic Mult-Adds of `cost.py`.

Convention: 2 FLOPs per Mult-Add forward and twice that backward (the activation and the weight gradients), so
6 FLOPs per Mult-Add per training image, depthwise included. Counted: the convolutions and the fully connected
classifier; not: BatchNorm, activations, pooling, the loss, the optimizer update (XLA counts 3-4% more at alpha 1,
up to ~10% at alpha 0.25). The stem's input gradient, never computed, is counted: 0.6-2.2% of the total.
"""

from __future__ import annotations

FLOPS_PER_MULT_ADD = 2
TRAIN_FLOPS_PER_MULT_ADD = 3 * FLOPS_PER_MULT_ADD  # forward + backward (activation and weight gradients)


def train_flops(mult_adds: int, examples: int) -> int:
  """Forward + backward FLOPs of training on `examples` images of a model of `mult_adds` Mult-Adds per image."""
  return TRAIN_FLOPS_PER_MULT_ADD * mult_adds * examples


def examples_seen(steps: int, global_batch: int) -> int:
  """Images trained on in `steps` optimizer steps of `global_batch` images (over all devices and hosts)."""
  return steps * global_batch
