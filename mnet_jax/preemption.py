"""Stopping a run cleanly: SIGTERM (a preempted TPU VM, Slurm's notice) or Ctrl-C becomes a flag the training
loop checks between steps; it then saves the current step on every host and raises `Preempted`."""

from __future__ import annotations

import os
import signal
import sys

import jax
import numpy as np


class PreemptionFlag:
  """Turns SIGTERM (what a preempted TPU VM gets) and a first Ctrl-C into a flag the loop checks between
  steps (the run then saves its current step and stops); a second Ctrl-C stops at once."""

  def __init__(self):
    self.requested: str | None = None  # the signal's name

  def __enter__(self):
    self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}
    return self

  def _handle(self, signum, frame):
    if signum == signal.SIGINT and self.requested == 'SIGINT':
      # Not KeyboardInterrupt: raised wherever the interpreter is (a gc callback, a writer thread's join), it
      # can be swallowed with a traceback. The newest complete checkpoint stays; a half-written one is
      # cleared at the next start.
      print('interrupted: stopped at once (second Ctrl-C); rerun the same command to resume from the last '
            'checkpoint', file=sys.stderr, flush=True)
      os._exit(130)
    self.requested = signal.Signals(signum).name

  def __exit__(self, *exc):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)

  def stop_error(self, step: int) -> Preempted:
    if self.requested == 'SIGINT':
      return Interrupted(f'Ctrl-C: checkpoint saved at step {step}; rerun the same command to resume')
    return Preempted(f'SIGTERM received: checkpoint saved at step {step}; rerun the same command to resume')


class Preempted(Exception):
  """Raised after a checkpoint was saved in response to SIGTERM."""


class Interrupted(Preempted):
  """Raised after a checkpoint was saved in response to Ctrl-C (SIGINT)."""


def any_process(flag: bool) -> bool:
  """True on every process if `flag` is true on any (all hosts must stop at the same step)."""
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils
  return bool(np.any(multihost_utils.process_allgather(np.array([flag]))))
