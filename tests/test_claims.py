"""The paper's claims on synthetic seeds: each claim holds, is violated, cannot be decided, or was not measured."""

import math

import numpy as np
from scipy import stats as scipy_stats

from mnet_jax import claims, published, report

TIGHT = (-0.002, 0.0, 0.002)  # seed offsets: CIs of about ±0.5 points
LOOSE = (-0.08, 0.0, 0.08)  # CIs of about ±20 points


def _point(alpha, resolution, top1, offsets=TIGHT, variant='separable', mult_adds=None):
  """Run rows of one point: one seed per offset, top-1 = `top1` + offset."""
  prefix = '' if variant == 'separable' else f'{variant}_'
  mult_adds = mult_adds or int(alpha ** 2 * resolution ** 2 * 250)
  return [{'kind': 'run', 'name': f'{prefix}a{alpha:g}_r{resolution}', 'seed': seed, 'alpha': alpha,
           'resolution': resolution, 'rho': resolution / 224, 'variant': variant, 'dataset': 'toy',
           'mult_adds': mult_adds, 'params': int(alpha ** 2 * 1e6), 'top1': top1 + offset, 'top5': None,
           'status': 'done', 'error': None} for seed, offset in enumerate(offsets)]


def _table(*points):
  runs = [row for point in points for row in point]
  return runs + report.aggregate(runs)


def _grid(top1, offsets=TIGHT):
  """Separable α {1, 0.5} × resolution {64, 32}; `top1(alpha, resolution)` gives each point's mean."""
  return [_point(a, r, top1(a, r), offsets) for a in (1.0, 0.5) for r in (64, 32)]


def _verdicts(rows):
  return {c.id: c.verdict for c in claims.evaluate(rows)}


def test_scaling_claims_hold_on_a_clean_grid():
  rows = _table(*_grid(lambda a, r: 0.3 + 0.2 * a + r / 640))
  verdicts = _verdicts(rows)
  assert verdicts['a'] == verdicts['b'] == claims.HOLDS
  assert verdicts['d'] == verdicts['e'] == claims.NOT_MEASURED  # no ablation points
  width = next(c for c in claims.evaluate(rows) if c.id == 'a')
  # α 1 → 0.5 at 64 px: 10 points, CI from the Welch test in scipy.
  interval = scipy_stats.ttest_ind([70.0 + 100 * o for o in TIGHT], [60.0 + 100 * o for o in TIGHT],
                                   equal_var=False).confidence_interval()
  assert f'resolution 64: α 1→0.5 +10.0 ± {(interval.high - interval.low) / 2:.1f}' in width.measured


def test_a_reversal_with_separate_cis_violates_and_one_within_the_noise_does_not():
  # At 32 px the narrow model beats the wide one by 5 points with ±0.5-point CIs: a counted reversal.
  rows = _table(*_grid(lambda a, r: 0.6 - 0.1 * a if r == 32 else 0.4 + 0.2 * a))
  claim = next(c for c in claims.evaluate(rows) if c.id == 'a')
  assert claim.verdict == claims.VIOLATED and 'α 0.5 beats 1 at resolution 32 (CIs apart)' in claim.measured
  # The same reversal but 1 point with ±20-point CIs: within the noise, and the width effects' CIs straddle 0.
  noisy = _table(*_grid(lambda a, r: 0.52 - 0.02 * a if r == 32 else 0.4 + 0.2 * a, LOOSE))
  claim = next(c for c in claims.evaluate(noisy) if c.id == 'a')
  assert claim.verdict == claims.UNDECIDED and '(CIs overlap)' in claim.measured


def test_one_seed_per_point_cannot_decide_and_one_value_per_axis_is_not_measured():
  single = _table(*_grid(lambda a, r: 0.3 + 0.2 * a + r / 640, offsets=(0.0,)))
  verdicts = _verdicts(single)
  assert verdicts['a'] == verdicts['b'] == claims.UNDECIDED
  one_alpha = _table(_point(1.0, 64, 0.7), _point(1.0, 32, 0.6))
  verdicts = _verdicts(one_alpha)
  assert verdicts['a'] == claims.NOT_MEASURED and verdicts['b'] == claims.HOLDS


def test_resolution_claim_violated():
  rows = _table(*_grid(lambda a, r: 0.3 + 0.2 * a - r / 640))  # lower resolution is better, by 5 points
  assert _verdicts(rows)['b'] == claims.VIOLATED


def _cost_grid(top1_of_mult_adds):
  return _table(*[_point(a, r, top1_of_mult_adds(a ** 2 * r ** 2 * 250), mult_adds=int(a ** 2 * r ** 2 * 250))
                  for a in (1.0, 0.75, 0.5) for r in (64, 48, 32)])


