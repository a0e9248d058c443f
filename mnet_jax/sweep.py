"""A study: expand its points, run or resume each (point, seed), collect the results and learning-curve tables.

The points come from `study.expand` (the α×ρ grid and any `sweep.axes`); each point's seeds train in its run
dirs through `point_runs`, in this process or in worker processes side by side (`sweep_workers`). A rerun
skips finished runs and resumes unfinished ones from their checkpoints; a point that fails is recorded with
its error and the others still run. The workdir gets `results.json`/`.csv` (one row per run and one per
point: mean, SD and 95% CI over seeds), `curves.csv` (one row per run and evaluation), `study.json` (the
swept fields and the config), `results.md` (the paper's claims checked) and the figures.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import ml_collections
from etils import epath

from mnet_jax import claims, cli, compute, input_pipeline, point_runs, probes, report, study, sweep_workers, train
from mnet_jax.fileio import atomic_write_json, read_json, run_path
from mnet_jax.point_runs import finished_row, run_dir
from mnet_jax.study import Point, point_config


def _other_points(workdir: epath.Path, names: set[str]) -> list[epath.Path]:
  """Point dirs in the workdir that are not among `names` but hold runs, e.g. an ablation run into the same
  workdir: a dir with `point.json`, or named as the α×ρ grid names points (written before point.json existed)."""
  if not workdir.exists():
    return []
  found = []
  for directory in sorted(workdir.iterdir(), key=lambda d: d.name):
    if directory.name in names or not any(directory.glob('seed*/row.json')):
      continue
    if (directory / point_runs.POINT_JSON).exists():
      found.append(directory)
      continue
    try:
      study.legacy_point(directory.name)
      found.append(directory)
    except ValueError:
      continue
  return found


def collect_rows(config: ml_collections.ConfigDict, workdir: epath.Path, points: list[Point],
                 seeds: list[int]) -> list[dict[str, Any]]:
  """Run rows of every (point, seed) of the sweep, and of finished runs of other points found in the
  workdir, plus one aggregated row per point."""
  runs, measured, infos = [], {}, {}
  for point in points:
    run = point_config(config, point)
    key = run.data.to_json()
    info = infos[key] if key in infos else infos.setdefault(key, input_pipeline.dataset_info(run.data))
    for seed in seeds:
      # A row written by an earlier version lacks the newer columns (e.g. train_flops): they describe the point.
      written = finished_row(run_dir(workdir, point, seed), any_status=True) or {}
      runs.append(point_runs.run_row(point, seed, run, info) | written)
  for directory in _other_points(workdir, {p.name for p in points}):
    runs += [read_json(p) for p in sorted(directory.glob('seed*/row.json'))]
  for row in runs:  # the int8 export's top-1, where the LiteRT probe measured it
    path = workdir / row['name'] / f'seed{row["seed"]}' / 'int8.json'
    if path.exists():
      row['top1_int8'] = read_json(path).get('top1_int8')
  for name in {r['name'] for r in runs}:
    for probe in ('latency.json', 'tflite.json'):  # XLA's, LiteRT's
      path = workdir / name / probe
      if path.exists():
        measured.setdefault(name, {}).update(read_json(path))
  return report.aggregate(runs, measured) + runs


def collect_curves(workdir: epath.Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """One row per run and evaluation: the run's description (swept fields, cost) and what it had reached then."""
  curves = []
  for row in rows:
    path = workdir / row['name'] / f'seed{row["seed"]}' / point_runs.CURVE_JSON
    if row.get('kind') != report.RUN or not path.exists():
      continue
    described = {k: v for k, v in row.items() if k not in report.PER_RUN_FIELDS and k != 'kind'}
    for evaluation in read_json(path):
      examples = compute.examples_seen(evaluation['step'], row['batch_size'])
      curves.append({'name': row['name'], 'seed': row['seed'], 'step': evaluation['step'], **described,
                     'examples_seen': examples, 'train_flops': compute.train_flops(row['mult_adds'], examples),
                     **{k: evaluation.get(k) for k in ('top1', 'top5', 'eval_loss')}})
  return curves


def _write_study_json(workdir: epath.Path, config: ml_collections.ConfigDict, the_study: study.Study) -> None:
  atomic_write_json(workdir / study.STUDY_JSON, {'swept': the_study.columns, 'swept_paths': the_study.swept,
                                                 'points': [p.name for p in the_study.points],
                                                 'config': train.read_json_roundtrip(config.to_dict())})


