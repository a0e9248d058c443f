"""The sweep's results table: run rows, their per-point aggregates, results.csv/json, and the paper-style printout.

results.json (a list of row dicts) is the source of truth that `load_results`, the figures and the claims
read; results.csv holds the same rows for spreadsheets. Two kinds of row share one schema:

- 'run': one training run, i.e. one (point, seed);
- 'point': the runs of one point summarised by `aggregate` (top-1 mean, SD and 95% Student-t CI over the
  seeds that finished). Files written before seeds existed have no `kind`: their rows read as points of n = 1.

Rows are stored grouped by point (α desc, resolution desc, variant), the point row first, then its runs by
seed. Paths go through `etils.epath`, so a gs:// workdir works too; on local disk files are replaced atomically.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import statistics
from typing import Any

from etils import epath

from mnet_jax import architecture, stats
from mnet_jax.fileio import write_atomically

RUN, POINT = 'run', 'point'
# The column order of both files; extra keys a caller adds are kept after these.
COLUMNS = ('kind', 'name', 'seed', 'n', 'seeds', 'alpha', 'resolution', 'rho', 'variant', 'depth', 'dataset',
           'mult_adds', 'params', 'batch_size', 'num_train_steps', 'examples_seen', 'train_examples', 'train_flops',
           'top1', 'top1_sd', 'top1_ci95', 'top5', 'top5_sd', 'top5_ci95', 'eval_loss', 'eval_loss_sd',
           'eval_loss_ci95', 'top1_int8', 'top1_int8_sd', 'top1_int8_ci95', 'latency_ms', 'latency_ms_spread',
           'infer_img_s', 'tflite_1t_latency_ms',
           'tflite_1t_latency_ms_spread', 'tflite_2t_latency_ms', 'tflite_2t_latency_ms_spread',
           'int8_1t_latency_ms', 'int8_1t_latency_ms_spread', 'int8_2t_latency_ms', 'int8_2t_latency_ms_spread',
           'train_img_s', 'wall_s', 'steps', 'status', 'error')
RESULTS_JSON = 'results.json'
RESULTS_CSV = 'results.csv'
CURVES_CSV = 'curves.csv'
# The leading columns of curves.csv: a run's swept fields and description follow, then what it had reached.
CURVE_COLUMNS = ('name', 'seed', 'step')
CURVE_METRICS = ('top1', 'top5', 'eval_loss')
# A run's outcome; every other field of a run row describes its point (the swept fields, the model, what a run
# costs to train), is the same in all of its runs and is copied into the point row.
PER_RUN_FIELDS = frozenset({'kind', 'name', 'seed', 'top1', 'top5', 'eval_loss', 'top1_int8', 'train_img_s', 'wall_s',
                            'first_step_s', 'steps_s', 'eval_s', 'steps', 'status', 'error', 'eval_examples',
                            'seeds_trained_together', 'latency_ms', 'latency_ms_spread', 'infer_img_s'})
# Aggregated over a point's finished seeds: mean, SD and 95% CI.
AGGREGATED = ('top1', 'top5', 'eval_loss', 'top1_int8')
# Measured once per point (not per seed) by the sweep's latency probe (XLA, this machine's first device).
LATENCY_FIELDS = ('latency_ms', 'latency_ms_spread', 'infer_img_s')
# Measured once per point by the sweep's LiteRT probe: single-image latency in the TFLite interpreter with
# XNNPACK at 1 and 2 threads (median and interquartile range), of the float32 and the int8 flatbuffer.
TFLITE_FIELDS = ('tflite_1t_latency_ms', 'tflite_1t_latency_ms_spread', 'tflite_2t_latency_ms',
                 'tflite_2t_latency_ms_spread')
INT8_FIELDS = ('int8_1t_latency_ms', 'int8_1t_latency_ms_spread', 'int8_2t_latency_ms', 'int8_2t_latency_ms_spread')
# The paper's names for the ablation architectures (Tables 4 and 5).
_VARIANT_NAMES = {'separable': 'MobileNet', 'conv': 'Conv MobileNet', 'shallow': 'Shallow MobileNet'}


def model_name(alpha: float, resolution: int, variant: str = 'separable') -> str:
  """The paper's model name, e.g. '0.75 MobileNet-128', '1.0 Conv MobileNet-224'."""
  width = f'{alpha:g}'
  if '.' not in width and 'e' not in width:
    width += '.0'  # the paper writes 1.0, not 1
  return f'{width} {_VARIANT_NAMES.get(variant, f"{variant} MobileNet")}-{resolution}'


