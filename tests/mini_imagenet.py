"""A miniature ImageNet 2012 in the manual-download layout, prepared by TFDS's real `imagenet2012` builder.

`ILSVRC2012_img_train.tar` holds one tar per synset (`n01440764.tar` of `n01440764_<id>.JPEG`),
`ILSVRC2012_img_val.tar` flat `ILSVRC2012_val_<8 digits>.JPEG`: what the builder reads from its manual
dir (the test tar is optional; it is left out, as most users do). The builder labels validation images
itself, from its bundled `validation_labels.txt`, line k for the k-th file name in sorted order, so the
first `num_val` lines label these files. The images are small JPEGs of several non-square sizes, one of
them greyscale as some real ImageNet files are.
"""

from __future__ import annotations

import io
import os
import tarfile

import numpy as np
from PIL import Image

# Real synsets: those of the first four validation images, so that validation holds trained classes.
SYNSETS = ('n01751748', 'n09193705', 'n02105855', 'n04263257')
SIZES = ((40, 56), (64, 48), (50, 50), (72, 36))  # (height, width)
TRAIN_PER_SYNSET = 3
NUM_VAL = 13  # not a multiple of a batch of 8 (or of 4 per process): the last eval batch is padded


def _jpeg(rng: np.random.Generator, index: int) -> bytes:
  height, width = SIZES[index % len(SIZES)]
  # Smooth colour ramps plus noise: decodable content that differs per image and per class.
  y, x = np.mgrid[0:height, 0:width]
  base = rng.uniform(0, 255, 3)
  pixels = (base + 60 * np.sin(x[..., None] / (3 + index % 5)) + 40 * np.cos(y[..., None] / 4)
            + rng.normal(0, 20, (height, width, 3)))
  image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
  if index % 7 == 3:
    image = image.convert('L')  # ImageNet has greyscale JPEGs: the pipeline must decode them to 3 channels
  out = io.BytesIO()
  image.save(out, format='JPEG', quality=90)
  return out.getvalue()


def _add(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
  info = tarfile.TarInfo(name)
  info.size = len(payload)
  tar.addfile(info, io.BytesIO(payload))


def write_manual_dir(manual_dir: str, *, train_per_synset: int = TRAIN_PER_SYNSET, num_val: int = NUM_VAL,
                     image_fn=_jpeg, seed: int = 0) -> None:
  """Write ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar into `manual_dir`."""
  rng = np.random.default_rng(seed)
  os.makedirs(manual_dir, exist_ok=True)
  index = 0
  with tarfile.open(os.path.join(manual_dir, 'ILSVRC2012_img_train.tar'), 'w') as train:
    for synset in SYNSETS:
      inner = io.BytesIO()
      with tarfile.open(fileobj=inner, mode='w') as synset_tar:
        for i in range(train_per_synset):
          _add(synset_tar, f'{synset}_{1000 + 17 * i}.JPEG', image_fn(rng, index))
          index += 1
      _add(train, f'{synset}.tar', inner.getvalue())
  # Written out of name order, as the real tar is: the builder must sort the names to label them.
  with tarfile.open(os.path.join(manual_dir, 'ILSVRC2012_img_val.tar'), 'w') as val:
    for k in reversed(range(1, num_val + 1)):
      _add(val, f'ILSVRC2012_val_{k:08d}.JPEG', image_fn(rng, index))
      index += 1


def build(root: str, **kwargs) -> str:
  """Write the manual dir under `root` and prepare imagenet2012 from it as ArrayRecord; returns the data dir."""
  import tensorflow_datasets as tfds

  manual_dir, data_dir = os.path.join(root, 'manual'), os.path.join(root, 'tfds')
  write_manual_dir(manual_dir, **kwargs)
  builder = tfds.builder('imagenet2012', data_dir=data_dir, file_format='array_record')
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return data_dir


def _label_files() -> tuple[list[str], list[str]]:
  """TFDS's bundled class list and validation synsets (read as files, not through the builder)."""
  import tensorflow_datasets as tfds

  root = tfds.core.tfds_path('datasets/imagenet2012')
  return (root / 'labels.txt').read_text().split(), (root / 'validation_labels.txt').read_text().split()


def validation_labels(num_val: int = NUM_VAL) -> list[int]:
  """The labels of val files 1..num_val: line k of validation_labels.txt for the k-th name in sorted order."""
  names, synsets = _label_files()
  return [names.index(s) for s in synsets[:num_val]]


def train_labels(train_per_synset: int = TRAIN_PER_SYNSET) -> list[int]:
  """The labels of the training images: each synset's index in labels.txt."""
  names, _ = _label_files()
  return [names.index(s) for s in SYNSETS for _ in range(train_per_synset)]
