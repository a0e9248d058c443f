"""A study as data: its points, each a small set of config overrides with a stable, readable name.

The grid (`sweep.variants` × `sweep.alphas` × `sweep.resolutions`, or the explicit `sweep.points` names) gives
every point its model. `sweep.axes` adds any other config field as an axis, in the spirit of big_vision's
`get_hyper`:

    --config.sweep.axes="model.alpha=1,0.5,0.25;num_train_steps=150,300,600"

`;` separates axes and `,` values; axes combine as a product (`sweep.zip_axes=True`: element-wise). A config file
may instead set `sweep.axes` to a list of dicts, one per point, e.g. `[{'model.depth': 0.5, 'model.alpha': 1.0}]`.
An axis on a grid field replaces that grid axis. Seeds stay their own axis (`sweep.seeds`).

A point's name is its run directory: the grid's `a0.5_r63` (`conv_a1_r224` for a variant), then one part per
other axis, e.g. `a0.5_r63_steps300`. Imports no JAX: `main` expands and checks a study before JAX starts.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
from typing import Any

import ml_collections

from mnet_jax import architecture, config_checks

STUDY_JSON = 'study.json'  # in the study's workdir: its swept columns and paths, point names and config
GRID_FIELDS = {'model.variant': 'variants', 'model.alpha': 'alphas', 'model.resolution': 'resolutions'}
# The column a field takes in the result tables: the model's own names for the fields that describe the model
# and its data; every other field its dotted config path.
COLUMNS = {'model.variant': 'variant', 'model.alpha': 'alpha', 'model.resolution': 'resolution',
           'model.depth': 'depth', 'data.train_examples': 'train_examples'}
# What a study without study.json (written before studies) swept: the grid, the α×ρ sweep and its ablations.
DEFAULT_SWEPT_COLUMNS = tuple(COLUMNS[path] for path in GRID_FIELDS)
_PATHS = {column: path for path, column in COLUMNS.items()}
# Short names in run dir names; any other field is named by its last path component.
SHORT_NAMES = {'num_train_steps': 'steps', 'num_epochs': 'ep', 'batch_size': 'bs', 'model.depth': 'd',
               'data.train_examples': 'n', 'optim.learning_rate': 'lr', 'optim.weight_decay': 'wd',
               'model.dropout_rate': 'drop', 'optim.label_smoothing': 'ls', 'optim.ema_decay': 'ema',
               'model.activation': 'act', 'optim.optimizer': 'opt', 'optim.schedule': 'sched'}
# Fields that do not change what is trained, or that are the study itself.
NOT_SWEEPABLE = {
    'seed': 'seeds are their own axis: use --config.sweep.seeds',
    'compilation_cache_dir': 'it does not change what is trained',
    'allow_config_change': 'it does not change what is trained',
    'log_every_steps': 'it does not change what is trained',
    'checkpoint_every_steps': 'it does not change what is trained',
    'max_checkpoints_to_keep': 'it does not change what is trained',
    'eval_every_steps': 'it does not change what is trained (every point evaluates on its own schedule)',
    'eval_at': 'it does not change what is trained (every point evaluates on its own schedule)',
}
_SEPARABLE = 'separable'
_LEGACY_NAME = re.compile(r'(?:(?P<variant>[a-z]+)_)?a(?P<alpha>[0-9.]+)_r(?P<resolution>[0-9]+)')


@dataclasses.dataclass(frozen=True)
class Point:
  """One point of a study: the config overrides of its runs, the grid's model fields first."""

  overrides: tuple[tuple[str, Any], ...]

  def value(self, path: str) -> Any:
    return dict(self.overrides)[path]

  @property
  def variant(self) -> str:
    return self.value('model.variant')

  @property
  def alpha(self) -> float:
    return self.value('model.alpha')

  @property
  def resolution(self) -> int:
    return self.value('model.resolution')

  @property
  def name(self) -> str:
    prefix = '' if self.variant == _SEPARABLE else f'{self.variant}_'
    parts = [f'{prefix}a{self.alpha:g}_r{self.resolution}']
    parts += [f'{short_name(path)}{_value_text(value)}' for path, value in self.overrides if path not in GRID_FIELDS]
    return '_'.join(parts)

  def columns(self) -> dict[str, Any]:
    """The point's swept fields as result-table columns."""
    return {column_name(path): value for path, value in self.overrides}

  def to_json(self) -> dict[str, Any]:
    return {'name': self.name, 'overrides': dict(self.overrides)}


