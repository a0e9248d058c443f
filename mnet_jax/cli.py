"""What the `python -m mnet_jax.*` tools share: a mistake is one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import atexit
import contextlib
import gc
import importlib.util
import logging
import os
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator

USAGE_ERROR = 2


class OneLineParser(argparse.ArgumentParser):
  """Usage errors as one line on stderr and exit code 2."""

  def error(self, message: str):
    self.exit(USAGE_ERROR, f'error: {message}\n')


def configure_tensorflow() -> None:
  """TensorFlow's environment for these tools; call before TensorFlow is imported.

  - Its start-up log hidden (the oneDNN notice is its only line at import; oneDNN's graph rewrites do nothing
    for the tf.data image ops and checkpoint reads these tools use).
  - No Keras: TensorFlow imports Keras at its own import (to register Keras' optimizers), and Keras imports
    matplotlib.pyplot; none of these tools uses `tf.keras`. `TF_USE_LEGACY_KERAS` points TensorFlow at the
    `tf_keras` package instead, so where that is not installed it imports no Keras (and `tf.keras` would raise).
    TensorFlow + TFDS import here: 3.67 -> 2.89 s. The benchmark's Keras peer and the tests' Keras models do not
    call this.
  """
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
  if importlib.util.find_spec('tf_keras') is None:
    os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')


@contextlib.contextmanager
def collector_paused_then_frozen() -> Iterator[None]:
  """For the heavy imports (TensorFlow, JAX, Orbax): no cyclic collection while they run, then their objects
  moved out of the collector's reach (`gc.freeze`).

  Import makes millions of long-lived objects and almost no garbage; each full collection traverses all of
  them. Here a tiny run spent 1.2 s in 8 such collections while importing and 1.35 s in 3 while training
  (0.4-0.5 s each), of its ~20 s. Objects created after the block are collected as usual.
  """
  gc.disable()
  try:
    yield
  finally:
    gc.freeze()
    gc.enable()


def exit_without_collecting() -> None:
  """At interpreter exit, skip the cyclic collector's passes over the millions of objects TensorFlow and JAX
  create at import: 2.5-3.1 s of every tool's exit here, 0.4 s without.

  The last `atexit` step freezes the heap (`gc.freeze`), so the collections of the interpreter's final teardown
  find nothing to traverse. Other `atexit` hooks still run first and files are still flushed and closed; only
  objects left in unreachable reference cycles are not finalised, which Python does not promise at exit anyway.
  `atexit` runs hooks in reverse order: called before JAX and TensorFlow are imported, this one runs last.
  """
  atexit.register(gc.freeze)


def one_line(error: BaseException) -> str:
  """The first non-empty line of an error's message (library errors often continue with details)."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  return lines[0] if lines else type(error).__name__


def run_reporting_errors(body: Callable[[], int], verbose: bool) -> int:
  """body()'s exit code; an error it raises becomes one line on stderr: exit 2 for a ValueError or
  OSError (bad input, a failed write), exit 1 for anything else. --verbose adds the traceback."""
  try:
    return body()
  except (ValueError, OSError) as e:
    if verbose:
      traceback.print_exc()
    print(f'error: {one_line(e)}', file=sys.stderr)
    return USAGE_ERROR
  except Exception as e:  # noqa: BLE001 - one line for users, --verbose for developers
    if verbose:
      traceback.print_exc()
    print(f'error: {type(e).__name__}: {one_line(e)} (rerun with --verbose for the traceback)', file=sys.stderr)
    return 1


def minutes(seconds: float) -> str:
  """A duration for an ETA: '12 min' or '40 s'."""
  return f'{seconds / 60:.0f} min' if seconds >= 60 else f'{seconds:.0f} s'


def quiet_failed_writes() -> None:
  """Keep a checkpoint write that fails partway (e.g. the disk fills) to the run's one error line.

  Orbax stops its save at the first failed array and closes the save's event loop; TensorStore's other writes
  then complete into the closed loop, each printing a 'RuntimeError: Event loop is closed' traceback, and
  asyncio logs every failed write's future: hundreds of lines around the one that says what happened. A write
  the closed loop never started is reported at exit as a coroutine that was never awaited.
  """
  logging.getLogger('asyncio').setLevel(logging.CRITICAL)
  warnings.filterwarnings('ignore', message="coroutine '.*' was never awaited", category=RuntimeWarning)
  unraisablehook = sys.unraisablehook

  def quiet_unraisablehook(unraisable) -> None:  # TensorStore reports each callback's failure as unraisable
    value = unraisable.exc_value
    if not (type(value) is RuntimeError and str(value) == 'Event loop is closed'):
      unraisablehook(unraisable)

  sys.unraisablehook = quiet_unraisablehook
