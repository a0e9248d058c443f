"""What the launchers share: the main command line, sweep point names, bad-input exits. Standard library only."""

from __future__ import annotations

import argparse
import pathlib
import re
import sys
from typing import Any, NoReturn

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
USAGE_ERROR = 2
DEFAULT_CONFIG = 'experiments/sweep.py:imagenet2012'
# The launchers run where JAX may not be installed, so this mirrors mnet_jax.study's point names: the grid's part,
# then one part per other axis (a1_r224_steps300); the study stays the authority when the job starts.
POINT_NAME = re.compile(r'(?:[a-z]+_)?a[0-9.]+_r[0-9]+(?:_[A-Za-z][A-Za-z0-9.+-]*)*')


def fail(message: str) -> NoReturn:
  print(f'error: {message}', file=sys.stderr)
  sys.exit(USAGE_ERROR)


class Parser(argparse.ArgumentParser):
  """argparse, but bad input is one line and exit code 2."""

  def error(self, message: str) -> NoReturn:
    fail(message)


def split_main_flags(argv: list[str]) -> tuple[list[str], list[str]]:
  """Arguments before `--` are the launcher's; those after are passed to mnet_jax.main unchanged."""
  if '--' in argv:
    index = argv.index('--')
    return argv[:index], argv[index + 1:]
  return argv, []


def main_args(config: str, workdir: str, main_flags: list[str]) -> list[str]:
  """Arguments after the Python interpreter: every process of a multi-host job runs exactly this."""
  return ['-m', 'mnet_jax.main', f'--config={config}', f'--workdir={workdir}', '--distributed', *main_flags]


DATA_DIR_FLAG = '--config.data.data_dir='


def check_data_dir(main_flags: list[str]) -> None:
  """Refuse a remote data.data_dir passed to a run that reads by index (as mnet_jax.config_checks does, but
  before a machine is created): ArrayRecord files cannot be read from gs://."""
  data_dirs = [f.removeprefix(DATA_DIR_FLAG) for f in main_flags if f.startswith(DATA_DIR_FLAG)]
  if data_dirs and '://' in data_dirs[-1] and '--config.data.cache=True' not in main_flags:
    fail(f'data.data_dir={data_dirs[-1]} is remote, but ArrayRecord files (read by index, data.cache=False) '
         'cannot be read remotely; pass --data=REMOTE:LOCAL to mount or copy it on every machine instead')


def point_names(values: list[str]) -> list[str]:
  """Point names from space- and/or comma-separated values, checked and de-duplicated in order."""
  names = [n.strip() for v in values for n in v.split(',') if n.strip()]
  if not names:
    fail('no sweep points given; expected names like a1_r224 a0.75_r192')
  bad = [n for n in names if not POINT_NAME.fullmatch(n)]
  if bad:
    fail(f'bad sweep point name(s) {", ".join(bad)}; expected e.g. a1_r224, conv_a1_r224 or a0.5_r160_steps300')
  return list(dict.fromkeys(names))


# The training rate this project has measured: MobileNet 1.0-224 in bfloat16 on one NVIDIA H200 (BENCHMARKS.md, the
# H200 table). No TPU rate has been measured; the smaller points train faster, so for them this is an upper bound.
MEASURED_IMG_PER_S_PER_CHIP = 12_600.0
MEASURED_RATE = 'measured for 1.0-224 bf16 on one H200 (BENCHMARKS.md), not on a TPU'
# Train split sizes known without the data (TFDS's), for estimates made where the data is not.
TRAIN_EXAMPLES = {'imagenet2012': 1_281_167}


def study_images(config: str, main_flags: list[str], points: list[str] | None) -> tuple[dict[str, int], int] | str:
  """({point: training images per seed}, seeds) of the study the run would train, or why it cannot be known here.

  Reads the config as mnet_jax.main does, which needs the requirements where the launcher runs.
  """
  try:
    sys.path.insert(0, str(REPO_ROOT))
    from mnet_jax import study
    from mnet_jax.config_util import sibling
  except ImportError as e:
    return f'unknown: reading the config needs the requirements installed here ({e.name} is missing)'
  finally:
    sys.path.remove(str(REPO_ROOT))
  path, _, arg = config.partition(':')
  try:
    run = sibling(str(REPO_ROOT / path), pathlib.Path(path).stem).get_config(arg or None)
    for flag in main_flags:
      if flag.startswith('--config.'):
        _override(run, *flag.removeprefix('--config.').split('=', 1))
    if 'sweep' in run:
      if points:
        run.sweep.only = ','.join(points)
      runs = {p.name: study.point_config(run, p) for p in study.selected(run.sweep, study.expand(run).points)}
      seeds = len(study.seeds_of(run.sweep))
    else:
      runs, seeds = {'run': run}, 1
  except (ValueError, KeyError, AttributeError, TypeError) as e:  # a bad --config.* override, or a point's
    return f'unknown: the config with its overrides cannot be read ({str(e).splitlines()[0]})'
  images = {}
  for name, point in runs.items():
    examples = point.data.train_examples if point.data.train_examples > 0 else TRAIN_EXAMPLES.get(point.data.name)
    if point.num_train_steps < 0 and examples is None:
      return f'unknown: the size of {point.data.name} is not known without its data; set data.train_examples'
    # As train.num_train_steps counts steps: whole batches, num_train_steps or num_epochs of them.
    steps_per_epoch = max(1, (examples or 0) // point.batch_size)
    steps = point.num_train_steps if point.num_train_steps >= 0 else max(1, int(point.num_epochs * steps_per_epoch))
    images[name] = steps * point.batch_size
  return images, seeds


def _override(config: Any, path: str, text: str) -> None:
  """Set the field at dotted `path` from its command-line text, typed as the field is."""
  *parents, leaf = path.split('.')
  for key in parents:
    config = config[key]
  current = config[leaf]
  if isinstance(current, bool):
    config[leaf] = text.lower() in ('true', '1')
  else:
    config[leaf] = type(current)(text) if current is not None else text


def print_cost(config: str, main_flags: list[str], points: list[str] | None, img_per_s_per_chip: float | None) -> None:
  """The study's training images and chip-hours, as comment lines of a dry run."""
  found = study_images(config, main_flags, points)
  if isinstance(found, str):
    print(f'# cost: {found}')
    return
  images, seeds = found
  rate = img_per_s_per_chip or MEASURED_IMG_PER_S_PER_CHIP
  source = 'given' if img_per_s_per_chip else MEASURED_RATE
  total = sum(images.values()) * seeds
  print(f'# cost: {len(images)} point(s) x {seeds} seed(s), {total:,} training images in all; at {rate:,g} img/s '
        f'per chip ({source}):')
  for name, per_seed in images.items():
    print(f'#   {name}: {seeds} x {per_seed:,} images, {per_seed * seeds / rate / 3600:,.2f} chip-hours')
  print(f'#   in all: {total / rate / 3600:,.2f} chip-hours')
