"""Training metrics to `metrics.jsonl` and TensorBoard event files (process 0 only)."""

from __future__ import annotations

import json
import os
from typing import Any

from mnet_jax.fileio import is_remote, run_path, write_atomically

# On gs://, which cannot append, the lines since the last seal live in a small tail object rewritten at each write,
# and metrics.jsonl is rewritten only every this many lines (and at close): 1/50 of the bytes of rewriting the whole
# file per line (1,500 lines: ~30 rewrites of metrics.jsonl), and no line is lost at a kill.
REMOTE_LINES_PER_REWRITE = 50


def _complete_lines(text: str) -> list[str]:
  """The lines that end in a newline: an append cut short by a kill leaves a partial last line."""
  return [line for line in text.split('\n')[:-1] if line.strip()]


class MetricWriter:
  """Keeps one JSON line per (step, metrics) and mirrors scalars to TensorBoard.

  On local disks each line is appended (and fsynced); on gs:// see `REMOTE_LINES_PER_REWRITE`. On resume, lines
  past the restored step are dropped, so a rerun neither loses nor duplicates entries.
  """

  def __init__(self, workdir: str, enabled: bool, start_step: int = 0):
    self.enabled = enabled
    self._path = run_path(workdir) / 'metrics.jsonl'
    self._tail_path = run_path(workdir) / 'metrics.jsonl.tail'
    self._remote = is_remote(self._path)
    self._sealed: list[str] = []  # gs:// only: the lines metrics.jsonl holds
    self._tail: list[str] = []  # gs:// only: the lines since, in the tail object
    self._tb = None
    if not enabled:
      return
    self._resume(start_step)
    try:
      import tensorflow as tf  # the input pipeline needs it anyway; optional here
      self._tb = tf.summary.create_file_writer(str(run_path(workdir) / 'tensorboard'))
    except ImportError:
      pass

  def _resume(self, start_step: int) -> None:
    """Drop the lines a killed run wrote past `start_step` (and a partial last line), rewriting only if any."""
    text = self._path.read_text() if self._path.exists() else ''
    if self._remote and self._tail_path.exists():
      text += self._tail_path.read_text()
    found = _complete_lines(text)
    kept = [line for line in found if json.loads(line)['step'] <= start_step]
    if self._remote:
      self._sealed = kept
      self._seal()
      return
    self._path.parent.mkdir(parents=True, exist_ok=True)
    if kept != found or (text and not text.endswith('\n')):
      write_atomically(self._path, ''.join(line + '\n' for line in kept).encode())

  def _seal(self) -> None:
    """gs://: fold the tail into metrics.jsonl, then remove the tail object."""
    self._sealed += self._tail
    self._tail = []
    write_atomically(self._path, ''.join(line + '\n' for line in self._sealed).encode())
    if self._tail_path.exists():
      self._tail_path.unlink()

  def write(self, step: int, metrics: dict[str, Any]) -> None:
    if not self.enabled:
      return
    scalars = {k: float(v) for k, v in metrics.items()}
    line = json.dumps({'step': step, **scalars})
    if self._remote:
      self._tail.append(line)
      if len(self._tail) >= REMOTE_LINES_PER_REWRITE:
        self._seal()
      else:
        write_atomically(self._tail_path, ''.join(t + '\n' for t in self._tail).encode())
    else:
      with open(os.fspath(self._path), 'a') as f:
        f.write(line + '\n')
        f.flush()
        os.fsync(f.fileno())
    if self._tb is not None:
      import tensorflow as tf
      with self._tb.as_default(step=step):
        for name, value in scalars.items():
          tf.summary.scalar(name, value)
      self._tb.flush()

  def close(self) -> None:
    if self.enabled and self._remote and self._tail:
      self._seal()
    if self._tb is not None:
      self._tb.close()