def test_log_linear_claim():
  exact = _cost_grid(lambda m: 0.1 + 0.15 * math.log10(m))
  claim = next(c for c in claims.evaluate(exact) if c.id == 'c')
  assert claim.verdict == claims.HOLDS and 'R² 1.000, slope +15.0 ± 0.0' in claim.measured
  # The paper's side is computed from the TF-slim grid, here independently with numpy.
  slim = published.as_rows(published.slim_results())
  u, y = np.log10([r['mult_adds'] for r in slim]), [100 * r['top1'] for r in slim]
  slope = np.polyfit(u, y, 1)[0]
  assert f'R² {np.corrcoef(u, y)[0, 1] ** 2:.3f}, slope {slope:+.1f}' in claim.paper
  assert f'slope ratio to TF-slim {15 / slope:.2f}' in claim.measured
  # A V: accuracy best at the middle cost, R² far below the threshold.
  bent = _cost_grid(lambda m: 0.8 - 0.3 * abs(math.log10(m) - math.log10(250_000)))
  assert _verdicts(bent)['c'] == claims.VIOLATED
  two = _table(_point(1.0, 64, 0.7), _point(0.5, 64, 0.6))
  assert _verdicts(two)['c'] == claims.UNDECIDED  # two points always lie on a line
  assert _verdicts(_table(_point(1.0, 64, 0.7)))['c'] == claims.NOT_MEASURED


def _ablation(conv, separable, offsets=TIGHT):
  return _table(_point(1.0, 64, conv, offsets, 'conv', mult_adds=8_000_000),
                _point(1.0, 64, separable, offsets, mult_adds=1_000_000))


def test_separable_claim():
  holds = next(c for c in claims.evaluate(_ablation(0.71, 0.70)) if c.id == 'd')
  assert holds.verdict == claims.HOLDS
  assert '64 px: conv − separable +1.0 ± ' in holds.measured and '8.0× the Mult-Adds' in holds.measured
  assert '71.7 vs 1.0 MobileNet-224 70.6: 1.1 points at 8.6×' in holds.paper  # Table 4: 4866 / 569 M Mult-Adds
  assert _verdicts(_ablation(0.80, 0.60))['d'] == claims.VIOLATED
  assert _verdicts(_ablation(0.73, 0.70, LOOSE))['d'] == claims.UNDECIDED
  assert _verdicts(_ablation(0.73, 0.70, (0.0,)))['d'] == claims.UNDECIDED
  separable_only = _table(_point(1.0, 64, 0.7))
  assert _verdicts(separable_only)['d'] == claims.NOT_MEASURED


def _thin(thin, shallow, offsets=TIGHT):
  return _table(_point(0.75, 64, thin, offsets), _point(1.0, 64, shallow, offsets, 'shallow'))


def test_thin_beats_shallow_claim():
  assert _verdicts(_thin(0.68, 0.65))['e'] == claims.HOLDS
  assert _verdicts(_thin(0.62, 0.65))['e'] == claims.VIOLATED
  assert _verdicts(_thin(0.66, 0.65, LOOSE))['e'] == claims.UNDECIDED
  assert _verdicts(_table(_point(0.75, 64, 0.6)))['e'] == claims.NOT_MEASURED


def test_rows_of_two_workdirs_combine_and_the_larger_n_wins(tmp_path):
  sweep = _table(*_grid(lambda a, r: 0.3 + 0.2 * a + r / 640))
  # The ablations' workdir has its own, single-seed baseline a1_r64 (would make (d) undecided) and conv_a1_r64.
  ablations = _table(_point(1.0, 64, 0.71, offsets=(0.0,)), _point(1.0, 64, 0.61, variant='conv'))
  verdicts = _verdicts(sweep + ablations)
  assert verdicts['d'] == claims.HOLDS and verdicts['a'] == claims.HOLDS
  for workdir, rows in (('sweep', sweep), ('ablations', ablations)):
    report.write_results(tmp_path / workdir, rows)
  assert claims.main([f'--workdir={tmp_path / "sweep"}', f'--workdir={tmp_path / "ablations"}']) == 0
  text = (tmp_path / 'sweep' / 'results.md').read_text()
  assert [p.name for p in (tmp_path / 'sweep').iterdir() if p.name.startswith('.')] == []  # no temp file left
  assert '| (d) |' in text and '**holds**' in text and '1.0 Conv MobileNet-64' in text and ' ± ' in text
  assert 'Log-linear fit of top-1' in text


def test_format_claims_and_markdown_list_every_claim(tmp_path):
  rows = _table(*_grid(lambda a, r: 0.3 + 0.2 * a + r / 640))
  text = claims.format_claims(claims.evaluate(rows))
  assert [line[:3] for line in text.splitlines() if not line.startswith(' ')] == ['(a)', '(b)', '(c)', '(d)', '(e)']
  path = claims.write_markdown(tmp_path, rows)
  markdown = path.read_text()
  assert path.name == 'results.md' and markdown.count('\n| (') == 5 and f'R² ≥ {claims.MIN_R2}' in markdown

