"""Training compute (`compute.py`) by hand and against XLA's own FLOP count of the train step.

XLA's count is `cost_analysis()` of the step as JAX lowers it, before XLA's backend passes: XLA:CPU rewrites the
depthwise kernel gradient (a convolution with batch_group_count = C) into a dense convolution C times larger, so the
compiled CPU program counts 2.4-3.3x the model's FLOPs, an artifact of that backend. The lowered program's
convolutions and dots, over whole windows, are exactly (6 Mult-Adds - 2 stem Mult-Adds) x batch (no gradient w.r.t.
the images); its other FLOPs (BatchNorm, ReLU6, the loss, the optimizer) are 3-4% at these widths and up to 15% at
alpha 0.25 with batch 8, hence the sizes below.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import pytest

from experiments import default
from mnet_jax import compute, cost, optim, train

BATCH = 8
NUM_CLASSES = 10
SIZES = [(1.0, 224), (0.75, 128)]  # (alpha, resolution)


def test_train_flops_by_hand():
  assert compute.train_flops(mult_adds=1, examples=1) == 6
  assert compute.train_flops(mult_adds=5, examples=1) == 30
  assert compute.train_flops(mult_adds=1, examples=7) == 42
  assert compute.train_flops(mult_adds=568_000_000, examples=1_281_167) == 6 * 568_000_000 * 1_281_167
  assert compute.train_flops(mult_adds=10, examples=0) == 0


def test_examples_seen():
  assert compute.examples_seen(steps=0, global_batch=256) == 0
  assert compute.examples_seen(steps=1000, global_batch=256) == 256_000


def lowered_flops(alpha: float, resolution: int, train_step: bool) -> float:
  """XLA's FLOPs of one train step (or one forward pass) of BATCH images, from abstract shapes: nothing runs or
  compiles."""
  config = default.get_config()
  config.model.alpha, config.model.resolution, config.model.depthwise_impl = alpha, resolution, 'grouped'
  model = train.create_model(config.model, NUM_CLASSES)
  schedule = optim.learning_rate_schedule(config.optim, BATCH, steps_per_epoch=100, total_steps=1000)
  tx = optim.create_optimizer(config.optim, schedule)
  state = jax.eval_shape(lambda: train.init_state(model, tx, 0, use_ema=False))
  images = jax.ShapeDtypeStruct((BATCH, resolution, resolution, 3), jnp.float32)
  if train_step:
    step = functools.partial(train.train_step, model=model, tx=tx, schedule=schedule, label_smoothing=0.0,
                             ema_decay=0.0)
    batch = {'image': images, 'label': jax.ShapeDtypeStruct((BATCH,), jnp.int32)}
    lowered = jax.jit(step).lower(state, batch, 0)
  else:
    forward = lambda variables, x: model.apply(variables, x, train=False)  # noqa: E731
    lowered = jax.jit(forward).lower({'params': state.params, 'batch_stats': state.batch_stats}, images)
  return lowered.cost_analysis()['flops']


@pytest.mark.parametrize('alpha, resolution', SIZES)
def test_train_flops_match_xla(alpha, resolution):
  mult_adds = cost.model_cost(alpha, resolution, num_classes=NUM_CLASSES).mult_adds
  xla_per_image = lowered_flops(alpha, resolution, train_step=True) / BATCH
  # 2x or 4x per Mult-Add (forward only, or one gradient) would be off by 3x and 1.5x.
  assert compute.train_flops(mult_adds, examples=1) == pytest.approx(xla_per_image, rel=0.05)


@pytest.mark.parametrize('alpha, resolution', SIZES)
def test_forward_flops_match_xla(alpha, resolution):
  """The forward pass alone is 2 FLOPs per Mult-Add, so the factor 3 of training is the backward's 2."""
  mult_adds = cost.model_cost(alpha, resolution, num_classes=NUM_CLASSES).mult_adds
  xla_per_image = lowered_flops(alpha, resolution, train_step=False) / BATCH
  assert compute.FLOPS_PER_MULT_ADD * mult_adds == pytest.approx(xla_per_image, rel=0.05)