def numeric(row: dict[str, Any], key: str) -> float | None:
  """row[key] as a float when it is a finite number (not a bool), else None."""
  value = row.get(key)
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
    return None
  return float(value)


def _finished(row: dict[str, Any]) -> bool:
  return row.get('status') == 'done' and numeric(row, 'top1') is not None


def with_kind(row: dict[str, Any]) -> dict[str, Any]:
  """The row with a `kind`: rows from before seeds (no kind) are points of one run, n = 1 if it finished."""
  if row.get('kind') in (RUN, POINT):
    return row
  if row.get('kind') is not None:
    raise ValueError(f'row {row.get("name")!r} has kind {row["kind"]!r}; expected {RUN!r} or {POINT!r}')
  return {**row, 'kind': POINT, 'n': row.get('n', int(_finished(row)))}


def point_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """The point rows among `rows` (rows without a kind count as points), in `sort_rows` order."""
  return [r for r in sort_rows([with_kind(r) for r in rows]) if r['kind'] == POINT]


def _seed_order(row: dict[str, Any]) -> tuple[int, str]:
  seed = row.get('seed')
  return (0, f'{seed:012d}') if isinstance(seed, int) else (1, str(seed))


def aggregate(run_rows: list[dict[str, Any]], measured: dict[str, dict[str, Any]] | None = None
              ) -> list[dict[str, Any]]:
  """One point row per point name among the 'run' rows (other rows are ignored), in first-seen order.

  Means, SDs (ddof=1) and 95% Student-t CIs are over the runs that finished (status 'done' with a top-1);
  `measured` maps a point name to its probes: XLA's ({'latency_ms', 'latency_ms_spread', 'infer_img_s'}),
  which replaces latency taken from the runs, and LiteRT's (`TFLITE_FIELDS`, `INT8_FIELDS`). A seed given twice
  counts once (the last row wins).
  """
  groups: dict[str, dict[Any, dict[str, Any]]] = {}
  for row in run_rows:
    if row.get('kind') == RUN:
      groups.setdefault(row['name'], {})[row.get('seed')] = row
  measured = measured or {}
  return [_point_row(name, sorted(runs.values(), key=_seed_order), measured.get(name))
          for name, runs in groups.items()]


def _point_row(name: str, runs: list[dict[str, Any]], measured: dict[str, Any] | None) -> dict[str, Any]:
  done = [r for r in runs if _finished(r)]

  def values(key: str, rows: list[dict[str, Any]]) -> list[float]:
    return [numeric(r, key) for r in rows if numeric(r, key) is not None]

  row = {'kind': POINT, 'name': name, 'seed': None, 'n': len(done),
         'seeds': ','.join(str(r.get('seed')) for r in done) or None}
  row.update({k: v for k, v in runs[0].items() if k not in PER_RUN_FIELDS})
  for metric in AGGREGATED:
    summary = stats.mean_ci(values(metric, done)) if values(metric, done) else None
    for key, field in ((metric, 'mean'), (f'{metric}_sd', 'sd'), (f'{metric}_ci95', 'half_width')):
      row[key] = getattr(summary, field) if summary else None
  # Latency belongs to the architecture on this machine, not to a seed: the median shrugs off a run that was
  # timed while the machine was busy. A probe measured once per point replaces it.
  for key in ('latency_ms', 'infer_img_s'):
    row[key] = statistics.median(values(key, runs)) if values(key, runs) else None
  row['latency_ms_spread'] = None
  measured = measured or {}
  if 'latency_ms' in measured:
    row.update({k: measured.get(k) for k in LATENCY_FIELDS})
  row.update({k: measured.get(k) for k in TFLITE_FIELDS + INT8_FIELDS})
  row['train_img_s'] = statistics.mean(values('train_img_s', done)) if values('train_img_s', done) else None
  row['wall_s'] = sum(values('wall_s', runs)) if values('wall_s', runs) else None  # what the point cost in all
  row['steps'] = int(max(values('steps', done))) if values('steps', done) else None
  failed = [r for r in runs if r.get('status') == 'failed']
  if all(r.get('status') == 'done' for r in runs):
    row['status'], row['error'] = 'done', None
  elif failed:
    row['status'], row['error'] = 'failed', f'seed {failed[0].get("seed")}: {failed[0].get("error")}'
  else:
    row['status'], row['error'] = ('partial' if done else 'pending'), None
  return row


