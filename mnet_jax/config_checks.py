"""The mistakes a config can hold that show without JAX or TensorFlow.

`main` checks them before it imports those (~3.5 s), so that a wrong size, rate or name is one line at once;
`train.check_config` checks them too, for callers of the library and for each point of a sweep.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from typing import Any

from mnet_jax import architecture, curves

OPTIMIZERS = ('rmsprop', 'sgd')
SCHEDULES = ('exponential', 'cosine', 'constant')
EVAL_PREPROCESSING = ('square', 'slim')
# The model fields each sweep point sets, and the sweep field that lists their values instead.
SWEEP_POINT_FIELDS = {'model.alpha': 'sweep.alphas', 'model.resolution': 'sweep.resolutions',
                      'model.variant': 'sweep.variants'}


def _integer(v: Any) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _number(v: Any) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# Numeric fields and the values that mean something; each would otherwise train (a negative rate, dropout 2) or
# fail only later. Fields a config does not have are skipped.
RANGES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    'batch_size': ('a positive integer', lambda v: _integer(v) and v >= 1),
    'num_epochs': ('a non-negative number', lambda v: _number(v) and v >= 0),
    'num_train_steps': ('-1 (train num_epochs) or a non-negative integer', lambda v: _integer(v) and v >= -1),
    'log_every_steps': ('a positive integer', lambda v: _integer(v) and v >= 1),
    'checkpoint_every_steps': ('a positive integer', lambda v: _integer(v) and v >= 1),
    'eval_every_steps': ('a non-negative integer (0: at the end only)', lambda v: _integer(v) and v >= 0),
    'max_checkpoints_to_keep': ('a positive integer', lambda v: _integer(v) and v >= 1),
    'model.dropout_rate': ('in [0, 1)', lambda v: _number(v) and 0 <= v < 1),
    'model.bn_momentum': ('in [0, 1]', lambda v: _number(v) and 0 <= v <= 1),
    'model.bn_epsilon': ('a positive number', lambda v: _number(v) and v > 0),
    'optim.learning_rate': ('a non-negative number', lambda v: _number(v) and v >= 0),
    'optim.base_batch_size': ('a positive number', lambda v: _number(v) and v > 0),
    'optim.momentum': ('in [0, 1)', lambda v: _number(v) and 0 <= v < 1),
    'optim.rmsprop_decay': ('in [0, 1)', lambda v: _number(v) and 0 <= v < 1),
    'optim.epsilon': ('a positive number', lambda v: _number(v) and v > 0),
    'optim.decay_epochs': ('a non-negative number', lambda v: _number(v) and v >= 0),
    'optim.warmup_epochs': ('a non-negative number', lambda v: _number(v) and v >= 0),
    'optim.weight_decay': ('a non-negative number', lambda v: _number(v) and v >= 0),
    'optim.grad_clip_norm': ('a non-negative number (0: no clipping)', lambda v: _number(v) and v >= 0),
    'optim.label_smoothing': ('in [0, 1)', lambda v: _number(v) and 0 <= v < 1),
    'optim.ema_decay': ('in [0, 1) (0: no EMA)', lambda v: _number(v) and 0 <= v < 1),
    'data.min_area': ('in (0, 1]', lambda v: _number(v) and 0 < v <= 1),
    'data.eval_crop': ('in (0, 1]', lambda v: _number(v) and 0 < v <= 1),
    'data.train_examples': ('-1 (all) or a positive integer', lambda v: _integer(v) and (v == -1 or v >= 1)),
}


def unknown(what: str, value: Any, choices: Collection[str]) -> str:
  """The message for a name that is not one of `choices`."""
  *first, last = choices
  expected = f'{", ".join(first)} or {last}' if first else last
  return f'unknown {what} {value!r}; expected {expected}'


_MISSING = object()


def _field(config: Any, path: str) -> Any:
  """`config`'s value at the dotted `path`, or `_MISSING`."""
  node = config
  for key in path.split('.'):
    if not hasattr(node, 'get') or (node := node.get(key, _MISSING)) is _MISSING:
      return _MISSING
  return node


def check(config: Any, overrides: Collection[str] = ()) -> None:
  """ValueError naming the first mistake in `config` (a run's or a sweep's; `overrides`: the command line's
  `--config.*` fields) that can be found without JAX or TensorFlow. A field the config lacks is left to the code
  that reads it."""
  if 'sweep' in config:
    check_sweep_overrides(overrides)
  for path, check_value in (('model.alpha', architecture.check_alpha), ('model.depth', architecture.check_depth),
                            ('model.variant', architecture.check_variant),
                            ('model.resolution', architecture.check_resolution)):
    if (value := _field(config, path)) is not _MISSING:
      check_value(value)
  for path, (rule, holds) in RANGES.items():
    if (value := _field(config, path)) is not _MISSING and not holds(value):
      raise ValueError(f'{path} must be {rule}, got {value!r}')
  if (value := _field(config, 'eval_at')) is not _MISSING:
    curves.check_eval_at(value)
  for path, what, choices in (('optim.optimizer', 'optimizer', OPTIMIZERS),
                              ('optim.schedule', 'learning-rate schedule', SCHEDULES),
                              ('data.eval_preprocess', 'data.eval_preprocess', EVAL_PREPROCESSING)):
    if (value := _field(config, path)) is not _MISSING and value not in choices:
      raise ValueError(unknown(what, value, choices))
  check_remote_random_access(config)


def check_remote_random_access(config: Any) -> None:
  """Refuse a remote `data.data_dir` (gs://, s3://, ...) read by index: ArrayRecord has no remote reader
  (riegeli cannot open gs://, google/array_record#120), so the run would fail only after its imports."""
  data_dir, cache, name = (_field(config, f'data.{key}') for key in ('data_dir', 'cache', 'name'))
  if not isinstance(data_dir, str) or '://' not in data_dir or cache is not False or name == 'folder':
    return
  raise ValueError(f'data.data_dir={data_dir} is remote, but data.cache=False reads ArrayRecord files by index, '
                   'which cannot be read remotely; mount the bucket at a local path with gcsfuse (launch/tpu_pod.py '
                   f'--data={data_dir}:/data/tensorflow_datasets does) and pass that path, or set data.cache=True')


def check_sweep_overrides(overrides: Collection[str]) -> None:
  """Refuse a command-line override of a field that every sweep point sets (it would be silently replaced)."""
  for field in overrides:
    if field in SWEEP_POINT_FIELDS:
      raise ValueError(f'--config.{field} is set by each sweep point; choose the grid with '
                       f'--config.{SWEEP_POINT_FIELDS[field]}=... (or --config.sweep.points / --config.sweep.only)')
