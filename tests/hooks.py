"""Test-only hooks for real `mnet_jax.main` subprocesses: code run before the entry point that observes the run or
injects a fault at an exact moment. `hooked(command, *hooks)` turns a `python -m mnet_jax.main ...` command line into
`python -c <hooks + entry point> ...`, same flags."""

from __future__ import annotations

import os
import sys


def hooked(command: list[str], *hooks: str) -> list[str]:
  assert command[1:3] == ['-m', 'mnet_jax.main'], command[:3]
  code = '\n'.join([*hooks, "import runpy; runpy.run_module('mnet_jax.main', run_name='__main__', alter_sys=True)"])
  return [sys.executable, '-c', code, *command[3:]]


def writes_logged(log) -> str:
  """Appends to `log` every path the process opens for writing, creates or renames into place."""
  return f'''
import os, sys
_log = open({str(log)!r}, 'a', buffering=1)
_WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
def _audit(event, args):
  if event == 'open' and isinstance(args[0], str) and (args[2] or 0) & _WRITE:
    _log.write(args[0] + chr(10))
  elif event in ('os.rename', 'os.mkdir'):  # os.replace raises 'os.rename'
    _log.write(os.fspath(args[1] if event == 'os.rename' else args[0]) + chr(10))
sys.addaudithook(_audit)
'''


def allgathers_counted() -> str:
  """Counts the cross-process allgathers `preemption.any_process` makes (each waits until every process has finished
  its pending steps) and prints 'process_allgather calls: N' at exit. Orbax's own barriers are not counted."""
  return '''
import atexit, sys
from jax.experimental import multihost_utils
_calls, _allgather = [], multihost_utils.process_allgather
def _counted(*args, **kwargs):
  if sys._getframe(1).f_code.co_name == 'any_process':
    _calls.append(1)
  return _allgather(*args, **kwargs)
multihost_utils.process_allgather = _counted
atexit.register(lambda: print(f'process_allgather calls: {len(_calls)}', flush=True))
'''


def held(where: str, marker) -> str:
  """Once the run reaches `where`, touches `marker` and sleeps until killed: a deterministic window for SIGKILL.
  `where` is 'eval' (the first evaluation starts), 'curve:STEP' (the first seed's evaluation at STEP is written to
  its learning curve) or 'before:PATH' / 'after:PATH' with PATH a checkpoint's final
  directory: before or after Orbax's commit renames the fully written temporary directory into place."""
  return f'''
import pathlib, time
from orbax.checkpoint._src.path import atomicity
from mnet_jax import evaluation
_where, _marker = {where!r}, pathlib.Path({str(marker)!r})
def _hold():
  _marker.touch()
  time.sleep(3600)
if _where == 'eval':
  evaluation.evaluate = lambda *args, **kwargs: _hold()
elif _where.startswith('curve:'):
  from mnet_jax import curves
  _record = curves.Curve.record
  def _record_then_hold(self, step, metrics):
    _record(self, step, metrics)
    if step == int(_where.split(':')[1]):
      _hold()
  curves.Curve.record = _record_then_hold
else:
  _when, _path = _where.split(':', 1)
  _finalize = atomicity.AtomicRenameTemporaryPath.finalize
  async def _finalize_or_hold(self):
    mine = pathlib.Path(str(self._final_path)) == pathlib.Path(_path)
    if mine and _when == 'before':
      _hold()
    await _finalize(self)
    if mine and _when == 'after':
      _hold()
  atomicity.AtomicRenameTemporaryPath.finalize = _finalize_or_hold
'''


def filled_after_check(filler, room: int) -> str:
  """Right after the first disk-space check before a checkpoint passes, fills `filler`'s filesystem to `room`
  bytes short of full: the checkpoint's small metadata files still fit, its arrays do not, so the write fails
  partway with the OS's own ENOSPC, as when another job fills the disk."""
  return f'''
import os
from mnet_jax import checkpointing
_check_space = checkpointing.check_space
def _check_then_fill(*args):
  _check_space(*args)
  checkpointing.check_space = _check_space
  with open({str(filler)!r}, 'wb', buffering=0) as out:
    try:
      while True:
        out.write(bytes(1 << 16))
    except OSError:
      out.truncate(max(0, os.fstat(out.fileno()).st_size - {room}))
checkpointing.check_space = _check_then_fill
'''


def signalled(at_batch: int, signal_name: str) -> str:
  """Sends the process `signal_name` (e.g. 'SIGTERM') as its training loop takes batch `at_batch` (counted from 1
  in this process): a real signal that arrives at a known step."""
  return f'''
import os, signal
from mnet_jax import input_pipeline
_train_batches = input_pipeline.train_batches
def _signalling(*args, **kwargs):
  for index, batch in enumerate(_train_batches(*args, **kwargs), 1):
    if index == {at_batch}:
      os.kill(os.getpid(), signal.{signal_name})
    yield batch
input_pipeline.train_batches = _signalling
'''


def restores_failing(times: int, error: str, backoff_s: float = 0.05, process: int | None = None) -> str:
  """Makes the first `times` Orbax checkpoint restores of this process (of process `process` only, if given) raise
  `error` (a Python expression such as "TimeoutError('read timed out')"; `errno` is imported) before reading
  anything, prints 'restore failed: N' at each, and shortens the retry waits to `backoff_s` so the test runs in
  seconds."""
  return f'''
import errno
import jax
import orbax.checkpoint as ocp
from mnet_jax import checkpointing
checkpointing.RESTORE_BACKOFF_S = {backoff_s!r}
_restore, _failed = ocp.Checkpointer.restore, []
def _failing_restore(self, *args, **kwargs):
  if len(_failed) < {times} and {process!r} in (None, jax.process_index()):
    _failed.append(1)
    print(f'restore failed: {{len(_failed)}}', flush=True)
    raise {error}
  return _restore(self, *args, **kwargs)
ocp.Checkpointer.restore = _failing_restore
'''


def without_jax_or_tensorflow(env: dict, directory, repo) -> dict:
  """`env` with `jax` and `tensorflow` packages that fail on import first on the path: a run that still reports its
  mistake found it before importing either."""
  for name in ('jax', 'tensorflow'):
    (directory / name).mkdir(parents=True)
    (directory / name / '__init__.py').write_text(f"raise ImportError('{name} was imported')\n")
  return dict(env, PYTHONPATH=f'{directory}{os.pathsep}{repo}')
