"""One study point's runs: train (or resume) its seeds and leave one row per run in its run dirs.

Each seed of a point trains in its own run dir `<workdir>/<point name>/seed<k>`; the point dir holds
`point.json`, its exact config overrides. A point's seeds train together (one vmapped step,
`train.train_seeds_together`); if that fails each is retried alone, and a run that fails is recorded
in its row with its error, so one point cannot stop a study. Called by `sweep` (in its own process)
and by `sweep_workers` (one worker process per point); it imports neither.
"""

from __future__ import annotations

import json
from typing import Any

import jax
import ml_collections
from etils import epath

from mnet_jax import compute, cost, input_pipeline, preemption, report, train
from mnet_jax.fileio import atomic_write_json, read_json, write_atomically
from mnet_jax.study import Point, point_config

POINT_JSON = 'point.json'
CURVE_JSON = 'curve.json'  # a run's evaluations during training (`evaluation.Curve`)


def run_dir(workdir: epath.Path, point: Point, seed: int) -> epath.Path:
  return workdir / point.name / f'seed{seed}'


def write_point_json(workdir: epath.Path, point: Point) -> None:
  """The point's overrides in their order (the order its name lists them), not sorted."""
  if jax.process_index() == 0:
    write_atomically(workdir / point.name / POINT_JSON, (json.dumps(point.to_json(), indent=2) + '\n').encode())


def description(point: Point, run: ml_collections.ConfigDict, info: input_pipeline.DatasetInfo) -> dict[str, Any]:
  """What a point is and what each of its runs costs to train: the columns its run and point rows share."""
  model = run.model
  model_cost = cost.model_cost(model.alpha, model.resolution, model.variant, info.num_classes, model.min_depth,
                               depth=model.get('depth', 1.0))
  steps = train.num_train_steps(run, info.num_train)[1]
  examples = compute.examples_seen(steps, run.batch_size)
  return {**point.columns(), 'alpha': model.alpha, 'resolution': model.resolution, 'rho': model.resolution / 224,
          'variant': model.variant, 'depth': model.get('depth', 1.0), 'dataset': run.data.name,
          'mult_adds': model_cost.mult_adds, 'params': model_cost.params, 'batch_size': run.batch_size,
          'num_train_steps': steps, 'examples_seen': examples, 'train_examples': info.num_train,
          'train_flops': compute.train_flops(model_cost.mult_adds, examples)}


def run_row(point: Point, seed: int, run: ml_collections.ConfigDict, info: input_pipeline.DatasetInfo,
            fields: dict[str, Any] | None = None) -> dict[str, Any]:
  """One run row; `fields` (e.g. results.json's) fill its outcome, their other keys (e.g. the config) are dropped."""
  row = {'kind': report.RUN, 'name': point.name, 'seed': seed, **description(point, run, info)}
  outcome = {'top1': None, 'top5': None, 'eval_loss': None, 'train_img_s': None, 'wall_s': None,
             'first_step_s': None, 'steps_s': None, 'eval_s': None, 'steps': None, 'top1_int8': None,
             'status': 'pending', 'error': None}
  outcome.update({k: v for k, v in (fields or {}).items() if k in outcome})
  return row | outcome


def finished_row(directory: epath.Path, any_status: bool = False) -> dict[str, Any] | None:
  """The row a run left behind: only a finished one, unless `any_status`."""
  path = directory / 'row.json'
  if not path.exists():
    return None
  row = read_json(path)
  return row if any_status or row.get('status') == 'done' else None


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
  write_point_json(workdir, point)
  info = input_pipeline.dataset_info(run.data)
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
      row = run_row(point, seed, run, info, {'status': 'failed', 'error': error})
    else:
      row = run_row(point, seed, run, info, outcome)
    if jax.process_index() == 0:
      atomic_write_json(directory / 'row.json', row)
    rows.append(row)
  return rows


def record_crash(config: ml_collections.ConfigDict, point: Point, seeds: list[int], workdir: epath.Path,
                 error: str) -> None:
  """Failed rows for a point's runs that a crashed worker left without one (the next run retries them)."""
  train.log(f'[sweep] {point.name} FAILED: {error}')
  run = point_config(config, point)
  info = input_pipeline.dataset_info(run.data)
  for seed in seeds:
    if finished_row(run_dir(workdir, point, seed)) is None:
      atomic_write_json(run_dir(workdir, point, seed) / 'row.json',
                        run_row(point, seed, run, info, {'status': 'failed', 'error': error}))
