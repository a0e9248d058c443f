"""Small file helpers: atomic writes, so a crash never leaves a half-written file behind."""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
from typing import Any


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
  """Write `text` to `path` via a temporary file in the same folder and an atomic rename."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.tmp')
  try:
    with os.fdopen(fd, 'w') as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    pathlib.Path(tmp).unlink(missing_ok=True)
    raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
  atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + '\n')


def read_json(path: str | os.PathLike) -> Any:
  with open(path) as f:
    return json.load(f)