@dataclasses.dataclass(frozen=True)
class Study:
  points: list[Point]
  swept: list[str]  # the config paths the points set, grid fields first
  notes: list[str]  # one line each, for the log (e.g. an axis that replaced a grid axis)

  @property
  def columns(self) -> list[str]:
    return [column_name(p) for p in self.swept]


def column_name(path: str) -> str:
  return COLUMNS.get(path, path)


def column_path(column: str) -> str:
  """The config path of a table column: 'alpha' -> 'model.alpha'; any other column is its path already."""
  return _PATHS.get(column, column)


def short_name(path: str) -> str:
  return SHORT_NAMES.get(path, path.rsplit('.', 1)[-1])


def _value_text(value: Any) -> str:
  text = f'{value:g}' if isinstance(value, float) else str(value)
  return re.sub(r'[^A-Za-z0-9.+-]', '-', text)


def point_from_json(content: dict[str, Any]) -> Point:
  """The point a `point.json` describes."""
  return Point(tuple(content['overrides'].items()))


def legacy_point(name: str) -> Point:
  """'a0.75_r128' or 'conv_a1_r224' -> its Point (run dirs written before `point.json` existed)."""
  match = _LEGACY_NAME.fullmatch(name.strip())
  if not match:
    raise ValueError(f'bad sweep point name {name!r}; expected e.g. a0.75_r128 or conv_a1_r224')
  return _grid_point(match['variant'] or _SEPARABLE, float(match['alpha']), int(match['resolution']))


def _grid_point(variant: str, alpha: float, resolution: int) -> Point:
  architecture.check_variant(variant)
  architecture.check_alpha(alpha)
  architecture.check_resolution(resolution)
  # Through the name: a point is what its run dir says, e.g. alpha 0.333333 for 1/3.
  return Point((('model.variant', variant), ('model.alpha', float(f'{alpha:g}')), ('model.resolution', resolution)))


def _numbers(text: str, kind: type) -> list:
  try:
    return [kind(v) for v in str(text).split(',') if v.strip()]
  except ValueError:
    raise ValueError(f'expected a comma-separated list of {kind.__name__}s, got {text!r}') from None


def _grid_values(sweep: ml_collections.ConfigDict) -> dict[str, list]:
  values = {'model.variant': [v.strip() for v in sweep.variants.split(',') if v.strip()],
            'model.alpha': _numbers(sweep.alphas, float), 'model.resolution': _numbers(sweep.resolutions, int)}
  checks = {'model.variant': architecture.check_variant, 'model.alpha': architecture.check_alpha,
            'model.resolution': architecture.check_resolution}
  for path, field_values in values.items():  # named by the field the user set, not by a point's name
    for value in field_values:
      try:
        checks[path](value)
      except ValueError as e:
        raise ValueError(f'sweep.{GRID_FIELDS[path]}: {e}') from None
  return values


def _typed(path: str, value: Any, default: Any) -> Any:
  """`value` (a string from the command line, or a Python value from a config file) as the field's type."""
  kind = type(default)
  wrong = ValueError(f'sweep.axes: {path} takes {kind.__name__} values, got {value!r}')
  if isinstance(value, str) and kind is not str:
    text = value.strip()
    if kind is bool:
      if text.lower() not in ('true', 'false'):
        raise wrong
      return text.lower() == 'true'
    try:
      value = int(text) if kind is int else float(text)
    except ValueError:
      raise wrong from None
  if kind is float and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  if type(value) is not kind:
    raise wrong
  if kind is float and not math.isfinite(value):
    raise wrong
  return value.strip() if kind is str else value


