"""Helpers for config files: big_vision-style `path.py:arg` parsing and sibling imports."""

from __future__ import annotations

import importlib.util
import pathlib
import types
from typing import Any

import ml_collections


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """Parse 'preset,key=value,flag' into a ConfigDict typed like `defaults`.

  A bare word sets the first default (the preset name) unless it names a boolean
  default, which it then sets to True.
  """
  result = dict(defaults)
  first = next(iter(defaults), None)
  for item in filter(None, (arg or '').split(',')):
    key, sep, value = item.partition('=')
    if not sep:
      if isinstance(defaults.get(key), bool):
        result[key] = True
        continue
      key, value = first, item
    if key not in defaults:
      raise ValueError(f'unknown config argument {key!r}; expected one of {", ".join(defaults)}')
    kind = type(defaults[key])
    if kind is bool:
      result[key] = value.lower() in ('1', 'true', 'yes')
    else:
      try:
        result[key] = kind(value)
      except ValueError:
        raise ValueError(f'config argument {key}={value!r} is not a {kind.__name__}') from None
  return ml_collections.ConfigDict(result)


def sibling(config_file: str, name: str) -> types.ModuleType:
  """Import `name`.py from the directory of `config_file` (configs are loaded by path)."""
  path = pathlib.Path(config_file).with_name(f'{name}.py')
  spec = importlib.util.spec_from_file_location(f'_mnet_config_{name}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module
