"""The optimizer: the paper's RMSprop (or SGD), learning-rate schedules, masked L2 weight decay.

Weight decay follows TF-slim: an L2 penalty `weight_decay/2 * ||w||^2` on convolution and
classifier kernels, added to the gradient before the optimizer, and NOT on depthwise kernels
(the paper: "very little or no weight decay on the depthwise filters"), BatchNorm parameters
or biases. Which parameters decay is data: `WEIGHT_DECAY_RULES`, first match wins.
"""

from __future__ import annotations

import re
from typing import Any

import flax
import optax

from mnet_jax.config_checks import OPTIMIZERS, SCHEDULES, unknown

# (regex on the '/'-joined parameter path, weight-decay multiplier); first match wins.
WEIGHT_DECAY_RULES = (
    (r'.*depthwise/kernel$', 0.0),
    (r'.*/kernel$', 1.0),
    (r'.*', 0.0),  # BatchNorm scale/bias and the classifier bias
)


def weight_decay_mask(params: Any, rules: tuple[tuple[str, float], ...] = WEIGHT_DECAY_RULES) -> Any:
  """A pytree of bools like `params`: True where L2 weight decay applies."""
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep='/')

  def multiplier(path: str) -> float:
    return next(mult for pattern, mult in rules if re.fullmatch(pattern, path))

  return flax.traverse_util.unflatten_dict({k: multiplier(k) > 0 for k in flat}, sep='/')


def learning_rate_schedule(optim: Any, batch_size: int, steps_per_epoch: int,
                           total_steps: int) -> optax.Schedule:
  """Linear warmup, then exponential (the paper's) or cosine decay; base rate scaled by batch size."""
  peak = optim.learning_rate * batch_size / optim.base_batch_size
  warmup_steps = int(optim.warmup_epochs * steps_per_epoch)
  if optim.schedule == 'exponential':
    decay = optax.exponential_decay(
        peak, transition_steps=max(1, int(optim.decay_epochs * steps_per_epoch)),
        decay_rate=optim.decay_rate, staircase=True)
  elif optim.schedule == 'cosine':
    decay = optax.cosine_decay_schedule(peak, max(1, total_steps - warmup_steps))
  elif optim.schedule == 'constant':
    decay = optax.constant_schedule(peak)
  else:
    raise ValueError(unknown('learning-rate schedule', optim.schedule, SCHEDULES))
  if warmup_steps == 0:
    return decay
  warmup = optax.linear_schedule(0.0, peak, warmup_steps)
  return optax.join_schedules([warmup, decay], [warmup_steps])


def create_optimizer(optim: Any, schedule: optax.Schedule) -> optax.GradientTransformation:
  """optax chain: [clip] -> masked L2 -> RMSprop | SGD with momentum. The L2 mask is a function of the
  parameters the chain is given (`weight_decay_mask`), so building the chain needs none."""
  if optim.optimizer == 'rmsprop':
    # TF's RMSPropOptimizer: mean square initialised to 1 (rmsprop_initial_scale), epsilon inside the
    # sqrt, momentum applied after the learning rate.
    base = optax.rmsprop(schedule, decay=optim.rmsprop_decay, eps=optim.epsilon,
                         initial_scale=optim.get('rmsprop_initial_scale', 1.0),
                         eps_in_sqrt=True, momentum=optim.momentum)
  elif optim.optimizer == 'sgd':
    base = optax.sgd(schedule, momentum=optim.momentum, nesterov=optim.nesterov)
  else:
    raise ValueError(unknown('optimizer', optim.optimizer, OPTIMIZERS))
  parts = []
  if optim.grad_clip_norm:
    parts.append(optax.clip_by_global_norm(optim.grad_clip_norm))
  if optim.weight_decay:
    parts.append(optax.add_decayed_weights(optim.weight_decay, mask=weight_decay_mask))
  return optax.chain(*parts, base)