def run_sweep(config: ml_collections.ConfigDict, workdir: str) -> int:
  """Run every (point, seed) of the sweep; write the tables, results.md and the figures.

  Returns 0, or 1 if a run failed.
  """
  workdir = run_path(workdir)
  the_study = study.expand(config)
  points = the_study.points
  selected = study.selected(config.sweep, points)
  seeds = study.seeds_of(config.sweep)
  for note in the_study.notes:
    train.log(note)
  for point in selected:  # bad input is reported before anything runs (else every run would fail alike)
    train.check_config(point_config(config, point))
  if config.sweep.workers != 1:
    if jax.process_count() > 1 or jax.default_backend() != 'cpu':
      raise ValueError('sweep.workers > 1 runs points side by side on one CPU machine; '
                       'on accelerators or several hosts, use --config.sweep.only per job')
    sweep_workers.core_sets(config.sweep.workers)
  pending = {p: [s for s in seeds if finished_row(run_dir(workdir, p, s)) is None] for p in selected}
  todo = [p for p in selected if pending[p]]
  runs_left = sum(len(v) for v in pending.values())
  train.log(f'[sweep] {len(selected)} points x {len(seeds)} seeds, {len(selected) * len(seeds) - runs_left} runs '
            f'already done, {runs_left} to run in {workdir}')
  work = {p: _work(point_config(config, p)) * len(pending[p]) for p in todo}
  if config.sweep.workers > 1:
    sweep_workers.run_points(config, str(workdir), todo, pending, config.sweep.workers, work.__getitem__,
                             lambda p, error: point_runs.record_crash(config, p, pending[p], workdir, error))
  else:
    seconds_per_work, spent, done_work = None, 0.0, 0.0
    for index, point in enumerate(todo):
      eta = f', ~{cli.minutes(seconds_per_work * sum(work[p] for p in todo[index:]))} left' if seconds_per_work else ''
      train.log(f'[sweep] point {index + 1}/{len(todo)}: {point.name}, seeds {",".join(map(str, pending[point]))}{eta}')
      start = time.time()
      point_runs.run_point(config, point, pending[point], workdir)
      spent += time.time() - start
      done_work += work[point]
      seconds_per_work = spent / done_work
  for point in selected:
    if all(finished_row(run_dir(workdir, point, s)) for s in seeds):
      run, point_dir = point_config(config, point), workdir / point.name
      probes.measured_latency(run, config.sweep.latency_batch, point_dir)
      probes.measured_tflite(config.sweep, run, point_dir, [run_dir(workdir, point, s) for s in seeds])
  table = collect_rows(config, workdir, points, seeds)
  if jax.process_index() == 0:
    from mnet_jax import plot  # imports matplotlib (~0.3 s): not in every single run and sweep worker

    curves = collect_curves(workdir, table)
    _write_study_json(workdir, config, the_study)
    report.write_results(workdir, table)
    report.write_curves(workdir, curves, the_study.columns)
    claims.write_markdown(workdir, table)
    figures = plot.make_figures(table, workdir, dataset=config.data.name, curves=curves, swept=the_study.columns)
    print(report.format_table(table), flush=True)
    print(claims.format_claims(claims.evaluate(table)), flush=True)
    print(f'[sweep] results: {workdir / report.RESULTS_CSV}, {workdir / report.CURVES_CSV}, '
          f'{workdir / claims.RESULTS_MD}; figures: {", ".join(map(str, figures))}', flush=True)
  selected_names = {p.name for p in selected}
  failed = sorted({f'{r["name"]} seed {r["seed"]}' for r in table
                   if r.get('kind') == report.RUN and r['status'] == 'failed' and r['name'] in selected_names})
  if failed:
    train.log(f'[sweep] {len(failed)} run(s) failed: {", ".join(failed)}; rerun the same command to retry them')
  return 1 if failed else 0


def _work(run: ml_collections.ConfigDict) -> float:
  """Relative cost of one run of a point for the ETA: steps × activations (α·r², what bounds a CPU step here)
  plus a fixed per-run overhead (compile, eval)."""
  model = run.model
  width = 8.0 if model.variant == 'conv' else model.alpha
  steps = run.num_train_steps if run.num_train_steps >= 0 else 300
  return steps / 300 * (width * model.get('depth', 1.0) * model.resolution**2 * run.batch_size / 64) + 2000.0
