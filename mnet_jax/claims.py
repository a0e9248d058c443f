"""The paper's claims checked against a study's point rows: each with its numbers, 95% CIs, rule and verdict.

    python -m mnet_jax.claims --workdir=SWEEP_DIR [--workdir=ABLATIONS_DIR]

prints the claims and writes results.md (claims, then the paper-style table) into the first workdir. Rows of
several workdirs may be concatenated (the ablations write conv/shallow points elsewhere); a point present twice
counts once, with its larger n. Accuracies are in percentage points; CIs are Student t over seeds, and
differences between two points use Welch's interval, so a verdict needs n ≥ 2 seeds on both sides.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import sys
from typing import Any

from etils import epath

from mnet_jax import published, report, stats
from mnet_jax.fileio import write_atomically

HOLDS, VIOLATED, UNDECIDED, NOT_MEASURED = 'holds', 'violated', 'cannot be decided at this n', 'not measured'
RESULTS_MD = 'results.md'
# (c) The paper's 16 released models fit with R² ≈ 0.97; 0.9 allows a small dataset's noise, not a bent curve.
MIN_R2 = 0.9
# (d) The paper's full-convolution gain is 1.1 points; 3 allows a dataset with larger gaps while staying well
# under what the paper treats as a real loss (halving the width: 6.9 points, Table 6).
MAX_SEPARABLE_DEFICIT = 3.0
# (d), (e) The paper's ablations are at α 1 (Table 4) and α 0.75 vs shallow α 1 (Table 5).
THIN_ALPHA = 0.75


@dataclasses.dataclass(frozen=True)
class Claim:
  """One claim of the paper, what the paper reports, what was measured, the decision rule and the verdict."""

  id: str
  statement: str
  paper: str
  measured: str
  rule: str
  verdict: str


def evaluate(rows: list[dict[str, Any]]) -> list[Claim]:
  """Claims (a)–(e) from the point rows among `rows` (run rows are ignored)."""
  points = _points(rows)
  return [_width_claim(points), _resolution_claim(points), _log_linear_claim(points), _separable_claim(points),
          _thin_claim(points)]


def _points(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
  chosen: dict[str, dict[str, Any]] = {}
  for row in map(report.with_kind, rows):
    if row['kind'] != report.POINT or (row.get('n') or 0) < 1 or report.numeric(row, 'top1') is None:
      continue
    if row['name'] != report.grid_name(row):  # a point of another axis too (steps, data, ...): not the paper's grid
      continue
    if row['name'] not in chosen or row['n'] >= chosen[row['name']]['n']:
      chosen[row['name']] = row
  return report.point_rows(list(chosen.values()))


def _summary(row: dict[str, Any]) -> stats.Summary:
  """A point's top-1 as a Summary in percentage points."""
  def scaled(key):
    value = report.numeric(row, key)
    return None if value is None else 100 * value

  return stats.Summary(int(row['n']), scaled('top1'), scaled('top1_sd'), scaled('top1_ci95'))


def _find(points: list[dict[str, Any]], variant: str, alpha: float, resolution: int) -> dict[str, Any] | None:
  return next((p for p in points if p.get('variant', 'separable') == variant and float(p['alpha']) == alpha
               and int(p['resolution']) == resolution), None)


def _difference(d: stats.Difference) -> str:
  return f'{d.estimate:+.1f} ± {d.half_width:.1f}' if d.half_width is not None else f'{d.estimate:+.1f} (no CI)'


def _n(a: dict[str, Any], b: dict[str, Any]) -> str:
  return f'n {a["n"]} vs {b["n"]}'


def _combine(verdicts: list[str]) -> str:
  """Several comparisons decide together: any violation violates; all must hold to hold."""
  if not verdicts:
    return NOT_MEASURED
  if VIOLATED in verdicts:
    return VIOLATED
  return HOLDS if all(v == HOLDS for v in verdicts) else UNDECIDED


_LABELS = {'alpha': 'α', 'resolution': 'resolution'}


