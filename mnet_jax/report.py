"""The sweep's results table: results.csv and results.json in the workdir, and the paper-style printout.

results.json (a list of row dicts) is the source of truth that `load_results` and the figures
read; results.csv holds the same rows for spreadsheets. Paths go through `etils.epath`, so a
gs:// workdir works too; on local disk every file is replaced atomically.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from typing import Any

from etils import epath

from mnet_jax import architecture
from mnet_jax.fileio import write_atomically

# One row per sweep point, in this column order; extra keys a caller adds are kept after these.
COLUMNS = ('name', 'alpha', 'resolution', 'rho', 'variant', 'dataset', 'mult_adds', 'params', 'top1', 'top5',
           'latency_ms', 'infer_img_s', 'train_img_s', 'wall_s', 'steps', 'status', 'error')
RESULTS_JSON = 'results.json'
RESULTS_CSV = 'results.csv'
# The paper's names for the ablation architectures (Tables 4 and 5).
_VARIANT_NAMES = {'separable': 'MobileNet', 'conv': 'Conv MobileNet', 'shallow': 'Shallow MobileNet'}


def model_name(alpha: float, resolution: int, variant: str = 'separable') -> str:
  """The paper's model name, e.g. '0.75 MobileNet-128', '1.0 Conv MobileNet-224'."""
  width = f'{alpha:g}'
  if '.' not in width and 'e' not in width:
    width += '.0'  # the paper writes 1.0, not 1
  return f'{width} {_VARIANT_NAMES.get(variant, f"{variant} MobileNet")}-{resolution}'


def sort_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """One row per name (the last given wins), ordered by alpha desc, resolution desc, then variant."""
  by_name = {}
  for row in rows:
    by_name[row['name']] = row
  variant_rank = {v: i for i, v in enumerate(architecture.VARIANTS)}

  def key(row):
    return (-float(row.get('alpha') or 0), -int(row.get('resolution') or 0),
            variant_rank.get(row.get('variant'), len(variant_rank)), str(row['name']))

  return sorted(by_name.values(), key=key)


def _plain(value: Any) -> Any:
  """JSON/CSV-friendly value: numpy/JAX scalars become Python numbers, NaN/inf become None."""
  if hasattr(value, 'item') and getattr(value, 'ndim', None) == 0:
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def write_results(workdir: str | os.PathLike, rows: list[dict[str, Any]]) -> list[epath.Path]:
  """Write results.json and results.csv (one row per point, stable order); returns their paths."""
  rows = [{k: _plain(v) for k, v in row.items()} for row in sort_rows(rows)]
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


def load_results(workdir: str | os.PathLike) -> list[dict[str, Any]]:
  """The rows of `workdir`/results.json; FileNotFoundError or ValueError with a one-line reason."""
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
    if missing:
      raise ValueError(f'{path}: row {i} lacks {", ".join(missing)}')
  return rows


def millions(value: float | None) -> str:
  """A count in millions with three significant digits and no exponent: 569, 4.21, 0.465."""
  if value is None:
    return '-'
  m = value / 1e6
  if m <= 0:
    return f'{m:.0f}'
  decimals = max(0, 2 - math.floor(math.log10(m)))
  return f'{m:.{decimals}f}'


def _percent(value: float | None) -> str:
  return '-' if value is None else f'{100 * value:.1f}%'


def format_table(rows: list[dict[str, Any]]) -> str:
  """The paper's Tables 6/7 layout, one line per point, plus latency and status; failed points listed below."""
  rows = sort_rows(rows)
  datasets = sorted({str(r['dataset']) for r in rows if r.get('dataset')})
  header = (f'{"Model":<26} {"Top-1":>7} {"Top-5":>7} {"Million Mult-Adds":>18} {"Million Parameters":>19} '
            f'{"Latency (ms)":>13} Status')
  lines = [f'Results on {", ".join(datasets)}' if datasets else 'Results', header, '-' * len(header)]
  for r in rows:
    latency = '-' if r.get('latency_ms') is None else f'{r["latency_ms"]:.2f}'
    lines.append(f'{model_name(r["alpha"], r["resolution"], r.get("variant", "separable")):<26} '
                 f'{_percent(r.get("top1")):>7} {_percent(r.get("top5")):>7} {millions(r.get("mult_adds")):>18} '
                 f'{millions(r.get("params")):>19} {latency:>13} {r.get("status", "?")}')
  for r in rows:
    if r.get('status') == 'failed':
      error = (str(r.get('error') or '').strip().splitlines() or ['no error recorded'])[0]
      lines.append(f'  {r["name"]} failed: {error[:160]}')
  return '\n'.join(lines)
