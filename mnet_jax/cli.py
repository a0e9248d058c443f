"""What the `python -m mnet_jax.*` tools share: a mistake is one line on stderr and exit code 2."""

from __future__ import annotations

import argparse

USAGE_ERROR = 2


class OneLineParser(argparse.ArgumentParser):
  """Usage errors as one line on stderr and exit code 2."""

  def error(self, message: str):
    self.exit(USAGE_ERROR, f'error: {message}\n')


def one_line(error: BaseException) -> str:
  """The first non-empty line of an error's message (library errors often continue with details)."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  return lines[0] if lines else type(error).__name__
