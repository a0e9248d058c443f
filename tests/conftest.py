"""Shared pytest fixtures."""

from __future__ import annotations

import gc
import os

import pytest
from fast_compile import FAST_COMPILE, xla_flags

# In-process programs compiled for compile time, as the subprocess runs' are; set before JAX starts. The one test
# that trains long runs in a subprocess of its own, at XLA's defaults.
os.environ['XLA_FLAGS'] = ' '.join([os.environ.get('XLA_FLAGS', ''), *xla_flags(FAST_COMPILE)]).strip()


def pytest_collection_finish(session: pytest.Session) -> None:
  # The test modules have imported TensorFlow and JAX: keep their millions of objects out of every later full
  # collection, as `mnet_jax.main` does (`cli.collector_paused_then_frozen`).
  gc.freeze()


@pytest.fixture(scope='session')
def tiny_data_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
  """A TFDS data dir holding the prepared tiny embedded dataset (`datasets.TINY_DATASET`)."""
  import tensorflow_datasets as tfds

  from mnet_jax import datasets

  data_dir = str(tmp_path_factory.mktemp('tfds'))
  tfds.builder(datasets.TINY_DATASET, data_dir=data_dir).download_and_prepare()
  return data_dir


@pytest.fixture(scope='session')
def array_record_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
  """A TFDS data dir holding the tiny embedded dataset built as ArrayRecord (read by index, as ImageNet is)."""
  import tensorflow_datasets as tfds

  from mnet_jax import datasets

  data_dir = str(tmp_path_factory.mktemp('array_record'))
  tfds.builder(datasets.TINY_DATASET, data_dir=data_dir, file_format='array_record').download_and_prepare()
  return data_dir


@pytest.fixture(scope='session')
def mini_imagenet_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
  """A TFDS data dir holding imagenet2012, prepared as ArrayRecord by TFDS's own builder from a miniature
  manual download (`mini_imagenet`)."""
  import mini_imagenet

  return mini_imagenet.build(str(tmp_path_factory.mktemp('mini_imagenet')))


@pytest.fixture(scope='session')
def cache_dir(tmp_path_factory: pytest.TempPathFactory):
  """One JAX compilation cache for the subprocess runs of every test module (one per xdist worker)."""
  return tmp_path_factory.mktemp('jax_cache')


@pytest.fixture(scope='session')
def reference_run(tiny_data_dir, cache_dir, tmp_path_factory: pytest.TempPathFactory):
  """An uninterrupted single-device, single-process run (a subprocess, like the others): `test_train.STEPS`
  steps, checkpoints every 4. Returns (workdir, overrides)."""
  import subprocess

  from test_train import main_command, subprocess_env, tiny_overrides

  workdir = tmp_path_factory.mktemp('reference')
  overrides = tiny_overrides(tiny_data_dir, compilation_cache_dir=str(cache_dir))
  subprocess.run(main_command(workdir, overrides), check=True, env=subprocess_env(), timeout=300)
  return workdir, overrides
