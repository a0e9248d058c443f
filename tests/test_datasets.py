"""The embedded dataset: a real TFDS build of the tiny config, deterministic from its seed;
its textures survive or blur away with the resolution as promised."""

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


def _centre_contrast(encoded: bytes, size: int) -> float:
  """Std of the grey levels in the central patch after an anti-aliased resize to `size` px (PIL, not TF)."""
  image = Image.open(io.BytesIO(encoded)).convert('L')
  if image.size[0] != size:
    image = image.resize((size, size), Image.BILINEAR)  # PIL widens the filter when shrinking
  pixels = np.asarray(image, np.float32)
  centre, half = size // 2, size // 10
  return float(pixels[centre - half:centre + half, centre - half:centre + half].std())


def test_fine_textures_blur_away_at_low_resolution_and_coarse_ones_do_not():
  # Disks (classes 0-3) cover the image centre. Mean over a few images of each class.
  def contrast(texture: str, size: int) -> float:
    label = procedural.class_names('shapes16').index(f'disk_{texture}')
    indices = [label + procedural.num_classes('shapes16') * k for k in range(6)]
    return float(np.mean([_centre_contrast(procedural.example(0, 'test', i, 128)[0], size) for i in indices]))

  flat = contrast('flat', 128)
  for texture in ('coarse_stripes', 'medium_checks', 'fine_stripes'):
    assert contrast(texture, 128) > 20 + 5 * flat  # every texture is plainly visible at the native 128 px
  assert contrast('coarse_stripes', 32) > 0.6 * contrast('coarse_stripes', 128)
  assert contrast('fine_stripes', 32) < 0.1 * contrast('fine_stripes', 128)
  # Graded: at 64 px the fine stripes are weakened but still there.
  assert 0.2 * contrast('fine_stripes', 128) < contrast('fine_stripes', 64) < 0.8 * contrast('fine_stripes', 128)


def test_default_design_has_100_classes_whose_finest_periods_blur_away_one_level_per_resolution_step():
  """shapes100 at 72 px: contrast of each period level after an anti-aliased resize to the offline grid's
  resolutions (PIL, not TF) falls level by level as the resolution shrinks."""
  names = procedural.class_names('shapes100')
  assert len(names) == len(set(names)) == procedural.num_classes('shapes100') == 100

  def contrast(level: int, size: int) -> float:
    label = names.index(f'disk_stripes90_p{level}')
    indices = [label + 100 * k for k in range(6)]
    return float(np.mean([_centre_contrast(procedural.example(0, 'test', i, 72, 'shapes100')[0], size)
                          for i in indices]))

  native = [contrast(level, 72) for level in range(5)]
  assert min(native) > 20  # every level is plainly visible at the native size
  kept = {size: [contrast(level, size) / native[level] for level in range(5)] for size in (63, 45, 36)}
  for size, fractions in kept.items():  # finer periods lose more at every resolution...
    assert fractions == sorted(fractions), (size, fractions)
  for level in range(5):  # ...and every period loses more as the resolution shrinks
    assert kept[63][level] > kept[45][level] > kept[36][level], level
  assert kept[36][0] < 0.25 and kept[63][0] > 0.5  # the finest is nearly gone at 36 px, mostly there at 63
  assert kept[36][4] > 0.7  # the coarsest survives everywhere
