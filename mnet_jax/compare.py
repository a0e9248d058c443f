"""Two studies side by side: per-point differences B − A with Welch CIs, config differences, unmatched points.

    python -m mnet_jax.compare --workdir=A --workdir=B [--out=DIR] [--metric=top1]

A point of either study is identified by its values in the union of both studies' swept columns (study.json's
`swept`; variant, alpha and resolution for studies without one), never by its name alone: two studies may both
call a point 'a0.5_r64' and still have trained it for different numbers of steps. A column a row lacks takes the
study's config value. Per point in both studies: the metric's mean over the seeds that finished in each (n), and
B − A with Welch's 95% interval (Welch–Satterthwaite df); n < 2 on either side gives the difference without a CI.
Points in only one study are listed, and the config fields that differ are named. `--out` writes compare.csv
(accuracies as fractions and losses in nats, as in results.json; `present_in` says 'both', 'A' or 'B') and
compare.png/.svg (the metric against Mult-Adds, or training FLOPs where the studies vary them beyond the model).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import sys
from collections.abc import Iterable
from typing import Any

from etils import epath
from matplotlib import ticker
from matplotlib.figure import Figure

from mnet_jax import cli, fileio, plot, report, stats

STUDY_JSON = 'study.json'
COMPARE_CSV = 'compare.csv'
FIGURE_STEM = 'compare'
# What a study without study.json swept: the α×ρ grid and the ablation variants.
DEFAULT_SWEPT = ('variant', 'alpha', 'resolution')
# Swept columns named for their field rather than its config path.
COLUMN_PATHS = {'alpha': 'model.alpha', 'resolution': 'model.resolution', 'variant': 'model.variant',
                'depth': 'model.depth', 'train_examples': 'data.train_examples'}
# Config fields that do not change what is trained: never a difference between studies. `seed` too: a study's
# seeds are `sweep.seeds`, and a run's config.json holds its own seed.
BOOKKEEPING = frozenset({'compilation_cache_dir', 'allow_config_change', 'log_every_steps', 'checkpoint_every_steps',
                         'max_checkpoints_to_keep', 'eval_every_steps', 'eval_at', 'seed'})
LOSS = 'eval_loss'
METRICS = ('top1', 'top5', LOSS)
_METRIC_LABELS = {'top1': 'Top-1', 'top5': 'Top-5', LOSS: 'Eval loss'}
_COLORS = ('tab:blue', 'tab:orange')


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
    return self.paths.get(column) or config_path(column)


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


def config_path(column: str) -> str:
  """The dotted config path of a swept column: 'alpha' -> 'model.alpha'; others are their path already."""
  return COLUMN_PATHS.get(column, column)


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
  swept = study.get('swept', DEFAULT_SWEPT) if isinstance(study, dict) else None
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
      raise ValueError(f'{study.workdir}: points {names[key]!r} and {name!r} share {_key_text(columns, key)}; the '
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


def _show(value: Any) -> str:
  if value is None:
    return 'unknown'
  return value if isinstance(value, str) else json.dumps(value)


def _swept_differences(a: Study, b: Study, columns: tuple[str, ...], points_a: dict, points_b: dict) -> list[str]:
  """Columns swept in one study only whose values differ: 'num_train_steps: swept over 300, 600 (A) vs 300 (B)'."""
  lines = []
  for i, column in enumerate(columns):
    if (column in a.swept) == (column in b.swept):
      continue
    values = [{p.key[i] for p in points.values()} for points in (points_a, points_b)]
    if values[0] == values[1]:
      continue
    sides = [', '.join(_show(v) for v in sorted(v, key=_order)) for v in values]
    sides = [f'swept over {side}' if column in study.swept else side for side, study in zip(sides, (a, b), strict=True)]
    lines.append(f'{a.config_path(column)}: {sides[0]} (A) vs {sides[1]} (B)')
  return lines


def config_differences(a: Study, b: Study, columns: tuple[str, ...], points_a: dict, points_b: dict) -> list[str]:
  """The fields that differ between the studies, as 'optim.learning_rate: 0.008 (A) vs 0.016 (B)': swept fields
  by the values each study ran, the rest from the two configs (sweep.* and bookkeeping fields left out)."""
  lines = _swept_differences(a, b, columns, points_a, points_b)
  if a.config is None or b.config is None:
    return lines
  skipped = {study.config_path(c) for study in (a, b) for c in columns}
  flat_a, flat_b = flatten(a.config), flatten(b.config)
  missing = object()
  for path in sorted(set(flat_a) | set(flat_b)):
    if path.startswith('sweep.') or path in skipped or path in BOOKKEEPING:
      continue
    value_a, value_b = flat_a.get(path, missing), flat_b.get(path, missing)
    if _hashable(value_a) != _hashable(value_b):
      shown_a, shown_b = ('absent' if v is missing else _show(v) for v in (value_a, value_b))
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


# --- tables ----------------------------------------------------------------------------------

def _metrics(comparison: Comparison) -> list[str]:
  """The chosen metric, then the eval loss where some joined point has it on both sides."""
  loss = any(pa.summaries[LOSS] and pb.summaries[LOSS] for pa, pb in comparison.joined)
  return [comparison.metric] + ([LOSS] if loss and comparison.metric != LOSS else [])


def _scale(metric: str) -> tuple[float, int]:
  """Accuracies print in percentage points, losses in nats: (factor, decimals)."""
  return (1.0, 3) if metric == LOSS else (100.0, 2)


def _mean(summary: stats.Summary | None, metric: str) -> str:
  if summary is None:
    return '-'
  scale, decimals = _scale(metric)
  ci = '' if summary.half_width is None else f' ± {scale * summary.half_width:.{decimals}f}'
  return f'{scale * summary.mean:.{decimals}f}{ci}'


def _difference(d: stats.Difference | None, metric: str) -> str:
  if d is None:
    return '-'
  scale, decimals = _scale(metric)
  ci = ' (no CI)' if d.half_width is None else f' ± {scale * d.half_width:.{decimals}f}'
  return f'{scale * d.estimate:+.{decimals}f}{ci}'


def _name(a: Point, b: Point) -> str:
  return a.name if a.name == b.name else f'{a.name} | {b.name}'


def _key_text(columns: tuple[str, ...], key: tuple[Any, ...]) -> str:
  return ', '.join(f'{c}={_show(v)}' for c, v in zip(columns, key, strict=True))


def _aligned(header: list[str], rows: list[list[str]], left: set[int]) -> list[str]:
  """Columns padded to their widest cell: `left` ones left-aligned, the numbers right-aligned."""
  widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

  def line(cells: list[str]) -> str:
    return '  '.join(c.ljust(w) if i in left else c.rjust(w)
                     for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

  return [line(r) for r in [header, *rows]]


def format_comparison(comparison: Comparison) -> str:
  """The printout: which is A and B, the config differences, the joined points' table, the unmatched points."""
  c, columns = comparison, comparison.columns
  lines = [f'A = {c.a.workdir} ({c.labels[0]}), B = {c.b.workdir} ({c.labels[1]}); differences are B − A',
           f'Swept: A {", ".join(c.a.swept) or "nothing"}; B {", ".join(c.b.swept) or "nothing"}. '
           f'Configs: A {c.a.config_source}; B {c.b.config_source}',
           f'Points joined on {", ".join(columns) or "nothing (one point per study)"}']
  lines += ['Config differences:'] + [f'  {line}' for line in c.config_differences or ['none']]
  lines += [f'Note: {note}' for note in c.notes]
  metrics = _metrics(c)
  if c.joined:
    units = ' and '.join(f'{_METRIC_LABELS[m]} ({"nats" if m == LOSS else "%"})' for m in metrics)
    lines += [f'{len(c.joined)} points in both. {units}: mean ± 95% CI over the seeds that finished (n); '
              'B − A ± Welch\'s 95% CI (Welch–Satterthwaite df)']
    header = [*columns, 'Point']
    for m in metrics:
      label = _METRIC_LABELS[m]
      header += [f'{label} A', 'n A', f'{label} B', 'n B', 'B − A']
    rows = []
    for pa, pb in c.joined:
      row = [*(_show(v) for v in pa.key), _name(pa, pb)]
      for m in metrics:
        sa, sb = pa.summaries[m], pb.summaries[m]
        row += [_mean(sa, m), str(sa.n if sa else 0), _mean(sb, m), str(sb.n if sb else 0),
                _difference(difference(sb, sa), m)]
      rows.append(row)
    table = _aligned(header, rows, set(range(len(columns) + 1)))
    lines += [table[0], '-' * len(table[0]), *table[1:]]
  else:
    lines.append(f'No point in common on {", ".join(columns)}.')
  for label, only in (('A', c.only_a), ('B', c.only_b)):
    lines.append(f'Only in {label} ({len(only)}):' + ('' if only else ' none'))
    lines += [f'  {_key_text(columns, p.key)}: {p.name} (n {_n(p, c.metric)}, {_METRIC_LABELS[c.metric]} '
              f'{_mean(p.summaries[c.metric], c.metric)})' for p in only]
  return '\n'.join(lines)


