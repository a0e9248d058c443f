"""The malloc settings re-exec: applied once, to the same command line, and only where they fit."""

import os
import pathlib
import subprocess
import sys

from mnet_jax import runtime


def test_tunables_are_added_once_and_respect_opt_out_and_user_settings():
  env = runtime.retaining_memory_env({'PATH': '/bin'})
  if env is None:  # not Linux/glibc, or an accelerator plugin is installed: nothing to do
    return
  assert env['GLIBC_TUNABLES'] == runtime.RETAIN_MEMORY_TUNABLES and env['PATH'] == '/bin'
  assert runtime.retaining_memory_env(env) is None  # already applied: no second re-exec
  assert runtime.retaining_memory_env({runtime.OPT_OUT_VARIABLE: '1'}) is None
  assert runtime.retaining_memory_env({'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2'}) is None
  kept = runtime.retaining_memory_env({'GLIBC_TUNABLES': 'glibc.rtld.nns=2'})
  assert kept['GLIBC_TUNABLES'] == 'glibc.rtld.nns=2:' + runtime.RETAIN_MEMORY_TUNABLES


def test_reexec_keeps_the_command_line_and_sets_the_tunables(tmp_path):
  script = tmp_path / 'probe.py'
  script.write_text('import os, sys\nfrom mnet_jax import runtime\nprint("start", flush=True)\n'
                    'runtime.retain_freed_memory()\nprint(os.environ.get("GLIBC_TUNABLES", ""), sys.argv[1:])\n')
  env = {k: v for k, v in os.environ.items() if k not in ('GLIBC_TUNABLES', runtime.OPT_OUT_VARIABLE)}
  env['PYTHONPATH'] = str(pathlib.Path(__file__).resolve().parent.parent)
  out = subprocess.run([sys.executable, str(script), 'a', '--b=c'], env=env, capture_output=True, text=True,
                       check=True).stdout.splitlines()
  expected = runtime.retaining_memory_env(env)
  if expected is None:
    assert out == ['start', "['a', '--b=c']"]
  else:  # the first process printed "start" and was replaced; the second ran the rest
    assert out == ['start', 'start', f"{runtime.RETAIN_MEMORY_TUNABLES} ['a', '--b=c']"]
