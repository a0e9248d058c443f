"""Two studies side by side: per-point differences B − A with Welch CIs, config differences, unmatched points.

    python -m mnet_jax.compare --workdir=A --workdir=B [--out=DIR] [--metric=top1]

The points are joined on both studies' swept columns, never on their names alone (`compare_join`). Per point in
both studies: the metric's mean over the seeds that finished in each (n), and B − A with Welch's 95% interval;
n < 2 on either side gives the difference without a CI. Points in only one study are listed, and the config fields
that differ are named. `--out` writes compare.csv (accuracies as fractions and losses in nats, as in results.json;
`present_in` says 'both', 'A' or 'B') and compare.png/.svg (the metric against Mult-Adds, or training FLOPs where
the studies vary them beyond the model).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
from typing import Any

from etils import epath
from matplotlib import ticker
from matplotlib.figure import Figure

from mnet_jax import cli, fileio, plot, report, stats
from mnet_jax.compare_join import LOSS, METRICS, Comparison, Point, compare, difference, key_text, load_study, show

COMPARE_CSV = 'compare.csv'
FIGURE_STEM = 'compare'
_METRIC_LABELS = {'top1': 'Top-1', 'top5': 'Top-5', LOSS: 'Eval loss'}
_COLORS = ('tab:blue', 'tab:orange')


# --- tables ----------------------------------------------------------------------------------

def _metrics(comparison: Comparison) -> list[str]:
  """The chosen metric, then the eval loss where some joined point has it on both sides."""
  loss = any(pa.summaries[LOSS] and pb.summaries[LOSS] for pa, pb in comparison.joined)
  return [comparison.metric] + ([LOSS] if loss and comparison.metric != LOSS else [])


def _scale(metric: str) -> tuple[float, int]:
  """Accuracies print in percentage points, losses in nats: (factor, decimals)."""
  return (1.0, 3) if metric == LOSS else (100.0, 2)


def _estimate(value: float, half_width: float | None, metric: str, *, signed: bool = False) -> str:
  """'61.23 ± 1.20', or signed for a difference ('+3.10 ± 2.05'); a difference without an interval says so."""
  scale, decimals = _scale(metric)
  ci = f' ± {scale * half_width:.{decimals}f}' if half_width is not None else ' (no CI)' if signed else ''
  return f'{scale * value:{"+" if signed else ""}.{decimals}f}{ci}'


def _mean(summary: stats.Summary | None, metric: str) -> str:
  return '-' if summary is None else _estimate(summary.mean, summary.half_width, metric)


def _difference(d: stats.Difference | None, metric: str) -> str:
  return '-' if d is None else _estimate(d.estimate, d.half_width, metric, signed=True)


def _name(a: Point, b: Point) -> str:
  return a.name if a.name == b.name else f'{a.name} | {b.name}'


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
      row = [*(show(v) for v in pa.key), _name(pa, pb)]
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
    lines += [f'  {key_text(columns, p.key)}: {p.name} (n {_n(p, c.metric)}, {_METRIC_LABELS[c.metric]} '
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
    paths += plot.save_figure(fig, out_dir, FIGURE_STEM)
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
