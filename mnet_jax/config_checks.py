"""The mistakes a config can hold that show without JAX or TensorFlow.

`main` checks them before it imports those (~3.5 s), so that a wrong size or a mistyped name is one line at
once. Each is checked again where it is used (`train`, `optim`, `input_pipeline`), for callers of the library.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from mnet_jax import architecture

OPTIMIZERS = ('rmsprop', 'sgd')
SCHEDULES = ('exponential', 'cosine', 'constant')
EVAL_PREPROCESSING = ('square', 'slim')
# The model fields each sweep point sets, and the sweep field that lists their values instead.
SWEEP_POINT_FIELDS = {'model.alpha': 'sweep.alphas', 'model.resolution': 'sweep.resolutions',
                      'model.variant': 'sweep.variants'}


def unknown(what: str, value: Any, choices: Collection[str]) -> str:
  """The message for a name that is not one of `choices`."""
  *first, last = choices
  expected = f'{", ".join(first)} or {last}' if first else last
  return f'unknown {what} {value!r}; expected {expected}'


def check(config: Any, overrides: Collection[str] = ()) -> None:
  """ValueError naming the first mistake in `config` (a run's or a sweep's; `overrides`: the command line's
  `--config.*` fields) that can be found without JAX or TensorFlow."""
  if 'sweep' in config:
    check_sweep_overrides(overrides)
  architecture.check_alpha(config.model.alpha)
  architecture.check_variant(config.model.variant)
  architecture.check_resolution(config.model.resolution)
  if isinstance(config.batch_size, bool) or not isinstance(config.batch_size, int) or config.batch_size < 1:
    raise ValueError(f'batch_size must be a positive integer, got {config.batch_size!r}')
  if config.optim.optimizer not in OPTIMIZERS:
    raise ValueError(unknown('optimizer', config.optim.optimizer, OPTIMIZERS))
  if config.optim.schedule not in SCHEDULES:
    raise ValueError(unknown('learning-rate schedule', config.optim.schedule, SCHEDULES))
  mode = config.data.get('eval_preprocess', EVAL_PREPROCESSING[0])
  if mode not in EVAL_PREPROCESSING:
    raise ValueError(unknown('data.eval_preprocess', mode, EVAL_PREPROCESSING))


def check_sweep_overrides(overrides: Collection[str]) -> None:
  """Refuse a command-line override of a field that every sweep point sets (it would be silently replaced)."""
  for field in overrides:
    if field in SWEEP_POINT_FIELDS:
      raise ValueError(f'--config.{field} is set by each sweep point; choose the grid with '
                       f'--config.{SWEEP_POINT_FIELDS[field]}=... (or --config.sweep.points / --config.sweep.only)')
