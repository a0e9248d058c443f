"""The α×ρ study: expand the grid, run or resume each (point, seed), collect one results table.

Each seed of a point trains in its own run directory `<workdir>/<point name>/seed<k>` with
the sweep's shared training config; a point's unfinished seeds train together (one
vmapped step, `train.train_seeds_together`). A rerun skips finished runs and resumes
unfinished ones from their checkpoints; a point that fails is retried seed by seed, recorded
with its error, and the others still run. The table has one row per run and one per point
(mean, SD and 95% CI over seeds), and the paper's claims are checked against it (`claims`).
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import time
from typing import Any

import jax
import ml_collections
from etils import epath

from mnet_jax import (
  architecture,
  claims,
  cli,
  cost,
  input_pipeline,
  preemption,
  probes,
  report,
  sweep_workers,
  train,
)
from mnet_jax.fileio import atomic_write_json, read_json, run_path

_NAME = re.compile(r'(?:(?P<variant>[a-z]+)_)?a(?P<alpha>[0-9.]+)_r(?P<resolution>[0-9]+)')


@dataclasses.dataclass(frozen=True)
class Point:
  variant: str
  alpha: float
  resolution: int

  @property
  def name(self) -> str:
    prefix = '' if self.variant == 'separable' else f'{self.variant}_'
    return f'{prefix}a{self.alpha:g}_r{self.resolution}'


def parse_point(name: str) -> Point:
  """'a0.75_r128' or 'conv_a1_r224' -> Point."""
  match = _NAME.fullmatch(name.strip())
  if not match:
    raise ValueError(f'bad sweep point name {name!r}; expected e.g. a0.75_r128 or conv_a1_r224')
  point = Point(match['variant'] or 'separable', float(match['alpha']), int(match['resolution']))
  architecture.check_variant(point.variant)
  architecture.check_alpha(point.alpha)
  architecture.check_resolution(point.resolution)
  return point


def _numbers(text: str, kind: type) -> list:
  try:
    return [kind(v) for v in str(text).split(',') if v.strip()]
  except ValueError:
    raise ValueError(f'expected a comma-separated list of {kind.__name__}s, got {text!r}') from None


def expand_points(sweep: ml_collections.ConfigDict) -> list[Point]:
  """All points of a sweep: explicit `points` names, else variants × alphas × resolutions."""
  if sweep.points:
    points = [parse_point(n) for n in sweep.points.split(',') if n.strip()]
  else:
    axes = {'variants': ([v.strip() for v in sweep.variants.split(',') if v.strip()], architecture.check_variant),
            'alphas': (_numbers(sweep.alphas, float), architecture.check_alpha),
            'resolutions': (_numbers(sweep.resolutions, int), architecture.check_resolution)}
    for field, (values, check) in axes.items():  # named by the field the user set, not by a point's name
      for value in values:
        try:
          check(value)
        except ValueError as e:
          raise ValueError(f'sweep.{field}: {e}') from None
    # Through the name: a point is what its name (its run directory) says, e.g. alpha 0.333333 for 1/3.
    points = [parse_point(Point(*axis).name) for axis in itertools.product(*(values for values, _ in axes.values()))]
  if not points:
    raise ValueError('the sweep has no points')
  return list(dict.fromkeys(points))


def selected_points(sweep: ml_collections.ConfigDict, points: list[Point]) -> list[Point]:
  """The points this invocation runs: all, or those named in `sweep.only` (e.g. one per TPU slice)."""
  if not sweep.only:
    return points
  wanted = {parse_point(n).name for n in sweep.only.split(',') if n.strip()}
  unknown = wanted - {p.name for p in points}
  if unknown:
    raise ValueError(f'sweep.only names points not in the sweep: {", ".join(sorted(unknown))}')
  return [p for p in points if p.name in wanted]


def seeds_of(sweep: ml_collections.ConfigDict) -> list[int]:
  """The sweep's seeds, e.g. '0,1,2' -> [0, 1, 2]."""
  seeds = list(dict.fromkeys(_numbers(sweep.seeds, int)))
  if not seeds or min(seeds) < 0:
    raise ValueError(f'sweep.seeds must list non-negative integers, got {sweep.seeds!r}')
  return seeds


def run_dir(workdir: epath.Path, point: Point, seed: int) -> epath.Path:
  return workdir / point.name / f'seed{seed}'


def point_config(config: ml_collections.ConfigDict, point: Point) -> ml_collections.ConfigDict:
  """The single-run config of one point: the sweep's config with the model's α, resolution, variant."""
  run = ml_collections.ConfigDict(config.to_dict())
  del run.sweep
  run.model.alpha, run.model.resolution, run.model.variant = point.alpha, point.resolution, point.variant
  return run


