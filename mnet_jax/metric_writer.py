"""Training metrics to `metrics.jsonl` and TensorBoard event files (process 0 only)."""

from __future__ import annotations

import json
import pathlib
from typing import Any


class MetricWriter:
  """Appends one JSON line per (step, metrics) and mirrors scalars to TensorBoard.

  On resume, lines past the restored step are dropped so a rerun neither loses nor
  duplicates entries in metrics.jsonl.
  """

  def __init__(self, workdir: str, enabled: bool, start_step: int = 0):
    self.enabled = enabled
    self._path = pathlib.Path(workdir) / 'metrics.jsonl'
    self._tb = None
    if not enabled:
      return
    if self._path.exists():
      kept = [line for line in self._path.read_text().splitlines()
              if line.strip() and json.loads(line)['step'] <= start_step]
      self._path.write_text(''.join(line + '\n' for line in kept))
    try:
      import tensorflow as tf  # the input pipeline needs it anyway; optional here
      self._tb = tf.summary.create_file_writer(str(pathlib.Path(workdir) / 'tensorboard'))
    except ImportError:
      pass

  def write(self, step: int, metrics: dict[str, Any]) -> None:
    if not self.enabled:
      return
    scalars = {k: float(v) for k, v in metrics.items()}
    with self._path.open('a') as f:
      f.write(json.dumps({'step': step, **scalars}) + '\n')
    if self._tb is not None:
      import tensorflow as tf
      with self._tb.as_default(step=step):
        for name, value in scalars.items():
          tf.summary.scalar(name, value)
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