def _monotone(points: list[dict[str, Any]], along: str, across: str) -> tuple[str, str]:
  """Top-1 non-increasing as `along` shrinks, at every value of `across` (separable points)."""
  label, across_label = _LABELS[along], _LABELS[across]
  separable = [p for p in points if p.get('variant', 'separable') == 'separable']
  effects, reversals, verdicts = [], [], []
  for key in sorted({p[across] for p in separable}, reverse=True):
    group = sorted((p for p in separable if p[across] == key), key=lambda p: -p[along])
    if len(group) < 2:
      continue
    counted = False
    for larger, smaller in itertools.combinations(group, 2):
      a, b = _summary(larger), _summary(smaller)
      if b.mean > a.mean:
        # A reversal counts only when the two CIs are apart; otherwise seed noise can explain it.
        apart = a.high is not None and b.low is not None and b.low > a.high
        counted |= apart
        reversals.append(f'{label} {smaller[along]:g} beats {larger[along]:g} at {across_label} {key:g}'
                         f'{" (CIs apart)" if apart else " (CIs overlap)"}')
    effect = stats.welch_from_summaries(_summary(group[0]), _summary(group[-1]))
    effects.append(f'{across_label} {key:g}: {label} {group[0][along]:g}→{group[-1][along]:g} '
                   f'{_difference(effect)} ({_n(group[0], group[-1])})')
    if counted or (effect.high is not None and effect.high < 0):
      verdicts.append(VIOLATED)
    else:
      verdicts.append(HOLDS if effect.low is not None and effect.low > 0 else UNDECIDED)
  if not effects:
    return f'no {across_label} with two or more {label} values', NOT_MEASURED
  measured = f'effect (largest − smallest {label}): {"; ".join(effects)}. Reversals: {"; ".join(reversals) or "none"}'
  return measured, _combine(verdicts)


_MONOTONE_RULE = ('holds if no reversal has non-overlapping CIs and every {x} effect\'s Welch CI lies above 0; '
                  'violated by such a reversal or an effect CI below 0; otherwise undecided')


def _width_claim(points: list[dict[str, Any]]) -> Claim:
  table = published.paper_results('Table 6')
  measured, verdict = _monotone(points, 'alpha', 'resolution')
  return Claim('a', 'Accuracy drops off smoothly as the width multiplier α shrinks, at every resolution (Table 6).',
               ', '.join(f'α {p.alpha:g}: {p.top1:.1f}' for p in table) + f' at {table[0].resolution} px',
               measured, _MONOTONE_RULE.format(x='width'), verdict)


def _resolution_claim(points: list[dict[str, Any]]) -> Claim:
  table = published.paper_results('Table 7')
  measured, verdict = _monotone(points, 'resolution', 'alpha')
  return Claim('b', 'Accuracy drops off smoothly as the resolution shrinks, at every α (Table 7).',
               ', '.join(f'{p.resolution} px: {p.top1:.1f}' for p in table) + f' at α {table[0].alpha:g}',
               measured, _MONOTONE_RULE.format(x='resolution'), verdict)


def _log_linear_claim(points: list[dict[str, Any]]) -> Claim:
  slim = report.log_linear_fit(published.as_rows(published.slim_results()))
  paper = (f'TF-slim\'s {slim.n} released models: R² {slim.r2:.3f}, slope {slim.slope:+.1f} ± {slim.slope_ci95:.1f} '
           'points per 10× Mult-Adds')
  rule = f'holds if R² ≥ {MIN_R2} over ≥ 3 separable point means, violated if below'
  statement = 'Accuracy is roughly log-linear in Mult-Adds (Figure 4).'
  fit = report.log_linear_fit(points)
  if fit is None:
    return Claim('c', statement, paper, 'fewer than two separable points at different Mult-Adds', rule, NOT_MEASURED)
  ci = '' if fit.slope_ci95 is None else f' ± {fit.slope_ci95:.1f}'
  r2 = '-' if fit.r2 is None else f'{fit.r2:.3f}'
  measured = (f'R² {r2}, slope {fit.slope:+.1f}{ci} points per 10× Mult-Adds over {fit.n} point means; '
              f'slope ratio to TF-slim {fit.slope / slim.slope:.2f} (on another dataset the slope need not match)')
  if fit.n < 3 or fit.r2 is None:
    verdict = UNDECIDED  # two points always fit a line; constant accuracy has no R²
  else:
    verdict = HOLDS if fit.r2 >= MIN_R2 else VIOLATED
  return Claim('c', statement, paper, measured, rule, verdict)


def _separable_claim(points: list[dict[str, Any]]) -> Claim:
  conv, separable = (next(p for p in published.paper_results('Table 4') if p.variant == v)
                     for v in ('conv', 'separable'))
  paper = (f'{conv.model} {conv.top1:.1f} vs {separable.model} {separable.top1:.1f}: '
           f'{conv.top1 - separable.top1:.1f} points at {conv.printed_mult_adds / separable.printed_mult_adds:.1f}× '
           'the Mult-Adds')
  rule = (f'holds if the Welch CI of (conv − separable) lies at or below {MAX_SEPARABLE_DEFICIT:g} points, '
          'violated if above it, else undecided')
  parts, verdicts = [], []
  for resolution in sorted({int(p['resolution']) for p in points}, reverse=True):
    a, b = _find(points, 'conv', 1.0, resolution), _find(points, 'separable', 1.0, resolution)
    if a is None or b is None:
      continue
    d = stats.welch_from_summaries(_summary(a), _summary(b))
    parts.append(f'{resolution} px: conv − separable {_difference(d)} points ({_n(a, b)}) at '
                 f'{a["mult_adds"] / b["mult_adds"]:.1f}× the Mult-Adds')
    if d.half_width is None:
      verdicts.append(UNDECIDED)
    elif d.high <= MAX_SEPARABLE_DEFICIT:
      verdicts.append(HOLDS)
    else:
      verdicts.append(VIOLATED if d.low > MAX_SEPARABLE_DEFICIT else UNDECIDED)
  return Claim('d', 'Depthwise separable convolutions lose little accuracy against full convolutions at ~1/8 the '
               'Mult-Adds (Table 4).', paper, '; '.join(parts) or 'needs conv and separable points at α 1',
               rule, _combine(verdicts))