def _row(point: Point, seed: int, run_config: ml_collections.ConfigDict, num_classes: int,
         fields: dict[str, Any] | None = None) -> dict[str, Any]:
  """One run row; `fields` (e.g. results.json's) fill it, their extra keys (e.g. the config) are dropped."""
  model_cost = cost.model_cost(point.alpha, point.resolution, point.variant, num_classes,
                               run_config.model.min_depth)
  row = {'kind': report.RUN, 'name': point.name, 'seed': seed, 'alpha': point.alpha,
         'resolution': point.resolution, 'rho': point.resolution / 224, 'variant': point.variant,
         'dataset': run_config.data.name, 'mult_adds': model_cost.mult_adds, 'params': model_cost.params,
         'top1': None, 'top5': None, 'train_img_s': None, 'wall_s': None, 'first_step_s': None, 'steps_s': None,
         'eval_s': None, 'steps': None, 'top1_int8': None,
         'status': 'pending', 'error': None}
  row.update({k: v for k, v in (fields or {}).items() if k in row and k not in ('kind', 'name', 'seed')})
  return row


def _train_runs(run: ml_collections.ConfigDict, seeds: list[int], dirs: list[epath.Path]) -> dict[int, Any]:
  """Results per seed, or the exception it failed with. Several seeds train together; if that fails,
  each is retried alone (resuming its checkpoints), so one diverging seed does not sink the others."""
  try:
    return dict(zip(seeds, train.train_seeds_together(run, seeds, [str(d) for d in dirs]), strict=True))
  except preemption.Preempted:
    raise
  except Exception as e:  # noqa: BLE001 - one failing point must not stop the study
    if len(seeds) == 1:
      return {seeds[0]: e}
    train.log(f'[sweep] seeds {",".join(map(str, seeds))} together failed ({type(e).__name__}: {e}); '
              'retrying each seed alone')
  outcomes = {}
  for seed, directory in zip(seeds, dirs, strict=True):
    outcomes.update(_train_runs(run, [seed], [directory]))
  return outcomes


def run_point(config: ml_collections.ConfigDict, point: Point, seeds: list[int],
              workdir: epath.Path) -> list[dict[str, Any]]:
  """Train (or resume) the given seeds of one point; returns their run rows. Errors are recorded, not raised."""
  run = point_config(config, point)
  num_classes = input_pipeline.dataset_info(run.data).num_classes
  dirs = [run_dir(workdir, point, seed) for seed in seeds]
  groups = [[s] for s in seeds] if not config.sweep.seeds_together else [seeds]
  outcomes = {}
  try:
    for group in groups:
      outcomes.update(_train_runs(run, group, [run_dir(workdir, point, s) for s in group]))
  finally:
    jax.clear_caches()  # compiled programs of other shapes are not needed any more
  rows = []
  for seed, directory in zip(seeds, dirs, strict=True):
    outcome = outcomes[seed]
    if isinstance(outcome, Exception):
      error = f'{type(outcome).__name__}: {outcome}'
      train.log(f'[sweep] {point.name} seed {seed} FAILED: {error}')
      row = _row(point, seed, run, num_classes, {'status': 'failed', 'error': error})
    else:
      row = _row(point, seed, run, num_classes, outcome)
    if jax.process_index() == 0:
      atomic_write_json(directory / 'row.json', row)
    rows.append(row)
  return rows


def _record_crash(config: ml_collections.ConfigDict, point: Point, seeds: list[int], workdir: epath.Path,
                  num_classes: int, error: str) -> None:
  """Failed rows for a point's runs that a crashed worker left without one (the next run retries them)."""
  train.log(f'[sweep] {point.name} FAILED: {error}')
  for seed in seeds:
    if finished_row(run_dir(workdir, point, seed)) is None:
      atomic_write_json(run_dir(workdir, point, seed) / 'row.json',
                        _row(point, seed, point_config(config, point), num_classes,
                             {'status': 'failed', 'error': error}))


def finished_row(directory: epath.Path, any_status: bool = False) -> dict[str, Any] | None:
  """The row a run left behind: only a finished one, unless `any_status`."""
  path = directory / 'row.json'
  if not path.exists():
    return None
  row = read_json(path)
  return row if any_status or row.get('status') == 'done' else None


def _points_on_disk(workdir: epath.Path) -> list[Point]:
  """Points with run dirs in the workdir, e.g. from an ablation run into the same workdir."""
  if not workdir.exists():
    return []
  found = []
  for directory in workdir.iterdir():
    if _NAME.fullmatch(directory.name) and any(directory.glob('seed*/row.json')):
      try:
        found.append(parse_point(directory.name))
      except ValueError:
        continue
  return found


