"""The imagenet2012 preset's JPEG input pipeline at 224 px (its training augmentation, uncached ArrayRecord reads)
on 320 ImageNet-sized JPEGs that TFDS's real imagenet2012 builder prepared, and its reader alone (fetching
encoded examples by index, no decoding):

  python tests/jpeg_rate.py [BUILD_DIR]
  python tests/jpeg_rate.py [BUILD_DIR] --batched_read   # the reader against one read per record, 3 rounds
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


def per_record_random_access(builder, data, split):
  """`dataset_access.random_access` reading each record of a chunk with its own `records[i]` instead of one
  batched `__getitems__` read (which splits the keys per file and reads them on a thread pool)."""
  import tensorflow as tf

  records = builder.as_data_source(split=split, decoders=dataset_access._SKIP_DECODING).data_source  # noqa: SLF001
  features = {'image': tf.io.FixedLenFeature([], tf.string), 'label': tf.io.FixedLenFeature([], tf.int64)}

  def read(indices: np.ndarray) -> np.ndarray:
    return np.array([records[int(i)] for i in indices], dtype=object)

  def fetch(indices):
    serialized = tf.ensure_shape(tf.numpy_function(read, [indices], tf.string, stateful=False), indices.shape)
    examples = tf.io.parse_example(serialized, features)
    return examples['image'], tf.cast(examples['label'], tf.int32)

  return fetch


def compare_batched_read(data, rounds: int = 3) -> None:
  """The reader as it is against `per_record_random_access`, interleaved (A, B, A, B, ...): examples/s."""
  ways = {'one __getitems__ per chunk (the reader)': dataset_access.random_access,
          'one records[i] per record': per_record_random_access}
  rates = {name: [] for name in ways}
  for _ in range(rounds):
    for name, way in ways.items():
      dataset_access.random_access = way
      rates[name].append(reader_rate(data))
  dataset_access.random_access = ways['one __getitems__ per chunk (the reader)']
  for name, values in rates.items():
    print(f'{name}: median {sorted(values)[len(values) // 2]:,.0f} examples/s '
          f'(rounds: {", ".join(f"{v:,.0f}" for v in values)})')


def main() -> None:
  args = [a for a in sys.argv[1:] if not a.startswith('--')]
  root = args[0] if args else '/tmp/jpeg_rate_build'
  if not os.path.exists(f'{root}/tfds'):
    mini_imagenet.build(root, train_per_synset=80, num_val=8, image_fn=photo_like)  # 320 training JPEGs
  config = sibling(os.path.join(REPO, 'experiments', 'default.py'), 'default').get_config('imagenet2012')
  config.data.data_dir = f'{root}/tfds'
  if '--batched_read' in sys.argv:
    compare_batched_read(config.data)
    return
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