def sort_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """One row per (kind, name, seed) (the last given wins), grouped by point: α desc, resolution desc, variant;
  within a point the point row first, then its runs by seed."""
  unique = {}
  for row in rows:
    unique[(row.get('kind') or POINT, row['name'], row.get('seed'))] = row
  variant_rank = {v: i for i, v in enumerate(architecture.VARIANTS)}

  def key(row):
    return (-float(row.get('alpha') or 0), -int(row.get('resolution') or 0),
            variant_rank.get(row.get('variant'), len(variant_rank)), _natural(str(row['name'])),
            (row.get('kind') or POINT) != POINT, _seed_order(row))

  return sorted(unique.values(), key=key)


def _natural(name: str) -> tuple:
  """'a1_r63_steps1200' after 'a1_r63_steps150': the numbers in a name compare as numbers."""
  return tuple((0, float(part), '') if i % 2 else (1, 0.0, part)
               for i, part in enumerate(re.split(r'(\d+(?:\.\d+)?)', name)))


def grid_name(row: dict[str, Any]) -> str:
  """The name the α×ρ grid gives the row's model, e.g. 'a0.5_r63' (a point of a study of more axes adds parts)."""
  prefix = '' if row.get('variant', 'separable') == 'separable' else f'{row["variant"]}_'
  return f'{prefix}a{float(row["alpha"]):g}_r{int(row["resolution"])}'


def point_label(row: dict[str, Any]) -> str:
  """The paper's model name, then the point's other axes: '0.5 MobileNet-63 steps300'."""
  label = model_name(row['alpha'], row['resolution'], row.get('variant', 'separable'))
  grid = grid_name(row)
  name = str(row['name'])
  return f'{label} {name[len(grid) + 1:]}' if name.startswith(f'{grid}_') else label


def _plain(value: Any) -> Any:
  """JSON/CSV-friendly value: numpy/JAX scalars become Python numbers, NaN/inf become None."""
  if hasattr(value, 'item') and getattr(value, 'ndim', None) == 0:
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return None
  if isinstance(value, (list, tuple)):  # e.g. a [min, max] spread
    return [_plain(v) for v in value]
  return value


def write_results(workdir: str | os.PathLike, rows: list[dict[str, Any]]) -> list[epath.Path]:
  """Write results.json and results.csv (run and point rows, `sort_rows` order); returns their paths."""
  rows = [{k: _plain(v) for k, v in row.items()} for row in sort_rows([with_kind(r) for r in rows])]
  extra = sorted({k for row in rows for k in row} - set(COLUMNS))
  columns = list(COLUMNS) + extra
  # Serialize both before writing either, so a bad value cannot leave the two files disagreeing.
  json_text = json.dumps([{c: row.get(c) for c in columns} for row in rows], indent=2, allow_nan=False) + '\n'
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator='\n')
  writer.writeheader()
  for row in rows:
    writer.writerow({c: '' if row.get(c) is None else row[c] for c in columns})
  workdir = epath.Path(workdir)
  write_atomically(workdir / RESULTS_JSON, json_text.encode())
  write_atomically(workdir / RESULTS_CSV, buffer.getvalue().encode())
  return [workdir / RESULTS_JSON, workdir / RESULTS_CSV]


