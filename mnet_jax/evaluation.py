"""Evaluation on the eval split: top-1, top-5 and the mean cross-entropy, for one run or several seeds at once.

The network runs with its BatchNorms folded into the convolutions (`folding.py`): the logits of
`model.apply(..., train=False)` up to round-off, without a pass per BatchNorm. With the EMA of weights on,
the EMA weights and statistics are evaluated (as the TPU reference does).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding

from mnet_jax import folding, input_pipeline
from mnet_jax.models import MobileNetV1


def global_batch(local: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
  """This process's slice of the batch -> one array sharded over all devices of all hosts."""
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


def model_input(images: jax.Array) -> jax.Array:
  """The batch's images in [-1, 1]: uint8 batches (read through a data source) are scaled here, on the device."""
  return input_pipeline.normalize(images.astype(jnp.float32)) if images.dtype == jnp.uint8 else images


def folded_weights(params: Any, batch_stats: Any, *, model: MobileNetV1) -> Any:
  """The inference weights: every BatchNorm folded into its convolution, once per evaluation."""
  return folding.fold({'params': params, 'batch_stats': batch_stats}, model.bn_epsilon)


def eval_step(folded: Any, batch: dict[str, jax.Array], *, model: MobileNetV1) -> dict[str, jax.Array]:
  """Masked sums over one (padded) eval batch: top-1 and top-5 hits (top-k of all classes when fewer than 5) and
  the cross-entropy (without label smoothing)."""
  logits = folding.FoldedMobileNetV1.of(model).apply({'params': folded}, model_input(batch['image']))
  top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
  hits = top5 == batch['label'][:, None]
  mask = batch['mask']
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label'])
  return {'top1': jnp.sum(hits[:, 0] * mask), 'top5': jnp.sum(jnp.any(hits, -1) * mask),
          'loss': jnp.sum(loss * mask), 'count': jnp.sum(mask)}


def evaluate(config: ml_collections.ConfigDict, state: Any, runs: Any, num_classes: int) -> list[dict[str, Any]]:
  """Top-1, top-5 and eval loss on the eval split, one dict per seed (`state` stacked on a seed axis when
  `runs.count` > 1; `runs` holds the jitted `fold_fn`, `eval_fn` and the eval sharding); top-5 is None with fewer
  than 5 classes, where it would say nothing."""
  ema = bool(config.optim.ema_decay)
  params, batch_stats = (state.ema_params, state.ema_batch_stats) if ema else (state.params, state.batch_stats)
  folded, num_seeds = runs.fold_fn(params, batch_stats), runs.count
  totals = {k: np.zeros(num_seeds) for k in ('top1', 'top5', 'loss', 'count')}
  for batch in input_pipeline.eval_batches(config.data, global_batch_size=config.batch_size,
                                           resolution=config.model.resolution):
    sums = jax.device_get(runs.eval_fn(folded, global_batch(batch, runs.eval_sharding)))
    for k in totals:
      totals[k] += np.asarray(sums[k], np.float64).reshape(num_seeds)
  count = np.maximum(totals['count'], 1.0)
  return [{'top1': float(totals['top1'][i] / count[i]),
           'top5': float(totals['top5'][i] / count[i]) if num_classes >= 5 else None,
           'eval_loss': float(totals['loss'][i] / count[i]),
           'eval_examples': int(totals['count'][i])} for i in range(num_seeds)]


def scalars(metrics: dict[str, Any]) -> dict[str, float]:
  """An evaluation's metrics as TensorBoard scalars."""
  values = {f'eval_{k}': metrics[k] for k in ('top1', 'top5') if metrics[k] is not None}
  return values | {'eval_loss': metrics['eval_loss'], 'eval_examples': metrics['eval_examples']}


def summary(evaluations: list[dict[str, Any]]) -> str:
  """'top-1 0.6842/0.6512 top-5 0.9996/0.9964 loss 1.02/1.10' over the seeds (top-5 left out with < 5 classes)."""
  def joined(key: str, spec: str) -> str:
    return '/'.join(format(m[key], spec) for m in evaluations)

  text = f'top-1 {joined("top1", ".4f")}'
  if evaluations[0]['top5'] is not None:
    text += f' top-5 {joined("top5", ".4f")}'
  return f'{text} loss {joined("eval_loss", ".4f")}'