def _n(point: Point, metric: str) -> int:
  summary = point.summaries[metric]
  return summary.n if summary else 0


def _number(value: float | None) -> Any:
  return None if value is None or not math.isfinite(value) else value


def table_rows(comparison: Comparison) -> list[dict[str, Any]]:
  """compare.csv's rows: the joined points (present_in 'both'), then those only in A, then only in B."""
  c, m = comparison, comparison.metric
  metric_blocks = [(m, f'{m}_a', f'{m}_b', 'n_a', 'n_b', 'diff', 'diff_ci95', 'diff_df')]
  if m != LOSS:
    metric_blocks.append((LOSS, 'eval_loss_a', 'eval_loss_b', 'eval_loss_n_a', 'eval_loss_n_b', 'eval_loss_diff',
                          'eval_loss_ci95', 'eval_loss_df'))

  def row(present_in: str, a: Point | None, b: Point | None) -> dict[str, Any]:
    point = a or b
    out = {col: value for col, value in zip(c.columns, point.key, strict=True)}
    out.update(present_in=present_in, name_a=a and a.name, name_b=b and b.name)
    for metric, mean_a, mean_b, n_a, n_b, diff, ci95, df in metric_blocks:
      sa, sb = (p.summaries[metric] if p else None for p in (a, b))
      d = difference(sb, sa)
      out.update({mean_a: sa and sa.mean, mean_b: sb and sb.mean, n_a: sa.n if sa else (0 if a else None),
                  n_b: sb.n if sb else (0 if b else None), diff: d and d.estimate,
                  ci95: d and _number(d.half_width), df: d and _number(d.df)})
    return out

  return ([row('both', a, b) for a, b in c.joined] + [row('A', a, None) for a in c.only_a]
          + [row('B', None, b) for b in c.only_b])


