"""Orbax checkpoints of the train state: create, restore the newest good one, guard the disk.

A run directory keeps its checkpoints in `<run>/checkpoints/<step>`. Orbax writes them
asynchronously and atomically (a `<step>.orbax-checkpoint-tmp` folder is never "latest").
Seeds trained together keep one run directory each and are saved at the same steps, so a
group resumes from the newest step that every one of its run directories holds intact.
"""

from __future__ import annotations

import errno
import os
import shutil
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from etils import epath

from mnet_jax.fileio import is_remote


class DiskFullError(OSError):
  """The workdir's disk (or quota) is full: the user's to fix, like bad input (exit code 2)."""


def create_manager(workdir: epath.Path, max_to_keep: int) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      workdir / 'checkpoints',
      options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True, cleanup_tmp_directories=True))


def restore_newest_common(managers: Sequence[ocp.CheckpointManager], target: Any, workdirs: Sequence[epath.Path],
                          log: Callable[[str], None]) -> list[Any] | None:
  """The states at the newest step that every manager holds, restorable and finite; None if there is none.

  A checkpoint that cannot be restored is moved to `<run>/damaged_checkpoints/` with a
  warning and the next older common step is tried.
  """
  while True:
    common = set.intersection(*(set(m.all_steps()) for m in managers))
    if not common:
      return None
    step = max(common)
    states = []
    for manager, workdir in zip(managers, workdirs, strict=True):
      state = _restore_or_set_aside(manager, step, target, workdir, log)
      if state is None:
        break
      states.append(state)
    else:
      where = workdirs[0] if len(workdirs) == 1 else f'{len(workdirs)} run dirs ({workdirs[0]}, ...)'
      log(f'[train] resumed from checkpoint at step {step} in {where}')
      return states


def _restore_or_set_aside(manager: ocp.CheckpointManager, step: int, target: Any, workdir: epath.Path,
                          log: Callable[[str], None]) -> Any | None:
  try:
    state = manager.restore(step, args=ocp.args.StandardRestore(target))
    if not all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(state.params)):
      raise ValueError('non-finite parameters')
    return state
  except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is skipped, not fatal
    log(f'[train] WARNING: skipping damaged checkpoint at step {step} ({type(e).__name__}: {e}); '
        f'moved to {workdir / "damaged_checkpoints"}')
    if jax.process_index() == 0:
      (workdir / 'damaged_checkpoints').mkdir(exist_ok=True)
      (workdir / 'checkpoints' / str(step)).rename(workdir / 'damaged_checkpoints' / f'{step}-{int(time.time())}')
    manager.reload()
    return None


def kept_checkpoint(workdir: epath.Path) -> str:
  steps = sorted(int(p.name) for p in (workdir / 'checkpoints').glob('*') if p.name.isdigit())
  return f'the checkpoint at step {steps[-1]} is intact' if steps else 'no checkpoint was written yet'


def check_space(workdir: epath.Path, needed: int, step: int, any_process: Callable[[bool], bool]) -> None:
  """Refuse to start a checkpoint the local disk cannot hold.

  A write cut off by ENOSPC is still caught (see `disk_full_error`), but Orbax and TensorStore
  then print dozens of tracebacks from their writer threads.
  """
  needed = int(1.1 * needed) + 2**20  # the state plus metadata
  free = None if is_remote(workdir) else shutil.disk_usage(workdir / 'checkpoints').free
  if any_process(free is not None and free < needed):
    raise DiskFullError(f'no space left in {workdir} for the checkpoint at step {step} (it needs '
                        f'~{needed / 1e6:.1f} MB, {(free or 0) / 1e6:.1f} MB free); {kept_checkpoint(workdir)}. '
                        'Free some space and rerun the same command to resume')


_DISK_FULL = tuple(os.strerror(code) for code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG))


def disk_full_error(error: Exception, workdir: epath.Path) -> DiskFullError | None:
  """`error` said plainly if it (or one of its causes) is a full disk; else None."""
  if isinstance(error, DiskFullError):
    return error
  causes = [error]
  while len(causes) < 10 and (causes[-1].__cause__ or causes[-1].__context__) is not None:
    causes.append(causes[-1].__cause__ or causes[-1].__context__)
  for cause in causes:
    # TensorStore (Orbax's writer) reports OS errors as ValueError with the strerror in the text.
    reason = next((r for r in _DISK_FULL if r in str(cause) or getattr(cause, 'strerror', None) == r), None)
    if reason:
      return DiskFullError(f'cannot write to {workdir}: {reason.lower()}; {kept_checkpoint(workdir)}. '
                           'Free some space and rerun the same command to resume')
  return None


def finish_saves(managers: Sequence[ocp.CheckpointManager], wait: bool) -> None:
  """Let checkpoint writes in flight finish before a failure propagates (when `wait`).

  They hold states already checked finite; exiting would cut them off half written.
  """
  if not wait:
    return
  for manager in managers:
    try:
      manager.wait_until_finished()
    except Exception:  # noqa: BLE001 - e.g. the disk is full: the error being raised already says why
      pass
