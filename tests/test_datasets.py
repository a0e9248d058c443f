"""The embedded dataset: a real TFDS build of the tiny config, deterministic from its seed."""

from __future__ import annotations

import io

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from mnet_jax import datasets
from mnet_jax.datasets import procedural


def _examples(data_dir: str, split: str) -> list[tuple[bytes, int]]:
  builder = tfds.builder(datasets.TINY_DATASET, data_dir=data_dir)
  dataset = builder.as_dataset(split=split, decoders={'image': tfds.decode.SkipDecoding()})
  return sorted((example['image'], int(example['label'])) for example in dataset.as_numpy_iterator())


def test_tiny_build_has_the_promised_splits_and_classes(tiny_data_dir):
  builder = tfds.builder(datasets.TINY_DATASET, data_dir=tiny_data_dir)
  assert builder.info.features['label'].num_classes == 16
  assert builder.info.splits['train'].num_examples == 320
  assert builder.info.splits['test'].num_examples == 100
  train = _examples(tiny_data_dir, 'train')
  assert np.bincount([label for _, label in train]).tolist() == [20] * 16  # balanced classes
  image = np.array(Image.open(io.BytesIO(train[0][0])))
  assert image.shape == (64, 64, 3) and image.dtype == np.uint8


def test_build_is_deterministic_from_its_seed(tiny_data_dir, tmp_path):
  tfds.builder(datasets.TINY_DATASET, data_dir=str(tmp_path)).download_and_prepare()
  assert _examples(str(tmp_path), 'test') == _examples(tiny_data_dir, 'test')
  same = procedural.example(0, 'train', 7, 64)
  assert procedural.example(0, 'train', 7, 64) == same
  assert procedural.example(1, 'train', 7, 64)[0] != same[0]  # another seed, another image
  assert procedural.example(0, 'test', 7, 64)[0] != same[0]  # splits do not share images
