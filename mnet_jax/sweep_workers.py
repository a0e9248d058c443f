"""Several sweep points at once on one CPU machine: a worker process per point, each pinned to its own cores.

XLA:CPU splits each op of a step over every core, and at the offline study's sizes that pays badly: the 0.25-36
point trains as fast on one core as on two, the 1-63 point 1.4x faster on two (BENCHMARKS.md). So with
`--config.sweep.workers=2` on a 2-core machine two points train at once, one per core. A worker runs
`point_runs.run_point` for its point, as the single-process sweep does, into the same run dirs and rows; the
parent prints its lines prefixed with the point's name, starts the next point when one ends, and measures the
probes (latency, LiteRT) afterwards, one at a time, on the whole machine.

Programs compiled for one core round float32 sums differently from programs compiled for two, so a point's
numbers differ from a single-process run's by round-off (within the seed-to-seed spread); they are bitwise
those of the same sweep run single-process on one core (`taskset -c 0`), which the tests check.

Ctrl-C or SIGTERM reaches the parent, which passes it on once to each worker: they save their checkpoints
and stop, and rerunning the command resumes them. Workers run in their own sessions so that a terminal's
Ctrl-C does not reach them twice.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import ml_collections
from absl import logging

from mnet_jax import cli, runtime  # no JAX or numpy here: a worker sets its CPUs before they start


def core_sets(workers: int) -> list[list[int]]:
  """This process's CPUs dealt to `workers` workers, disjoint; an error if there are fewer CPUs than workers."""
  cpus = runtime.usable_cpus()
  if not 1 <= workers <= len(cpus):
    raise ValueError(f'sweep.workers must be 1..{len(cpus)} (the CPUs this process can use), got {workers}')
  return [cpus[i::workers] for i in range(workers)]


def _relay(stream, prefix: str) -> None:
  for line in stream:
    print(f'{prefix}{line}', end='', flush=True)


def run_points(config: ml_collections.ConfigDict, workdir: str, todo: list, pending: dict, workers: int,
               work: Callable[[object], float], crashed: Callable[[object, str], None]) -> None:
  """Train the points in `todo` (their seeds in `pending`) in `workers` processes, in that order.

  `work(point)` is a point's relative cost, for the ETA; `crashed(point, error)` is called for a worker that
  ended without recording its runs (e.g. killed). After a Ctrl-C or SIGTERM, once every worker has saved,
  raises `preemption.Interrupted` or `Preempted`.
  """
  from mnet_jax import preemption, train

  free, queue, running, stop = core_sets(workers), list(todo), {}, []
  done_work, busy_seconds = 0.0, 0.0

  def forward(signum, frame):  # the first Ctrl-C saves and stops each worker, a second stops them at once
    stop.append(signum)
    for process in running:
      process.send_signal(signum)

  previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
  try:
    while running or (queue and not stop):
      while queue and free and not stop:
        point, cores = queue.pop(0), free.pop(0)
        left = sum(work(p) for p in [point, *queue, *(r[0] for r in running.values())])
        eta = f', ~{cli.minutes(busy_seconds / done_work * left / workers)} left' if done_work else ''
        train.log(f'[sweep] point {len(todo) - len(queue)}/{len(todo)}: {point.name}, seeds '
                  f'{",".join(map(str, pending[point]))}, on CPU {",".join(map(str, cores))}{eta}')
        command = [sys.executable, '-m', 'mnet_jax.sweep_workers', workdir, point.name,
                   ','.join(map(str, pending[point])), ','.join(map(str, cores))]
        process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, start_new_session=True)
        process.stdin.write(config.to_json())
        process.stdin.close()
        relay = threading.Thread(target=_relay, args=(process.stdout, f'[{point.name}] '), daemon=True)
        relay.start()
        running[process] = (point, cores, relay, time.time())
      time.sleep(0.1)
      for process in [p for p in running if p.poll() is not None]:
        point, cores, relay, started = running.pop(process)
        relay.join()
        free.append(cores)
        done_work, busy_seconds = done_work + work(point), busy_seconds + time.time() - started
        if process.returncode not in (0, 130, 143):
          crashed(point, f'its worker process exited with code {process.returncode}')
  finally:
    for signum, handler in previous.items():
      signal.signal(signum, handler)
  if stop:
    interrupted = stop[0] == signal.SIGINT
    raise (preemption.Interrupted if interrupted else preemption.Preempted)(
        f'{"Ctrl-C" if interrupted else "SIGTERM received"}: the points in training saved their checkpoints; '
        'rerun the same command to resume')


def worker(workdir: str, point_name: str, seeds: str, cpus: str) -> int:
  """One point's runs on the given CPUs, with the sweep's config read from stdin as JSON."""
  os.sched_setaffinity(0, [int(c) for c in cpus.split(',')])  # before JAX starts: it sizes its threads by it
  cli.configure_tensorflow()
  cli.exit_without_collecting()
  cli.quiet_failed_writes()
  logging.set_verbosity(logging.FATAL)  # as in main: a failure is the run's row, not the libraries' logs
  config = ml_collections.ConfigDict(json.loads(sys.stdin.read()))
  with cli.collector_paused_then_frozen():  # after the affinity: they import JAX
    from mnet_jax import point_runs, preemption, study
  from mnet_jax.fileio import run_path

  runtime.use_compilation_cache(config.get('compilation_cache_dir'), workdir)
  point = next(p for p in study.expand(config).points if p.name == point_name)
  try:
    point_runs.run_point(config, point, [int(s) for s in seeds.split(',')], run_path(workdir))
  except preemption.Interrupted:
    return 130
  except preemption.Preempted:
    return 143
  except KeyboardInterrupt:
    return 130
  return 0


if __name__ == '__main__':
  sys.exit(worker(*sys.argv[1:]))
