"""What the launchers share: the main command line, sweep point names, bad-input exits. Standard library only."""

from __future__ import annotations

import argparse
import pathlib
import re
import sys
from typing import NoReturn

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
USAGE_ERROR = 2
DEFAULT_CONFIG = 'experiments/sweep.py:imagenet2012'
# The launchers run where JAX may not be installed, so this mirrors mnet_jax.study's point names: the grid's part,
# then one part per other axis (a1_r224_steps300); the study stays the authority when the job starts.
POINT_NAME = re.compile(r'(?:[a-z]+_)?a[0-9.]+_r[0-9]+(?:_[A-Za-z][A-Za-z0-9.+-]*)*')


def fail(message: str) -> NoReturn:
  print(f'error: {message}', file=sys.stderr)
  sys.exit(USAGE_ERROR)


class Parser(argparse.ArgumentParser):
  """argparse, but bad input is one line and exit code 2."""

  def error(self, message: str) -> NoReturn:
    fail(message)


def split_main_flags(argv: list[str]) -> tuple[list[str], list[str]]:
  """Arguments before `--` are the launcher's; those after are passed to mnet_jax.main unchanged."""
  if '--' in argv:
    index = argv.index('--')
    return argv[:index], argv[index + 1:]
  return argv, []


def main_args(config: str, workdir: str, main_flags: list[str]) -> list[str]:
  """Arguments after the Python interpreter: every process of a multi-host job runs exactly this."""
  return ['-m', 'mnet_jax.main', f'--config={config}', f'--workdir={workdir}', '--distributed', *main_flags]


def point_names(values: list[str]) -> list[str]:
  """Point names from space- and/or comma-separated values, checked and de-duplicated in order."""
  names = [n.strip() for v in values for n in v.split(',') if n.strip()]
  if not names:
    fail('no sweep points given; expected names like a1_r224 a0.75_r192')
  bad = [n for n in names if not POINT_NAME.fullmatch(n)]
  if bad:
    fail(f'bad sweep point name(s) {", ".join(bad)}; expected e.g. a1_r224, conv_a1_r224 or a0.5_r160_steps300')
  return list(dict.fromkeys(names))