def format_csv(comparison: Comparison) -> str:
  """compare.csv's text; a tuple-valued key column is written as JSON."""
  rows = table_rows(comparison)
  columns = list(comparison.columns) + [k for k in (rows[0] if rows else {}) if k not in comparison.columns]
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator='\n')
  writer.writeheader()
  for r in rows:
    writer.writerow({k: '' if r.get(k) is None else json.dumps(r[k]) if isinstance(r[k], tuple) else r[k]
                     for k in columns})
  return buffer.getvalue()


# --- figure ----------------------------------------------------------------------------------

def x_field(comparison: Comparison) -> str:
  """'train_flops' where two points of equal Mult-Adds trained for different FLOPs (the studies vary training
  length or data, which Mult-Adds cannot show), else 'mult_adds'."""
  points = [p for pair in comparison.joined for p in pair] + comparison.only_a + comparison.only_b
  flops: dict[float, set[float]] = {}
  for p in points:
    mult_adds, train_flops = report.numeric(p.row, 'mult_adds'), report.numeric(p.row, 'train_flops')
    if mult_adds is not None and train_flops is not None:
      flops.setdefault(mult_adds, set()).add(train_flops)
  return 'train_flops' if any(len(v) > 1 for v in flops.values()) else 'mult_adds'


def figure(comparison: Comparison) -> Figure | None:
  """The metric of both studies against Mult-Adds (or training FLOPs), log x, 95% CI bars; None if nothing to
  draw. B's markers sit 2% right of their x (A's 2% left), so that bars of a point in both stay apart."""
  c, metric = comparison, comparison.metric
  field = x_field(c)
  scale, _ = _scale(metric)
  x_scale, x_label = ((1e-6, 'Mult-Adds (millions, log scale)') if field == 'mult_adds'
                      else (1.0, 'Training compute (FLOPs, log scale)'))
  series = [[p for p, _ in c.joined] + c.only_a, [p for _, p in c.joined] + c.only_b]
  fig = Figure(figsize=(8.5, 5.2), layout='constrained')
  ax = fig.add_subplot()
  drawn = 0
  for side, (points, label, color, shift) in enumerate(zip(series, c.labels, _COLORS, (0.98, 1.02), strict=True)):
    shown = [(report.numeric(p.row, field), p.summaries[metric]) for p in points]
    shown = [(x * x_scale * shift, s) for x, s in shown if x is not None and x > 0 and s is not None]
    drawn += len(shown)
    if not shown:
      continue
    ax.plot([x for x, _ in shown], [scale * s.mean for _, s in shown], 'os'[side], color=color, markersize=6,
            linestyle='none', zorder=3, label=f'{"AB"[side]}: {label} ({len(shown)} points)')
    with_ci = [(x, s) for x, s in shown if s.half_width is not None]
    if with_ci:
      ax.errorbar([x for x, _ in with_ci], [scale * s.mean for _, s in with_ci],
                  yerr=[scale * s.half_width for _, s in with_ci], fmt='none', ecolor=color, elinewidth=1.2,
                  capsize=3, zorder=2)
  if not drawn:
    return None
  ax.set_xscale('log')
  if field == 'mult_adds':  # plain numbers at 1-2-5 steps, as plot's trade-off figures
    ax.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f'{value:g}'))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
  if metric != LOSS:  # a CI near chance over few seeds can reach past [0, 100]: the axis stops at the range
    low, high = ax.get_ylim()
    ax.set_ylim(max(low, 0.0), min(high, 100.0))
  ax.set_xlabel(x_label)
  ax.set_ylabel('Eval cross-entropy (nats)' if metric == LOSS else f'{_METRIC_LABELS[metric]} accuracy (%)')
  ax.set_title(f'{_METRIC_LABELS[metric]}: {c.labels[0]} (A) vs {c.labels[1]} (B), {len(c.joined)} points in both\n'
               'means over seeds with 95% CIs; markers shifted ±2% in x to keep bars apart', fontsize=10)
  ax.grid(True, which='major', alpha=0.35)
  ax.legend(loc='best', fontsize=9)
  return fig


