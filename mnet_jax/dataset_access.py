"""Access to a configured dataset's splits: the prepared TFDS builder, split sizes, encoded examples by index.

A split is read by index either from memory (its encoded images and labels, read once per process) when
`data.cache` is set or for a folder of images, or through the ArrayRecord records of its TFDS data source.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from mnet_jax import datasets

FOLDER = 'folder'  # data.name that reads data.folder/<split>/<label>/*.jpg|png
_MANUAL_FILES = {'imagenet2012': 'ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar'}
_SKIP_DECODING = {'image': tfds.decode.SkipDecoding()}


class DatasetError(ValueError):
  """A dataset that is unknown, unprepared or misconfigured; the message says what to do."""


def held_in_memory(data: Any) -> bool:
  """Whether splits are read into memory (encoded) rather than through an ArrayRecord data source."""
  return data.cache or data.name == FOLDER


def prepared_builder(data: Any) -> tfds.core.DatasetBuilder:
  """The TFDS builder for `data`, prepared; DatasetError with one line saying what to do otherwise."""
  if data.name == FOLDER:
    return _folder_builder(data.folder, (data.train_split, data.eval_split))
  try:
    builder = tfds.builder(data.name, data_dir=data.data_dir or None)  # '' = TFDS's default dir
  except tfds.core.registered.DatasetNotFoundError:
    raise DatasetError(f'unknown TFDS dataset {data.name!r} (embedded: {datasets.DEFAULT_DATASET!r}; '
                       f'or name {FOLDER!r} with a folder root/<split>/<label>/*.jpg)') from None
  if builder.is_prepared():
    return builder
  if builder.name in datasets.EMBEDDED:
    builder.download_and_prepare()
    return builder
  where, command = builder.data_dir, _prepare_command(data.name, str(builder.data_dir_root))
  if builder.MANUAL_DOWNLOAD_INSTRUCTIONS:
    files = _MANUAL_FILES.get(builder.name, 'the files its TFDS page lists')
    manual_dir = os.path.join(builder.data_dir_root, 'downloads', 'manual')  # TFDS's default
    raise DatasetError(f'{data.name} is not prepared in {where}: put {files} in {manual_dir}, then run `{command}`')
  raise DatasetError(f'{data.name} is not prepared in {where}: run `{command}` where there is network access')


def _prepare_command(name: str, data_dir_root: str) -> str:
  """A shell command that prepares `name` as ArrayRecord, which every reading mode can use.

  Not `tfds build`: TFDS 4.9.10's CLI imports apache_beam (not one of our requirements) before
  anything else, and it writes TFRecord by default, which uncached reading cannot index.
  """
  return (f'python -c "import tensorflow_datasets as tfds; tfds.builder({name!r}, data_dir={data_dir_root!r}, '
          f"file_format='array_record').download_and_prepare()\"")


def _folder_builder(root: str | None, splits: tuple[str, ...]) -> tfds.core.DatasetBuilder:
  for split in splits:
    if not root or not os.path.isdir(os.path.join(root, split)):
      raise DatasetError(f'image folder {root!r} has no {split!r} subfolder: expected {root}/<split>/<label>/*.jpg')
  return tfds.ImageFolder(root)


def num_examples(builder: tfds.core.DatasetBuilder, split: str) -> int:
  """The number of examples in `split`; DatasetError naming the splits there are if it has none."""
  try:
    return builder.info.splits[split].num_examples
  except KeyError:
    raise DatasetError(f'{builder.name} has no split {split!r}; it has {", ".join(builder.info.splits)}') from None


def train_size(builder: tfds.core.DatasetBuilder, data: Any) -> int:
  """The number of examples training draws from: data.train_examples (-1: the whole train split)."""
  size = num_examples(builder, data.train_split)
  wanted = data.get('train_examples', -1)
  if wanted == -1:
    return size
  if not 1 <= wanted <= size:
    raise DatasetError(f'data.train_examples must be -1 (all) or in [1, {size}]: {data.name} has {size} '
                       f'{data.train_split!r} examples, got {wanted}')
  return wanted


def _encoded_stream(builder: tfds.core.DatasetBuilder, split: str) -> tf.data.Dataset:
  """The split's examples, images still encoded, in a fixed order (the order of its data source)."""
  if builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD:  # `as_dataset` cannot read these
    source = builder.as_data_source(split=split, decoders=_SKIP_DECODING)
    signature = {'image': tf.TensorSpec([], tf.string), 'label': tf.TensorSpec([], tf.int64)}
    examples = lambda: ({'image': e['image'], 'label': e['label']} for e in source)  # noqa: E731
    return tf.data.Dataset.from_generator(examples, output_signature=signature)
  read_config = tfds.ReadConfig(try_autocache=False)  # callers cache what they need themselves
  return builder.as_dataset(split=split, shuffle_files=False, decoders=_SKIP_DECODING, read_config=read_config)


