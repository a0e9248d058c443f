"""Two studies joined point by point: each read from its workdir, its points keyed on the union of both studies'
swept columns, B − A per joined point with Welch's CI, and the config fields that differ.

A point of either study is identified by its values in the union of both studies' swept columns (study.json's
`swept`; `study.DEFAULT_SWEPT_COLUMNS` for studies without one), never by its name alone: two studies may both
call a point 'a0.5_r64' and still have trained it for different numbers of steps. A column a row lacks takes the
study's config value. Per point in both studies: the metric's mean over the seeds that finished in each (n), and
B − A with Welch's 95% interval (Welch–Satterthwaite df); n < 2 on either side gives the difference without a CI.
Imports neither JAX nor matplotlib: `compare` prints, tabulates and draws what this joins.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable
from typing import Any

from etils import epath

from mnet_jax import report, stats
from mnet_jax.study import DEFAULT_SWEPT_COLUMNS, NOT_SWEEPABLE, STUDY_JSON, column_path

LOSS = 'eval_loss'
METRICS = ('top1', 'top5', LOSS)


@dataclasses.dataclass(frozen=True)
class Study:
  """One study directory's rows, what it swept and its config (nested; None when unknown)."""

  workdir: str
  rows: list[dict[str, Any]]
  swept: tuple[str, ...]
  config: dict[str, Any] | None
  config_source: str
  paths: dict[str, str] = dataclasses.field(default_factory=dict)  # study.json's swept column -> config path

  def config_path(self, column: str) -> str:
    return self.paths.get(column) or column_path(column)


@dataclasses.dataclass(frozen=True)
class Point:
  """One point of one study: its key (values in the joined columns), name, a row describing it (mult_adds, ...)
  and per metric the Summary over its finished seeds (None where it has no value)."""

  key: tuple[Any, ...]
  name: str
  row: dict[str, Any]
  summaries: dict[str, stats.Summary | None]


@dataclasses.dataclass(frozen=True)
class Comparison:
  """Study B against study A: the joined columns, the points in both (in A's order), those in one only."""

  a: Study
  b: Study
  labels: tuple[str, str]
  columns: tuple[str, ...]
  metric: str
  joined: list[tuple[Point, Point]]
  only_a: list[Point]
  only_b: list[Point]
  config_differences: list[str]
  notes: list[str]


def flatten(config: dict[str, Any], prefix: str = '') -> dict[str, Any]:
  """A nested config as {dotted path: value}; lists stay values."""
  flat = {}
  for key, value in config.items():
    path = f'{prefix}{key}'
    if isinstance(value, dict):
      flat.update(flatten(value, f'{path}.'))
    else:
      flat[path] = value
  return flat


def _lookup(config: dict[str, Any] | None, path: str) -> Any:
  node: Any = config
  for part in path.split('.'):
    if not isinstance(node, dict) or part not in node:
      return None
    node = node[part]
  return node


def _read_json(path: epath.Path) -> Any:
  try:
    return json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f'{path} is not valid JSON: {e}') from None


def _run_config(workdir: epath.Path, rows: list[dict[str, Any]]) -> tuple[dict[str, Any] | None, str]:
  """The config.json of the first run dir that has a readable one: older studies saved no study config."""
  for row in rows:
    if row.get('kind') != report.RUN:
      continue
    path = workdir / str(row['name']) / f'seed{row.get("seed")}' / 'config.json'
    try:
      config = json.loads(path.read_text()) if path.exists() else None
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
      config = None  # a damaged run config: another run's will do
    if isinstance(config, dict):
      return config, os.fspath(path.relative_to(workdir))
  return None, 'unknown'


