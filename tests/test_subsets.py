"""Training subsets (data.train_examples): the class-balanced order, and the pipeline training on its prefix."""

from __future__ import annotations

import pathlib

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from mnet_jax import config_checks, datasets, input_pipeline, subsets
from mnet_jax.config_util import sibling

DEFAULT_CONFIG = pathlib.Path(__file__).resolve().parents[1] / 'experiments' / 'default.py'


def _data(**overrides) -> ml_collections.ConfigDict:
  data = ml_collections.ConfigDict(dict(
      name=datasets.TINY_DATASET, folder=None, data_dir=None, train_split='train', eval_split='test',
      min_area=0.35, aspect_range=(3 / 4, 4 / 3), flip=True, eval_crop=0.875, cache=True, train_examples=-1))
  data.update(overrides)
  return data


def _train(data, steps: int, **kwargs) -> list[dict[str, np.ndarray]]:
  kwargs = {'global_batch_size': 16, 'resolution': 32, 'seed': 0, 'process_index': 0, 'process_count': 1, **kwargs}
  batches = input_pipeline.train_batches(data, **kwargs)
  return [next(batches) for _ in range(steps)]


def _reference_order(labels: np.ndarray) -> list[int]:
  """The order as specified, dealt card by card: each class's examples in the seeded shuffle's order, then one
  from each class in turn (classes in label order), a class that has run out skipped."""
  shuffled = np.random.RandomState(subsets.ORDER_SEED).permutation(len(labels)).tolist()
  queues = {c: [i for i in shuffled if labels[i] == c] for c in sorted(set(labels.tolist()))}
  order = []
  while any(queues.values()):
    for queue in queues.values():
      if queue:
        order.append(queue.pop(0))
  return order


def test_order_deals_each_class_in_turn_from_its_seeded_shuffle():
  # Unequal classes with gaps in the label values, in no particular order in the split.
  rng = np.random.default_rng(3)
  labels = rng.permutation(np.repeat([0, 2, 3, 7, 9], [9, 2, 6, 1, 5]))
  order = subsets.balanced_order(labels)
  assert order.tolist() == _reference_order(labels)
  assert sorted(order.tolist()) == list(range(len(labels)))  # every example once
  counts = np.zeros(10, int)
  for n, index in enumerate(order, 1):
    counts[labels[index]] += 1
    if n <= 5:  # while every class has examples left (the smallest has 1): within one of each other
      present = counts[[0, 2, 3, 7, 9]]
      assert present.max() - present.min() <= 1
  # A larger, realistic split: balanced in every prefix while all classes last.
  labels = rng.integers(0, 10, 2000)
  order = subsets.balanced_order(labels)
  counts = np.cumsum(np.eye(10, dtype=int)[labels[order]], axis=0)  # row n - 1: the counts of the first n
  last_full = np.bincount(labels).min() * 10
  assert np.all(counts[:last_full].max(axis=1) - counts[:last_full].min(axis=1) <= 1)
  # The constant seed decides the order within each class; another seed gives another one.
  assert not np.array_equal(subsets.balanced_order(labels, seed=subsets.ORDER_SEED + 1), order)


def _split(data_dir: str) -> tuple[np.ndarray, np.ndarray]:
  """The tiny train split in index order as TFDS decodes it: images in [-1, 1], labels."""
  examples = list(tfds.builder(datasets.TINY_DATASET, data_dir=data_dir).as_dataset(
      split='train', shuffle_files=False).as_numpy_iterator())
  return (np.stack([e['image'] / 127.5 - 1 for e in examples]).astype(np.float32),
          np.array([e['label'] for e in examples]))


def _indices_seen(batches: list[dict[str, np.ndarray]], images: np.ndarray, labels: np.ndarray) -> list[int]:
  """The split index of each image in `batches` (whole, unflipped, at the native 64 px: the decoded image up to
  resampling round-off), checking that its label is that example's."""
  seen = []
  for batch in batches:
    for image, label in zip(batch['image'], batch['label'], strict=True):
      distance = np.abs(images - image).max(axis=(1, 2, 3))
      assert distance.min() < 0.05
      seen.append(int(distance.argmin()))
      assert labels[seen[-1]] == label
  return seen


