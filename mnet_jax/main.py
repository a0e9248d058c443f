"""Entry point: one training run or a whole α×ρ sweep, chosen by the config.

  python -m mnet_jax.main --config=experiments/sweep.py --workdir=runs/sweep
  python -m mnet_jax.main --config=experiments/default.py:alpha=0.25 --workdir=runs/a025 \
      --config.batch_size=128
"""

from __future__ import annotations

import os
import sys
import traceback

from absl import app, flags, logging
from ml_collections import config_flags

from mnet_jax import cli, config_checks, runtime, study

cli.configure_tensorflow()  # none of the imports above loads TensorFlow; train and input_pipeline do, later
cli.exit_without_collecting()

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Config file (path.py[:arg]).', lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and results (local or gs://).')
flags.DEFINE_bool('distributed', False,
                  'Call jax.distributed.initialize() (TPU pod workers, Slurm, or the --coordinator_* flags).')
flags.DEFINE_string('coordinator_address', None, 'host:port of process 0 (multi-process without a cluster).')
flags.DEFINE_integer('num_processes', None, 'Number of processes (with --coordinator_address).')
flags.DEFINE_integer('process_id', None, 'This process (with --coordinator_address).')
flags.DEFINE_integer('heartbeat_timeout', 100,
                     'Seconds without a heartbeat after which a process counts as dead and the others stop '
                     'with an error (multi-process).')
flags.DEFINE_bool('verbose', False, 'Show full tracebacks of errors.')
flags.mark_flags_as_required(['config', 'workdir'])


def _initialize_jax(config) -> None:
  import jax

  if FLAGS.distributed or FLAGS.coordinator_address:
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                               heartbeat_timeout_seconds=FLAGS.heartbeat_timeout)
  runtime.use_compilation_cache(config.get('compilation_cache_dir'), FLAGS.workdir)


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    print(f'error: unexpected arguments {" ".join(argv[1:])}', file=sys.stderr)
    return cli.USAGE_ERROR
  config = FLAGS.config
  try:
    config_checks.check(config, FLAGS['config'].override_values)  # before the imports: a mistake at once
    if 'sweep' in config:
      study.expand(config)
  except ValueError as e:
    return _usage_error(e)
  with cli.collector_paused_then_frozen():  # after flag parsing: keeps --help fast
    from mnet_jax import checkpointing, input_pipeline, preemption, sweep, train

  # Library chatter (Orbax, TFDS) would drown the progress lines, and a failure ends in one line of ours: the
  # libraries' own error logs (e.g. Orbax's background writer reporting the failure the run then ends with) and
  # the traceback are for --verbose.
  logging.set_verbosity(logging.ERROR if FLAGS.verbose else logging.FATAL)
  if not FLAGS.verbose:
    cli.quiet_failed_writes()
  try:
    _initialize_jax(config)
    if 'sweep' in config:
      return sweep.run_sweep(config, FLAGS.workdir)
    train.train_and_evaluate(config, FLAGS.workdir)
    return 0
  except preemption.Interrupted as e:
    print(f'interrupted: {e}', file=sys.stderr)
    return 130  # 128 + SIGINT, as a shell reports Ctrl-C
  except preemption.Preempted as e:
    print(f'preempted: {e}', file=sys.stderr)
    return 143  # 128 + SIGTERM: the job did not finish, rerunning resumes it
  except KeyboardInterrupt:  # Ctrl-C outside the training loop (e.g. while evaluating)
    print('interrupted: stopped at once; rerun the same command to resume from the last checkpoint', file=sys.stderr)
    return 130
  except (ValueError, input_pipeline.DatasetError, checkpointing.DiskFullError) as e:
    return _usage_error(e)
  except Exception as e:  # noqa: BLE001 - one line for users, --verbose for developers
    if FLAGS.verbose:
      traceback.print_exc()
    message = str(e) if isinstance(e, train.TrainingError) else f'{type(e).__name__}: {e}'
    print(f'error: {message} (rerun with --verbose for the traceback)', file=sys.stderr)
    return 1


def _usage_error(error: Exception) -> int:
  """Bad input: one line (and the traceback with --verbose); exit code 2."""
  if FLAGS.verbose:
    traceback.print_exc()
  print(f'error: {error}', file=sys.stderr)
  return cli.USAGE_ERROR


def _exit(code: int) -> None:
  """Exit; after a failure in a multi-process run, at once.

  A normal exit ends with JAX's shutdown barrier, which waits for every process: if one died,
  this one would wait for the heartbeat timeout and then abort with a C++ stack trace.
  """
  if code and 'jax' in sys.modules:
    import jax

    if jax.distributed.is_initialized() and jax.process_count() > 1:
      sys.stdout.flush()
      sys.stderr.flush()
      os._exit(code)
  sys.exit(code)


def _parse_flags(argv: list[str]) -> list[str]:
  """absl + config_flags parsing, with every mistake reported as one line and exit code 2."""
  try:
    remaining = FLAGS(argv)
    FLAGS.config.to_dict()  # loads the config file and applies the overrides now
    return remaining
  except (AttributeError, KeyError) as e:
    # ml_collections raises KeyError("'name'\nDid you mean ...?"), possibly inside an AttributeError.
    while isinstance(e, (AttributeError, KeyError)) and e.args and isinstance(e.args[0], Exception):
      e = e.args[0]
    lines = [line.strip() for line in str(e.args[0] if e.args else e).splitlines() if line.strip()]
    hint = f' ({lines[1][0].lower()}{lines[1][1:]})' if len(lines) > 1 else ''
    print(f'error: unknown config field {lines[0] if lines else e}{hint}; check the --config.* overrides',
          file=sys.stderr)
  except Exception as e:  # noqa: BLE001 - flag, file and config errors all end here
    if '--verbose' in argv:
      traceback.print_exc()
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    print(f'error: {lines[-1] if lines else type(e).__name__}', file=sys.stderr)
  sys.exit(cli.USAGE_ERROR)


def run() -> None:
  runtime.retain_freed_memory()  # before JAX allocates anything (a re-exec, once)
  argv = _parse_flags(sys.argv)
  app.run(lambda _: _exit(main(argv)), argv=[sys.argv[0]])


if __name__ == '__main__':
  run()
