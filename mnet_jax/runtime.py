"""Process-wide settings: glibc's malloc (before the interpreter allocates) and the compilation cache.

XLA:CPU allocates every execution's buffers afresh. glibc serves blocks above 32 MiB with
mmap (worker threads' arenas too) and unmaps them on free, so each train step page-faults
gigabytes of fresh, kernel-zeroed memory: for MobileNet 1.0-224 at batch 32, ~550k faults
and ~1 s of kernel time per step, and element-wise passes ran at 6 GB/s instead of 27
(measured here, see BENCHMARKS.md). One malloc arena that never maps or trims keeps the
memory for the next step. (Two arenas compiled faster, 4.6 against 7.1 s for a 0.25-36 3-seed train
step, but trained 1.0-63 at 587-663 ms per step against 554-573, interleaved, in the study's loop.)
glibc reads these tunables only at start-up, hence a re-exec.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import sys

RETAIN_MEMORY_TUNABLES = 'glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736'
OPT_OUT_VARIABLE = 'MNET_JAX_SYSTEM_MALLOC'  # set to 1 to keep glibc's defaults
_ACCELERATOR_PLUGINS = ('libtpu', 'jax_cuda12_plugin', 'jax_cuda13_plugin', 'jax_rocm60_plugin')


def retaining_memory_env(environ: dict[str, str] | None = None) -> dict[str, str] | None:
  """The environment with the tunables added, or None where they do not apply or are set."""
  environ = dict(os.environ if environ is None else environ)
  if sys.platform != 'linux' or platform.libc_ver()[0] != 'glibc' or environ.get(OPT_OUT_VARIABLE):
    return None
  if 'glibc.malloc.' in environ.get('GLIBC_TUNABLES', ''):
    return None  # already set, by us or by the user
  if any(importlib.util.find_spec(name) for name in _ACCELERATOR_PLUGINS):
    return None  # device buffers do not come from malloc; keep the host's defaults
  environ['GLIBC_TUNABLES'] = ':'.join(filter(None, [environ.get('GLIBC_TUNABLES'), RETAIN_MEMORY_TUNABLES]))
  return environ


def retain_freed_memory() -> None:
  """Re-exec this process, same command line, with `RETAIN_MEMORY_TUNABLES` (once; Linux/glibc only)."""
  environ = retaining_memory_env()
  if environ is not None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environ)


def use_compilation_cache(cache_dir: str | None, workdir: str) -> None:
  """Reuse compiled programs across reruns and sweep points of the same shapes (in `cache_dir`, by default
  <workdir>/.jax_cache), kept apart per CPU count.

  XLA:CPU splits element-wise and reduction loops over the cores it sees when it compiles, and the split
  decides how float32 sums round; a program compiled on two cores and loaded on one would not compute what
  a program compiled there computes, so a process sees only programs compiled with as many cores as it has.
  """
  import jax

  cache_dir = cache_dir or os.path.join(workdir, '.jax_cache')
  jax.config.update('jax_compilation_cache_dir', os.path.join(cache_dir, f'cpus{len(usable_cpus())}'))
  # Every program, not only those over JAX's default 1 s of compiling: a resumed or repeated small run would
  # otherwise compile its evaluation and probes again (~1 s of a 17 s tiny run here).
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)


def usable_cpus() -> list[int]:
  """The CPUs this process may run on (its affinity, e.g. under taskset), in order."""
  return sorted(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else list(range(os.cpu_count() or 1))
