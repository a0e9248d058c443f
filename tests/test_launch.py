"""The launchers: their --dry_run commands parsed back with shlex, the remote and sbatch shell code run in bash
with stand-ins for the interpreter and Slurm's commands, and bad input."""

import os
import pathlib
import re
import shlex
import signal
import subprocess
import sys
import threading
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
TPU_POD, SLURM = ROOT / 'launch' / 'tpu_pod.py', ROOT / 'launch' / 'slurm.py'
WORKDIR = 'gs://bucket/my runs/sweep'  # a space must survive two levels of shell quoting
TPU_ARGS = ['--name=mnet', '--zone=us-central2-b', '--accelerator_type=v4-32', f'--workdir={WORKDIR}', '--dry_run']
MAIN_FLAG = '--config.data.data_dir=/data/tensorflow datasets'


def launch(script: pathlib.Path, *args: str, expect: int = 0) -> str:
  result = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, cwd='/')
  assert result.returncode == expect, result.stderr
  return result.stdout if expect == 0 else result.stderr


def commands(stdout: str) -> list[list[str]]:
  return [shlex.split(line) for line in stdout.splitlines() if line and not line.startswith('#')]


def attempts(stdout: str) -> tuple[list[list[str]], list[list[str]]]:
  """The dry run's commands for the first attempt and for the one after a recreation (--watch)."""
  first, _, recreate = stdout.partition('# --watch: if the run stops early')
  return commands(first), commands(recreate.partition('\n')[2])


def gcloud(cmds: list[list[str]], *verb: str) -> list[list[str]]:
  """The gcloud commands of one verb, e.g. ('tpu-vm', 'ssh')."""
  return [c for c in cmds if c[:3] == ['gcloud', 'compute', 'tpus'] and tuple(c[3:3 + len(verb)]) == verb]


def remote_command(cmd: list[str]) -> str:
  [value] = [a.removeprefix('--command=') for a in cmd if a.startswith('--command=')]
  return value


def main_argv(remote: str) -> list[str]:
  """The arguments after the interpreter in a worker's run command."""
  tokens = shlex.split(remote.split(' && exec ')[-1])
  return tokens[1:]


def pinned_jax() -> str:
  return re.search(r'^jax==(\S+)', (ROOT / 'requirements.txt').read_text(), re.MULTILINE)[1]


def test_whole_sweep_on_one_slice():
  cmds, recreate = attempts(launch(TPU_POD, *TPU_ARGS, '--spot', '--watch', '--', MAIN_FLAG))
  [create] = gcloud(cmds, 'tpu-vm', 'create')
  assert create[5] == 'mnet' and {'--accelerator-type=v4-32', '--version=tpu-ubuntu2204-base', '--spot',
                                  '--zone=us-central2-b'} <= set(create)
  [copy] = gcloud(cmds, 'tpu-vm', 'scp')
  assert copy[-3:-1] == ['mnet:mnet_src.tar.gz', '--worker=all']
  setup, run = gcloud(cmds, 'tpu-vm', 'ssh')
  assert all('--worker=all' in c and c[5] == 'mnet' for c in (setup, run))
  install = remote_command(setup)
  assert f"'jax[tpu]=={pinned_jax()}'" in install and '-r mnet_src/requirements.txt' in install
  assert main_argv(remote_command(run)) == ['-m', 'mnet_jax.main', '--config=experiments/sweep.py:imagenet2012',
                                            f'--workdir={WORKDIR}', '--distributed', MAIN_FLAG]
  [delete] = gcloud(recreate, 'tpu-vm', 'delete')  # the --watch recovery
  assert delete[5] == 'mnet' and '--quiet' in delete
  assert cmds[0][:3] == ['git', '-C', str(ROOT)] and 'archive' in cmds[0]
  # Order: ship the code, create, copy, install, run.
  order = [cmds.index(c) for c in (create, copy, setup, run)]
  assert order == sorted(order)


def test_queued_spot_resources():
  cmds, recreate = attempts(launch(TPU_POD, *TPU_ARGS, '--spot', '--queued', '--watch', '--project=proj'))
  [create] = gcloud(cmds, 'queued-resources', 'create')
  assert create[5] == 'mnet' and {'--node-id=mnet', '--accelerator-type=v4-32', '--spot', '--project=proj',
                                  '--runtime-version=tpu-ubuntu2204-base'} <= set(create)
  assert all('--format=value(state.state)' in c for c in gcloud(cmds, 'queued-resources', 'describe'))
  [delete] = gcloud(recreate, 'queued-resources', 'delete')
  assert '--force' in delete  # also deletes the TPU VM
  assert len(gcloud(cmds, 'tpu-vm', 'ssh')) == 2 and not gcloud(cmds, 'tpu-vm', 'create')