def load_study(workdir: str | os.PathLike) -> Study:
  """results.json (required), study.json's swept columns and config, else defaults and a run's config.json."""
  rows = report.load_results(workdir)
  path = epath.Path(workdir) / STUDY_JSON
  study = _read_json(path) if path.exists() else {}
  swept = study.get('swept', DEFAULT_SWEPT_COLUMNS) if isinstance(study, dict) else None
  if (not isinstance(swept, (list, tuple)) or not all(isinstance(c, str) for c in swept)
      or not isinstance(study.get('config') or {}, dict)):
    raise ValueError(f'{path} should hold {{"swept": [column names], "config": {{...}}}}')
  if study.get('config') is not None:
    config, source = study['config'], STUDY_JSON
  else:
    config, source = _run_config(epath.Path(workdir), rows)
  paths = study.get('swept_paths')
  paths = dict(zip(swept, paths, strict=True)) if isinstance(paths, list) and len(paths) == len(swept) else {}
  return Study(os.fspath(workdir), rows, tuple(swept), config, source, paths)


def _hashable(value: Any) -> Any:
  if isinstance(value, (list, tuple)):
    return tuple(_hashable(v) for v in value)
  if isinstance(value, dict):
    return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
  return value


def point_key(row: dict[str, Any], columns: Iterable[str], study: Study) -> tuple[Any, ...]:
  """The row's values in `columns`; a column the row lacks (or holds None) takes the study's config value, if
  known."""
  return tuple(_hashable(row[c] if row.get(c) is not None else _lookup(study.config, study.config_path(c)))
               for c in columns)


def _values(rows: list[dict[str, Any]], metric: str) -> list[float]:
  return [v for r in rows if r.get('status') == 'done' and (v := report.numeric(r, metric)) is not None]


def _point_summary(row: dict[str, Any], metric: str) -> stats.Summary | None:
  """A point row's own summary, for studies whose run rows are not in results.json."""
  mean = report.numeric(row, metric)
  n = row.get(f'{metric}_n', row.get('n'))
  if mean is None or not isinstance(n, int) or n < 1:
    return None
  sd = report.numeric(row, f'{metric}_sd') if n >= 2 else None
  return stats.Summary(n, mean, sd, report.numeric(row, f'{metric}_ci95') if sd is not None else None)


def study_points(study: Study, columns: tuple[str, ...]) -> dict[tuple[Any, ...], Point]:
  """The study's points by key, in results.json order. A point row takes the key of its runs (within one study a
  name is one point), so a point row short of a column cannot move its point. ValueError if two names share a key
  (a swept field missing from `columns`) or one name's runs differ in a key column."""
  key_of_name: dict[str, tuple[Any, ...]] = {}
  for row in study.rows:
    if row['kind'] == report.RUN:
      key = point_key(row, columns, study)
      if key_of_name.setdefault(str(row['name']), key) != key:
        raise ValueError(f'{study.workdir}: the runs of {row["name"]!r} differ in {", ".join(columns)}')
  names: dict[tuple[Any, ...], str] = {}
  runs: dict[tuple[Any, ...], dict[Any, dict[str, Any]]] = {}
  described: dict[tuple[Any, ...], dict[str, Any]] = {}
  for row in study.rows:
    name = str(row['name'])
    key = key_of_name.get(name) or point_key(row, columns, study)
    if names.setdefault(key, name) != name:
      raise ValueError(f'{study.workdir}: points {names[key]!r} and {name!r} share {key_text(columns, key)}; the '
                       'study swept a field its study.json does not list')
    # The point row describes the point; its runs fill what it leaves out (e.g. a column added since).
    known = {k: v for k, v in row.items() if v is not None}
    if row['kind'] == report.RUN:
      runs.setdefault(key, {})[row.get('seed')] = row  # a seed given twice counts once, as in report.aggregate
      described[key] = {**known, **described.get(key, {})}
    else:
      described[key] = {**described.get(key, {}), **known}
  points = {}
  for key, name in names.items():
    if key in runs:
      summaries = {m: stats.mean_ci(v) if (v := _values(list(runs[key].values()), m)) else None for m in METRICS}
    else:
      summaries = {m: _point_summary(described[key], m) for m in METRICS}
    points[key] = Point(key, name, described[key], summaries)
  return points


def difference(b: stats.Summary | None, a: stats.Summary | None) -> stats.Difference | None:
  """B − A with Welch's 95% CI; None unless both sides have a value."""
  return None if a is None or b is None else stats.welch_from_summaries(b, a)


def _order(value: Any) -> tuple[int, float, str]:
  number = isinstance(value, (int, float)) and not isinstance(value, bool)
  return (0, float(value), '') if number else (1, 0.0, str(value))


