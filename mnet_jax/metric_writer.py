"""Training metrics to `metrics.jsonl` and TensorBoard event files (process 0 only)."""

from __future__ import annotations

import json
from typing import Any

from mnet_jax.fileio import run_path, write_atomically


class MetricWriter:
  """Keeps one JSON line per (step, metrics), rewritten atomically, and mirrors scalars to TensorBoard.

  On resume, lines past the restored step are dropped so a rerun neither loses nor
  duplicates entries; rewriting the (small) file also works on gs://, which cannot append.
  """

  def __init__(self, workdir: str, enabled: bool, start_step: int = 0):
    self.enabled = enabled
    self._path = run_path(workdir) / 'metrics.jsonl'
    self._lines: list[str] = []
    self._tb = None
    if not enabled:
      return
    if self._path.exists():
      self._lines = [line for line in self._path.read_text().splitlines()
                     if line.strip() and json.loads(line)['step'] <= start_step]
    try:
      import tensorflow as tf  # the input pipeline needs it anyway; optional here
      self._tb = tf.summary.create_file_writer(str(run_path(workdir) / 'tensorboard'))
    except ImportError:
      pass

  def write(self, step: int, metrics: dict[str, Any]) -> None:
    if not self.enabled:
      return
    scalars = {k: float(v) for k, v in metrics.items()}
    self._lines.append(json.dumps({'step': step, **scalars}))
    write_atomically(self._path, ''.join(line + '\n' for line in self._lines).encode())
    if self._tb is not None:
      import tensorflow as tf
      with self._tb.as_default(step=step):
        for name, value in scalars.items():
          tf.summary.scalar(name, value)
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
