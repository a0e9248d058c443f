"""The malloc settings re-exec: applied once, to the same command line, and in effect in the new process."""

import importlib.util
import os
import pathlib
import platform
import subprocess
import sys

import pytest

from mnet_jax import runtime

# What the re-exec must set, written out: one arena, no mmap'd blocks, never trim the heap.
TUNABLES = 'glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736'
ACCELERATOR_PLUGINS = ('libtpu', 'jax_cuda12_plugin', 'jax_cuda13_plugin', 'jax_rocm60_plugin')

# Where the settings apply (Linux with glibc, no accelerator plugin), as on the machines this project runs CI on.
APPLIES_HERE = (sys.platform == 'linux' and platform.libc_ver()[0] == 'glibc'
                and not any(importlib.util.find_spec(name) for name in ACCELERATOR_PLUGINS))
needs_glibc_cpu = pytest.mark.skipif(not APPLIES_HERE, reason='the settings apply to Linux/glibc CPU hosts only')

# Re-execs itself through the runtime, then mallocs 64 MiB and says whether it came from the brk heap (mmap_max=0)
# or from a fresh mapping (glibc's default for blocks this large).
PROBE = '''
import ctypes, os, sys
from mnet_jax import runtime
print('start', flush=True)
runtime.retain_freed_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
address = libc.malloc(64 << 20)
heaps = [line.split()[0].split('-') for line in open('/proc/self/maps') if line.rstrip().endswith('[heap]')]
where = 'heap' if any(int(lo, 16) <= address < int(hi, 16) for lo, hi in heaps) else 'mapping'
print(os.environ.get('GLIBC_TUNABLES', ''), sys.argv[1:], where)
'''


@needs_glibc_cpu
def test_tunables_are_added_once_and_respect_opt_out_and_user_settings():
  assert runtime.retaining_memory_env({'PATH': '/bin'}) == {'PATH': '/bin', 'GLIBC_TUNABLES': TUNABLES}
  assert runtime.retaining_memory_env({'GLIBC_TUNABLES': TUNABLES}) is None  # applied: no second re-exec
  assert runtime.retaining_memory_env({'MNET_JAX_SYSTEM_MALLOC': '1'}) is None
  assert runtime.retaining_memory_env({'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2'}) is None  # the user's own
  assert runtime.retaining_memory_env({'GLIBC_TUNABLES': 'glibc.rtld.nns=2'}) == {
      'GLIBC_TUNABLES': 'glibc.rtld.nns=2:' + TUNABLES}


def run_probe(tmp_path, **extra_env) -> list[str]:
  env = {k: v for k, v in os.environ.items() if k not in ('GLIBC_TUNABLES', 'MNET_JAX_SYSTEM_MALLOC')}
  env.update(PYTHONPATH=str(pathlib.Path(__file__).resolve().parent.parent), **extra_env)
  return subprocess.run([sys.executable, '-c', PROBE, 'a', '--b=c'], env=env, capture_output=True, text=True,
                        check=True).stdout.splitlines()


@needs_glibc_cpu
def test_reexec_keeps_the_command_line_and_glibc_applies_the_tunables(tmp_path):
  # The first process printed "start" and was replaced; the second ran the rest, its large block on the heap.
  assert run_probe(tmp_path) == ['start', 'start', f"{TUNABLES} ['a', '--b=c'] heap"]
  # Opted out: no re-exec, and glibc maps the block as usual (so the probe tells the two apart).
  assert run_probe(tmp_path, MNET_JAX_SYSTEM_MALLOC='1') == ['start', " ['a', '--b=c'] mapping"]