def write_outputs(comparison: Comparison, out_dir: str | os.PathLike) -> list[epath.Path]:
  """compare.csv and, where there is something to draw, compare.png/.svg in `out_dir`; returns their paths."""
  out_dir = epath.Path(out_dir)
  path = out_dir / COMPARE_CSV
  report.write_atomically(path, format_csv(comparison).encode())
  paths = [path]
  fig = figure(comparison)
  if fig is not None:
    paths += plot._save(fig, out_dir, FIGURE_STEM)
  return paths


# --- CLI -------------------------------------------------------------------------------------

def _same_place(a: str, b: str) -> bool:
  if fileio.is_remote(a) or fileio.is_remote(b):
    return a.rstrip('/') == b.rstrip('/')
  return os.path.realpath(a) == os.path.realpath(b)


def main(argv: list[str] | None = None) -> int:
  parser = cli.OneLineParser(prog='python -m mnet_jax.compare', description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', action='append', default=[], metavar='DIR',
                      help='a study directory holding results.json; give two: A, then B (differences are B − A)')
  parser.add_argument('--out', metavar='DIR', help='write compare.csv and compare.png/.svg here')
  parser.add_argument('--metric', default='top1', choices=METRICS, help='the metric compared (default: %(default)s)')
  parser.add_argument('--verbose', action='store_true', help='show tracebacks of unexpected errors')
  args = parser.parse_args(argv)
  if len(args.workdir) != 2:
    parser.error(f'give exactly two --workdir (A, then B), got {len(args.workdir)}')
  if _same_place(*args.workdir):
    parser.error(f'--workdir {args.workdir[0]} is given twice; compare two different studies')

  def run() -> int:
    comparison = compare(load_study(args.workdir[0]), load_study(args.workdir[1]), args.metric)
    print(format_comparison(comparison))
    if args.out:
      paths = write_outputs(comparison, args.out)
      print('\n'.join(map(str, paths)))
      if len(paths) == 1:
        print(f'no figure: no point has a {args.metric} and a positive {x_field(comparison)}')
    return 0

  # A missing or malformed results.json or study.json, a failed write: one line, exit 2.
  return cli.run_reporting_errors(run, args.verbose)


if __name__ == '__main__':
  sys.exit(main())