def test_an_epoch_holds_each_example_of_the_subset_once_for_every_seed(tiny_data_dir):
  images, labels = _split(tiny_data_dir)
  order = _reference_order(labels)
  subset_of = {}
  for n in (24, 40):  # 3 and 5 steps of 8: one epoch
    data = _data(data_dir=tiny_data_dir, min_area=1.0, flip=False, train_examples=n)
    for seed in (0, 1):  # the run's seed orders the epochs, it does not choose the examples
      seen = _indices_seen(_train(data, n // 8, global_batch_size=8, resolution=64, seed=seed), images, labels)
      assert sorted(seen) == sorted(order[:n])
      subset_of[n, seed] = seen
    assert subset_of[n, 0] != subset_of[n, 1]
    counts = np.bincount(labels[subset_of[n, 0]], minlength=16)  # 16 classes of 20 examples
    assert counts.max() - counts.min() <= 1
  assert set(subset_of[24, 0]) < set(subset_of[40, 0])  # nested


def test_resuming_with_a_subset_gives_the_uninterrupted_batches(tiny_data_dir):
  # Random crops: the per-example path. 5 steps of 16 over 40 examples are two epochs, step 2 spans both.
  data = _data(data_dir=tiny_data_dir, train_examples=40)
  uninterrupted = _train(data, 5)
  resumed = _train(data, 3, start_step=2)
  for expected, actual in zip(uninterrupted[2:], resumed, strict=True):
    np.testing.assert_array_equal(actual['image'], expected['image'])
    np.testing.assert_array_equal(actual['label'], expected['label'])
  labels = _split(tiny_data_dir)[1]
  seen = np.concatenate([b['label'] for b in uninterrupted])
  expected = np.bincount(labels[_reference_order(labels)[:40]], minlength=16)
  np.testing.assert_array_equal(np.bincount(seen, minlength=16), 2 * expected)


def test_data_source_trains_on_the_subset_held_in_memory(array_record_dir):
  # Uncached, the labels for the order are read through the data source; the batches must be those of the same
  # build held in memory (as uint8, up to the rounding to whole pixel values).
  from_source = _train(_data(data_dir=array_record_dir, cache=False, train_examples=40), 3)
  subsets._ORDERS.clear()  # each path makes the order from the labels it reads itself
  from_memory = _train(_data(data_dir=array_record_dir, train_examples=40), 3)
  for uint8, scaled in zip(from_source, from_memory, strict=True):
    np.testing.assert_array_equal(uint8['label'], scaled['label'])
    np.testing.assert_allclose(input_pipeline.normalize(uint8['image'].astype(np.float32)), scaled['image'],
                               rtol=0, atol=0.5 / 127.5 + 1e-6)


def test_dataset_info_counts_the_subset_and_refuses_one_larger_than_the_split(tiny_data_dir):
  assert input_pipeline.dataset_info(_data(data_dir=tiny_data_dir)).num_train == 320
  assert input_pipeline.dataset_info(_data(data_dir=tiny_data_dir, train_examples=40)) == \
      input_pipeline.DatasetInfo(16, 40, 100)
  assert input_pipeline.dataset_info(_data(data_dir=tiny_data_dir, train_examples=320)).num_train == 320
  for call in (lambda data: input_pipeline.dataset_info(data), lambda data: _train(data, 1)):
    with pytest.raises(input_pipeline.DatasetError) as error:
      call(_data(data_dir=tiny_data_dir, train_examples=321))
    assert '\n' not in str(error.value) and '320' in str(error.value) and 'train_examples' in str(error.value)


def test_config_check_takes_minus_one_or_a_positive_count():
  config = sibling(str(DEFAULT_CONFIG), 'default').get_config()
  assert config.data.train_examples == -1
  config_checks.check(config)
  for value in (1, 50_000):
    config_checks.check(ml_collections.ConfigDict({'data': {'train_examples': value}}))
  for value in (0, -2, 2.5, True):
    with pytest.raises(ValueError, match='data.train_examples'):
      config_checks.check(ml_collections.ConfigDict({'data': {'train_examples': value}}))