def test_one_slice_per_point():
  points = ['a1_r224', 'a0.75_r192', 'a0.5_r160', 'conv_a1_r224']
  cmds = commands(launch(TPU_POD, *TPU_ARGS, '--points', 'a1_r224', 'a0.75_r192,a0.5_r160', 'conv_a1_r224'))
  names = [c[5] for c in gcloud(cmds, 'tpu-vm', 'create')]
  assert names == ['mnet-a1-r224', 'mnet-a0-75-r192', 'mnet-a0-5-r160', 'mnet-conv-a1-r224']
  runs = [c for c in gcloud(cmds, 'tpu-vm', 'ssh') if 'mnet_jax.main' in remote_command(c)]
  for name, point, run in zip(names, points, runs, strict=True):
    argv = main_argv(remote_command(run))
    assert run[5] == name and '--worker=all' in run
    assert f'--workdir={WORKDIR}' in argv and [a for a in argv if 'sweep.only' in a] == [f'--config.sweep.only={point}']


def verbs(cmds: list[list[str]]) -> list[str]:
  """Each command as one word: gcloud's verb, or what a worker runs over ssh."""
  def verb(c: list[str]) -> str:
    if c[:3] != ['gcloud', 'compute', 'tpus']:
      return c[0]
    if c[4] != 'ssh':
      return c[4]
    remote = remote_command(c)
    return 'run' if 'mnet_jax.main' in remote else 'mount' if 'gcsfuse' in remote else 'install'
  return [verb(c) for c in cmds]


DATA = 'gs://bkt/tensorflow_datasets:/data/tensorflow_datasets'


def test_data_is_mounted_on_every_created_and_recreated_slice():
  first, recreate = attempts(launch(TPU_POD, *TPU_ARGS, '--spot', '--watch', f'--data={DATA}'))
  assert verbs(first) == ['git', 'describe', 'create', 'scp', 'install', 'mount', 'run']
  assert verbs(recreate) == ['delete', 'create', 'scp', 'install', 'mount', 'run']
  for cmds in (first, recreate):
    mount, run = (remote_command(c) for c in cmds[-2:])
    assert 'gcsfuse -o ro --implicit-dirs --only-dir=tensorflow_datasets bkt /data/tensorflow_datasets' in mount
    assert 'apt-get install -y -qq fuse gcsfuse' in mount
    assert main_argv(run)[-1] == '--config.data.data_dir=/data/tensorflow_datasets'
  queued, _ = attempts(launch(TPU_POD, *TPU_ARGS, '--queued', f'--data={DATA}'))
  assert verbs(queued) == ['git', 'describe', 'create', 'describe', 'scp', 'install', 'mount', 'run']


MOUNT_STAND_INS = {'sudo': 'exec "$@"', 'mountpoint': 'exit 1', 'lsb_release': 'echo jammy',
                   'gcsfuse': 'echo "$@" > gcsfuse_args; [ -f mount_fails ] && exit 1; touch "${@: -1}/x"'}


@pytest.mark.parametrize('fails', [False, True])
def test_mount_command_runs_in_bash(tmp_path, fails):
  """The worker's mount line, executed with stand-ins for sudo, mountpoint and gcsfuse (already installed)."""
  local = tmp_path / 'tfds dir'
  cmds = commands(launch(TPU_POD, *TPU_ARGS, f'--data=gs://bkt:{local}'))
  [mount] = [remote_command(c) for c in gcloud(cmds, 'tpu-vm', 'ssh') if 'gcsfuse' in remote_command(c)]
  (tmp_path / 'bin').mkdir()
  for name, body in MOUNT_STAND_INS.items():
    (tmp_path / 'bin' / name).write_text(f'#!/bin/bash\n{body}\n')
    (tmp_path / 'bin' / name).chmod(0o755)
  if fails:
    (tmp_path / 'mount_fails').touch()
  env = dict(os.environ, PATH=f'{tmp_path / "bin"}:{os.environ["PATH"]}')
  result = subprocess.run(['bash', '-c', mount], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)
  assert (tmp_path / 'gcsfuse_args').read_text().split() == ['-o', 'ro', '--implicit-dirs', 'bkt', *str(local).split()]
  assert result.returncode == (1 if fails else 0)
  assert result.stderr.startswith(f'error: could not mount gs://bkt read-only at {local} on ') if fails else True