def collect_rows(config: ml_collections.ConfigDict, workdir: epath.Path, points: list[Point],
                 seeds: list[int], num_classes: int) -> list[dict[str, Any]]:
  """Run rows of every (point, seed) of the sweep, and of finished runs of other points found in the
  workdir, plus one aggregated row per point."""
  runs, measured = [], {}
  for point in points:
    for seed in seeds:
      runs.append(finished_row(run_dir(workdir, point, seed), any_status=True)
                  or _row(point, seed, point_config(config, point), num_classes))
  for point in _points_on_disk(workdir):
    if point not in points:
      runs += [read_json(p) for p in sorted((workdir / point.name).glob('seed*/row.json'))]
  for row in runs:  # the int8 export's top-1, where the LiteRT probe measured it
    path = run_dir(workdir, parse_point(row['name']), row['seed']) / 'int8.json'
    if path.exists():
      row['top1_int8'] = read_json(path).get('top1_int8')
  for point in {parse_point(r['name']) for r in runs}:
    for probe in ('latency.json', 'tflite.json'):  # XLA's, LiteRT's
      path = workdir / point.name / probe
      if path.exists():
        measured.setdefault(point.name, {}).update(read_json(path))
  return report.aggregate(runs, measured) + runs


def run_sweep(config: ml_collections.ConfigDict, workdir: str) -> int:
  """Run every (point, seed) of the sweep; write results.csv/json, results.md and figures.

  Returns 0, or 1 if a run failed.
  """
  workdir = run_path(workdir)
  points = expand_points(config.sweep)
  selected = selected_points(config.sweep, points)
  seeds = seeds_of(config.sweep)
  for point in selected:  # bad input is reported before anything runs (else every run would fail alike)
    train.check_config(point_config(config, point))
  if config.sweep.workers != 1:
    if jax.process_count() > 1 or jax.default_backend() != 'cpu':
      raise ValueError('sweep.workers > 1 runs points side by side on one CPU machine; '
                       'on accelerators or several hosts, use --config.sweep.only per job')
    sweep_workers.core_sets(config.sweep.workers)
  num_classes = input_pipeline.dataset_info(config.data).num_classes
  pending = {p: [s for s in seeds if finished_row(run_dir(workdir, p, s)) is None] for p in selected}
  todo = [p for p in selected if pending[p]]
  runs_left = sum(len(v) for v in pending.values())
  train.log(f'[sweep] {len(selected)} points x {len(seeds)} seeds, {len(selected) * len(seeds) - runs_left} runs '
            f'already done, {runs_left} to run in {workdir}')
  if config.sweep.workers > 1:
    sweep_workers.run_points(config, str(workdir), todo, pending, config.sweep.workers,
                             lambda p: _work(p) * len(pending[p]),
                             lambda p, error: _record_crash(config, p, pending[p], workdir, num_classes, error))
  else:
    seconds_per_work, spent, done_work = None, 0.0, 0.0
    for index, point in enumerate(todo):
      work = [_work(p) * len(pending[p]) for p in todo[index:]]
      eta = f', ~{cli.minutes(seconds_per_work * sum(work))} left' if seconds_per_work else ''
      train.log(f'[sweep] point {index + 1}/{len(todo)}: {point.name}, seeds {",".join(map(str, pending[point]))}{eta}')
      start = time.time()
      run_point(config, point, pending[point], workdir)
      spent += time.time() - start
      done_work += work[0]
      seconds_per_work = spent / done_work
  for point in selected:
    if all(finished_row(run_dir(workdir, point, s)) for s in seeds):
      run, point_dir = point_config(config, point), workdir / point.name
      probes.measured_latency(run, config.sweep.latency_batch, point_dir)
      probes.measured_tflite(config.sweep, run, point_dir, [run_dir(workdir, point, s) for s in seeds])
  table = collect_rows(config, workdir, points, seeds, num_classes)
  if jax.process_index() == 0:
    from mnet_jax import plot  # imports matplotlib (~0.3 s): not in every single run and sweep worker

    report.write_results(workdir, table)
    claims.write_markdown(workdir, table)
    figures = plot.make_figures(table, workdir, dataset=config.data.name)
    print(report.format_table(table), flush=True)
    print(claims.format_claims(claims.evaluate(table)), flush=True)
    print(f'[sweep] results: {workdir / "results.csv"}, {workdir / claims.RESULTS_MD}; '
          f'figures: {", ".join(map(str, figures))}', flush=True)
  selected_names = {p.name for p in selected}
  failed = sorted({f'{r["name"]} seed {r["seed"]}' for r in table
                   if r.get('kind') == report.RUN and r['status'] == 'failed' and r['name'] in selected_names})
  if failed:
    train.log(f'[sweep] {len(failed)} run(s) failed: {", ".join(failed)}; rerun the same command to retry them')
  return 1 if failed else 0


def _work(point: Point) -> float:
  """Relative cost of one run of a point for the ETA: activations (α·r², what bounds a CPU step here)
  plus a fixed per-point overhead (compile, eval)."""
  width = 8.0 if point.variant == 'conv' else point.alpha
  return width * point.resolution**2 + 2000.0