_IN_MEMORY: dict[tuple[str, ...], tuple[np.ndarray, np.ndarray]] = {}


def encoded_in_memory(builder: tfds.core.DatasetBuilder, data: Any, split: str) -> tuple[np.ndarray, np.ndarray]:
  """The split's encoded images and int32 labels as arrays, read once per process (a sweep's seeds and
  points share them); the last two splits read are kept (train and eval)."""
  key = (data.name, data.folder, data.data_dir, str(builder.version), split)
  if key not in _IN_MEMORY:
    images, labels = [], []
    for chunk in _encoded_stream(builder, split).batch(4096).as_numpy_iterator():  # batched: far fewer Python steps
      images.append(chunk['image'])
      labels.append(chunk['label'])
    if len(_IN_MEMORY) > 1:
      _IN_MEMORY.pop(next(iter(_IN_MEMORY)))
    _IN_MEMORY[key] = np.concatenate(images), np.concatenate(labels).astype(np.int32)
  return _IN_MEMORY[key]


READ_CHUNK = 64  # examples fetched per call of the reader


def random_access(builder: tfds.core.DatasetBuilder, data: Any,
                  split: str) -> Callable[[tf.Tensor], tuple[tf.Tensor, tf.Tensor]]:
  """A tf function from a vector of example indices to their (encoded images, int32 labels)."""
  if held_in_memory(data):
    images, labels = encoded_in_memory(builder, data, split)
    images, labels = tf.constant(images, tf.string), tf.constant(labels)
    return lambda indices: (tf.gather(images, indices), tf.gather(labels, indices))
  try:
    source = builder.as_data_source(split=split, decoders=_SKIP_DECODING)
  except NotImplementedError as error:  # e.g. TFRecord files
    raise DatasetError(f'{data.name} ({builder.info.file_format.value} files) has no random access: set '
                       f'data.cache=True if its {split} split fits in memory, or rebuild it as ArrayRecord in '
                       f'another data dir: `{_prepare_command(data.name, "DIR")}`') from error
  # One Python call reads a chunk of serialized records, which TF's parser then takes apart outside the GIL.
  # Reading through the TFDS source, one example per call (Python deserialisation), held the GIL for most of
  # the work: a process topped out at ~4,300 examples/s on any number of threads (BENCHMARKS.md). The chunk is
  # one batched read (array_record reads each file's records together, files in parallel): as fast as a read
  # per record on a one-file build, and it can overlap the many files of a real one.
  records = source.data_source
  features = {'image': tf.io.FixedLenFeature([], tf.string), 'label': tf.io.FixedLenFeature([], tf.int64)}

  def read(indices: np.ndarray) -> np.ndarray:
    return np.array(records.__getitems__([int(index) for index in indices]), dtype=object)

  def fetch(indices: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    serialized = tf.ensure_shape(tf.numpy_function(read, [indices], tf.string, stateful=False), indices.shape)
    examples = tf.io.parse_example(serialized, features)
    return examples['image'], tf.cast(examples['label'], tf.int32)

  return fetch