def test_remote_data_dir_with_random_access_is_refused_before_anything_runs():
  """ArrayRecord cannot be read from gs://: main says so at once, and so does the launcher, for its own example."""
  start = time.perf_counter()
  result = subprocess.run([sys.executable, '-m', 'mnet_jax.main', '--config=experiments/default.py:imagenet2012',
                           '--workdir=/tmp/unused', '--config.data.data_dir=gs://b/tfds'], capture_output=True,
                          text=True, cwd=ROOT)
  assert result.returncode == 2 and len(result.stderr.splitlines()) == 1 and time.perf_counter() - start < 5
  assert result.stderr.startswith('error: data.data_dir=gs://b/tfds is remote') and 'gcsfuse' in result.stderr
  from mnet_jax import config_checks
  from mnet_jax.config_util import sibling

  config = sibling(str(ROOT / 'experiments' / 'default.py'), 'default').get_config('imagenet2012')
  config.data.data_dir = 's3://b/tfds'
  with pytest.raises(ValueError, match='--data'):
    config_checks.check(config)
  config.data.cache = True  # read into memory through TFDS, which reads gs://
  config_checks.check(config)
  stderr = launch(TPU_POD, *TPU_ARGS, '--', '--config.data.data_dir=gs://BUCKET/tfds', expect=2)
  assert len(stderr.splitlines()) == 1 and '--data=REMOTE:LOCAL' in stderr
  docstring_example = re.sub(r'\\+\n\s*', ' ', TPU_POD.read_text().split('\n\n')[1]).splitlines()[0]
  example = shlex.split(docstring_example)
  assert example[:2] == ['python', 'launch/tpu_pod.py'] and any(a.startswith('--data=gs://') for a in example)
  launch(TPU_POD, *example[2:], '--dry_run')


def cost_lines(stdout: str) -> list[str]:
  return [line for line in stdout.splitlines() if line.startswith(('# cost', '#   '))]


def test_dry_run_states_training_images_and_chip_hours():
  small = ['--config.sweep.alphas=1', '--config.sweep.resolutions=224,192', '--config.sweep.seeds=0,1',
           '--config.num_train_steps=1125', '--config.batch_size=64']
  # 1,125 steps x 64 = 72,000 images per seed; x 2 seeds = 144,000 per point = 7,200 s at 20 img/s = 2 chip-hours.
  assert cost_lines(launch(TPU_POD, *TPU_ARGS, '--img_per_s_per_chip=20', '--', *small)) == [
      '# cost: 2 point(s) x 2 seed(s), 288,000 training images in all; at 20 img/s per chip (given):',
      '#   a1_r224: 2 x 72,000 images, 2.00 chip-hours', '#   a1_r192: 2 x 72,000 images, 2.00 chip-hours',
      '#   in all: 4.00 chip-hours']
  # One slice per point: the cost of the points named.
  assert cost_lines(launch(TPU_POD, *TPU_ARGS, '--img_per_s_per_chip=40', '--points', 'a1_r192', '--', *small))[1:] == [
      '#   a1_r192: 2 x 72,000 images, 1.00 chip-hours', '#   in all: 1.00 chip-hours']
  # The preset: 16 points x 3 seeds x 120 epochs of 1,281,167 // 1,024 = 1,251 whole batches of 1,024 images, at
  # the measured 12,600 img/s: 7,378,698,240 / 12,600 / 3,600 = 162.67 chip-hours.
  lines = cost_lines(launch(TPU_POD, *TPU_ARGS))
  assert lines[0].startswith('# cost: 16 point(s) x 3 seed(s), 7,378,698,240 training images in all; '
                             'at 12,600 img/s per chip (measured for 1.0-224 bf16 on one H200')
  assert lines[1] == '#   a1_r224: 3 x 153,722,880 images, 10.17 chip-hours'
  assert lines[-1] == '#   in all: 162.67 chip-hours'


def test_runtime_version_follows_the_tpu_generation():
  args = [a for a in TPU_ARGS if not a.startswith('--accelerator_type')]
  for accelerator, runtime in [('v5litepod-16', 'v2-alpha-tpuv5-lite'), ('v6e-8', 'v2-alpha-tpuv6e')]:
    [create] = gcloud(commands(launch(TPU_POD, *args, f'--accelerator_type={accelerator}')), 'tpu-vm', 'create')
    assert f'--version={runtime}' in create