def _sweepable(config: ml_collections.ConfigDict, path: str) -> Any:
  """The field's current value; ValueError if `path` cannot be an axis."""
  if not path or path.split('.')[0] == 'sweep':
    raise ValueError(f'sweep.axes: {path or "an empty field name"} cannot be swept: sweep fields describe the study')
  if path in NOT_SWEEPABLE:
    raise ValueError(f'sweep.axes: {path} cannot be swept: {NOT_SWEEPABLE[path]}')
  node = config
  for key in path.split('.'):
    if not isinstance(node, ml_collections.ConfigDict) or key not in node:
      raise ValueError(f'sweep.axes: unknown config field {path!r}')
    node = node[key]
  if isinstance(node, ml_collections.ConfigDict) or not isinstance(node, (bool, int, float, str)):
    raise ValueError(f'sweep.axes: {path} is not a number, string or bool field and cannot be swept')
  return node


def parse_axes(text: str) -> list[tuple[str, list[str]]]:
  """'model.alpha=1,0.5;num_train_steps=150,300' -> [('model.alpha', ['1', '0.5']), ...] (values untyped)."""
  axes = []
  for part in text.split(';'):
    if not part.strip():
      continue
    path, sep, values = part.partition('=')
    if not sep:
      raise ValueError(f'sweep.axes: expected FIELD=VALUE,VALUE,... separated by ";", got {part.strip()!r}')
    values = [v.strip() for v in values.split(',') if v.strip()]
    if not values:
      raise ValueError(f'sweep.axes: {path.strip()} has no values')
    axes.append((path.strip(), values))
  return axes


def _axis_points(config: ml_collections.ConfigDict) -> tuple[list[str], list[dict[str, Any]]]:
  """The swept paths of `sweep.axes` and its override sets, each typed like the config field it sets."""
  axes = config.sweep.get('axes', '') or ''
  zipped = bool(config.sweep.get('zip_axes', False))
  if isinstance(axes, str):
    parsed = parse_axes(axes)
    paths = [p for p, _ in parsed]
    duplicated = sorted({p for p in paths if paths.count(p) > 1})
    if duplicated:
      raise ValueError(f'sweep.axes: {", ".join(duplicated)} given as two axes; list its values in one')
    typed = [[_typed(p, v, _sweepable(config, p)) for v in values] for p, values in parsed]
    for path, values in zip(paths, typed, strict=True):
      repeated = sorted({_value_text(v) for v in values if values.count(v) > 1})
      if repeated:
        raise ValueError(f'sweep.axes: {path} lists {", ".join(repeated)} twice')
    if zipped and len({len(v) for v in typed}) > 1:
      lengths = ', '.join(f'{p} {len(v)}' for p, v in zip(paths, typed, strict=True))
      raise ValueError(f'sweep.zip_axes pairs axes element-wise, so they need as many values each; got {lengths}')
    combos = zip(*typed, strict=True) if zipped else itertools.product(*typed)
    return paths, [dict(zip(paths, combo, strict=True)) for combo in combos]
  if not isinstance(axes, (list, tuple)) or not all(isinstance(p, dict) and p for p in axes):
    raise ValueError('sweep.axes must be a string like "model.alpha=1,0.5;num_train_steps=150,300" '
                     'or a list of dicts, one per point, of {config path: value}')
  paths = list(dict.fromkeys(p for point in axes for p in point))
  if any(set(point) != set(paths) for point in axes):
    raise ValueError(f'sweep.axes: every point of the list must set the same fields ({", ".join(paths)})')
  return paths, [{p: _typed(p, point[p], _sweepable(config, p)) for p in paths} for point in axes]


