"""Input pipeline: TFDS datasets (or a folder of images) through tf.data, at any resolution.

Training reads examples by position, not as a stream: global batch `s` holds the examples
at positions [s * B, (s + 1) * B) of an endless sequence of epochs, each epoch a seeded
permutation of the split (`tf.random.experimental.index_shuffle`), and process p of P takes
the p-th slice of it. So a run resumed at step s sees exactly the data an uninterrupted
run sees, skipping costs nothing, and the union over processes is the same whatever P is.
With `data.train_examples` = N > 0 an epoch permutes N positions, each mapped to the index in
the split of an example of the subset (`subsets`: the same N examples for every run).
Augmentation draws from stateless random ops keyed by the example's global position.
Evaluation reads example i of its split at global position i, each process only its own.
Both need random access to the split (`dataset_access`): it is held in memory (encoded) when
`cache` is set or for a folder of images, and read through `tfds.data_source` (ArrayRecord) otherwise.
Batches read through a data source carry uint8 images (a quarter of float32's bytes to send
to the devices), which the train and eval steps scale with `normalize`; batches from memory
carry images already scaled to [-1, 1].
"""

from __future__ import annotations

import atexit
import dataclasses
import math
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from mnet_jax import dataset_access, philox, subsets
from mnet_jax.config_checks import EVAL_PREPROCESSING, unknown
from mnet_jax.dataset_access import FOLDER as FOLDER  # re-exported: part of this module's API
from mnet_jax.dataset_access import DatasetError

# TF must not claim the accelerator memory that JAX uses.
tf.config.set_visible_devices([], 'GPU')

_AUTOTUNE = tf.data.AUTOTUNE


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  num_classes: int
  num_train: int
  num_eval: int


def dataset_info(data: Any) -> DatasetInfo:
  """Class and example counts of the configured dataset, preparing an embedded one first."""
  builder = dataset_access.prepared_builder(data)
  return DatasetInfo(
      num_classes=builder.info.features['label'].num_classes,
      num_train=dataset_access.train_size(builder, data),
      num_eval=dataset_access.num_examples(builder, data.eval_split))


