"""The imagenet2012 preset's JPEG input pipeline at 224 px (its training augmentation, uncached ArrayRecord reads)
on 320 ImageNet-sized JPEGs that TFDS's real imagenet2012 builder prepared, and its reader alone (fetching
encoded examples by index, no decoding):

  python tests/jpeg_rate.py [BUILD_DIR]
"""

import io
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO, os.path.join(REPO, 'tests')]

import mini_imagenet  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from mnet_jax import dataset_access, input_pipeline  # noqa: E402
from mnet_jax.config_util import sibling  # noqa: E402


def photo_like(rng: np.random.Generator, index: int) -> bytes:
  """An ImageNet-sized JPEG (350x400 or 375x500, quality 90): smooth structure plus noise, as photos have."""
  height, width = (350, 400) if index % 2 else (375, 500)
  y, x = np.mgrid[0:height, 0:width]
  pixels = (rng.uniform(0, 255, 3) + 60 * np.sin(x[..., None] / 17) + 40 * np.cos(y[..., None] / 11)
            + rng.normal(0, 25, (height, width, 3)))
  out = io.BytesIO()
  Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(out, format='JPEG', quality=90)
  return out.getvalue()


def reader_rate(data, reads: int = 30_000) -> float:
  """Examples/s of the pipeline's random-access fetch alone, at random indices, in batches of 64."""
  import tensorflow as tf

  builder = dataset_access.prepared_builder(data)
  fetch = dataset_access.random_access(builder, data, data.train_split)  # the reader is what is measured
  indices = np.random.default_rng(0).integers(0, builder.info.splits[data.train_split].num_examples, reads)
  locations = tf.data.Dataset.from_tensor_slices(indices).map(lambda index: (index, index))
  examples = input_pipeline._fetched(locations, fetch).batch(64).prefetch(4)  # noqa: SLF001
  iterator = iter(examples)
  next(iterator)
  start = time.perf_counter()
  count = 64 + sum(len(position) for position, _, _ in iterator)
  return count / (time.perf_counter() - start)


def main() -> None:
  root = sys.argv[1] if len(sys.argv) > 1 else '/tmp/jpeg_rate_build'
  if not os.path.exists(f'{root}/tfds'):
    mini_imagenet.build(root, train_per_synset=80, num_val=8, image_fn=photo_like)  # 320 training JPEGs
  config = sibling(os.path.join(REPO, 'experiments', 'default.py'), 'default').get_config('imagenet2012')
  config.data.data_dir = f'{root}/tfds'
  batch = 64
  print(f'reader alone: {reader_rate(config.data):.0f} examples/s')
  batches = input_pipeline.train_batches(config.data, global_batch_size=batch, resolution=224, seed=0,
                                         process_index=0, process_count=1)
  for _ in range(5):  # warm-up
    next(batches)
  start, images = time.time(), 0
  while time.time() - start < 10:
    next(batches)
    images += batch
  seconds = time.time() - start
  cores = os.cpu_count()
  print(f'{images} images in {seconds:.1f} s: {images / seconds:.0f} img/s on {cores} cores, '
        f'{images / seconds / cores:.0f} per core')


if __name__ == '__main__':
  main()