def expand(config: ml_collections.ConfigDict) -> Study:
  """Every point of the sweep in `config`, checked: ValueError with one line on the first mistake."""
  sweep = config.sweep
  axis_paths, axis_points = _axis_points(config)
  replaced = [p for p in axis_paths if p in GRID_FIELDS]
  notes = []
  if sweep.points:
    if replaced:
      raise ValueError(f'sweep.axes sets {", ".join(replaced)}, which sweep.points names for each point; '
                       'use the grid fields (sweep.alphas, ...) with sweep.axes instead')
    grid = [legacy_point(n) for n in sweep.points.split(',') if n.strip()]
  else:
    values = _grid_values(sweep)
    for path in replaced:
      values[path] = [None]
      notes.append(f'[sweep] sweep.axes sets {path}: it replaces sweep.{GRID_FIELDS[path]}')
    grid = [_grid_point(*combo) if None not in combo else Point(tuple(zip(GRID_FIELDS, combo, strict=True)))
            for combo in itertools.product(*values.values())]
  for path in axis_paths:  # a bad value is named by its axis, before the points that combine it
    for value in dict.fromkeys(p[path] for p in axis_points):
      try:
        config_checks.check(point_config(config, Point(((path, value),))))
      except ValueError as e:
        raise ValueError(f'sweep.axes: {path}={_value_text(value)}: {e}') from None
  points = []
  for grid_point, axis_point in itertools.product(grid, axis_points or [{}]):
    overrides = {path: axis_point.get(path, value) for path, value in grid_point.overrides}
    overrides.update({p: v for p, v in axis_point.items() if p not in GRID_FIELDS})
    points.append(Point(tuple(overrides.items())))
  if not points:
    raise ValueError('the sweep has no points')
  points = list(dict.fromkeys(points))
  _check_names_unique(points)
  for point in points:
    try:
      config_checks.check(point_config(config, point))
    except ValueError as e:
      raise ValueError(f'sweep point {point.name}: {e}') from None
  return Study(points, list(GRID_FIELDS) + [p for p in axis_paths if p not in GRID_FIELDS], notes)


def _check_names_unique(points: list[Point]) -> None:
  seen: dict[str, Point] = {}
  for point in points:
    if point.name in seen:
      raise ValueError(f'two sweep points would share the run dir {point.name!r}: {dict(seen[point.name].overrides)} '
                       f'and {dict(point.overrides)}; names keep 6 significant digits: use values that differ in them')
    seen[point.name] = point


def selected(sweep: ml_collections.ConfigDict, points: list[Point]) -> list[Point]:
  """The points this invocation runs: all, or those named in `sweep.only` (e.g. one per TPU slice)."""
  if not sweep.only:
    return points
  wanted = [n.strip() for n in sweep.only.split(',') if n.strip()]
  unknown = sorted(set(wanted) - {p.name for p in points})
  if unknown:
    raise ValueError(f'sweep.only names points not in the sweep: {", ".join(unknown)}')
  return [p for p in points if p.name in wanted]


def seeds_of(sweep: ml_collections.ConfigDict) -> list[int]:
  """The sweep's seeds, e.g. '0,1,2' -> [0, 1, 2]."""
  seeds = list(dict.fromkeys(_numbers(sweep.seeds, int)))
  if not seeds or min(seeds) < 0:
    raise ValueError(f'sweep.seeds must list non-negative integers, got {sweep.seeds!r}')
  return seeds


def point_config(config: ml_collections.ConfigDict, point: Point) -> ml_collections.ConfigDict:
  """The single-run config of one point: the sweep's config without `sweep`, with the point's overrides."""
  run = ml_collections.ConfigDict(config.to_dict())
  del run.sweep
  for path, value in point.overrides:
    *parents, leaf = path.split('.')
    node = run
    for key in parents:
      node = node[key]
    node[leaf] = value
  return run