def train_batches(data: Any, *, global_batch_size: int, resolution: int, seed: int, start_step: int = 0,
                  process_index: int | None = None,
                  process_count: int | None = None) -> Iterator[dict[str, np.ndarray]]:
  """Endless augmented training batches: this process's slice of global batch start_step, then the next..."""
  process_index, process_count = _process(process_index, process_count)
  local_batch_size = _local_batch_size(global_batch_size, process_count)
  builder = dataset_access.prepared_builder(data)
  size = dataset_access.train_size(builder, data)
  preprocessed = _preprocessed_in_memory(builder, data, resolution) if _crop_is_whole_image(data) else None
  if preprocessed is None:
    fetch_from_split = dataset_access.random_access(builder, data, data.train_split)
  else:
    fetch_from_split = lambda index: (tf.gather(preprocessed[0], index), tf.gather(preprocessed[1], index))  # noqa: E731
  subset = _train_subset(builder, data, size)
  fetch = fetch_from_split if subset is None else lambda index: fetch_from_split(tf.gather(subset, index))
  seed = tf.constant(seed, tf.int64)

  def position_of(counter: tf.Tensor) -> tf.Tensor:
    """This process's counter -> the example's position in the global stream of the run."""
    step, slot = counter // local_batch_size, counter % local_batch_size
    return step * global_batch_size + process_index * local_batch_size + slot

  def locate(counter: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    position = position_of(counter)
    epoch = position // size
    return position, tf.random.experimental.index_shuffle(position % size, tf.stack([seed, epoch]), size - 1)

  def locate_batch(counter: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """`locate` of a batch of counters: one shuffle per epoch the batch touches (at most two)."""
    position = position_of(counter)
    epoch, first = position // size, position[0] // size
    shuffled = [tf.random.experimental.index_shuffle(position % size, tf.stack([seed, first + e]), size - 1)
                for e in (0, 1)]
    return position, tf.where(epoch == first, shuffled[0], shuffled[1])

  counters = tf.data.Dataset.range(start_step * local_batch_size, np.iinfo(np.int64).max)
  if preprocessed is not None and local_batch_size <= size:  # then a batch spans at most two epochs
    # Decoded once, only the flips differ between steps: a whole batch per tf.data element. Per-example
    # elements cost ~90 us of CPU each here (16.7 ms per step of the study's 3 x 64 images, ~3.3 now), taken
    # from the train step on a small machine. The random draws are the per-example ones, vectorised.
    def load_batch(counter: tf.Tensor) -> dict[str, tf.Tensor]:
      position, index = locate_batch(counter)
      image, label = fetch(index)
      if data.flip:
        flip = philox.flips(seed, position)  # the draws `load` makes example by example, for the whole batch
        # Each image's columns in its own order, gathered in one pass (a select between the batch and its
        # mirror image cost twice as much).
        width = tf.shape(image)[2]
        columns = tf.where(flip[:, None], tf.range(width - 1, -1, -1)[None], tf.range(width)[None])
        image = tf.gather(image, columns, axis=2, batch_dims=1)
      return {'image': image, 'label': label}

    return _numpy(_map(counters.batch(local_batch_size), load_batch))

  def load(position: tf.Tensor, image: tf.Tensor, label: tf.Tensor) -> dict[str, tf.Tensor]:
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(tf.stack([seed, position]), 2))
    if preprocessed is None:  # `image` is still encoded
      image = _train_image(image, resolution, data, crop_seed)
      image = _scale(image) if dataset_access.held_in_memory(data) else _uint8(image)
    image = tf.image.stateless_random_flip_left_right(image, flip_seed) if data.flip else image
    return {'image': image, 'label': label}

  dataset = _map(_fetched(_map(counters, locate), fetch), load)
  return _numpy(dataset.batch(local_batch_size, drop_remainder=True))


def eval_batches(data: Any, *, global_batch_size: int, resolution: int, process_index: int | None = None,
                 process_count: int | None = None) -> Iterator[dict[str, np.ndarray]]:
  """One pass over the eval split; the last batch is padded and masked, every process yields as many batches."""
  process_index, process_count = _process(process_index, process_count)
  local_batch_size = _local_batch_size(global_batch_size, process_count)
  builder = dataset_access.prepared_builder(data)
  size = dataset_access.num_examples(builder, data.eval_split)
  num_batches = math.ceil(size / global_batch_size)
  eval_preprocess = check_eval_preprocess(data)
  fetch = dataset_access.random_access(builder, data, data.eval_split)

  # Example i of the split sits at global position i; this process reads the positions of
  # its slices, past the end of the split reads a masked copy of the last example.
  def locate(counter: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    step, slot = counter // local_batch_size, counter % local_batch_size
    position = step * global_batch_size + process_index * local_batch_size + slot
    return position, tf.minimum(position, size - 1)

  def load(position: tf.Tensor, encoded: tf.Tensor, label: tf.Tensor) -> dict[str, tf.Tensor]:
    image = _eval_image(encoded, resolution, data.eval_crop, eval_preprocess)
    image = _scale(image) if dataset_access.held_in_memory(data) else _uint8(image)
    return {'image': image, 'label': label, 'mask': tf.cast(position < size, tf.float32)}

  counters = tf.data.Dataset.range(num_batches * local_batch_size)
  dataset = _map(_fetched(_map(counters, locate), fetch), load)
  return _numpy(dataset.batch(local_batch_size))


# --- examples: the training subset, the preprocessed split, fetching ------------------


def _train_subset(builder: tfds.core.DatasetBuilder, data: Any, size: int) -> tf.Tensor | None:
  """The split indices (int64) of the `size` (`dataset_access.train_size`) examples trained on; None for the
  whole split."""
  if size == dataset_access.num_examples(builder, data.train_split):  # all: the same batches as train_examples=-1
    return None
  key = (data.name, data.folder, data.data_dir, str(builder.version), data.train_split)
  order = subsets.cached_order(key, lambda: _labels(builder, data, data.train_split))
  return tf.constant(order[:size], tf.int64)


def _labels(builder: tfds.core.DatasetBuilder, data: Any, split: str) -> np.ndarray:
  """The split's labels by example index. A data source's records hold each label beside its image, so this
  reads the whole split once per process, as much reading as an epoch (ImageNet's train split: ~140 GB)."""
  if dataset_access.held_in_memory(data):
    return dataset_access.encoded_in_memory(builder, data, split)[1]
  fetch = dataset_access.random_access(builder, data, split)
  chunks = tf.data.Dataset.range(dataset_access.num_examples(builder, split)).batch(dataset_access.READ_CHUNK)
  return np.concatenate(list(_numpy(_map(chunks, lambda index: fetch(index)[1]))))


def _crop_is_whole_image(data: Any) -> bool:
  """Whether every training crop is the whole image: area 1 leaves the sampler no other box (a failed
  draw falls back to the whole image too), so the crop and resize are the same at every step."""
  return data.min_area >= 1.0 and dataset_access.held_in_memory(data)


_PREPROCESSED: dict[tuple[Any, ...], tuple[tf.Tensor, tf.Tensor]] = {}
_DECODED: dict[tuple[Any, ...], tf.Tensor] = {}
_PREPROCESSED_MAX_BYTES = 4 << 30  # beyond this, decode per example as when crops are random


def _preprocessed_in_memory(builder: tfds.core.DatasetBuilder, data: Any,
                            resolution: int) -> tuple[tf.Tensor, tf.Tensor] | None:
  """The training split decoded, resized and scaled once, as (images, labels) tensors; None if too large.

  When the crop is the whole image, only the flip differs between steps: decoding every
  image at every step cost ~50 ms of the 2 CPU cores per step of the offline study (measured
  at 0.25-36, 3 seeds). The images come out of the same ops as per-example decoding, so the
  batches are bitwise the same. The last split kept (one resolution) is shared by a sweep's seeds.
  """
  encoded, labels = dataset_access.encoded_in_memory(builder, data, data.train_split)
  if len(encoded) * resolution * resolution * 3 * 4 > _PREPROCESSED_MAX_BYTES:
    return None
  key = (data.name, data.folder, data.data_dir, str(builder.version), data.train_split, resolution)
  if key not in _PREPROCESSED:
    _PREPROCESSED.clear()
    decoded = _decoded_in_memory(builder, data, encoded, key[:-1])
    if decoded is None:  # images of several sizes: decode and resize each
      whole = tf.constant([0, 0], tf.int64)  # any seed: the crop is the whole image
      images = _map(tf.data.Dataset.from_tensor_slices(encoded),
                    lambda image: _scale(_train_image(image, resolution, data, whole))).batch(1024)
    else:  # resizing a batch gives each image bitwise what resizing it alone gives
      images = _map(tf.data.Dataset.from_tensor_slices(decoded).batch(1024),
                    lambda batch: _scale(_resize(batch, resolution)))
    _PREPROCESSED[key] = (tf.concat(list(_numpy(images)), axis=0), tf.constant(labels))
  return _PREPROCESSED[key]


def _decoded_in_memory(builder: tfds.core.DatasetBuilder, data: Any, encoded: np.ndarray,
                       key: tuple[Any, ...]) -> tf.Tensor | None:
  """The split decoded once per process (a sweep's resolutions share it) as one uint8 tensor, when its
  images all have the shape the dataset declares and fit; else None. Decoding was ~1/3 of preprocessing."""
  shape = (*builder.info.features['image'].shape[:2], 3)
  if None in shape or len(encoded) * math.prod(shape) > _PREPROCESSED_MAX_BYTES:
    return None
  if key not in _DECODED:
    _DECODED.clear()
    whole = lambda image_shape: tf.stack([0, 0, image_shape[0], image_shape[1]])  # noqa: E731
    images = _map(tf.data.Dataset.from_tensor_slices(encoded),
                  lambda image: tf.ensure_shape(_decode_window(image, whole), shape))
    _DECODED[key] = tf.concat(list(_numpy(images.batch(1024))), axis=0)
  return _DECODED[key]


def _fetched(locations: tf.data.Dataset, fetch: Callable[[tf.Tensor], tuple[tf.Tensor, tf.Tensor]]) -> tf.data.Dataset:
  """(position, index) elements -> (position, image, label), fetched for READ_CHUNK indices at a time."""
  chunks = locations.batch(dataset_access.READ_CHUNK)
  return _map(chunks, lambda position, index: (position, *fetch(index))).unbatch()


# --- preprocessing --------------------------------------------------------------------


def _decode_window(encoded: tf.Tensor, window: Callable[[tf.Tensor], tf.Tensor],
                   decode_whole: bool = False) -> tf.Tensor:
  """Decode the crop `window(shape) -> [y, x, h, w]` of an image; JPEGs decode only that window unless
  `decode_whole` (decoding only the window upsamples chroma differently along its edges: up to 10/255)."""

  def jpeg() -> tf.Tensor:
    return tf.io.decode_and_crop_jpeg(encoded, window(tf.io.extract_jpeg_shape(encoded)), channels=3)

  def other() -> tf.Tensor:  # PNG, BMP, GIF
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    y, x, h, w = tf.unstack(window(tf.shape(image)))
    return image[y:y + h, x:x + w]

  return other() if decode_whole else tf.cond(tf.io.is_jpeg(encoded), jpeg, other)


def _train_image(encoded: tf.Tensor, resolution: int, data: Any, seed: tf.Tensor) -> tf.Tensor:
  """Inception-style crop: random area in [min_area, 1] and aspect ratio in aspect_range, resized."""

  def window(shape: tf.Tensor) -> tf.Tensor:
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape, bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=seed,
        min_object_covered=data.min_area, aspect_ratio_range=tuple(data.aspect_range),
        area_range=(data.min_area, 1.0), max_attempts=10, use_image_if_no_bounding_boxes=True)
    return tf.stack([begin[0], begin[1], size[0], size[1]])

  return _resize(_decode_window(encoded, window), resolution)


def check_eval_preprocess(data: Any) -> str:
  """The configured evaluation preprocessing; DatasetError naming the choices if it is unknown."""
  mode = data.get('eval_preprocess', EVAL_PREPROCESSING[0])
  if mode not in EVAL_PREPROCESSING:
    raise DatasetError(unknown('data.eval_preprocess', mode, EVAL_PREPROCESSING))
  return mode


def _eval_image(encoded: tf.Tensor, resolution: int, crop_fraction: float, mode: str = 'square') -> tf.Tensor:
  """'square': the central square of side `crop_fraction` of the shorter side, resized with antialiasing.
  'slim': TF-slim's evaluation (inception_preprocessing), with which the published checkpoints were scored:
  `tf.image.central_crop` (`crop_fraction` of each side), then TF1's bilinear resize (no antialiasing, no
  half-pixel centres) to a square, squashing the aspect ratio."""

  def window(shape: tf.Tensor) -> tf.Tensor:
    height, width = shape[0], shape[1]
    if mode == 'slim':  # central_crop's arithmetic: start = int((size - size * fraction) / 2), in float64
      top, left = (tf.cast((tf.cast(n, tf.float64) - tf.cast(n, tf.float64) * crop_fraction) / 2, tf.int32)
                   for n in (height, width))
      return tf.stack([top, left, height - 2 * top, width - 2 * left])
    side = tf.cast(tf.cast(tf.minimum(height, width), tf.float32) * crop_fraction, tf.int32)
    return tf.stack([(height - side + 1) // 2, (width - side + 1) // 2, side, side])

  if mode == 'slim':  # slim decodes the whole image, then crops
    image = tf.cast(_decode_window(encoded, window, decode_whole=True), tf.float32)[None]
    return tf.raw_ops.ResizeBilinear(images=image, size=[resolution, resolution], align_corners=False,
                                     half_pixel_centers=False)[0]
  return _resize(_decode_window(encoded, window), resolution)


def _resize(image: tf.Tensor, resolution: int) -> tf.Tensor:
  # Anti-aliased, so that a lower resolution really loses the fine detail (no aliasing
  # artefacts standing in for it).
  return tf.image.resize(image, (resolution, resolution), method='bilinear', antialias=True)


def normalize(image: Any) -> Any:
  """Pixel values [0, 255] -> the model's input range [-1, 1]; TF tensors here, JAX arrays on the device."""
  return image / 127.5 - 1.0


def _scale(image: tf.Tensor) -> tf.Tensor:
  # The clip: an antialiased resize overshoots [0, 255] at sharp edges.
  return tf.clip_by_value(normalize(image), -1.0, 1.0)


def _uint8(image: tf.Tensor) -> tf.Tensor:
  return tf.cast(tf.round(tf.clip_by_value(image, 0.0, 255.0)), tf.uint8)


# --- plumbing -------------------------------------------------------------------------


def _process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  if process_index is None or process_count is None:
    import jax  # only when asked: the pipeline itself does not need JAX

    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index {process_index} not in [0, {process_count})')
  return process_index, process_count


def _local_batch_size(global_batch_size: int, process_count: int) -> int:
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise ValueError(f'global batch size {global_batch_size} must be a positive multiple of the '
                     f'process count {process_count}')
  return global_batch_size // process_count


def _map(dataset: tf.data.Dataset, function: Callable[..., Any]) -> tf.data.Dataset:
  """`dataset.map`, in parallel and in order, without AutoGraph: these functions branch with `tf.cond`
  themselves, and AutoGraph's rewriting of their source took ~0.7 s of every run's start (BENCHMARKS.md)."""
  return dataset.map(tf.autograph.experimental.do_not_convert(function), num_parallel_calls=_AUTOTUNE,
                     deterministic=True)


def _numpy(dataset: tf.data.Dataset) -> Iterator[Any]:
  options = tf.data.Options()
  options.deterministic = True
  # TF 2.21's autotuner made deleting a training iterator, once an evaluation pass had ended, wait about as
  # long as training had run (29 s per point of the offline study). Without it, AUTOTUNE means one call per
  # core and the prefetch buffer still grows on demand.
  options.autotune.enabled = False
  return _NumpyBatches(dataset.prefetch(_AUTOTUNE).with_options(options))


class _NumpyBatches:
  """A tf.data iterator yielding numpy arrays, deleted at the latest when the interpreter starts to exit.

  Deleting a tf.data iterator waits for its in-flight map calls. Left to the interpreter's final teardown,
  calls into Python (`tf.numpy_function`, the ArrayRecord reader) can no longer take the GIL: the process
  hung or aborted at exit (7 runs in 20 here, reading an ArrayRecord build). An `atexit` hook deletes every
  live iterator while the interpreter still runs.
  """

  _live: weakref.WeakSet = weakref.WeakSet()

  def __init__(self, dataset: tf.data.Dataset):
    self._iterator = iter(dataset)
    self._live.add(self)

  def __iter__(self) -> _NumpyBatches:
    return self

  def __next__(self) -> Any:
    if self._iterator is None:
      raise StopIteration
    # `_numpy()`, as `as_numpy_iterator` does: a view of the tensor's buffer, where `.numpy()` copies it.
    return tf.nest.map_structure(lambda tensor: tensor._numpy(), next(self._iterator))  # noqa: SLF001

  def close(self) -> None:
    self._iterator = None

  @classmethod
  def close_all(cls) -> None:
    for batches in list(cls._live):
      batches.close()


atexit.register(_NumpyBatches.close_all)
