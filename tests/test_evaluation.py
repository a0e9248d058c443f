"""The eval loss a run reports, against the cross-entropy of its own checkpoint recomputed here: the unfolded
network (BatchNorm as BatchNorm, not folded into the convolutions) and a log-softmax in float64 numpy."""

import json

import jax
import numpy as np
from test_train import final_params, make_config

from mnet_jax import input_pipeline, train


def evaluate_unfolded(config, params, batch_stats) -> tuple[float, float, int]:
  """(top-1, mean cross-entropy, examples) of the unfolded network on the eval split, the log-softmax in float64."""
  info = input_pipeline.dataset_info(config.data)
  model = train.create_model(config.model, info.num_classes)
  apply = jax.jit(lambda images: model.apply({'params': params, 'batch_stats': batch_stats}, images, train=False))
  losses, hits = [], []
  for batch in input_pipeline.eval_batches(config.data, global_batch_size=config.batch_size,
                                           resolution=config.model.resolution, process_index=0, process_count=1):
    logits = np.asarray(apply(batch['image']), np.float64)
    keep = batch['mask'] > 0
    log_softmax = logits - logits.max(-1, keepdims=True)
    log_softmax -= np.log(np.exp(log_softmax).sum(-1, keepdims=True))
    losses += list(-log_softmax[np.arange(len(logits)), batch['label']][keep])
    hits += list((logits.argmax(-1) == batch['label'])[keep])
  return float(np.mean(hits)), float(np.mean(losses)), len(losses)


def test_the_reported_eval_loss_is_the_mean_cross_entropy_of_the_eval_split(reference_run):
  workdir, overrides = reference_run
  config = make_config(overrides)
  weights = final_params(workdir)
  top1, loss, count = evaluate_unfolded(config, weights['params'], weights['batch_stats'])
  results = json.loads((workdir / 'results.json').read_text())
  assert count == input_pipeline.dataset_info(config.data).num_eval == results['eval_examples']
  assert abs(results['eval_loss'] - loss) < 1e-4  # float32 sums against float64
  assert abs(results['top1'] - top1) <= 1 / count  # folded weights may flip one near-tie
  curve = json.loads((workdir / 'curve.json').read_text())
  assert curve[-1]['step'] == results['steps'] and curve[-1]['eval_loss'] == results['eval_loss']
