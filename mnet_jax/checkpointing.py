"""Orbax checkpoints of the train state: create, restore the newest good one, guard the disk.

A run directory keeps its checkpoints in `<run>/checkpoints/<step>`. Orbax writes them
asynchronously and atomically (a `<step>.orbax-checkpoint-tmp` folder is never "latest").
Seeds trained together keep one run directory each and are saved at the same steps, so a
group resumes from the newest step that every one of its run directories holds intact. Only damaged content sets
a checkpoint aside; a read error that may pass (a timeout, a 503) is retried, then stops the run with nothing moved.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from mnet_jax.fileio import is_remote


class DiskFullError(OSError):
  """The workdir's disk (or quota) is full: the user's to fix, like bad input (exit code 2)."""


def create_manager(workdir: epath.Path, max_to_keep: int) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      workdir / 'checkpoints',
      options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True, cleanup_tmp_directories=True))


RESTORE_TRIES = 4  # reads of one checkpoint before a transient error ends the run
RESTORE_BACKOFF_S = 1.0  # the wait before the second read; doubled before each later one (1 + 2 + 4 s in all)

_OK, _DAMAGED, _UNAVAILABLE = 0, 1, 2  # a restore's outcome, as exchanged between processes


class CheckpointUnavailableError(RuntimeError):
  """A checkpoint could not be read for a reason that may pass (a timeout, a 5xx): the run stops, nothing moved."""


_TRANSIENT_ERRNOS = frozenset({
    errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNREFUSED, errno.ECONNABORTED, errno.EPIPE, errno.EAGAIN,
    errno.EHOSTUNREACH, errno.EHOSTDOWN, errno.ENETUNREACH, errno.ENETDOWN, errno.ENETRESET, errno.EIO,
    errno.EBUSY, errno.ESTALE})
# TensorStore (Orbax's reader) reports I/O failures as ValueError whose text holds the gRPC-style status code, the
# HTTP status of a cloud store, or the OS's strerror.
_TRANSIENT_TEXT = re.compile('|'.join([
    r'\b(?:UNAVAILABLE|DEADLINE_EXCEEDED|RESOURCE_EXHAUSTED)\b',  # status codes, in capitals
    r'(?i:\b(?:HTTP|status|response code)\D{0,20}(?:5\d\d|429)\b)',
    *(f'(?i:{re.escape(os.strerror(code))})' for code in sorted(_TRANSIENT_ERRNOS)),
]))


def is_transient(error: BaseException) -> bool:
  """Whether `error` (or one of its causes) is an I/O failure that may pass on retry, not damaged content."""
  causes = [error]
  while len(causes) < 10 and (causes[-1].__cause__ or causes[-1].__context__) is not None:
    causes.append(causes[-1].__cause__ or causes[-1].__context__)
  for cause in causes:
    if isinstance(cause, (TimeoutError, ConnectionError)):
      return True
    if isinstance(cause, OSError) and cause.errno in _TRANSIENT_ERRNOS:
      return True
    if _TRANSIENT_TEXT.search(str(cause)):
      return True
  return False


def restore_newest_common(managers: Sequence[ocp.CheckpointManager], target: Any, workdirs: Sequence[epath.Path],
                          log: Callable[[str], None]) -> list[Any] | None:
  """The states at the newest step that every manager holds, restorable and finite; None if there is none.

  A checkpoint whose content is damaged is moved to `<run>/damaged_checkpoints/` with a warning and the next older
  common step is tried. A read that fails in a way that may pass is retried (`RESTORE_TRIES`), then raises
  CheckpointUnavailableError with every checkpoint left in place. With several processes, process 0 picks the step,
  all processes share their outcomes, and all take the same decision: only process 0 moves a checkpoint aside.
  """
  while True:
    common = set.intersection(*(set(m.all_steps()) for m in managers))
    step = _agreed_step(max(common) if common else -1)
    if step < 0:
      return None
    outcomes, states, errors = [], [], []
    for manager, workdir in zip(managers, workdirs, strict=True):
      state, error = _restore_with_retries(manager, step, target, workdir, log)
      outcomes.append(_OK if error is None else _UNAVAILABLE if is_transient(error) else _DAMAGED)
      states.append(state)
      errors.append(error)
    outcomes = _outcomes_of_all_processes(outcomes)
    if (outcomes == _UNAVAILABLE).any():
      where, error = next(((w, e) for w, e in zip(workdirs, errors, strict=True) if e is not None and is_transient(e)),
                          (workdirs[0], None))
      reason = f'{type(error).__name__}: {error}' if error is not None else 'another process could not read it'
      raise CheckpointUnavailableError(
          f'could not read the checkpoint at step {step} in {where} after {RESTORE_TRIES} tries ({reason}); '
          'this may pass, so nothing was moved: rerun the same command to resume') from error
    damaged = (outcomes == _DAMAGED).any(axis=0)
    if not damaged.any():
      where = workdirs[0] if len(workdirs) == 1 else f'{len(workdirs)} run dirs ({workdirs[0]}, ...)'
      log(f'[train] resumed from checkpoint at step {step} in {where}')
      return states
    for workdir, error, is_damaged in zip(workdirs, errors, damaged, strict=True):
      if is_damaged:
        reason = f'{type(error).__name__}: {error}' if error is not None else 'another process could not read it'
        log(f'[train] WARNING: skipping damaged checkpoint at step {step} ({reason}); '
            f'moved to {workdir / "damaged_checkpoints"}')
        if jax.process_index() == 0:
          (workdir / 'damaged_checkpoints').mkdir(exist_ok=True)
          (workdir / 'checkpoints' / str(step)).rename(
              workdir / 'damaged_checkpoints' / f'{step}-{int(time.time())}')
    _sync('mnet_jax_damaged_checkpoints_moved')  # every process lists the checkpoints after the move
    for manager in managers:
      manager.reload()


def _restore_with_retries(manager: ocp.CheckpointManager, step: int, target: Any, workdir: epath.Path,
                          log: Callable[[str], None]) -> tuple[Any, Exception | None]:
  """(state, None) if `step` restores finite; else (None, the error): transient only after `RESTORE_TRIES` reads."""
  attempt = 1
  while True:
    try:
      state = _read(manager, step, target)
      if not all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(state.params)):
        return None, ValueError('non-finite parameters')
      return state, None
    except Exception as e:  # noqa: BLE001 - classified: damaged content is set aside, a passing error retried
      if not is_transient(e) or attempt == RESTORE_TRIES:
        return None, e
      wait = RESTORE_BACKOFF_S * 2 ** (attempt - 1)
      log(f'[train] WARNING: reading the checkpoint at step {step} in {workdir} failed ({type(e).__name__}: {e}); '
          f'retrying in {wait:g} s ({attempt}/{RESTORE_TRIES - 1})')
      time.sleep(wait)
      attempt += 1


def _read(manager: ocp.CheckpointManager, step: int, target: Any) -> Any:
  """`step`'s state, read by this process alone: `manager.restore` ends in a barrier of all processes, which a
  process whose read failed would never reach, so the others would wait there instead of sharing outcomes."""
  alone = ocp.options.MultiprocessingOptions(primary_host=jax.process_index(), active_processes={jax.process_index()})
  handler = ocp.StandardCheckpointHandler(multiprocessing_options=alone)
  with ocp.Checkpointer(handler, multiprocessing_options=alone) as checkpointer:
    return checkpointer.restore(manager.directory / str(step) / 'default', args=ocp.args.StandardRestore(target))


def _agreed_step(step: int) -> int:
  """Process 0's `step` on every process (a listing may differ between hosts for a moment on a cloud store)."""
  if jax.process_count() == 1:
    return step
  from jax.experimental import multihost_utils
  return int(multihost_utils.broadcast_one_to_all(np.int32(step)))


def _outcomes_of_all_processes(outcomes: list[int]) -> np.ndarray:
  """Each process's restore outcome per run dir: shape (processes, run dirs)."""
  local = np.asarray(outcomes, np.int32)
  if jax.process_count() == 1:
    return local[None]
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(local)).reshape(jax.process_count(), -1)


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


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