def test_worker_commands_run_in_bash(tmp_path):
  """The run command, executed: the interpreter gets the exact argv, and a leftover run is stopped first."""
  cmds = commands(launch(TPU_POD, *TPU_ARGS, '--', MAIN_FLAG))
  setup, run = (remote_command(c) for c in gcloud(cmds, 'tpu-vm', 'ssh'))
  assert subprocess.run(['bash', '-n', '-c', setup]).returncode == 0
  (tmp_path / 'mnet_src').mkdir()
  python = tmp_path / 'mnet_venv' / 'bin' / 'python'
  python.parent.mkdir(parents=True)
  python.write_text('#!/bin/bash\nprintf "%s\\n" "$@" > ../argv\n')
  python.chmod(0o755)
  leftover = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', 'mnet_jax.main'])
  unrelated = subprocess.Popen(['sleep', '60'])
  reaper = threading.Thread(target=leftover.wait)  # as init would: a dead but unreaped process still answers kill -0
  reaper.start()
  try:
    (tmp_path / 'mnet_run.pid').write_text(f'{leftover.pid}\n')
    assert subprocess.run(['bash', '-c', run], cwd=tmp_path, timeout=30).returncode == 0
    reaper.join(timeout=5)
    assert leftover.returncode == -signal.SIGTERM
    assert (tmp_path / 'argv').read_text().splitlines() == main_argv(run)
    # A pid file naming some other process leaves it alone.
    (tmp_path / 'mnet_run.pid').write_text(f'{unrelated.pid}\n')
    assert subprocess.run(['bash', '-c', run], cwd=tmp_path, timeout=30).returncode == 0
    assert unrelated.poll() is None
  finally:
    for process in (leftover, unrelated):
      process.kill()
      process.wait()


FAKE_GCLOUD = """#!/bin/bash
# Stand-in for gcloud: one slice whose state lives in a file; the first training run ends as the test says.
echo "$4" >> calls
case "$4" in
  describe) if [ -s state ]; then cat state; else echo "NOT_FOUND" >&2; exit 1; fi ;;
  create) echo READY > state ;;
  delete) rm -f state ;;
  ssh) if [[ "$*" == *gcsfuse* ]]; then echo mount >> calls; exit 1; fi ;;&
  ssh) if [[ "$*" == *mnet_jax.main* ]]; then
         echo run >> calls
         if [ ! -f ran_once ]; then touch ran_once; cat first_state > state; exit "$(cat first_exit)"; fi
       fi ;;
esac
"""
FIRST = ['describe', 'create', 'describe', 'scp', 'ssh', 'ssh', 'run']  # absent -> create -> ready -> install, run


