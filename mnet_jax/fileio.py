"""Small file helpers for local and gs:// paths: atomic writes, so a crash never leaves a half file."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

from etils import epath


def is_remote(path: str | os.PathLike) -> bool:
  """True for object-store paths such as gs://bucket/dir."""
  return '://' in os.fspath(path)


def write_atomically(path: str | os.PathLike, data: bytes) -> None:
  """Replace `path` with `data` so that readers see the old or the new file, never a partial one."""
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  if is_remote(path):
    # Object stores (gs://) publish an object only once its upload completes: already atomic.
    path.write_bytes(data)
    return
  fd, tmp = tempfile.mkstemp(dir=os.fspath(path.parent), prefix=f'.{path.name}.', suffix='.tmp')
  try:
    with os.fdopen(fd, 'wb') as f:
      umask = os.umask(0)
      os.umask(umask)
      os.fchmod(f.fileno(), 0o666 & ~umask)  # mkstemp's 0600 would hide results from collaborators
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, os.fspath(path))
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise
  # Make the rename itself durable; not every filesystem lets a directory be fsynced.
  try:
    dir_fd = os.open(os.fspath(path.parent), os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(dir_fd)
  except OSError:
    pass
  finally:
    os.close(dir_fd)


def check_output_directory(out: str, overwrite: bool, error: Callable[[str], Exception]) -> None:
  """Raise error(message) unless the local directory `out` can be created (or replaced, with `overwrite`):
  checked before minutes of work, so that a bad --out fails at once."""
  if '://' in out:
    raise error(f'--out must be a local directory, got {out}')
  if os.path.exists(out) and not os.path.isdir(out):
    raise error(f'cannot write {out}: it exists and is not a directory')
  if os.path.isdir(out) and os.listdir(out) and not overwrite:
    raise error(f'{out} exists and is not empty (pass --overwrite to replace it)')
  existing = os.path.dirname(os.path.abspath(out))
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise error(f'cannot write {out}: {existing} is not a directory')
  if not os.access(existing, os.W_OK | os.X_OK):
    raise error(f'cannot write {out}: permission denied on {existing}')


@contextlib.contextmanager
def staged_directory(out: str, error: Callable[[str], Exception]) -> Iterator[str]:
  """A temporary sibling of the local directory `out` to fill in the `with` block; renamed to `out` when the
  block completes (a non-empty `out` goes only once the new one is in place), removed if it fails: `out` is
  never half written. `error(message)` is raised when the sibling cannot be created."""
  try:
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = tempfile.mkdtemp(dir=os.path.dirname(out), prefix=f'.{os.path.basename(out)}.', suffix='.tmp')
  except OSError as e:
    raise error(f'cannot write {out}: {e.strerror or e}') from e
  try:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would hide the output from collaborators
    yield tmp
    if os.path.isdir(out) and os.listdir(out):
      os.rename(out, tmp + '.old')
      try:
        os.rename(tmp, out)
      except OSError:
        os.rename(tmp + '.old', out)
        raise
      shutil.rmtree(tmp + '.old')
    else:
      os.replace(tmp, out)  # onto an empty directory, or none
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
  write_atomically(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + '\n').encode())


def read_json(path: str | os.PathLike) -> Any:
  return json.loads(epath.Path(path).read_text())


def run_path(path: str | os.PathLike) -> epath.Path:
  """A workdir as an absolute epath.Path: local folders and gs:// buckets alike."""
  text = os.fspath(path)
  return epath.Path(text if is_remote(text) else os.path.abspath(text))
