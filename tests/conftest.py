"""Shared pytest fixtures."""

from __future__ import annotations

import pytest


@pytest.fixture(scope='session')
def tiny_data_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
  """A TFDS data dir holding the prepared tiny embedded dataset (`datasets.TINY_DATASET`)."""
  import tensorflow_datasets as tfds

  from mnet_jax import datasets

  data_dir = str(tmp_path_factory.mktemp('tfds'))
  tfds.builder(datasets.TINY_DATASET, data_dir=data_dir).download_and_prepare()
  return data_dir
