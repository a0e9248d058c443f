"""Run mnet_jax on a Slurm GPU cluster: write an sbatch script with one task (process) per GPU, started by srun
so that jax.distributed.initialize() finds Slurm's step variables, requeued before the time limit, and submit it.
Standard library only.

  python launch/slurm.py --nodes=2 --gpus_per_node=8 --time=24:00:00 --partition=gpu \\
      --workdir=/shared/runs/sweep --env_setup='source ~/venvs/mnet/bin/activate' \\
      -- --config.data.data_dir=/shared/tensorflow_datasets
  python launch/slurm.py ... --dry_run   # print the commands (the script as a here-document), submit nothing
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys

from common import DATA_DIR_FLAG, DEFAULT_CONFIG, REPO_ROOT, Parser, check_data_dir, fail, main_args, split_main_flags

TIME_LIMIT = re.compile(r'([0-9]+-)?[0-9]+(:[0-9]{2}){0,2}')  # Slurm's formats: minutes, h:m:s, d-h[:m[:s]]

# Why the script looks the way it does:
# - JAX's Slurm detection (jax._src.clusters.SlurmCluster) needs SLURM_JOB_ID, SLURM_STEP_NODELIST, SLURM_NTASKS,
#   SLURM_PROCID and SLURM_LOCALID; the SLURM_STEP_* variables exist only inside a job step, so main runs
#   under srun. The coordinator is the step's first node, its port derived from the job id.
# - It gives process SLURM_LOCALID the GPU of that index among the GPUs the process sees, so every task must see
#   all the node's GPUs: --gpus-per-node with --ntasks-per-node equal to it. --gpus-per-task=1 would hide all
#   but one GPU from each task and the processes with SLURM_LOCALID > 0 fail ('invalid device ordinal',
#   jax-ml/jax#23452).
# - Slurm signals the batch shell (B:) USR1 some seconds before the time limit; the trap sends SIGTERM to the
#   tasks (scancel --signal reaches every step but the batch shell and cancels nothing), they save a checkpoint
#   and exit, and the job is requeued; it resumes from the workdir. USR1 rather than TERM so that a plain
#   scancel does not requeue. A preemption by Slurm sends SIGTERM to the tasks itself, and --requeue lets Slurm
#   requeue the job.
SCRIPT_BODY = """\
cd {code_dir}
{env_setup}
requeue() {{
  echo "time limit near: checkpointing and requeueing job $SLURM_JOB_ID"
  scancel --signal=TERM "$SLURM_JOB_ID"
  wait "$pid"
  scontrol requeue "$SLURM_JOB_ID"
  exit 0
}}
trap requeue USR1
{copy_data}srun --kill-on-bad-exit=1 {command} &
pid=$!
wait "$pid"
"""


def parse_args(argv: list[str]) -> argparse.Namespace:
  parser = Parser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--nodes', type=int, default=1, help='(default: %(default)s)')
  parser.add_argument('--gpus_per_node', type=int, required=True, help='GPUs per node; one process each')
  parser.add_argument('--cpus_per_task', type=int, default=8,
                      help='CPU cores per process, for the input pipeline (default: %(default)s)')
  parser.add_argument('--time', default='24:00:00',
                      help='time limit of one submission; the job requeues itself (default: %(default)s)')
  parser.add_argument('--partition')
  parser.add_argument('--account')
  parser.add_argument('--job_name', default='mnet_jax', help='(default: %(default)s)')
  parser.add_argument('--sbatch_option', action='append', default=[], metavar='OPTION',
                      help='one more #SBATCH line, e.g. --sbatch_option=--mem=0 (repeatable)')
  parser.add_argument('--signal_seconds', type=int, default=120,
                      help='seconds before the time limit at which the job checkpoints and requeues itself'
                           ' (default: %(default)s)')
  parser.add_argument('--workdir', required=True, help='on a filesystem every node sees')
  parser.add_argument('--config', default=DEFAULT_CONFIG,
                      help='config file[:arg] for mnet_jax.main (default: %(default)s)')
  parser.add_argument('--compilation_cache_dir', default='',
                      help="JAX's persistent compilation cache (default: mnet_jax.main's, <workdir>/.jax_cache)")
  parser.add_argument('--code_dir', default=str(REPO_ROOT), help='this repository, as the nodes see it')
  parser.add_argument('--python', default='python3',
                      help='interpreter on the nodes, with the requirements installed (default: %(default)s)')
  parser.add_argument('--env_setup', default='', help='shell line run first, e.g. module load / venv activate')
  parser.add_argument('--log_dir', help='where the script and its output go (default: <code_dir>/slurm_logs)')
  parser.add_argument('--data', metavar='SHARED_DIR:LOCAL_DIR',
                      help='copy SHARED_DIR (seen by every node) to LOCAL_DIR on every node before each run (again '
                           'after a requeue: only newer files); passes --config.data.data_dir')
  parser.add_argument('--dry_run', action='store_true', help='print the commands, one per line; submit nothing')
  own, main_flags = split_main_flags(argv)
  args = parser.parse_args(own)
  args.main_flags = main_flags
  return args


def check_args(args: argparse.Namespace) -> None:
  for flag in ('nodes', 'gpus_per_node', 'cpus_per_task', 'signal_seconds'):
    if getattr(args, flag) < 1:
      fail(f'--{flag} must be at least 1, got {getattr(args, flag)}')
  if not TIME_LIMIT.fullmatch(args.time):
    fail(f'bad --time {args.time!r}; expected e.g. 90, 24:00:00 or 2-00:00:00')
  if not args.workdir:
    fail('--workdir must not be empty')
  if not re.fullmatch(r'[A-Za-z0-9_.-]+', args.job_name):
    fail(f'bad --job_name {args.job_name!r}; use letters, digits, _ . -')
  args.log_dir = args.log_dir or os.path.join(args.code_dir, 'slurm_logs')
  if args.data:
    shared, _, local = args.data.rpartition(':')
    if not shared or not local.startswith('/'):
      fail(f'bad --data {args.data!r}; expected SHARED_DIR:/LOCAL/DIR, e.g. /shared/tensorflow_datasets:/tmp/tfds')
    args.data = shared, local
    if any(f.startswith(DATA_DIR_FLAG) for f in args.main_flags):
      fail(f'--data sets {DATA_DIR_FLAG}{local}; drop the other {DATA_DIR_FLAG}')
    args.main_flags = [*args.main_flags, DATA_DIR_FLAG + local]
  check_data_dir(args.main_flags)


def sbatch_script(args: argparse.Namespace) -> str:
  options = [f'--job-name={args.job_name}', f'--nodes={args.nodes}', f'--ntasks-per-node={args.gpus_per_node}',
             f'--gpus-per-node={args.gpus_per_node}', f'--cpus-per-task={args.cpus_per_task}', f'--time={args.time}',
             '--requeue', f'--signal=B:USR1@{args.signal_seconds}',
             f'--output={os.path.join(args.log_dir, "%x-%j.out")}', '--open-mode=append']
  options += [f'--{name}={getattr(args, name)}' for name in ('partition', 'account') if getattr(args, name)]
  options += args.sbatch_option
  flags = list(args.main_flags)
  if args.compilation_cache_dir:
    flags.append(f'--config.compilation_cache_dir={args.compilation_cache_dir}')
  command = shlex.join([args.python, *main_args(args.config, args.workdir, flags)])
  header = ['#!/bin/bash'] + [f'#SBATCH {option}' for option in options]
  body = SCRIPT_BODY.format(code_dir=shlex.quote(args.code_dir), env_setup=args.env_setup, command=command,
                            copy_data=copy_data_command(args))
  return '\n'.join(header) + '\n' + body


def copy_data_command(args: argparse.Namespace) -> str:
  """One task per node copies --data to the node's disk before the run; a failed copy ends the job."""
  if not args.data:
    return ''
  shared, local = args.data
  # -u: after a requeue only files newer than the node's copy are copied again.
  copy = f'mkdir -p {shlex.quote(local)} && cp -au {shlex.quote(shared + "/.")} {shlex.quote(local + "/")}'
  failed = shlex.quote(f'error: could not copy {shared} to {local} on every node')
  return (f'srun --ntasks-per-node=1 --kill-on-bad-exit=1 bash -c {shlex.quote(copy)}'
          f' || {{ echo {failed} >&2; exit 1; }}\n')


def main(argv: list[str]) -> int:
  args = parse_args(argv)
  check_args(args)
  script = sbatch_script(args)
  path = os.path.join(args.log_dir, f'{args.job_name}.sbatch')
  if args.dry_run:
    # The same steps as shell commands: the script goes through a quoted here-document, unchanged.
    print(shlex.join(['mkdir', '-p', args.log_dir]))
    print(f"cat > {shlex.quote(path)} <<'EOF'\n{script}EOF")
    print(shlex.join(['sbatch', path]))
    return 0
  os.makedirs(args.log_dir, exist_ok=True)  # Slurm does not create the --output folder
  with open(path, 'w') as f:
    f.write(script)
  print(f'wrote {path}', file=sys.stderr)
  return subprocess.run(['sbatch', path]).returncode


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