@pytest.mark.parametrize('first_exit,first_state,expect,then', [
    (255, 'PREEMPTED', 0, ['describe', 'delete', 'describe', 'create', 'describe', 'scp', 'ssh', 'ssh', 'run']),
    (143, 'READY', 0, ['describe', 'scp', 'ssh', 'ssh', 'run']),  # preemption notice on a live slice: rerun there
    (1, 'READY', 1, ['describe']),  # the job itself failed: no retry
])
def test_watch_recreates_a_preempted_slice_and_reruns(tmp_path, first_exit, first_state, expect, then):
  gcloud_bin = tmp_path / 'bin' / 'gcloud'
  gcloud_bin.parent.mkdir()
  gcloud_bin.write_text(FAKE_GCLOUD)
  gcloud_bin.chmod(0o755)
  (tmp_path / 'first_exit').write_text(str(first_exit))
  (tmp_path / 'first_state').write_text(first_state)
  env = dict(os.environ, PATH=f'{gcloud_bin.parent}:{os.environ["PATH"]}', TMPDIR=str(tmp_path))
  args = [a for a in TPU_ARGS if a != '--dry_run'] + ['--spot', '--watch', '--poll_seconds=0']
  result = subprocess.run([sys.executable, str(TPU_POD), *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=60)
  assert result.returncode == expect, result.stderr
  assert (tmp_path / 'calls').read_text().split() == FIRST + then
  assert (tmp_path / 'mnet_jax_src-mnet.tar.gz').stat().st_size > 0  # the code that was shipped


def test_a_failing_mount_ends_the_attempt_and_is_retried_a_bounded_number_of_times(tmp_path):
  gcloud_bin = tmp_path / 'bin' / 'gcloud'
  gcloud_bin.parent.mkdir()
  gcloud_bin.write_text(FAKE_GCLOUD)
  gcloud_bin.chmod(0o755)
  env = dict(os.environ, PATH=f'{gcloud_bin.parent}:{os.environ["PATH"]}', TMPDIR=str(tmp_path))
  args = [a for a in TPU_ARGS if a != '--dry_run'] + ['--poll_seconds=0', f'--data={DATA}']
  for extra, mounts in ([], 1), (['--watch', '--max_mount_failures=3'], 3):
    (tmp_path / 'calls').unlink(missing_ok=True)
    (tmp_path / 'state').unlink(missing_ok=True)
    result = subprocess.run([sys.executable, str(TPU_POD), *args, *extra], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    # Absent -> create -> ready -> install, mount fails; with --watch the slice is checked again and the code
    # shipped, installed and mounted again; the training command never runs.
    again = ['describe', 'scp', 'ssh', 'ssh', 'mount']
    assert (tmp_path / 'calls').read_text().split() == FIRST[:6] + ['mount'] + again * (mounts - 1)
    assert f'mounting {DATA.rsplit(":", 1)[0]} at /data/tensorflow_datasets failed' in result.stderr
    assert f'({mounts} failed attempts); giving up' in result.stderr.splitlines()[-1]


def slurm_script(stdout: str) -> tuple[str, str]:
  """(the here-document's path, its text) from slurm.py --dry_run."""
  match = re.search(r"^cat > (.+) <<'EOF'\n(.*?)^EOF$", stdout, re.MULTILINE | re.DOTALL)
  return shlex.split(match[1])[0], match[2]


def test_sbatch_script_has_one_task_per_gpu(tmp_path):
  out = launch(SLURM, '--nodes=2', '--gpus_per_node=8', '--partition=gpu', '--workdir=/shared/my runs/sweep',
               f'--log_dir={tmp_path}', '--compilation_cache_dir=/shared/jax cache', '--dry_run', '--', MAIN_FLAG)
  path, script = slurm_script(out)
  assert out.splitlines()[-1].split() == ['sbatch', path] and path.startswith(str(tmp_path))
  options = dict(line.removeprefix('#SBATCH --').partition('=')[::2] for line in script.splitlines()
                 if line.startswith('#SBATCH'))
  assert options['nodes'] == '2' and options['ntasks-per-node'] == options['gpus-per-node'] == '8'
  assert 'gpus-per-task' not in options and options['partition'] == 'gpu'
  assert 'requeue' in options and options['signal'] == 'B:USR1@120'
  [srun] = [shlex.split(line) for line in script.splitlines() if line.startswith('srun ')]
  assert srun[-1] == '&' and srun[srun.index('python3') + 1:-1] == [
      '-m', 'mnet_jax.main', '--config=experiments/sweep.py:imagenet2012', '--workdir=/shared/my runs/sweep',
      '--distributed', MAIN_FLAG, '--config.compilation_cache_dir=/shared/jax cache']
  assert subprocess.run(['bash', '-n'], input=out, text=True).returncode == 0


def test_sbatch_script_copies_the_data_to_every_node_first(tmp_path):
  """The copy line, run with a stand-in srun (one task here), fills the local folder before the training srun."""
  shared, local = tmp_path / 'shared tfds', tmp_path / 'local tfds'
  (shared / 'imagenet2012').mkdir(parents=True)
  (shared / 'imagenet2012' / 'records').write_text('x')
  _, script = slurm_script(launch(SLURM, '--gpus_per_node=1', '--workdir=w', f'--data={shared}:{local}', '--dry_run'))
  copy, train = [line for line in script.splitlines() if line.startswith('srun ')]
  assert shlex.split(train)[-2] == f'--config.data.data_dir={local}'
  (tmp_path / 'bin').mkdir()
  (tmp_path / 'bin' / 'srun').write_text('#!/bin/bash\nwhile [[ $1 == --* ]]; do shift; done; exec "$@"\n')
  (tmp_path / 'bin' / 'srun').chmod(0o755)
  env = dict(os.environ, PATH=f'{tmp_path / "bin"}:{os.environ["PATH"]}')
  assert subprocess.run(['bash', '-c', copy], env=env).returncode == 0
  assert (local / 'imagenet2012' / 'records').read_text() == 'x'
  result = subprocess.run(['bash', '-c', copy.replace(str(shared), str(tmp_path / 'missing'))], env=env,
                          capture_output=True, text=True)
  assert result.returncode == 1 and 'error: could not copy' in result.stderr.splitlines()[-1]


def test_sbatch_script_checkpoints_and_requeues_before_the_time_limit(tmp_path):
  """Run the script with stand-ins for srun/scancel/scontrol and the task; send the time-limit warning."""
  out = launch(SLURM, '--gpus_per_node=1', '--workdir=w', f'--code_dir={tmp_path}', '--python=./task',
               '--dry_run')
  _, script = slurm_script(out)
  stand_ins = {
      'srun': 'shift; exec "$@"',  # drops --kill-on-bad-exit
      'scancel': 'echo "scancel $*" >> events; kill -TERM "$(cat task.pid)"',
      'scontrol': 'echo "scontrol $*" >> events',
      'task': 'echo $$ > task.pid; trap "echo checkpointed >> events; exit 143" TERM; while :; do sleep 0.1; done',
  }
  (tmp_path / 'bin').mkdir()
  for name, body in stand_ins.items():
    path = tmp_path / ('task' if name == 'task' else f'bin/{name}')
    path.write_text(f'#!/bin/bash\n{body}\n')
    path.chmod(0o755)
  env = dict(os.environ, PATH=f'{tmp_path / "bin"}:{os.environ["PATH"]}', SLURM_JOB_ID='42')
  job = subprocess.Popen(['bash', '-c', script], cwd=tmp_path, env=env, start_new_session=True)
  try:
    deadline = time.time() + 20
    while not (tmp_path / 'task.pid').exists() and time.time() < deadline:
      time.sleep(0.05)
    job.send_signal(signal.SIGUSR1)
    assert job.wait(timeout=20) == 0
  finally:
    if job.poll() is None:
      os.killpg(job.pid, signal.SIGKILL)  # the script and its stand-in task, nothing else
      job.wait()
  assert (tmp_path / 'events').read_text().splitlines() == ['scancel --signal=TERM 42', 'checkpointed',
                                                            'scontrol requeue 42']


@pytest.mark.parametrize('script,args,message', [
    (TPU_POD, ['--accelerator_type=tpu-v4'], 'accelerator_type'),
    (TPU_POD, ['--points', ','], 'no sweep points'),
    (TPU_POD, ['--points', 'alpha1_r224'], 'point name'),
    (TPU_POD, ['--workdir=/local/dir'], 'gs://'),
    (TPU_POD, ['--accelerator_type=v9x-8'], 'runtime_version'),
    (TPU_POD, ['--data=/local:/data'], '--data'),
    (TPU_POD, ['--img_per_s_per_chip=0'], 'img_per_s_per_chip'),
    (SLURM, ['--gpus_per_node=0', '--workdir=w'], 'gpus_per_node'),
    (SLURM, ['--gpus_per_node=8', '--workdir=w', '--time=tomorrow'], '--time'),
    (SLURM, ['--workdir=w'], 'gpus_per_node'),
])
def test_bad_input_is_one_line_and_exit_code_2(script, args, message):
  base = TPU_ARGS if script == TPU_POD else ['--dry_run']
  stderr = launch(script, *base, *args, expect=2)
  assert len(stderr.splitlines()) == 1 and stderr.startswith('error: ') and message in stderr


def test_the_environment_srun_gives_each_task_is_enough_for_jax_distributed():
  """What the sbatch script relies on: with only the variables srun sets per task, a bare
  jax.distributed.initialize() joins the tasks (here two on localhost) into one job."""
  probe = ('import jax; jax.distributed.initialize(); '
           'print(jax.process_index(), jax.process_count(), jax.device_count()); jax.distributed.shutdown()')
  tasks = [subprocess.Popen([sys.executable, '-c', probe], stdout=subprocess.PIPE, text=True, env=dict(
      os.environ, JAX_PLATFORMS='cpu', JAX_NUM_CPU_DEVICES='1', SLURM_JOB_ID=str(40000 + os.getpid() % 4096),
      SLURM_STEP_NODELIST='localhost', SLURM_NTASKS='2', SLURM_PROCID=str(i), SLURM_LOCALID=str(i)))
      for i in range(2)]
  try:
    outputs = sorted(task.communicate(timeout=120)[0].split()[-3:] for task in tasks)
  finally:
    for task in tasks:
      task.kill()
  assert outputs == [['0', '2', '2'], ['1', '2', '2']]