def show(value: Any) -> str:
  """A value as the printout names it: strings bare, None as 'unknown', the rest as JSON."""
  if value is None:
    return 'unknown'
  return value if isinstance(value, str) else json.dumps(value)


def key_text(columns: tuple[str, ...], key: tuple[Any, ...]) -> str:
  """'alpha=0.5, resolution=64': a point's key by column."""
  return ', '.join(f'{c}={show(v)}' for c, v in zip(columns, key, strict=True))


def _swept_differences(a: Study, b: Study, columns: tuple[str, ...], points_a: dict, points_b: dict) -> list[str]:
  """Columns swept in one study only whose values differ: 'num_train_steps: swept over 300, 600 (A) vs 300 (B)'."""
  lines = []
  for i, column in enumerate(columns):
    if (column in a.swept) == (column in b.swept):
      continue
    values = [{p.key[i] for p in points.values()} for points in (points_a, points_b)]
    if values[0] == values[1]:
      continue
    sides = [', '.join(show(v) for v in sorted(v, key=_order)) for v in values]
    sides = [f'swept over {side}' if column in study.swept else side for side, study in zip(sides, (a, b), strict=True)]
    lines.append(f'{a.config_path(column)}: {sides[0]} (A) vs {sides[1]} (B)')
  return lines


def config_differences(a: Study, b: Study, columns: tuple[str, ...], points_a: dict, points_b: dict) -> list[str]:
  """The fields that differ between the studies, as 'optim.learning_rate: 0.008 (A) vs 0.016 (B)': swept fields
  by the values each study ran, the rest from the two configs. Left out: sweep.*, and the fields no study may sweep
  (`study.NOT_SWEEPABLE`: bookkeeping, and the seed: a study's seeds are `sweep.seeds`, a run's config its own)."""
  lines = _swept_differences(a, b, columns, points_a, points_b)
  if a.config is None or b.config is None:
    return lines
  skipped = {study.config_path(c) for study in (a, b) for c in columns}
  flat_a, flat_b = flatten(a.config), flatten(b.config)
  missing = object()
  for path in sorted(set(flat_a) | set(flat_b)):
    if path.startswith('sweep.') or path in skipped or path in NOT_SWEEPABLE:
      continue
    value_a, value_b = flat_a.get(path, missing), flat_b.get(path, missing)
    if _hashable(value_a) != _hashable(value_b):
      shown_a, shown_b = ('absent' if v is missing else show(v) for v in (value_a, value_b))
      lines.append(f'{path}: {shown_a} (A) vs {shown_b} (B)')
  return lines


def _labels(a: str, b: str) -> tuple[str, str]:
  """The workdirs' folder names, or their paths where the names coincide."""
  names = tuple(os.path.basename(os.path.normpath(w)) or w for w in (a, b))
  return names if names[0] != names[1] else (os.path.normpath(a), os.path.normpath(b))


def compare(a: Study, b: Study, metric: str = 'top1') -> Comparison:
  """Study B against study A on the union of their swept columns (A's first, in A's order)."""
  if metric not in METRICS:
    raise ValueError(f'unknown metric {metric!r}; expected one of {", ".join(METRICS)}')
  columns = tuple(dict.fromkeys(a.swept + b.swept))
  points_a, points_b = study_points(a, columns), study_points(b, columns)
  notes = [f'{label}\'s rows and config do not give {column}: its points match only points that lack it too'
           for label, points in (('A', points_a), ('B', points_b))
           for i, column in enumerate(columns) if points and all(p.key[i] is None for p in points.values())]
  notes += [f'config of {label} unknown (neither {STUDY_JSON} nor a run\'s config.json holds one): its fields are '
            'not compared'
            for label, study in (('A', a), ('B', b)) if study.config is None]
  return Comparison(a, b, _labels(a.workdir, b.workdir), columns, metric,
                    [(p, points_b[k]) for k, p in points_a.items() if k in points_b],
                    [p for k, p in points_a.items() if k not in points_b],
                    [p for k, p in points_b.items() if k not in points_a],
                    config_differences(a, b, columns, points_a, points_b), notes)
