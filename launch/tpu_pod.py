"""Run mnet_jax on Cloud TPU VM slices with gcloud: create or reuse a slice, ship the code, install the pinned
requirements and start mnet_jax.main on every worker (--worker=all); --watch recreates a preempted slice and
reruns the same command, which resumes from the checkpoints in the GCS workdir; --data mounts the dataset's bucket
read-only on every worker of every slice it brings up. Standard library only.

  python launch/tpu_pod.py --name=mnet --zone=us-central2-b --accelerator_type=v4-32 --spot --watch \\
      --workdir=gs://BUCKET/sweep --data=gs://BUCKET/tensorflow_datasets:/data/tensorflow_datasets
  python launch/tpu_pod.py ... --points a{1,0.75,0.5,0.25}_r{224,192,160,128}   # one slice per point
  python launch/tpu_pod.py ... --dry_run                                          # print the commands only
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import re
import shlex
import subprocess
import sys
import tempfile
import time

from common import (
  DATA_DIR_FLAG,
  DEFAULT_CONFIG,
  REPO_ROOT,
  Parser,
  check_data_dir,
  fail,
  main_args,
  point_names,
  print_cost,
  split_main_flags,
)

ACCELERATOR_TYPE = re.compile(r'(v[0-9]+[a-z]*)-[0-9]+')  # v4-32, v5litepod-16, v5p-8, v6e-64
SLICE_NAME = re.compile(r'[a-z]([-a-z0-9]{0,61}[a-z0-9])?')  # a GCE resource name
# Default TPU software version per generation, from https://cloud.google.com/tpu/docs/runtimes (PyTorch and JAX).
RUNTIME_VERSIONS = {'v2': 'tpu-ubuntu2204-base', 'v3': 'tpu-ubuntu2204-base', 'v4': 'tpu-ubuntu2204-base',
                    'v5litepod': 'v2-alpha-tpuv5-lite', 'v5p': 'v2-alpha-tpuv5', 'v6e': 'v2-alpha-tpuv6e'}
# Exit codes of the run after which rerunning resumes: 143 = main saw SIGTERM and saved a checkpoint
# (a preemption notice), 255 = ssh lost the connection (the VM went away).
RESUMABLE_EXIT_CODES = (143, 255)
MOUNT_FAILED = -1  # deploy's result when only the --data mount failed; not an exit code
# On the workers, relative to the home folder that gcloud ssh and scp start in.
SOURCE_DIR, VENV_DIR, ARCHIVE, PID_FILE = 'mnet_src', 'mnet_venv', 'mnet_src.tar.gz', 'mnet_run.pid'
UV = '$HOME/.local/bin/uv'
# A rerun on a live slice first stops a run left over from before (it would hold the TPU): SIGTERM makes it
# save a checkpoint; after 60 s it is killed. The cmdline check guards against a reused pid.
STOP_PREVIOUS_RUN = (f'pid=$(cat {PID_FILE} 2>/dev/null); if grep -qa mnet_jax.main "/proc/$pid/cmdline" 2>/dev/null; '
                     'then kill "$pid"; '
                     'for i in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done; '
                     'kill -9 "$pid" 2>/dev/null; fi')
# gcsfuse from Google's apt repository, as https://cloud.google.com/storage/docs/cloud-storage-fuse/install says.
INSTALL_GCSFUSE = ('command -v gcsfuse >/dev/null || { echo "deb [signed-by=/usr/share/keyrings/cloud.google.asc] '
                   'https://packages.cloud.google.com/apt gcsfuse-$(lsb_release -cs) main" '
                   '| sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null'
                   ' && curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg '
                   '| sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null'
                   ' && sudo apt-get update -qq && sudo apt-get install -y -qq fuse gcsfuse; }')


@dataclasses.dataclass(frozen=True)
class Slice:
  """One TPU VM slice (optionally through a queued resource of the same name) and its gcloud commands."""

  name: str
  zone: str
  project: str | None
  accelerator_type: str
  runtime_version: str
  spot: bool
  queued: bool

  @property
  def kind(self) -> str:
    return 'queued-resources' if self.queued else 'tpu-vm'

  @property
  def ready_states(self) -> tuple[str, ...]:
    return ('ACTIVE',) if self.queued else ('READY',)

  @property
  def dead_states(self) -> tuple[str, ...]:
    """States that never come back to ready: the slice must be deleted and created again."""
    return ('FAILED', 'SUSPENDING', 'SUSPENDED') if self.queued else ('PREEMPTED', 'TERMINATED')

  def gcloud(self, *args: str) -> list[str]:
    project = [f'--project={self.project}'] if self.project else []
    return ['gcloud', 'compute', 'tpus', *args, f'--zone={self.zone}', *project]

  def describe(self) -> list[str]:
    state_field = 'state.state' if self.queued else 'state'
    return self.gcloud(self.kind, 'describe', self.name, f'--format=value({state_field})')

  def create(self) -> list[str]:
    spot = ['--spot'] if self.spot else []
    if self.queued:
      return self.gcloud('queued-resources', 'create', self.name, f'--node-id={self.name}',
                         f'--accelerator-type={self.accelerator_type}', f'--runtime-version={self.runtime_version}',
                         *spot)
    return self.gcloud('tpu-vm', 'create', self.name, f'--accelerator-type={self.accelerator_type}',
                       f'--version={self.runtime_version}', *spot)

  def delete(self) -> list[str]:
    force = ['--force'] if self.queued else []  # --force also deletes the queued resource's TPU VM
    return self.gcloud(self.kind, 'delete', self.name, *force, '--quiet')

  def copy(self, local_path: str, remote_path: str) -> list[str]:
    return self.gcloud('tpu-vm', 'scp', local_path, f'{self.name}:{remote_path}', '--worker=all')

  def ssh(self, command: str) -> list[str]:
    return self.gcloud('tpu-vm', 'ssh', self.name, '--worker=all', f'--command={command}')


def parse_args(argv: list[str]) -> argparse.Namespace:
  parser = Parser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--name', required=True, help='slice name (with --points: the prefix of one slice per point)')
  parser.add_argument('--zone', required=True)
  parser.add_argument('--project', help='GCP project (default: gcloud config)')
  parser.add_argument('--accelerator_type', required=True, help='e.g. v4-32, v5litepod-16, v5p-8, v6e-64')
  parser.add_argument('--runtime_version', help='TPU software version (default: the one for the TPU generation)')
  parser.add_argument('--spot', action='store_true', help='Spot VMs (cheaper, preemptible)')
  parser.add_argument('--queued', action='store_true', help='create through a queued resource')
  parser.add_argument('--workdir', required=True, help='gs:// folder shared by every worker and every retry')
  parser.add_argument('--config', default=DEFAULT_CONFIG,
                      help='config file[:arg] for mnet_jax.main (default: %(default)s)')
  parser.add_argument('--points', nargs='+', metavar='POINT',
                      help='one slice per sweep point, each running --config.sweep.only=POINT in the same workdir')
  parser.add_argument('--repo', help='git URL the workers clone (default: ship this checkout with git archive)')
  parser.add_argument('--ref', default='HEAD', help='git ref to ship or check out (default: %(default)s)')
  parser.add_argument('--watch', action='store_true', help='recreate a preempted slice and rerun until done')
  parser.add_argument('--max_attempts', type=int, default=50, help='runs per slice with --watch (default: %(default)s)')
  parser.add_argument('--poll_seconds', type=int, default=60,
                      help='seconds between state checks (default: %(default)s)')
  parser.add_argument('--data', metavar='gs://BUCKET/DIR:/LOCAL/DIR',
                      help='mount gs://BUCKET/DIR read-only at /LOCAL/DIR on every worker before each run and pass '
                           '--config.data.data_dir=/LOCAL/DIR')
  parser.add_argument('--max_mount_failures', type=int, default=3,
                      help='with --watch, attempts whose mount fails before giving up (default: %(default)s)')
  parser.add_argument('--dry_run', action='store_true',
                      help="print the commands, one per line, and the study's cost; run nothing")
  parser.add_argument('--img_per_s_per_chip', type=float,
                      help="training rate per chip for the dry run's chip-hours (default: the project's measured "
                           'rate, 1.0-224 bf16 on one H200)')
  own, main_flags = split_main_flags(argv)
  args = parser.parse_args(own)
  args.main_flags = main_flags
  return args


def check_args(args: argparse.Namespace) -> None:
  match = ACCELERATOR_TYPE.fullmatch(args.accelerator_type)
  if not match:
    fail(f'bad --accelerator_type {args.accelerator_type!r}; expected e.g. v4-32, v5litepod-16, v5p-8 or v6e-64')
  if not args.runtime_version:
    args.runtime_version = RUNTIME_VERSIONS.get(match[1])
    if not args.runtime_version:
      fail(f'no default TPU software version for {match[1]}; pass --runtime_version')
  if not args.workdir.startswith('gs://'):
    fail(f'--workdir must be a gs:// folder (every worker and every retry must see it), got {args.workdir!r}')
  if args.points is not None:
    args.points = point_names(args.points)
  if args.data:
    args.data = parse_data(args.data)
    data_dirs = [f.removeprefix(DATA_DIR_FLAG) for f in args.main_flags if f.startswith(DATA_DIR_FLAG)]
    if data_dirs and data_dirs[-1] != args.data[1]:
      fail(f'--data mounts at {args.data[1]} but the run is given {DATA_DIR_FLAG}{data_dirs[-1]}; drop one')
    if not data_dirs:
      args.main_flags = [*args.main_flags, DATA_DIR_FLAG + args.data[1]]
  check_data_dir(args.main_flags)
  if args.img_per_s_per_chip is not None and not args.img_per_s_per_chip > 0:
    fail(f'--img_per_s_per_chip must be positive, got {args.img_per_s_per_chip}')
  if args.max_mount_failures < 1:
    fail(f'--max_mount_failures must be at least 1, got {args.max_mount_failures}')
  for name in slice_names(args).values():
    if not SLICE_NAME.fullmatch(name):
      fail(f'bad slice name {name!r}: lowercase letters, digits and hyphens, at most 63, starting with a letter')


def parse_data(value: str) -> tuple[str, str]:
  """(gs://BUCKET/DIR, /LOCAL/DIR) from --data."""
  remote, _, local = value.rpartition(':')
  if not re.fullmatch(r'gs://[^/\s]+(/.*)?', remote) or not local.startswith('/'):
    fail(f'bad --data {value!r}; expected gs://BUCKET[/DIR]:/LOCAL/DIR, e.g. '
         'gs://BUCKET/tensorflow_datasets:/data/tensorflow_datasets')
  return remote.rstrip('/'), local.rstrip('/') or '/'


def slice_names(args: argparse.Namespace) -> dict[str | None, str]:
  """Sweep point (None: the whole sweep) -> slice name."""
  if args.points is None:
    return {None: args.name}
  return {p: f'{args.name}-{p.replace(".", "-").replace("_", "-")}' for p in args.points}


def local_archive(args: argparse.Namespace) -> str:
  return f'{tempfile.gettempdir()}/mnet_jax_src-{args.name}.tar.gz'


def archive_command(args: argparse.Namespace) -> list[str]:
  return ['git', '-C', str(REPO_ROOT), 'archive', '--format=tar.gz', f'--output={local_archive(args)}', args.ref]


def setup_command(args: argparse.Namespace) -> str:
  """Unpack (or clone) the code and install the pinned requirements with libtpu into a Python venv.

  The venv comes from uv because the TPU images' system Python is older than the project's minimum.
  """
  if args.repo:
    fetch = (f'rm -rf {SOURCE_DIR} && git clone -q {shlex.quote(args.repo)} {SOURCE_DIR}'
             f' && git -C {SOURCE_DIR} checkout -q {shlex.quote(args.ref)}')
  else:
    fetch = f'rm -rf {SOURCE_DIR} && mkdir {SOURCE_DIR} && tar -xzf {ARCHIVE} -C {SOURCE_DIR}'
  return (f'{fetch} && (test -x {UV} || curl -LsSf https://astral.sh/uv/install.sh | sh)'
          f' && {UV} venv -q --allow-existing --python {python_version()} {VENV_DIR}'
          f' && {UV} pip install -q --python {VENV_DIR}/bin/python -r {SOURCE_DIR}/requirements.txt'
          f' {shlex.quote(jax_tpu_requirement())}')


def mount_command(args: argparse.Namespace) -> str:
  """Install gcsfuse and mount the --data bucket read-only, unless mounted already (a rerun on a live slice).

  Mounted rather than copied: the ArrayRecord build of ImageNet (~150 GB) is larger than a TPU VM's boot disk
  and a copy would be repeated on every worker after every recreation; gcsfuse reads only the records a run asks for.
  """
  remote, local = args.data
  bucket, _, folder = remote.removeprefix('gs://').partition('/')
  only_dir = [f'--only-dir={folder}'] if folder else []
  mount = shlex.join(['gcsfuse', '-o', 'ro', '--implicit-dirs', *only_dir, bucket, local])
  where = shlex.quote(local)
  failed = shlex.quote(f'error: could not mount {remote} read-only at {local} on ')
  # The listing fails on an empty mount too: a wrong folder would otherwise show only when the run reads it.
  return (f'{{ {INSTALL_GCSFUSE} && {{ mountpoint -q {where} || {{ sudo mkdir -p {where}'
          f' && sudo chown "$(id -u):$(id -g)" {where} && {mount}; }}; }} && ls -d {where}/* >/dev/null; }}'
          f' || {{ echo {failed}"$(hostname)" >&2; exit 1; }}')


def run_command(args: argparse.Namespace, point: str | None) -> str:
  flags = args.main_flags + ([f'--config.sweep.only={point}'] if point else [])
  python_args = shlex.join(main_args(args.config, args.workdir, flags))
  # exec keeps the shell's pid, so the pid file names the Python process.
  return (f'{STOP_PREVIOUS_RUN}; echo $$ > {PID_FILE} && cd {SOURCE_DIR}'
          f' && exec ../{VENV_DIR}/bin/python {python_args}')


def python_version() -> str:
  """The project's minimum Python, from pyproject.toml."""
  text = (REPO_ROOT / 'pyproject.toml').read_text()
  return re.search(r'requires-python\s*=\s*">=\s*([0-9.]+)"', text)[1]


def jax_tpu_requirement() -> str:
  """jax[tpu] at the version requirements.txt pins (the extra adds libtpu)."""
  match = re.search(r'^jax==(\S+)', (REPO_ROOT / 'requirements.txt').read_text(), re.MULTILINE)
  return f'jax[tpu]=={match[1]}' if match else 'jax[tpu]'


def make_slice(args: argparse.Namespace, name: str) -> Slice:
  return Slice(name, args.zone, args.project, args.accelerator_type, args.runtime_version, args.spot, args.queued)


def deploy_steps(tpu: Slice, args: argparse.Namespace) -> list[list[str]]:
  """What runs on a ready slice before the training command: ship the code, install, mount the data."""
  steps = [] if args.repo else [tpu.copy(local_archive(args), ARCHIVE)]
  steps.append(tpu.ssh(setup_command(args)))
  return steps + ([tpu.ssh(mount_command(args))] if args.data else [])


def print_plan(args: argparse.Namespace) -> None:
  print_cost(args.config, args.main_flags, args.points, args.img_per_s_per_chip)
  if not args.repo:
    print(shlex.join(archive_command(args)))
  for point, name in slice_names(args).items():
    tpu = make_slice(args, name)
    print(f'# slice {name}: {"sweep point " + point if point else "the whole sweep"}')
    print(shlex.join(tpu.describe()))
    print_attempt(tpu, args, point)
    if args.watch:
      print(f'# --watch: if the run stops early and describe shows {"/".join(tpu.dead_states)} or no slice, the'
            ' slice is recreated and the run resumes from the checkpoints in the workdir:')
      print(shlex.join(tpu.delete()))
      print_attempt(tpu, args, point)
      if args.data:
        print(f'# --watch: a failed mount ends the attempt and is retried the same way, at most '
              f'{args.max_mount_failures} attempts in all')


def print_attempt(tpu: Slice, args: argparse.Namespace, point: str | None) -> None:
  """From create to the training command."""
  print(shlex.join(tpu.create()))
  if args.queued:
    print(f'# polled until {tpu.ready_states[0]}')
    print(shlex.join(tpu.describe()))
  for step in [*deploy_steps(tpu, args), tpu.ssh(run_command(args, point))]:
    print(shlex.join(step))


def call(tpu: Slice, command: list[str]) -> int:
  log(tpu, '+ ' + shlex.join(command))
  return subprocess.run(command).returncode


def state(tpu: Slice) -> str | None:
  """The slice's state, or None where it does not exist (or cannot be described)."""
  result = subprocess.run(tpu.describe(), capture_output=True, text=True)
  return (result.stdout.strip() or None) if result.returncode == 0 else None


def bring_up(tpu: Slice, args: argparse.Namespace) -> bool:
  """Reuse the slice if it is ready; delete it if preempted; create it if missing; wait until it is ready."""
  while True:
    current = state(tpu)
    log(tpu, f'state: {current or "absent"}')
    if current in tpu.ready_states:
      return True
    if current in tpu.dead_states and call(tpu, tpu.delete()) == 0:
      continue
    if current is None:
      if call(tpu, tpu.create()) == 0:
        continue
      if not args.watch:
        return False
    time.sleep(args.poll_seconds)  # creating, queued, deleting, or a failed create/delete to retry


def deploy(tpu: Slice, args: argparse.Namespace) -> int:
  """Put the code, the venv and the data on every worker (again after a recreation). Returns the first failing
  exit code; MOUNT_FAILED where only the mount failed."""
  steps = deploy_steps(tpu, args)
  for step in steps:
    if code := call(tpu, step):
      if args.data and step is steps[-1]:
        log(tpu, f'mounting {args.data[0]} at {args.data[1]} failed (exit code {code})')
        return MOUNT_FAILED
      return code
  return 0


def supervise(tpu: Slice, args: argparse.Namespace, point: str | None) -> int:
  """Run the job on one slice to completion; with --watch survive preemptions. Returns the exit code."""
  mount_failures = 0
  for attempt in range(1, args.max_attempts + 1):
    log(tpu, f'attempt {attempt}')
    if not bring_up(tpu, args):
      return 1
    code = deploy(tpu, args)
    if code == MOUNT_FAILED:
      mount_failures += 1
      if not args.watch or mount_failures >= args.max_mount_failures:
        log(tpu, f'the data could not be mounted ({mount_failures} failed attempts); giving up')
        return 1
      time.sleep(args.poll_seconds)  # as after a preemption: bring_up recreates the slice if it is gone
      continue
    code = code or call(tpu, tpu.ssh(run_command(args, point)))
    if code == 0:
      log(tpu, 'done')
      return 0
    if not args.watch:
      return code
    time.sleep(args.poll_seconds)  # a preempted slice takes a moment to leave the ready state
    if code not in RESUMABLE_EXIT_CODES and state(tpu) in tpu.ready_states:
      log(tpu, f'the job failed with exit code {code} on a live slice; not retrying')
      return code
  log(tpu, f'gave up after {args.max_attempts} attempts')
  return 1


def log(tpu: Slice, message: str) -> None:
  print(f'[{tpu.name}] {message}', file=sys.stderr, flush=True)


def main(argv: list[str]) -> int:
  args = parse_args(argv)
  check_args(args)
  if args.dry_run:
    print_plan(args)
    return 0
  if not args.repo and subprocess.run(archive_command(args)).returncode != 0:
    return 1
  jobs = {point: make_slice(args, name) for point, name in slice_names(args).items()}
  with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
    codes = list(pool.map(lambda item: supervise(item[1], args, item[0]), jobs.items()))
  return max(codes)


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
