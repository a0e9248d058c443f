"""Learning curves: at which steps a run evaluates, and the curve file each run keeps in its run dir.

`config.eval_at` names the steps: `'log:K'` gives K steps, each twice the one before, ending at the last step
(`log:6` of 600 steps: 19, 38, 75, 150, 300, 600), so that a study's runs of 150, 300 and 600 steps share
evaluation steps; `'50,100,300'` lists them; `''` evaluates at the end only. Multiples of
`config.eval_every_steps` are added. Each evaluation is one entry of `<run dir>/curve.json`, keyed by its
step: a run killed after an evaluation and resumed from an earlier checkpoint evaluates that step again
(bitwise the same, as its training is) and replaces the entry, so a curve neither loses nor repeats a step.
Imports no JAX: the config check parses `eval_at` before JAX starts.
"""

from __future__ import annotations

import os
from typing import Any

from etils import epath

from mnet_jax.fileio import atomic_write_json, read_json

CURVE_JSON = 'curve.json'


def check_eval_at(text: str) -> None:
  """ValueError naming what is wrong with an `eval_at` value."""
  eval_steps(text, 0, 1)


def eval_steps(eval_at: str, eval_every_steps: int, total_steps: int) -> list[int]:
  """The steps in 1..total_steps after which a run of `total_steps` evaluates; the last one always."""
  text = str(eval_at).strip()
  steps = {total_steps}
  wrong = ValueError(f"eval_at must be 'log:K' (K >= 1 doubling steps up to the last), a comma-separated list of "
                     f"positive steps, or '' (the end only); got {eval_at!r}")
  if text.startswith('log:'):
    try:
      count = int(text[4:])
    except ValueError:
      raise wrong from None
    if count < 1:
      raise wrong
    steps |= {round(total_steps / 2**k) for k in range(count)}
  elif text:
    try:
      listed = [int(v) for v in text.split(',') if v.strip()]
    except ValueError:
      raise wrong from None
    if not listed or min(listed) < 1:
      raise wrong
    steps |= {s for s in listed if s <= total_steps}
  if eval_every_steps:
    steps |= set(range(eval_every_steps, total_steps + 1, eval_every_steps))
  return sorted(s for s in steps if s >= 1)


class Curve:
  """A run's evaluations so far, one per step, as `curve.json` (written by process 0 only)."""

  def __init__(self, workdir: str | os.PathLike, enabled: bool):
    self.path = epath.Path(workdir) / CURVE_JSON
    self.enabled = enabled
    self.evaluations: dict[int, dict[str, Any]] = {}
    if self.path.exists():
      self.evaluations = {int(e['step']): e for e in read_json(self.path)}

  def record(self, step: int, metrics: dict[str, Any]) -> None:
    """Add (or replace) the evaluation at `step` and rewrite the file atomically."""
    self.evaluations[step] = {'step': step, **metrics}
    if self.enabled:
      atomic_write_json(self.path, [self.evaluations[s] for s in sorted(self.evaluations)])

  def forget_after(self, step: int) -> None:
    """Drop evaluations past `step` (a run restarted from scratch or from an earlier checkpoint re-evaluates)."""
    self.evaluations = {s: e for s, e in self.evaluations.items() if s <= step}