def _thin_claim(points: list[dict[str, Any]]) -> Claim:
  thin, shallow = (next(p for p in published.paper_results('Table 5') if p.variant == v)
                   for v in ('separable', 'shallow'))
  paper = (f'{thin.model} {thin.top1:.1f} vs {shallow.model} {shallow.top1:.1f} '
           f'({thin.printed_mult_adds} vs {shallow.printed_mult_adds} M Mult-Adds)')
  rule = 'holds if the Welch CI of (thin − shallow) lies above 0, violated if below 0, else undecided'
  parts, verdicts = [], []
  for resolution in sorted({int(p['resolution']) for p in points}, reverse=True):
    a, b = _find(points, 'separable', THIN_ALPHA, resolution), _find(points, 'shallow', 1.0, resolution)
    if a is None or b is None:
      continue
    d = stats.welch_from_summaries(_summary(a), _summary(b))
    parts.append(f'{resolution} px: thin − shallow {_difference(d)} points ({_n(a, b)}) at '
                 f'{report.millions(a["mult_adds"])} vs {report.millions(b["mult_adds"])} M Mult-Adds')
    if d.half_width is None:
      verdicts.append(UNDECIDED)
    else:
      verdicts.append(HOLDS if d.low > 0 else VIOLATED if d.high < 0 else UNDECIDED)
  return Claim('e', 'A thinner network beats a shallower one of similar cost (Table 5).', paper,
               '; '.join(parts) or f'needs α {THIN_ALPHA:g} and shallow α 1 points', rule, _combine(verdicts))


def format_claims(claims: list[Claim]) -> str:
  """The claims as indented plain text, for a terminal."""
  lines = []
  for c in claims:
    lines += [f'({c.id}) {c.statement}', f'    paper:    {c.paper}', f'    measured: {c.measured}',
              f'    rule:     {c.rule}', f'    verdict:  {c.verdict}']
  return '\n'.join(lines)


def _cell(text: str) -> str:
  return text.replace('|', '\\|').replace('\n', ' ')


def format_markdown(rows: list[dict[str, Any]]) -> str:
  """results.md: the claims table with its rules, then the paper-style results table."""
  claims = evaluate(rows)
  datasets = sorted({str(r['dataset']) for r in report.point_rows(rows) if r.get('dataset')})
  lines = ['# MobileNet V1 scaling study: results', '',
           f'Dataset: {", ".join(datasets) or "unknown"}. Top-1 in percent: means over the seeds that finished '
           '(n) with 95% Student-t CIs; differences between two points use Welch\'s 95% interval.', '',
           '## The paper\'s claims', '', '| | Claim | Paper | Measured | Verdict |', '|---|---|---|---|---|']
  lines += [f'| ({c.id}) | {_cell(c.statement)} | {_cell(c.paper)} | {_cell(c.measured)} | **{c.verdict}** |'
            for c in claims]
  lines += ['', 'Rules:', '']
  lines += [f'- ({c.id}) {c.rule}.' for c in claims]
  lines += ['', '## Results', '', '```text', report.format_table(rows), '```', '']
  return '\n'.join(lines)


def write_markdown(workdir: str | os.PathLike, rows: list[dict[str, Any]]) -> epath.Path:
  """Write `workdir`/results.md atomically; returns its path."""
  path = epath.Path(workdir) / RESULTS_MD
  write_atomically(path, format_markdown(rows).encode())
  return path


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m mnet_jax.claims', description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', action='append', required=True,
                      help='holds results.json; repeat it to add the ablations; results.md goes to the first')
  args = parser.parse_args(argv)
  try:
    rows = [row for workdir in args.workdir for row in report.load_results(workdir)]
  except (OSError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(format_claims(evaluate(rows)))
  print(write_markdown(args.workdir[0], rows))
  return 0


if __name__ == '__main__':
  sys.exit(main())