def write_curves(workdir: str | os.PathLike, curves: list[dict[str, Any]], swept: list[str] = ()
                 ) -> epath.Path | None:
  """Write curves.csv (one row per run and evaluation, by point and seed, then step): name, seed, step, the
  `swept` columns, the point's description in results.csv's order, then the metrics. None without curves."""
  if not curves:
    return None
  rows = sorted(({k: _plain(v) for k, v in row.items()} for row in curves),
                key=lambda r: (_natural(str(r['name'])), _seed_order(r), r['step']))
  leading = [*CURVE_COLUMNS, *swept]
  present = {k for row in rows for k in row} - set(leading) - set(CURVE_METRICS)
  described = [c for c in COLUMNS if c in present] + sorted(present - set(COLUMNS))
  columns = [*leading, *described, *CURVE_METRICS]
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator='\n')
  writer.writeheader()
  for row in rows:
    writer.writerow({c: '' if row.get(c) is None else row[c] for c in columns})
  path = epath.Path(workdir) / CURVES_CSV
  write_atomically(path, buffer.getvalue().encode())
  return path


def load_results(workdir: str | os.PathLike) -> list[dict[str, Any]]:
  """The rows of `workdir`/results.json, each with a kind; FileNotFoundError or ValueError with a one-line reason."""
  path = epath.Path(workdir) / RESULTS_JSON
  if not path.exists():
    raise FileNotFoundError(f'{path} does not exist (run a sweep into {workdir} first)')
  try:
    rows = json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f'{path} is not valid JSON: {e}') from None
  if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
    raise ValueError(f'{path} should hold a list of result rows (objects)')
  for i, row in enumerate(rows):
    missing = [k for k in ('name', 'alpha', 'resolution', 'mult_adds', 'params', 'status') if k not in row]
    if row.get('kind') == RUN and 'seed' not in row:
      missing.append('seed')
    if missing:
      raise ValueError(f'{path}: row {i} lacks {", ".join(missing)}')
  try:
    return [with_kind(row) for row in rows]
  except ValueError as e:
    raise ValueError(f'{path}: {e}') from None


def millions(value: float | None) -> str:
  """A count in millions with three significant digits and no exponent: 569, 4.21, 0.465."""
  if value is None:
    return '-'
  m = value / 1e6
  if m <= 0:
    return f'{m:.0f}'
  decimals = max(0, 2 - math.floor(math.log10(m)))
  return f'{m:.{decimals}f}'


def finished_points(rows: list[dict[str, Any]], field: str = 'mult_adds') -> list[dict[str, Any]]:
  """Point rows that can be placed against `field`: at least one finished seed and a positive `field`.

  A point with some seeds failed or pending still shows its mean over the n seeds that finished."""
  return [r for r in point_rows(rows) if (r.get('n') or 0) >= 1 and numeric(r, 'top1') is not None
          and (numeric(r, field) or 0) > 0 and numeric(r, 'alpha') is not None
          and numeric(r, 'resolution') is not None]


def log_linear_fit(rows: list[dict[str, Any]], field: str = 'mult_adds') -> stats.LogLinearFit | None:
  """Top-1 (percent) against log10(`field`) over the separable point means; None with < 2 distinct x."""
  points = [r for r in finished_points(rows, field) if r.get('variant', 'separable') == 'separable']
  if len({r[field] for r in points}) < 2:
    return None
  return stats.fit_log_linear([r[field] for r in points], [100 * r['top1'] for r in points])


def mean_with_ci(row: dict[str, Any], metric: str = 'top1') -> str:
  """'63.4 ± 1.2' (percent, 95% CI half-width), '63.4' without a CI, '-' without a value."""
  mean, half = numeric(row, metric), numeric(row, f'{metric}_ci95')
  if mean is None:
    return '-'
  return f'{100 * mean:.1f}' + ('' if half is None else f' ± {100 * half:.1f}')


def loss_with_ci(row: dict[str, Any]) -> str:
  """'0.412 ± 0.031' (mean eval cross-entropy, 95% CI half-width), '-' without a value."""
  mean, half = numeric(row, 'eval_loss'), numeric(row, 'eval_loss_ci95')
  if mean is None:
    return '-'
  return f'{mean:.3f}' + ('' if half is None else f' ± {half:.3f}')


def format_fit(fit: stats.LogLinearFit | None, unit: str = 'Mult-Adds') -> str:
  """One line: the fitted slope per tenfold `unit` with its 95% CI, R² and the number of points."""
  if fit is None:
    return f'Log-linear fit: needs two separable points at different {unit}'
  ci = f' ± {fit.slope_ci95:.1f}' if fit.slope_ci95 is not None else ''
  r2 = '-' if fit.r2 is None else f'{fit.r2:.3f}'
  return (f'Log-linear fit of top-1 (%) on log10 {unit}, {fit.n} separable point means: '
          f'{fit.slope:+.1f}{ci} points per 10× {unit} (95% CI), R² {r2}')


