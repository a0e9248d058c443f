"""Starting a run from trained weights: `config.init_from`.

The source is a directory: a converted checkpoint (`python -m mnet_jax.convert`; it holds model.json) or
another run's workdir (its newest checkpoint, with the EMA weights and statistics when that run kept an EMA:
its evaluation used them). Only the model's variables come over: the step starts at 0 and the optimizer
fresh. When fine-tuning to another number of classes, the classifier is the new run's own initialisation.
A run dir that already holds checkpoints resumes from them and ignores init_from, so resume stays exact.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from mnet_jax import architecture
from mnet_jax.fileio import run_path

CLASSIFIER = architecture.CLASSIFIER_NAME


class InitFromError(ValueError):
  """init_from names something that is not a set of weights, or weights that do not fit the model."""


@dataclasses.dataclass(frozen=True)
class Weights:
  params: dict[str, Any]
  batch_stats: dict[str, Any]
  path: str
  what: str  # for the log, e.g. 'EMA weights at step 8'


def load(path: str) -> Weights:
  """The weights in a converted checkpoint or a run dir, as numpy arrays."""
  root = run_path(path)  # absolute: Orbax reads no metadata from a relative path
  if (root / 'model.json').exists():
    from mnet_jax import convert  # TensorFlow-free to import, but only needed here

    _, variables = convert.load(path)
    return Weights(variables['params'], variables['batch_stats'], path, 'converted checkpoint')
  steps = sorted(int(p.name) for p in (root / 'checkpoints').glob('*') if p.name.isdigit()) if root.exists() else []
  if not steps:
    raise InitFromError(f'init_from {path}: neither a converted checkpoint (model.json, from mnet_jax.convert) '
                        'nor a run dir with a checkpoint')
  item = root / 'checkpoints' / str(steps[-1]) / 'default'
  checkpointer = ocp.StandardCheckpointer()
  try:
    tree = checkpointer.metadata(item).item_metadata.tree
    state = checkpointer.restore(item, jax.tree.map(lambda m: np.empty(m.shape, m.dtype), tree))
  except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is the same bad input
    raise InitFromError(f'init_from {path}: cannot read the checkpoint at step {steps[-1]} '
                        f'({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""})') from None
  ema = bool(state.get('ema_params'))
  return Weights(state['ema_params'] if ema else state['params'],
                 state['ema_batch_stats'] if ema else state['batch_stats'],
                 path, f'{"EMA weights" if ema else "weights"} at step {steps[-1]}')


def fit(weights: Weights, abstract_variables: dict[str, Any], replace_classifier: bool) -> tuple[Weights, str]:
  """`weights` checked against the model's variables (shapes from `jax.eval_shape`), leaf by leaf.

  With `replace_classifier`, a classifier of another shape is left out (the run keeps its own); otherwise,
  and for any other layer, the first mismatch raises InitFromError naming it with both shapes. Returns the
  weights to load and a note for the log.
  """
  loaded = {'params': weights.params, 'batch_stats': weights.batch_stats}
  have = _flat(loaded)
  want = dict(sorted(_flat({k: abstract_variables[k] for k in ('params', 'batch_stats')}).items(),
                     key=lambda item: (item[0][0] != 'params', architecture.network_position(item[0][1]),
                                       item[0])))  # so that the first mismatch is the first layer's
  classifier = [k for k in want if k[1] == CLASSIFIER]
  note = ''
  if replace_classifier and any(k in have and np.shape(have[k]) != want[k].shape for k in classifier):
    old, new = have[('params', CLASSIFIER, 'bias')].shape[0], want[('params', CLASSIFIER, 'bias')].shape[0]
    note = f'; classifier replaced ({old} -> {new} classes, newly initialised)'
    loaded['params'] = {k: v for k, v in loaded['params'].items() if k != CLASSIFIER}
    have = {k: v for k, v in have.items() if k[1] != CLASSIFIER}
    want = {k: v for k, v in want.items() if k[1] != CLASSIFIER}
  for key, spec in want.items():
    if key not in have:
      raise InitFromError(f'init_from {weights.path}: no {"/".join(key)} {tuple(spec.shape)} '
                          f'(a MobileNet of another width, variant or depth?)')
    if np.shape(have[key]) != spec.shape:
      raise InitFromError(f'init_from {weights.path}: {"/".join(key)} is {np.shape(have[key])}, the model '
                          f'needs {tuple(spec.shape)}' + _hint(key))
  extra = sorted(set(have) - set(want))
  if extra:
    raise InitFromError(f'init_from {weights.path}: {"/".join(extra[0])} is not a variable of the model '
                        '(a MobileNet of another variant or depth?)')
  return (dataclasses.replace(weights, params=loaded['params'], batch_stats=loaded['batch_stats']),
          f'{weights.what} of {weights.path}{note}')


def _hint(key: tuple[str, ...]) -> str:
  if key[1] == CLASSIFIER:
    return ' (another class count: convert without the background class, or fine-tune with num_train_steps > 0)'
  return ' (a MobileNet of another width or depth: set model.alpha and model.depth to the ones it was trained at)'


def _flat(tree: dict[str, Any]) -> dict[tuple[str, ...], Any]:
  flat = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    flat[tuple(str(getattr(p, 'key', p)) for p in path)] = leaf
  return flat
