"""The α×ρ study: expand the grid, run or resume each point, collect one results table.

Each point trains in its own run directory `<workdir>/<point name>` with the sweep's
shared training config. A rerun skips finished points and resumes unfinished ones from
their checkpoints; a point that fails is recorded with its error and the others still run.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from etils import epath

from mnet_jax import architecture, cost, input_pipeline, plot, report, train
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
    points = [parse_point(Point(v, a, r).name) for v, a, r in itertools.product(
        [v.strip() for v in sweep.variants.split(',') if v.strip()],
        _numbers(sweep.alphas, float), _numbers(sweep.resolutions, int))]
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


def point_config(config: ml_collections.ConfigDict, point: Point) -> ml_collections.ConfigDict:
  """The single-run config of one point: the sweep's config with the model's α, resolution, variant."""
  run = ml_collections.ConfigDict(config.to_dict())
  del run.sweep
  run.model.alpha, run.model.resolution, run.model.variant = point.alpha, point.resolution, point.variant
  return run


def measure_inference(config: ml_collections.ConfigDict, batch_size: int, repeats: int = 5) -> dict[str, float]:
  """Batch-1 latency and batch-`batch_size` throughput of the model on this machine's first device."""
  model = train.create_model(config.model, input_pipeline.dataset_info(config.data).num_classes)
  resolution = config.model.resolution
  variables = model.init(jax.random.key(0), jnp.zeros((1, resolution, resolution, 3)))
  forward = jax.jit(lambda v, x: model.apply(v, x, train=False))

  def median_seconds(batch: int) -> float:
    images = jnp.zeros((batch, resolution, resolution, 3))
    forward(variables, images).block_until_ready()  # compile and warm up
    times = []
    for _ in range(repeats):
      start = time.perf_counter()
      forward(variables, images).block_until_ready()
      times.append(time.perf_counter() - start)
    return statistics.median(times)

  return {'latency_ms': 1000 * median_seconds(1), 'infer_img_s': batch_size / median_seconds(batch_size)}


def _row(point: Point, run_config: ml_collections.ConfigDict, num_classes: int, **fields: Any) -> dict[str, Any]:
  """One results-table row; `fields` may carry extra keys (e.g. results.json's config), which are dropped."""
  model_cost = cost.model_cost(point.alpha, point.resolution, point.variant, num_classes,
                               run_config.model.min_depth)
  row = {'name': point.name, 'alpha': point.alpha, 'resolution': point.resolution,
         'rho': point.resolution / 224, 'variant': point.variant, 'dataset': run_config.data.name,
         'mult_adds': model_cost.mult_adds, 'params': model_cost.params,
         'top1': None, 'top5': None, 'latency_ms': None, 'infer_img_s': None, 'train_img_s': None,
         'wall_s': None, 'steps': None, 'status': 'pending', 'error': None}
  row.update({k: v for k, v in fields.items() if k in row})
  return row


def run_point(config: ml_collections.ConfigDict, point: Point, run_dir: epath.Path) -> dict[str, Any]:
  """Train (or resume) one point; returns its row. Errors are recorded, not raised."""
  run = point_config(config, point)
  num_classes = input_pipeline.dataset_info(run.data).num_classes
  try:
    results = train.train_and_evaluate(run, str(run_dir))
    timing = measure_inference(run, config.sweep.latency_batch) if config.sweep.latency_batch else {}
    row = _row(point, run, num_classes, **{k: v for k, v in results.items() if k != 'config'}, **timing)
  except train.Preempted:
    raise
  except Exception as e:  # noqa: BLE001 - one failing point must not stop the study
    error = f'{type(e).__name__}: {e}'
    train.log(f'[sweep] {point.name} FAILED: {error}')
    row = _row(point, run, num_classes, status='failed', error=error)
  finally:
    jax.clear_caches()  # compiled programs of other shapes are not needed any more
  if jax.process_index() == 0:
    atomic_write_json(run_dir / 'row.json', row)
  return row


def finished_row(run_dir: epath.Path, any_status: bool = False) -> dict[str, Any] | None:
  """The row a point's run left behind: only a finished one, unless `any_status`."""
  path = run_dir / 'row.json'
  if not path.exists():
    return None
  row = read_json(path)
  return row if any_status or row.get('status') == 'done' else None


def run_sweep(config: ml_collections.ConfigDict, workdir: str) -> int:
  """Run every point of the sweep; write results.csv/json and figures. Returns 0, or 1 if a point failed."""
  workdir = run_path(workdir)
  points = expand_points(config.sweep)
  selected = selected_points(config.sweep, points)
  for point in selected:  # bad input is reported before anything runs
    train.create_model(point_config(config, point).model, 2).check()
  num_classes = input_pipeline.dataset_info(config.data).num_classes
  # The table covers the whole grid, so slices that each run one point never overwrite each other's rows.
  rows = {p.name: finished_row(workdir / p.name) for p in points}
  todo = [p for p in selected if rows[p.name] is None]
  train.log(f'[sweep] {len(selected)} points, {len(selected) - len(todo)} already done, {len(todo)} to run, '
            f'in {workdir}')
  seconds_per_work, spent, done_work = None, 0.0, 0.0
  for index, point in enumerate(todo):
    work = [_work(p, config, num_classes) for p in todo[index:]]
    eta = f', ~{_minutes(seconds_per_work * sum(work))} left' if seconds_per_work else ''
    train.log(f'[sweep] point {index + 1}/{len(todo)}: {point.name}{eta}')
    start = time.time()
    rows[point.name] = run_point(config, point, workdir / point.name)
    spent += time.time() - start
    done_work += work[0]
    seconds_per_work = spent / done_work
  table = [rows[p.name] or finished_row(workdir / p.name, any_status=True) or _row(p, config, num_classes)
           for p in points]
  if jax.process_index() == 0:
    report.write_results(workdir, table)
    figures = plot.make_figures(table, workdir, dataset=config.data.name)
    print(report.format_table(table), flush=True)
    print(f'[sweep] results: {workdir / "results.csv"}; figures: {", ".join(map(str, figures))}', flush=True)
  failed = [r['name'] for r in table if r['status'] == 'failed' and parse_point(r['name']) in selected]
  if failed:
    train.log(f'[sweep] {len(failed)} point(s) failed: {", ".join(failed)}; rerun the same command to retry them')
  return 1 if failed else 0


def _work(point: Point, config: ml_collections.ConfigDict, num_classes: int) -> float:
  """Relative cost of a point for the ETA: Mult-Adds plus a fixed per-point overhead (compile, eval)."""
  mult_adds = cost.model_cost(point.alpha, point.resolution, point.variant, num_classes).mult_adds
  return mult_adds + 20e6


def _minutes(seconds: float) -> str:
  return f'{seconds / 60:.0f} min' if seconds >= 60 else f'{seconds:.0f} s'