def format_table(rows: list[dict[str, Any]]) -> str:
  """The paper's Tables 6/7 layout from the point rows: top-1/top-5 mean ± 95% CI over n seeds, cost, latency
  (XLA; LiteRT and int8 where measured), status; then the log-linear fit of top-1 on Mult-Adds; failed runs."""
  points = point_rows(rows)
  datasets = sorted({str(r['dataset']) for r in points if r.get('dataset')})
  # The LiteRT columns only where the probe ran: 1 / 2 interpreter threads, float32 and int8.
  tflite = any(numeric(r, 'tflite_1t_latency_ms') is not None for r in points)
  int8 = any(numeric(r, 'top1_int8') is not None or numeric(r, 'int8_1t_latency_ms') is not None for r in points)
  # Eval loss and training compute where the runs recorded them (studies written before lack them).
  loss = any(numeric(r, 'eval_loss') is not None for r in points)
  flops = any(numeric(r, 'train_flops') is not None for r in points)
  width = max([26, *(len(point_label(r)) for r in points)])
  header = (f'{"Model":<{width}} {"Top-1 (%)":>12} {"n":>2} {"Top-5 (%)":>12} '
            + (f'{"Eval loss":>15} ' if loss else '') + f'{"Million Mult-Adds":>18} '
            f'{"Million Parameters":>19} ' + (f'{"Train FLOPs":>11} ' if flops else '') + f'{"Latency (ms)":>13} '
            + (f'{"LiteRT 1/2 thr (ms)":>20} ' if tflite else '')
            + (f'{"int8 Top-1 (%)":>14} {"int8 1/2 thr (ms)":>18} ' if int8 else '') + 'Status')
  title = f'Results on {", ".join(datasets)}' if datasets else 'Results'
  lines = [f'{title} (mean ± 95% CI over n seeds, Student t)', header, '-' * len(header)]

  def threads(row: dict[str, Any], prefix: str) -> str:
    one, two = numeric(row, f'{prefix}_1t_latency_ms'), numeric(row, f'{prefix}_2t_latency_ms')
    return '-' if one is None or two is None else f'{one:.3g} / {two:.3g}'

  for r in points:
    latency = '-' if numeric(r, 'latency_ms') is None else f'{r["latency_ms"]:.2f}'
    train_flops = '-' if numeric(r, 'train_flops') is None else f'{r["train_flops"]:.3g}'
    lines.append(f'{point_label(r):<{width}} '
                 f'{mean_with_ci(r, "top1"):>12} {r.get("n", "-")!s:>2} {mean_with_ci(r, "top5"):>12} '
                 + (f'{loss_with_ci(r):>15} ' if loss else '')
                 + f'{millions(r.get("mult_adds")):>18} {millions(r.get("params")):>19} '
                 + (f'{train_flops:>11} ' if flops else '') + f'{latency:>13} '
                 + (f'{threads(r, "tflite"):>20} ' if tflite else '')
                 + (f'{mean_with_ci(r, "top1_int8"):>14} {threads(r, "int8"):>18} ' if int8 else '')
                 + f'{r.get("status", "?")}')
  if all(r['name'] == grid_name(r) for r in points):
    lines.append(format_fit(log_linear_fit(points)))
  else:  # one line through points of several training lengths, data sizes, ... would say nothing about Mult-Adds
    lines.append('Log-linear fit on Mult-Adds: not made, the points differ in more than the model (see the figures)')
  failed_runs = [r for r in sort_rows(rows) if r.get('kind') == RUN and r.get('status') == 'failed']
  named = {r['name'] for r in failed_runs}
  failed = failed_runs + [r for r in points if r.get('status') == 'failed' and r['name'] not in named]
  for r in failed:
    error = (str(r.get('error') or '').strip().splitlines() or ['no error recorded'])[0]
    seed = f' seed {r["seed"]}' if r.get('kind') == RUN else ''
    lines.append(f'  {r["name"]}{seed} failed: {error[:160]}')
  return '\n'.join(lines)
